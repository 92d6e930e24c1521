"""A tiny real Llama + byte-level BPE tokenizer, built with pipeline.models once per test module."""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.models import build_tiny_model, build_tokenizer, load_model_and_tokenizer

WORDS = (
    "the a cat dog bird sat ran flew on under over mat table tree red blue green big small "
    "quickly slowly ate saw found write explain list why how what"
).split()


def tiny_corpus(n: int = 50, seed: int = 0) -> list[str]:
    """~50 short sentences; enough for a ~300-token byte-level BPE."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]


@dataclass
class Tiny:
    model: Any
    tokenizer: Any
    path: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer(tiny_corpus(), root / "tokenizer", vocab_size=300)
    # A larger init range than Llama's 0.02 gives peaked next-token distributions, so greedy
    # comparisons are not decided by float round-off between nearly tied logits.
    path = build_tiny_model(
        tokenizer,
        root / "model",
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.3,
    )
    model, tokenizer = load_model_and_tokenizer(path)
    return Tiny(model, tokenizer, path)
