"""The `accelerate launch` command line of a training step, built from `runtime` (no launch here: the
2-process launch itself runs in test_launch.py)."""

import sys

import pytest

from flows.launch import launch_command
from pipeline.config import load_config

FSDP = "accelerate/fsdp.yaml"  # relative to configs/, where the embedded run config lives


def command(*overrides: str, machine_rank: int = 0) -> list[str]:
    config = load_config(None, ["runtime.launcher=accelerate", *overrides])
    # machine_rank > 0 is set by `selfreward join` on the other machines, never in a run config.
    config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"machine_rank": machine_rank})})
    cmd = launch_command(config, "/tmp/spec.json")
    assert cmd[:3] == [sys.executable, "-m", "pipeline.agent"]  # `accelerate launch` binding loopback
    assert cmd[-3:] == ["-m", "flows.launch", "/tmp/spec.json"]
    return cmd[3:-3]


def options(cmd: list[str]) -> dict[str, str | None]:
    """`--flag value` pairs (None for a bare flag)."""
    out, i = {}, 0
    while i < len(cmd):
        takes_value = i + 1 < len(cmd) and not cmd[i + 1].startswith("--")
        out[cmd[i]] = cmd[i + 1] if takes_value else None
        i += 2 if takes_value else 1
    return out


def test_one_cpu_process():
    assert options(command("model.device=cpu")) == {
        "--num_processes": "1", "--num_machines": "1", "--dynamo_backend": "no", "--cpu": None}


def test_several_processes_on_one_machine_rendezvous_on_loopback():
    opts = options(command("runtime.num_processes=2"))
    assert opts["--multi_gpu"] is None and opts["--num_processes"] == "2" and opts["--num_machines"] == "1"
    assert opts["--main_process_ip"] == "127.0.0.1" and 0 < int(opts["--main_process_port"]) < 65536
    assert "--machine_rank" not in opts and "--config_file" not in opts
    assert options(command("runtime.num_processes=2", "runtime.main_process_port=29611"))["--main_process_port"] == "29611"


def test_an_accelerate_config_file_chooses_the_distributed_type():
    opts = options(command(f"runtime.accelerate_config={FSDP}", "runtime.num_processes=8"))
    assert opts["--config_file"].endswith("configs/accelerate/fsdp.yaml")
    # --multi_gpu or --cpu would replace the file's distributed type (FSDP would silently become DDP)
    assert not {"--multi_gpu", "--cpu", "--dynamo_backend"} & opts.keys()
    assert opts["--num_processes"] == "8" and opts["--num_machines"] == "1"  # runtime wins over the file


@pytest.mark.parametrize("rank", [0, 1])
def test_multi_machine_settings(rank):
    opts = options(command("runtime.num_processes=16", "runtime.num_machines=2", "runtime.main_process_ip=10.1.2.3",
                           f"runtime.accelerate_config={FSDP}", machine_rank=rank))
    assert opts["--num_processes"] == "16" and opts["--num_machines"] == "2" and opts["--machine_rank"] == str(rank)
    assert opts["--main_process_ip"] == "10.1.2.3" and opts["--main_process_port"] == "29500"  # same on every machine
    custom = options(command("runtime.num_processes=4", "runtime.num_machines=2", "runtime.main_process_ip=h0",
                             "runtime.main_process_port=31000"))
    assert custom["--main_process_port"] == "31000" and custom["--multi_gpu"] is None
