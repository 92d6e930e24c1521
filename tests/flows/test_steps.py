"""The judge and pairs steps stream their inputs: chunked judging equals one-shot judging, pairs are
built from the two files read in lockstep, and the Python heap does not follow the number of prompts."""

import json
import tracemalloc
from pathlib import Path

import pytest
import torch

import judging
from flows import steps
from flows.stepdir import StepRecord
from generation import Completion
from pipeline.models import build_tiny_model, build_tokenizer
from tests.flows.conftest import tiny_config
from tests.flows.rewards import distinct_letters
from tests.judging.conftest import tiny_corpus

REWARD = "iteration.judge.reward_fn=tests.flows.rewards:distinct_letters"
WORDS = "the a cat dog sat ran on mat tree red big small why how what".split()


def write_candidates(folder: Path, num_prompts: int, num_candidates: int = 3, tokens: int = 6) -> StepRecord:
    """A candidates step folder like `sample_candidates` writes (texts made of WORDS, ids < 300)."""
    folder.mkdir(parents=True)
    with open(folder / "candidates.jsonl", "w", encoding="utf-8") as f:
        for i in range(num_prompts):
            cands = []
            for j in range(num_candidates):
                ids = [(7 * i + 3 * j + k) % 290 + 5 for k in range(tokens + j)]
                cands.append({"text": " ".join(WORDS[t % len(WORDS)] for t in ids), "token_ids": ids, "finished": True})
            row = {"prompt": f"prompt {i}: why the {WORDS[i % len(WORDS)]}", "prompt_ids": [1, 2 + i % 50, 3],
                   "candidates": cands}
            f.write(json.dumps(row) + "\n")
    return StepRecord(step="candidates", path=str(folder), fingerprint=f"cands-{num_prompts}")


def judged(record: StepRecord) -> list[dict]:
    return steps._read_jsonl(Path(record.path) / "judgments.jsonl")


def counts(summary: dict) -> dict:
    """A judge summary without its timings."""
    return {k: v for k, v in summary.items() if k not in ("seconds", "tokens_per_second")}


MODEL = StepRecord(step="base", path="unused-by-a-reward-fn", fingerprint="m")


def test_reward_fn_judging_is_chunked_in_order_and_equals_one_chunk(tmp_path, monkeypatch):
    candidates = write_candidates(tmp_path / "candidates", num_prompts=5)
    config = tiny_config(REWARD, "iteration.judge.sampling.batch_size=1")
    whole = steps.judge_candidates(config, 1, tmp_path / "whole", MODEL, candidates)

    calls = []

    def recording(prompts, responses):
        calls.append(sorted(set(prompts), key=prompts.index))
        return distinct_letters(prompts, responses)

    monkeypatch.setattr(steps, "JUDGE_CHUNK_PROMPTS", 2)
    monkeypatch.setattr(judging, "load_reward_fn", lambda spec: recording)
    chunked = steps.judge_candidates(config, 1, tmp_path / "chunked", MODEL, candidates)

    rows = steps._read_jsonl(Path(candidates.path) / "candidates.jsonl")
    assert calls == [[r["prompt"] for r in rows[i:i + 2]] for i in (0, 2, 4)]  # chunks of 2, in file order
    assert [[c["score"] for c in j["candidates"]] for j in judged(chunked)] == [
        distinct_letters([], [c["text"] for c in r["candidates"]]) for r in rows]  # every prompt once, in order
    assert (Path(chunked.path) / "judgments.jsonl").read_bytes() == (Path(whole.path) / "judgments.jsonl").read_bytes()
    assert counts(chunked.summary) == counts(whole.summary)  # stats summed over the chunks
    assert chunked.summary["candidates"] == chunked.summary["judgments"] == 15


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory) -> StepRecord:
    root = tmp_path_factory.mktemp("judge_model")
    tokenizer = build_tokenizer(tiny_corpus(), root / "tokenizer", vocab_size=512)
    path = build_tiny_model(tokenizer, root / "model", hidden_size=32, num_layers=2, num_heads=4,
                            intermediate_size=64, max_position_embeddings=1024, initializer_range=0.3)
    return StepRecord(step="base", path=str(path), fingerprint="tiny-judge")


