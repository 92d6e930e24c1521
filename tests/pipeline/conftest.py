"""A tiny tokenizer and model built once per module for the model-loading and builder tests."""

import pytest

from pipeline.tiny_model import build_tiny_model, build_tokenizer
from tests._tiny import TINY_SHAPE, word_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tokenizer(word_corpus(), root / "tok", vocab_size=300)
    path = build_tiny_model(root / "tok", root / "model", **TINY_SHAPE)
    return root, tokenizer, path
