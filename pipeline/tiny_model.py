"""Building a tiny chat model from scratch: a byte-level BPE tokenizer trained on a corpus and a small
Llama, saved as an ordinary `from_pretrained` directory (the demo's M0, and the tests' models).

The saved directory goes through the same `pipeline.models.load_model_and_tokenizer` path as a
downloaded Llama/Qwen/Mistral.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from dpo import publish_dir, temp_sibling

__all__ = ["SPECIAL_TOKENS", "TINY_CHAT_TEMPLATE", "build_tiny_model", "build_tokenizer"]

BOS, EOS, PAD, USER, ASSISTANT = "<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"
# Pad first so it gets id 0; the rest follow in a fixed order so ids are stable across builds.
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT]

# User turn: <|bos|><|user|>\n{content}<|eos|>\n ; assistant turn: <|assistant|>\n{content}<|eos|>\n ;
# generation prompt: <|assistant|>\n (so the prompt ends exactly where the response starts).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token }}<|user|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}"
    "<|assistant|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% else %}"
    "{{ raise_exception('the tiny chat template supports only user and assistant roles') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the tiny chat format and save it as a HF tokenizer directory.

    Args:
        texts: Training texts; the same texts give the same tokenizer.
        out_dir: Directory to write (`save_pretrained` layout); replaced if it exists.
        vocab_size: Target vocabulary size including the 256 byte symbols and 5 special tokens.

    Returns:
        The tokenizer, with BOS/EOS/PAD set, left padding and the chat template.
    """
    corpus = [t for t in texts if t]
    if not corpus:
        raise ValueError("build_tokenizer needs at least one non-empty training text")
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small; byte-level BPE needs at least {minimum}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
        chat_template=TINY_CHAT_TEMPLATE,
        padding_side="left",
    )
    out_path = Path(out_dir)
    tmp_dir = _temp_dir_beside(out_path)
    tokenizer.save_pretrained(tmp_dir)
    publish_dir(tmp_dir, out_path)
    return tokenizer


def build_tiny_model(
    tokenizer_dir_or_tokenizer: str | os.PathLike | PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Save a randomly initialised tiny Llama and its tokenizer as a `from_pretrained` directory.

    Args:
        tokenizer_dir_or_tokenizer: A tokenizer or a directory holding one.
        out_dir: Output directory (config, safetensors weights, tokenizer); replaced if it exists.
        hidden_size: Model width.
        num_layers: Decoder layers.
        num_heads: Attention heads (also used as key/value heads).
        intermediate_size: MLP width.
        max_position_embeddings: Context length.
        seed: Initialisation seed (the global RNG state is left untouched).
        **overrides: Extra `LlamaConfig` fields (e.g. `initializer_range`, `tie_word_embeddings`).

    Returns:
        The output directory.
    """
    tokenizer = tokenizer_dir_or_tokenizer
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }
    config = LlamaConfig(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    tokenizer.model_max_length = max_position_embeddings
    out_path = Path(out_dir)
    tmp_dir = _temp_dir_beside(out_path)
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    publish_dir(tmp_dir, out_path)
    return out_path


def _temp_dir_beside(out_dir: Path) -> Path:
    tmp = temp_sibling(out_dir)
    tmp.mkdir(parents=True)
    return tmp
