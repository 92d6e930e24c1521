"""pipeline.models: tokenizer/model builders and the single local loading path."""

import json
import random
import sys
import time

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from generation import SamplingParams, VllmEngine, encode_chat_prompt, generate
from pipeline.config import EngineConfig
from pipeline.models import (
    DeviceError,
    InferenceModel,
    ModelLoadError,
    load_model_and_tokenizer,
    seed_everything,
    select_device,
    select_dtype,
    set_torch_threads,
)
from pipeline.tiny_model import build_tiny_model
from tests._tiny import TINY_SHAPE


def test_tiny_model_roundtrips_through_the_loader(built):
    root, tokenizer, path = built
    model, loaded_tok = load_model_and_tokenizer(path)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (300, 32, 2)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token_id == 0
    assert loaded_tok.chat_template == tokenizer.chat_template
    text = "why the big cat ate 7 crêpes"
    assert loaded_tok.encode(text) == tokenizer.encode(text)
    # The same seed rebuilds the same weights, and the loader returns exactly what was saved.
    again = build_tiny_model(tokenizer, root / "model2", **TINY_SHAPE)
    model2, _ = load_model_and_tokenizer(again)
    for (name, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    other, _ = load_model_and_tokenizer(build_tiny_model(tokenizer, root / "model3", seed=1, **TINY_SHAPE))
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)


def test_other_architecture_saved_with_save_pretrained_loads_and_generates(built, tmp_path):
    """A Qwen2 model whose tokenizer lacks a pad token: same loader, pad falls back to EOS."""
    root, _, _ = built
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tok"), local_files_only=True)
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    # Like real Qwen checkpoints, the embedding matrix is padded beyond the tokenizer's size.
    config = Qwen2Config(
        vocab_size=len(tokenizer) + 20,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    model, loaded = load_model_and_tokenizer(tmp_path / "qwen")
    assert isinstance(model, Qwen2ForCausalLM)
    assert loaded.pad_token_id == loaded.eos_token_id and loaded.padding_side == "left"
    out = generate(model, loaded, [encode_chat_prompt(loaded, "the cat")], SamplingParams(max_new_tokens=3))
    assert 1 <= len(out[0][0].token_ids) <= 3


def test_hub_id_fails_fast_without_network():
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer("meta-llama/Llama-2-7b-hf")
    assert time.perf_counter() - started < 1.0
    message = str(err.value)
    assert "meta-llama/Llama-2-7b-hf" in message and "does not exist" in message
    assert "huggingface-cli download" in message


def test_directory_without_weights_or_config(built, tmp_path):
    _, tokenizer, path = built
    (tmp_path / "noconf").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_model_and_tokenizer(tmp_path / "noconf")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((path / "config.json").read_text())
    tokenizer.save_pretrained(weightless)
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_model_and_tokenizer(weightless)


def test_tokenizer_without_eos_fails_clearly(built, tmp_path):
    _, _, path = built
    target = tmp_path / "noeos"
    model, tokenizer = load_model_and_tokenizer(path)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    config_file = target / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["eos_token"] = None
    config_file.write_text(json.dumps(tok_config))
    with pytest.raises(ModelLoadError, match="no EOS token"):
        load_model_and_tokenizer(target)


def test_tokenizer_larger_than_embeddings_is_rejected(built, tmp_path):
    _, tokenizer, _ = built
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer) - 10,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(tmp_path / "small")
    tokenizer.save_pretrained(tmp_path / "small")
    with pytest.raises(ModelLoadError, match="300 tokens but the model embeds only 290"):
        load_model_and_tokenizer(tmp_path / "small")


def test_load_in_bfloat16(built):
    _, _, path = built
    model, _ = load_model_and_tokenizer(path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_select_device_and_dtype():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            select_device("cuda")
        assert select_dtype("auto", select_device("auto")) == torch.float32
    with pytest.raises(DeviceError, match="not a device name"):
        select_device("tpu9")
    assert select_dtype("auto", "cpu") == torch.float32
    assert select_dtype("bfloat16", "cpu") == torch.bfloat16
    assert select_dtype(torch.float16) == torch.float16
    with pytest.raises(DeviceError, match="float64"):
        select_dtype("float64")


def test_seed_everything_reproduces_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(5)
    first = draw()
    seed_everything(5)
    assert draw() == first
    seed_everything(6)
    assert draw() != first


def test_set_torch_threads_sizes_the_pool_and_none_keeps_it():
    before = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        set_torch_threads(None)  # unset: torch's own choice stays
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_inference_model_on_the_vllm_engine_gives_an_engine_and_release_stops_it(built, monkeypatch):
    _, _, path = built
    closed = []
    monkeypatch.setattr(VllmEngine, "close", lambda self: closed.append(self))
    loaded = InferenceModel(path, dtype="float32", engine=EngineConfig(name="vllm", python=sys.executable), threads=1)

    engine, tokenizer = loaded.get()

    assert isinstance(engine, VllmEngine) and not engine.running  # the worker starts on first use
    assert engine.model_dir == path.absolute() and tokenizer.eos_token_id is not None
    assert engine.worker_args[engine.worker_args.index("--dtype") + 1] == "float32"  # engine.dtype auto: model's
    assert engine.config.max_position_embeddings == TINY_SHAPE["max_position_embeddings"]
    loaded.release()
    assert closed == [engine] and not loaded.loaded
