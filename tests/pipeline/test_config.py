"""Run config: defaults, per-iteration overrides, `--set`, and clear errors for bad files."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, RunConfig, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_yaml_under_configs_loads():
    run_configs = [p for p in (REPO / "configs").rglob("*.yaml") if not {"judges", "accelerate"} & set(p.parts)]
    assert run_configs, "configs/ has no run configs"
    for path in run_configs:
        assert isinstance(load_config(path), RunConfig)


def test_example_accelerate_configs_are_valid_accelerate_files():
    """accelerate's own loader rejects unknown keys; the DeepSpeed file names a JSON that exists."""
    import json

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    kinds = {p.name: load_config_from_file(str(p)) for p in (REPO / "configs" / "accelerate").glob("*.yaml")}
    assert kinds["fsdp.yaml"].distributed_type == DistributedType.FSDP
    assert kinds["zero3.yaml"].distributed_type == DistributedType.DEEPSPEED
    ds_file = REPO / kinds["zero3.yaml"].deepspeed_config["deepspeed_config_file"]  # relative to the repo root
    assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == 3
    # named relative to the run config (the embedded one lives in configs/), it resolves to the file
    config = load_config(None, ["runtime.launcher=accelerate", "runtime.accelerate_config=accelerate/fsdp.yaml"])
    assert config.runtime.accelerate_config == str(REPO / "configs" / "accelerate" / "fsdp.yaml")


def test_embedded_default_is_the_demo():
    config = load_config(None)
    assert config.run_name == "demo" and config.iterations >= 2
    assert Path(config.iteration.judge.template).is_file()  # resolved relative to the config file


def test_overrides_as_mapping_and_list_change_only_their_iteration(tmp_path):
    as_map = load_config(write(tmp_path, "iterations: 3\noverrides: {2: {dpo: {beta: 0.5}, pairs: {rho: 0.3}}}\n"))
    as_list = load_config(write(tmp_path, "iterations: 3\noverrides: [{}, {dpo: {beta: 0.5}, pairs: {rho: 0.3}}]\n", "b.yaml"))
    for config in (as_map, as_list):
        assert config.iteration_config(1).dpo.beta == 0.1
        assert config.iteration_config(2).dpo.beta == 0.5
        assert config.iteration_config(2).pairs.rho == 0.3
        assert config.iteration_config(3).dpo.beta == 0.1
        assert config.iteration_config(2).dpo.start_learning_rate == config.iteration.dpo.start_learning_rate