def test_model_judging_in_chunks_equals_one_chunk_when_greedy(tmp_path, monkeypatch, judge_model):
    """Greedy judgments do not depend on the sampling seed or the batch: chunking must change nothing."""
    candidates = write_candidates(tmp_path / "candidates", num_prompts=3, num_candidates=2)
    config = tiny_config("iteration.judge.sampling.temperature=0", "iteration.judge.sampling.batch_size=1",
                         "iteration.judge.sampling.max_new_tokens=4", "iteration.judge.num_judgments=2",
                         "model.device=cpu", "model.dtype=float32")
    whole = steps.judge_candidates(config, 2, tmp_path / "whole", judge_model, candidates)  # 2: no reward_fn
    monkeypatch.setattr(steps, "JUDGE_CHUNK_PROMPTS", 2)
    chunked = steps.judge_candidates(config, 2, tmp_path / "chunked", judge_model, candidates)
    rows = judged(chunked)
    assert [len(r["candidates"]) for r in rows] == [2, 2, 2]
    assert all(len(c["scores"]) == len(c["judgments"]) == 2 for r in rows for c in r["candidates"])
    assert rows == judged(whole)
    assert counts(chunked.summary) == counts(whole.summary)
    assert chunked.summary["candidates"] == 6 and chunked.summary["judgments"] == 12


def test_pairs_step_reads_both_files_in_lockstep(tmp_path):
    candidates = write_candidates(tmp_path / "candidates", num_prompts=6)
    config = tiny_config(REWARD)
    judgments = steps.judge_candidates(config, 1, tmp_path / "run", MODEL, candidates)
    record = steps.build_pairs(config, 1, tmp_path / "run", candidates, judgments)

    # The same inputs as lists, through the library call: the same dataset.
    cand_rows = steps._read_jsonl(Path(candidates.path) / "candidates.jsonl")
    expected = judging.build_preference_pairs(
        tmp_path / "lists", [r["prompt"] for r in cand_rows], [r["prompt_ids"] for r in cand_rows],
        [[Completion(**c) for c in r["candidates"]] for r in cand_rows],
        [[judging.CandidateJudgment(**c) for c in r["candidates"]] for r in judged(judgments)],
        max_len=config.iteration_config(1).dpo.max_len, seed=steps._step_seed(config, 1, 5))
    assert record.summary["pairs"] == expected.num_pairs > 0
    for name in ("pairs.jsonl", "preference_seq.memmap.npy", "rewards.memmap.npy", "prompt_len.memmap.npy"):
        assert (Path(record.path) / name).read_bytes() == (expected.folder / name).read_bytes(), name


def test_pairs_step_names_both_files_when_their_row_counts_differ(tmp_path):
    candidates = write_candidates(tmp_path / "candidates", num_prompts=5)
    config = tiny_config(REWARD)
    judgments = steps.judge_candidates(config, 1, tmp_path / "run", MODEL, candidates)
    short = tmp_path / "short"
    short.mkdir()
    lines = (Path(judgments.path) / "judgments.jsonl").read_text().splitlines(keepends=True)
    (short / "judgments.jsonl").write_text("".join(lines[:3]))
    short_record = judgments.model_copy(update={"path": str(short), "fingerprint": "short"})
    with pytest.raises(ValueError, match=r"candidates\.jsonl has 5 rows but .*judgments\.jsonl has 3"):
        steps.build_pairs(config, 1, tmp_path / "run", candidates, short_record)
    assert not (tmp_path / "run" / "iter-1" / "pairs").exists()


def test_judge_and_pairs_heap_does_not_follow_the_number_of_prompts(tmp_path, monkeypatch):
    """Before streaming, both steps held every row: a Python heap ~5x the candidates file. Now a
    chunk of rows, a line, and the 1 MiB read buffer of the manifest's hashing."""
    monkeypatch.setattr(steps, "JUDGE_CHUNK_PROMPTS", 64)
    candidates = write_candidates(tmp_path / "candidates", num_prompts=3000, num_candidates=4, tokens=60)
    size = (Path(candidates.path) / "candidates.jsonl").stat().st_size
    config = tiny_config(REWARD, "iteration.judge.sampling.batch_size=1")
    peaks = {}
    tracemalloc.start()
    try:
        judgments = steps.judge_candidates(config, 1, tmp_path / "run", MODEL, candidates)
        peaks["judge"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        pairs = steps.build_pairs(config, 1, tmp_path / "run", candidates, judgments)
        peaks["pairs"] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert judgments.summary["candidates"] == 12_000 and pairs.summary["prompts"] == 3000
    assert size > 7_000_000 and max(peaks.values()) < size / 2, (size, peaks)


def test_runtime_torch_threads_is_applied_to_the_process():
    before = torch.get_num_threads()
    try:
        steps.set_torch_threads(tiny_config("runtime.torch_threads=1"))
        assert torch.get_num_threads() == 1
        steps.set_torch_threads(tiny_config())  # unset: torch's own choice stays
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
