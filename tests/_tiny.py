"""The tests' tiny real models: a bare HF Llama (`tiny_llama`, for the dpo maths) and a tokenizer plus
Llama saved as a `from_pretrained` directory (`build_tiny`, loaded back through the production loader)."""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.models import load_model_and_tokenizer
from pipeline.tiny_model import build_tiny_model, build_tokenizer

VOCAB = 64

WORDS = "the a cat dog sat ran on under mat table red blue big small ate saw why how".split()

# The smallest shape the model builder and loader tests use.
TINY_SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": 64}


def word_corpus(n: int = 50) -> list[str]:
    """`n` random short sentences over a fixed vocabulary, for training tiny tokenizers."""
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]


def tiny_llama(seed: int = 0, layers: int = 1, tie: bool = False, vocab_size: int = VOCAB) -> LlamaForCausalLM:
    """A real HF Llama with ~20k parameters (random weights, no tokenizer)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


@dataclass
class Tiny:
    model: Any
    tokenizer: Any
    path: Path


def build_tiny(root: Path, corpus: list[str], *, vocab_size: int, max_position_embeddings: int,
               hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, intermediate_size: int = 64,
               initializer_range: float = 0.3, seed: int = 0) -> Tiny:
    """A byte-level BPE trained on `corpus` and a tiny Llama under `root`, loaded back as a run loads them.

    The default init range (larger than Llama's 0.02) gives peaked next-token distributions, so greedy
    comparisons are not decided by float round-off between nearly tied logits.
    """
    tokenizer = build_tokenizer(corpus, root / "tokenizer", vocab_size=vocab_size)
    path = build_tiny_model(tokenizer, root / "model", hidden_size=hidden_size, num_layers=num_layers,
                            num_heads=num_heads, intermediate_size=intermediate_size,
                            max_position_embeddings=max_position_embeddings, initializer_range=initializer_range,
                            seed=seed)
    model, tokenizer = load_model_and_tokenizer(path)
    return Tiny(model, tokenizer, path)
