"""The flow's steps wire config, seeds and records into the package steps: a judge step with a reward
function, and a pairs step whose output equals the package call with the named seed."""

from pathlib import Path

import judging
from flows import steps
from flows.stepdir import MANIFEST, Salt, StepRecord, step_seed
from generation import CANDIDATES_FILE
from tests.flows.conftest import tiny_config
from tests.judging.test_judgments import write_candidates

REWARD = "iteration.judge.reward_fn=tests.flows.rewards:distinct_letters"
MODEL = StepRecord(step="base", path="unused-by-a-reward-fn", fingerprint="m")


def candidates_record(tmp_path: Path, num_prompts: int) -> StepRecord:
    path = write_candidates(tmp_path / "candidates", num_prompts=num_prompts)
    return StepRecord(step="candidates", path=str(path.parent), fingerprint=f"cands-{num_prompts}")


def test_judge_and_pairs_steps_equal_the_package_calls_with_the_named_seed(tmp_path):
    config = tiny_config(REWARD)
    candidates = candidates_record(tmp_path, 6)
    unloaded = steps.inference_model(config, MODEL)  # a reward function never loads the model
    judgments = steps.judge_step(config, 1, tmp_path / "run", MODEL, candidates, unloaded)
    record = steps.pairs_step(config, 1, tmp_path / "run", candidates, judgments)
    assert judgments.summary["candidates"] == 18 and not unloaded.loaded

    expected = judging.build_preference_pairs(
        tmp_path / "direct",
        judging.read_judged_prompts(Path(candidates.path) / CANDIDATES_FILE, Path(judgments.path) / judging.JUDGMENTS_FILE),
        max_len=config.iteration_config(1).dpo.max_len, seed=step_seed(config.seed, 1, Salt.PAIRS))
    assert record.summary["pairs"] == expected.num_pairs > 0
    for name in ("pairs.jsonl", "preference_seq.memmap.npy", "rewards.memmap.npy", "prompt_len.memmap.npy"):
        assert (Path(record.path) / name).read_bytes() == (expected.folder / name).read_bytes(), name


def test_a_finished_step_is_read_back_not_recomputed(tmp_path, monkeypatch):
    config = tiny_config(REWARD)
    candidates = candidates_record(tmp_path, 3)
    unloaded = steps.inference_model(config, MODEL)
    first = steps.judge_step(config, 1, tmp_path / "run", MODEL, candidates, unloaded)
    stamp = (Path(first.path) / MANIFEST).stat().st_mtime_ns
    monkeypatch.setattr(judging, "judge_candidates", None)  # would fail if called
    again = steps.judge_step(config, 1, tmp_path / "run", MODEL, candidates, unloaded)
    assert again == first and (Path(first.path) / MANIFEST).stat().st_mtime_ns == stamp