def test_set_overrides_any_field_with_yaml_scalars(tmp_path):
    config = load_config(
        write(tmp_path, "iterations: 2\n"),
        ["iteration.dpo.beta=0.25", "run_name=other", "overrides.2.pairs.strategy=length_control", "sft.enabled=false"],
    )
    assert config.iteration.dpo.beta == 0.25 and config.run_name == "other" and config.sft.enabled is False
    assert config.iteration_config(2).pairs.strategy == "length_control"
    assert parse_overrides(["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}


BAD_CONFIGS = [
    ("unknown key", "iteration:\n  dpo:\n    betta: 0.1\n", "iteration.dpo.betta: unknown field"),
    ("wrong type", "iterations: many\n", "iterations: Input should be a valid integer"),
    ("zero count", "iteration:\n  candidates:\n    num: 0\n", "iteration.candidates.num"),
    ("negative count", "iteration:\n  judge:\n    num_judgments: -1\n", "iteration.judge.num_judgments"),
    ("rho above 1", "iteration:\n  pairs:\n    rho: 1.5\n", "iteration.pairs.rho"),
    ("bad override", "overrides: {2: {dpo: {loss_type: nope}}}\n", "overrides.2.dpo.loss_type"),
    ("override beyond iterations", "iterations: 1\noverrides: {3: {}}\n", "iterations is 1"),
    ("not a mapping", "- a\n- b\n", "expected a mapping"),
    ("python tag", "run_name: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    ("bad yaml", "iteration: [unclosed\n", "not valid YAML"),
    ("missing data file", "data: {task: null, ift: nope.jsonl, seed_prompts: nope.jsonl}\n", "data.ift: file not found"),
    ("heads do not divide", "model: {tiny: {hidden_size: 30, num_heads: 4}}\n", "divisible"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_file_and_field(tmp_path, case, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_duplicate_keys_are_refused_but_merge_keys_still_override(tmp_path):
    with pytest.raises(ConfigError, match=r"found the key 'sft' twice \(first on line 1\)"):
        load_config(write(tmp_path, "sft: {batch_size: 4}\nsft: {batch_size: 8}\n"))
    merged = load_config(write(tmp_path, "sft: &optim {batch_size: 4, warmup_steps: 2}\n"
                                         "iteration: {dpo: {<<: *optim, batch_size: 8}}\n", "merge.yaml"))
    assert merged.iteration.dpo.batch_size == 8 and merged.iteration.dpo.warmup_steps == 2


def test_an_error_from_a_set_names_the_set_not_the_file(tmp_path):
    path = write(tmp_path, "iterations: 2\n")
    with pytest.raises(ConfigError, match=r"^--set iteration.pairs.rho=2: invalid config\n") as err:
        load_config(path, ["iteration.pairs.rho=2"])
    assert str(path) not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["iteration.dpo.beta"])


@pytest.mark.parametrize(("case", "text", "expected"), BAD_CONFIGS[:4] + BAD_CONFIGS[7:9], ids=lambda v: str(v)[:20])
def test_cli_exits_2_with_message_and_no_traceback(tmp_path, case, text, expected):
    path = write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(path), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a bad config


def test_cli_set_error_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--set", "iteration.pairs.rho=2", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "iteration.pairs.rho" in proc.stderr and "Traceback" not in proc.stderr


def test_every_setting_of_the_ml_packages_is_reachable_from_its_config_section():
    """A settings field without a config field of the same name would silently keep its default."""
    import dataclasses

    import dpo
    import generation
    from pipeline.config import DPOConfig, EarlyStoppingConfig, OptimConfig, SamplingConfig

    pairs = [(dpo.OptimSettings, OptimConfig, set()), (dpo.LossSettings, DPOConfig, set()),
             (dpo.EarlyStopping, EarlyStoppingConfig, {"higher_is_better", "eval_at_start"}),
             (generation.SamplingParams, SamplingConfig, {"seed"})]
    for settings, section, not_configurable in pairs:
        missing = {f.name for f in dataclasses.fields(settings)} - section.model_fields.keys() - not_configurable
        assert not missing, f"{settings.__name__} fields without a {section.__name__} field: {missing}"
    config = load_config(None, ["iteration.dpo.beta=0.3", "iteration.dpo.ref_ema_decay=0.9", "sft.batch_size=7"])
    assert config.iteration.dpo.to(dpo.LossSettings) == dpo.LossSettings(beta=0.3, ref_ema_decay=0.9, nll_weight=1.0)
    assert config.sft.to(dpo.OptimSettings).batch_size == 7
    assert config.iteration.judge.sampling.to(generation.SamplingParams, seed=5).seed == 5


def test_lora_and_compute_settings_are_reachable_from_the_model_section():
    import dataclasses

    import dpo
    from pipeline.config import LoraConfig, ModelConfig

    for settings, section in [(dpo.LoraSettings, LoraConfig), (dpo.ComputeSettings, ModelConfig)]:
        missing = {f.name for f in dataclasses.fields(settings)} - section.model_fields.keys()
        assert not missing, f"{settings.__name__} fields without a {section.__name__} field: {missing}"
    config = load_config(None, ["model.lora.enabled=true", "model.lora.r=4", "model.lora.target_modules=[q_proj, v_proj]",
                                "model.gradient_checkpointing=true", "model.autocast=bf16"])
    assert config.model.lora.to(dpo.LoraSettings) == dpo.LoraSettings(r=4, target_modules=("q_proj", "v_proj"))
    assert config.model.to(dpo.ComputeSettings) == dpo.ComputeSettings(gradient_checkpointing=True, autocast="bf16")
    assert load_config(None).model.lora.to(dpo.LoraSettings).enabled is False  # off by default


@pytest.mark.parametrize("overrides", [["iteration.dpo.ref_ema_decay=0.9"], ["overrides.2.dpo.ref_ema_decay=0.5"]])
def test_lora_refuses_an_ema_reference(overrides):
    with pytest.raises(ConfigError, match=r"ref_ema_decay must be 1 with model.lora.enabled"):
        load_config(None, ["model.lora.enabled=true", *overrides])
    load_config(None, overrides)  # fine without LoRA


@pytest.mark.parametrize(("overrides", "message"), [
    (["runtime.num_machines=2"], "set launcher: accelerate"),
    (["runtime.accelerate_config=accelerate/fsdp.yaml"], "set launcher: accelerate"),
    (["runtime.launcher=accelerate", "runtime.num_machines=2", "runtime.num_processes=2"], "needs main_process_ip"),
    (["runtime.launcher=accelerate", "runtime.machine_rank=1"], "must be below num_machines"),
    (["runtime.launcher=accelerate", "runtime.num_machines=2", "runtime.num_processes=3",
      "runtime.main_process_ip=10.0.0.1"], "must be a multiple of num_machines"),
    (["runtime.launcher=accelerate", "runtime.accelerate_config=missing.yaml"], "runtime.accelerate_config: file not found"),
    (["runtime.launcher=accelerate", "runtime.num_machines=2", "runtime.num_processes=2", "runtime.machine_rank=1",
      "runtime.main_process_ip=10.0.0.1"], r"`selfreward run` is always machine 0: start the other machines with "
                                           r"`selfreward join demo --machine-rank K`"),
    (["runtime.launcher=accelerate", "runtime.accelerate_config=accelerate/fsdp.yaml", "model.lora.enabled=true"],
     r"shards the weights \(FSDP2\), which model.lora.enabled do not support"),
    (["runtime.launcher=accelerate", "runtime.accelerate_config=accelerate/zero3.yaml",
      "overrides.2.dpo.checkpoint_every=5"], r"\(DeepSpeed ZeRO-3\), which iteration.dpo.checkpoint_every do not"),
])
def test_launch_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_fsdp1_is_refused_and_unsharded_files_allow_everything(tmp_path):
    fsdp1 = write(tmp_path, "distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n", "fsdp1.yaml")
    with pytest.raises(ConfigError, match=r"fsdp1.yaml: fsdp_config.fsdp_version must be 2"):
        load_config(None, ["runtime.launcher=accelerate", f"runtime.accelerate_config={fsdp1}"])
    ddp = write(tmp_path, "distributed_type: MULTI_GPU\n", "ddp.yaml")
    load_config(None, ["runtime.launcher=accelerate", f"runtime.accelerate_config={ddp}", "model.lora.enabled=true",
                       "iteration.dpo.checkpoint_every=5"])


def test_early_stopping_needs_held_out_pairs(tmp_path):
    with pytest.raises(ConfigError, match=r"eval_every needs held-out pairs"):
        load_config(None, ["iteration.dpo.early_stopping.eval_every=2"])
    config = load_config(None, ["iteration.dpo.early_stopping.eval_every=2", "iteration.dpo.early_stopping.valid_fraction=0.1"])
    assert config.iteration.dpo.early_stopping.eval_every == 2
