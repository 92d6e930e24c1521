"""A LoRA run through the real flow: SFT and DPO train adapters, each checkpoint holds the adapters and
the merged model, and the next stage starts from the merged model (M_t) with new adapters."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flows import self_rewarding_flow
from tests.flows.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness", "no_mlflow_env")


def test_lora_run_checkpoints_adapters_and_merged_models_and_continues_from_the_merged_one(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tiny_config("iterations=1", "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
                         "eval.enabled=false")
    result = self_rewarding_flow(config, output_dir=str(tmp_path))
    run_dir = Path(result["run_dir"])
    stages = {"sft": run_dir / "sft", "iter-1": run_dir / "iter-1" / "checkpoint"}
    for folder in stages.values():
        assert {p.name for p in (folder / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
        assert (folder / "model" / "model.safetensors").is_file()  # merged: what generation and the registry load
        assert all("lora_" not in k for k in load_file(folder / "model" / "model.safetensors"))
        assert "adapter/adapter_model.safetensors" in json.loads((folder / "manifest.json").read_text())["files"]
    assert result["final_model"] == str(stages["iter-1"] / "model")
    assert result["rows"][1]["num_pairs"] > 0

    def load(path):
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)

    # Each stage = the previous stage's merged model + its own adapters, merged.
    for previous, stage in [(run_dir / "base" / "model", stages["sft"]), (stages["sft"] / "model", stages["iter-1"])]:
        adapter_config = json.loads((stage / "adapter" / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == str(previous)  # the round started from M_t
        expected = PeftModel.from_pretrained(load(previous), str(stage / "adapter")).merge_and_unload().state_dict()
        got = load(stage / "model").state_dict()
        assert any(not torch.equal(v, load(previous).state_dict()[k]) for k, v in got.items())
        for name, value in got.items():
            torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=name)
