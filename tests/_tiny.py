"""A tiny real Llama (random weights) and a byte-level BPE trained on a given corpus, for tests."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.models import build_tiny_model, build_tokenizer, load_model_and_tokenizer


@dataclass
class Tiny:
    model: Any
    tokenizer: Any
    path: Path


def build_tiny(root: Path, corpus: list[str], *, vocab_size: int, max_position_embeddings: int) -> Tiny:
    """Tokenizer + 2-layer, 32-wide Llama under `root`, loaded back through the production loader."""
    tokenizer = build_tokenizer(corpus, root / "tokenizer", vocab_size=vocab_size)
    # A larger init range than Llama's 0.02 gives peaked next-token distributions, so greedy
    # comparisons are not decided by float round-off between nearly tied logits.
    path = build_tiny_model(tokenizer, root / "model", hidden_size=32, num_layers=2, num_heads=4,
                            intermediate_size=64, max_position_embeddings=max_position_embeddings,
                            initializer_range=0.3)
    model, tokenizer = load_model_and_tokenizer(path)
    return Tiny(model, tokenizer, path)
