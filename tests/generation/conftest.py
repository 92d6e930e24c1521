"""A tiny real Llama + byte-level BPE tokenizer, built with pipeline.models once per test module."""

import random

import pytest

from tests._tiny import Tiny, build_tiny

WORDS = (
    "the a cat dog bird sat ran flew on under over mat table tree red blue green big small "
    "quickly slowly ate saw found write explain list why how what"
).split()


def tiny_corpus(n: int = 50, seed: int = 0) -> list[str]:
    """~50 short sentences; enough for a ~300-token byte-level BPE."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return build_tiny(tmp_path_factory.mktemp("tiny"), tiny_corpus(), vocab_size=300, max_position_embeddings=512)
