"""A tiny real Llama judge (random weights) and its BPE tokenizer, built once per test session."""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from judging import load_template
from pipeline.models import build_tiny_model, build_tokenizer, load_model_and_tokenizer

WORDS = "the a cat dog sat ran on mat tree red big small why how what list write explain score 0 1 2 3 4 5".split()


def tiny_corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]
    # The rubric in the corpus keeps judge prompts a few hundred tokens long instead of ~800 bytes.
    return sentences + [load_template().template] * 3 + [f"Score: {i}" for i in range(6)]


@dataclass
class Tiny:
    model: Any
    tokenizer: Any
    path: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("tiny_judge")
    tokenizer = build_tokenizer(tiny_corpus(), root / "tokenizer", vocab_size=512)
    # Peaked logits (init range 0.3) so greedy decoding is not decided by float round-off.
    path = build_tiny_model(tokenizer, root / "model", hidden_size=32, num_layers=2, num_heads=4,
                            intermediate_size=64, max_position_embeddings=1024, initializer_range=0.3)
    model, tokenizer = load_model_and_tokenizer(path)
    return Tiny(model, tokenizer, path)
