"""A tiny real Llama judge (random weights) and its BPE tokenizer, built once per test session."""

import random

import pytest

from judging import load_template
from tests._tiny import Tiny, build_tiny

WORDS = "the a cat dog sat ran on mat tree red big small why how what list write explain score 0 1 2 3 4 5".split()


def tiny_corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]
    # The rubric in the corpus keeps judge prompts a few hundred tokens long instead of ~800 bytes.
    return sentences + [load_template().template] * 3 + [f"Score: {i}" for i in range(6)]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return build_tiny(tmp_path_factory.mktemp("tiny_judge"), tiny_corpus(), vocab_size=512, max_position_embeddings=1024)
