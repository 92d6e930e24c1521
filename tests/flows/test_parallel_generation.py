"""Data-parallel generation steps: 2 `accelerate launch` CPU ranks (gloo) write the same candidates and
judgments as 1 process, byte for byte, and each rank decodes its own share. (Evaluation and the other
generation steps go through the same `data_parallel` wrapper; each launch costs ~20 s here, so this
test launches two steps.)"""

import re
from pathlib import Path

import pytest
import torch

from flows import launch, steps
from flows.stepdir import StepRecord
from pipeline.models import set_torch_threads
from pipeline.runlock import run_lock
from tests.flows.conftest import tiny_config

pytestmark = pytest.mark.slow

# Small batches, so every step's calls hold several buckets to share out; iteration 2 judges with the
# model (the tiny config gives iteration 1 an external reward).
# One torch thread in every process: torch's CPU kernels may round differently with another thread
# count (bench_parallel.py saw 1 vs 2 threads change a few of 6,144 sampled judgments).
SETTINGS = ["runtime.parallel_generation=true", "runtime.launcher=accelerate", "runtime.torch_threads=1",
            "iteration.candidates.sampling.batch_size=6", "iteration.judge.sampling.batch_size=4"]
ITERATION = 2


def generation_steps(processes: int, run_dir: Path, model: StepRecord, data: StepRecord) -> dict[str, StepRecord]:
    """Prompts (drawn from the pool: no model, no launch), candidates and judgments, under
    the run lock as in a flow (launched ranks publish only while their run holds it)."""
    config = tiny_config(*SETTINGS, f"runtime.num_processes={processes}")
    m_t = steps.inference_model(config, model)
    with run_lock(run_dir):
        prompts = launch.data_parallel(steps.prompts_step)(config, ITERATION, run_dir, model, data, m_t)
        candidates = launch.data_parallel(steps.candidates_step)(config, ITERATION, run_dir, model, prompts, m_t)
        judgments = launch.data_parallel(steps.judge_step)(config, ITERATION, run_dir, model, candidates, m_t)
    return {"prompts": prompts, "candidates": candidates, "judgments": judgments}


def untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if "second" not in k}


@pytest.fixture
def flow_threads():
    """This process's torch threads as the flow sets them from `runtime.torch_threads` (restored after)."""
    before = torch.get_num_threads()
    set_torch_threads(tiny_config(*SETTINGS).runtime.torch_threads)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("flow_threads")
def test_two_processes_write_what_one_process_writes(tmp_path, capfd):
    config = tiny_config(*SETTINGS)
    data = steps.data_step(config, tmp_path / "shared")
    model = steps.base_model_step(config, tmp_path / "shared", data)

    one = generation_steps(1, tmp_path / "one", model, data)
    assert not re.search(r"flows\.launch: rank", capfd.readouterr().err)  # one process: nothing launched
    two = generation_steps(2, tmp_path / "two", model, data)
    reports = re.findall(r"flows\.launch: rank (\d)/2 (\w+) loaded: decoded (\d+) of (\d+) prompts",
                         capfd.readouterr().err)

    for name in one:  # `files` holds the sha256 of every output file of the step
        assert one[name].files and one[name].files == two[name].files, name
        assert untimed(one[name].summary) == untimed(two[name].summary), name
    assert one["prompts"].summary["prompts"] == 6 and one["candidates"].summary["sequences"] == 18 and \
        one["judgments"].summary["candidates"] == 18

    # Both ranks decoded a part of every launched step, and together all of it.
    shares: dict[str, dict[int, tuple[int, int]]] = {}
    for rank, step, decoded, seen in reports:
        shares.setdefault(step, {})[int(rank)] = (int(decoded), int(seen))
    assert set(shares) == {"candidates_step", "judge_step"}
    for step, by_rank in shares.items():
        assert set(by_rank) == {0, 1} and all(decoded > 0 for decoded, _ in by_rank.values()), step
        assert by_rank[0][1] == by_rank[1][1] == by_rank[0][0] + by_rank[1][0], step
