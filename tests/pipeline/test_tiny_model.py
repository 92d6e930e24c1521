"""The tiny model builders: a deterministic BPE with the chat format, and a Llama saved atomically."""

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.tiny_model import build_tiny_model, build_tokenizer
from tests._tiny import TINY_SHAPE, word_corpus


def test_tokenizer_is_deterministic_and_has_special_tokens(built, tmp_path):
    root, tokenizer, _ = built
    build_tokenizer(word_corpus(), tmp_path / "again", vocab_size=300)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (
        root / "tok" / "tokenizer.json"
    ).read_bytes()
    assert len(tokenizer) == 300
    ids = {
        tok: tokenizer.convert_tokens_to_ids(tok)
        for tok in ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
    }
    assert list(ids.values()) == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.padding_side == "left"


def test_tokenizer_roundtrips_any_text_and_reloads(built):
    root, tokenizer, _ = built
    text = "The ZEBRA ate 42 crêpes — ünïcode & emoji 🙂\n\ttabs"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    reloaded = AutoTokenizer.from_pretrained(str(root / "tok"), local_files_only=True)
    assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert reloaded.chat_template == tokenizer.chat_template


def test_chat_template_user_assistant_turns(built):
    _, tokenizer, _ = built
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|bos|><|user|>\nhi<|eos|>\n<|assistant|>\nyo<|eos|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|user|>\nhi<|eos|>\n<|assistant|>\n"


def test_tokenizer_input_errors(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(word_corpus(), tmp_path / "t", vocab_size=100)
    with pytest.raises(ValueError, match="at least one"):
        build_tokenizer(["", ""], tmp_path / "t")


def test_build_does_not_touch_global_rng(built, tmp_path):
    _, tokenizer, _ = built
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tokenizer, tmp_path / "m", **TINY_SHAPE)
    assert torch.equal(torch.rand(3), expected)


def test_rebuild_replaces_directory_without_leftovers(built, tmp_path):
    _, tokenizer, _ = built
    out = tmp_path / "m"
    build_tiny_model(tokenizer, out, **TINY_SHAPE)
    (out / "stale.txt").write_text("old")
    build_tiny_model(tokenizer, out, **TINY_SHAPE)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
