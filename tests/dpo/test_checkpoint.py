import pytest
import torch
from transformers import LlamaForCausalLM

from dpo import DPO, CheckpointError, load_checkpoint, save_checkpoint
from tests.dpo._helpers import TinyLM, cpu_state, state_equal, tiny_llama


def test_hf_round_trip_with_tied_embeddings(tmp_path):
    model = tiny_llama(seed=1, tie=True)
    path = save_checkpoint(DPO(model), tmp_path / "ckpt")  # a DPO saves its policy
    assert {"config.json", "model.safetensors"} <= {p.name for p in path.iterdir()}
    reloaded = LlamaForCausalLM.from_pretrained(path)
    assert state_equal(cpu_state(reloaded), cpu_state(model))
    fresh = tiny_llama(seed=2, tie=True)
    assert not state_equal(cpu_state(fresh), cpu_state(model))
    load_checkpoint(fresh, path)
    assert state_equal(cpu_state(fresh), cpu_state(model))
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()  # still tied


def test_plain_module_round_trip_and_atomic_replace(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(TinyLM(seed=1), target)
    model = TinyLM(seed=2)
    save_checkpoint(model, target)  # replaces the previous checkpoint
    fresh = TinyLM(seed=3)
    load_checkpoint(fresh, target)
    assert state_equal(cpu_state(fresh), cpu_state(model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind


def test_mismatched_or_missing_checkpoint(tmp_path):
    save_checkpoint(TinyLM(), tmp_path / "plain")
    with pytest.raises(CheckpointError, match="tensors not in the model"):
        load_checkpoint(torch.nn.Linear(2, 2), tmp_path / "plain")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(TinyLM(), tmp_path / "missing")
