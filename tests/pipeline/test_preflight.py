"""Inputs are checked before anything starts, each problem named by config field, file and line."""

import json
import sys

import pytest

from generation import EngineUnavailableError, PromptFileError
from judging import RewardFunctionError, TemplateError
from pipeline.config import load_config
from pipeline.models import ModelLoadError
from pipeline.preflight import check_inputs
from tests._tiny import build_tiny


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_good_inputs_pass_quietly(tmp_path):
    write(tmp_path / "ift.jsonl", [{"prompt": "p", "response": "r"}])
    check_inputs(load_config(None, [f"data.ift={tmp_path / 'ift.jsonl'}"]))


def test_a_record_without_its_field_names_the_field_the_file_and_the_line(tmp_path):
    write(tmp_path / "ift.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    with pytest.raises(PromptFileError, match=r"data\.ift: .*ift\.jsonl:2: missing field 'response'"):
        check_inputs(load_config(None, [f"data.ift={tmp_path / 'ift.jsonl'}"]))


def test_a_bad_override_template_and_reward_fn_name_their_fields(tmp_path):
    (tmp_path / "judge.yaml").write_text("name: x\ntemplate: no placeholders\nscore_pattern: '(\\d)'\n")
    with pytest.raises(TemplateError, match=r"^overrides\.2\.judge\.template: "):
        check_inputs(load_config(None, [f"overrides.2.judge.template={tmp_path / 'judge.yaml'}"]))
    with pytest.raises(RewardFunctionError, match=r"^iteration\.judge\.reward_fn: "):
        check_inputs(load_config(None, ["iteration.judge.reward_fn=no_such_module:score"]))


def test_a_model_directory_without_weights_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"^model\.path: .*has no weights"):
        check_inputs(load_config(None, [f"model.path={tmp_path / 'model'}"]))


def test_the_vllm_engine_needs_its_venv_and_a_head_size_vllm_runs_on_cpu(tmp_path):
    vllm = ["engine.name=vllm", f"engine.python={sys.executable}"]
    check_inputs(load_config(None, [*vllm, "model.tiny.num_heads=2"]))  # head size 64 / 2 = 32
    with pytest.raises(EngineUnavailableError, match=r"^engine\.python: .* does not exist: run `make vllm-env`"):
        check_inputs(load_config(None, ["engine.name=vllm", f"engine.python={tmp_path / 'python'}"]))
    model = build_tiny(tmp_path, ["a few words", "and a few more"], vocab_size=280, max_position_embeddings=32,
                       hidden_size=48, num_heads=2).path
    with pytest.raises(EngineUnavailableError, match=r"head size is 24 \(.*config\.json\)"):
        check_inputs(load_config(None, [*vllm, f"model.path={model}"]))
