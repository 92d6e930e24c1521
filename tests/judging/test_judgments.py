"""The judge step streams its files: chunked judging equals one-shot judging, pairs are built from the two
files read in lockstep, and the Python heap does not follow the number of prompts."""

import json
import tracemalloc
from pathlib import Path

import pytest

import judging
from generation import CANDIDATES_FILE, SamplingParams, iter_jsonl
from judging import (
    JUDGMENTS_FILE,
    build_preference_pairs,
    judge_candidates,
    load_template,
    model_judge,
    read_judged_prompts,
    reward_judge,
)
from judging.judgments import chunk_seed
from tests.flows.rewards import distinct_letters

WORDS = "the a cat dog sat ran on mat tree red big small why how what".split()


def write_candidates(folder: Path, num_prompts: int, num_candidates: int = 3, tokens: int = 6) -> Path:
    """A candidates file as `generation.sample_candidates` writes it (texts made of WORDS, ids < 300)."""
    folder.mkdir(parents=True)
    with open(folder / CANDIDATES_FILE, "w", encoding="utf-8") as f:
        for i in range(num_prompts):
            cands = []
            for j in range(num_candidates):
                ids = [(7 * i + 3 * j + k) % 290 + 5 for k in range(tokens + j)]
                cands.append({"text": " ".join(WORDS[t % len(WORDS)] for t in ids), "token_ids": ids, "finished": True})
            row = {"prompt": f"prompt {i}: why the {WORDS[i % len(WORDS)]}", "prompt_ids": [1, 2 + i % 50, 3],
                   "candidates": cands}
            f.write(json.dumps(row) + "\n")
    return folder / CANDIDATES_FILE


def rows(folder: Path) -> list[dict]:
    return list(iter_jsonl(folder / JUDGMENTS_FILE))


def counts(stats: judging.JudgingStats) -> dict:
    """A judge summary without its timings."""
    return {k: v for k, v in stats.summary().items() if k not in ("seconds", "tokens_per_second")}


def test_reward_judging_is_chunked_in_order_and_equals_one_chunk(tmp_path):
    candidates = write_candidates(tmp_path / "candidates", num_prompts=5)
    whole = judge_candidates(reward_judge(distinct_letters), candidates, tmp_path / "whole")
    calls = []

    def recording(prompts, responses):
        calls.append(sorted(set(prompts), key=prompts.index))
        return distinct_letters(prompts, responses)

    chunked = judge_candidates(reward_judge(recording), candidates, tmp_path / "chunked", chunk_prompts=2)
    source = list(iter_jsonl(candidates))
    assert calls == [[r["prompt"] for r in source[i:i + 2]] for i in (0, 2, 4)]  # chunks of 2, in file order
    assert [[c["score"] for c in j["candidates"]] for j in rows(tmp_path / "chunked")] == [
        distinct_letters([], [c["text"] for c in r["candidates"]]) for r in source]  # every prompt once, in order
    assert (tmp_path / "chunked" / JUDGMENTS_FILE).read_bytes() == (tmp_path / "whole" / JUDGMENTS_FILE).read_bytes()
    assert counts(chunked) == counts(whole)  # stats summed over the chunks
    assert chunked.candidates == chunked.judgments == 15


def test_model_judging_in_chunks_equals_one_chunk_when_greedy(tmp_path, tiny):
    """Greedy judgments do not depend on the sampling seed or the batch: chunking must change nothing."""
    candidates = write_candidates(tmp_path / "candidates", num_prompts=3, num_candidates=2)
    judge = model_judge(tiny.model, tiny.tokenizer, load_template(), 2,
                        SamplingParams(max_new_tokens=4, temperature=0.0, batch_size=1))
    whole = judge_candidates(judge, candidates, tmp_path / "whole")
    chunked = judge_candidates(judge, candidates, tmp_path / "chunked", chunk_prompts=2)
    judged = rows(tmp_path / "chunked")
    assert [len(r["candidates"]) for r in judged] == [2, 2, 2]
    assert all(len(c["scores"]) == len(c["judgments"]) == 2 for r in judged for c in r["candidates"])
    assert judged == rows(tmp_path / "whole")
    assert counts(chunked) == counts(whole)
    assert chunked.candidates == 6 and chunked.judgments == 12


def test_later_chunks_sample_with_their_own_seeds():
    assert chunk_seed(7, 0) == 7  # one chunk: exactly the step's seed
    assert len({chunk_seed(7, c) for c in range(5)}) == 5 and chunk_seed(7, 3) == chunk_seed(7, 3)


def test_pairs_from_the_two_files_in_lockstep_equal_pairs_from_lists(tmp_path):
    candidates = write_candidates(tmp_path / "candidates", num_prompts=6)
    judge_candidates(reward_judge(distinct_letters), candidates, tmp_path / "judged")
    judged = list(read_judged_prompts(candidates, tmp_path / "judged" / JUDGMENTS_FILE))
    assert [j.prompt for j in judged] == [r["prompt"] for r in iter_jsonl(candidates)]
    streamed = build_preference_pairs(tmp_path / "streamed", read_judged_prompts(
        candidates, tmp_path / "judged" / JUDGMENTS_FILE), max_len=64, seed=5)
    listed = build_preference_pairs(tmp_path / "listed", judged, max_len=64, seed=5)
    assert streamed.num_pairs == listed.num_pairs > 0
    for name in ("pairs.jsonl", "preference_seq.memmap.npy", "rewards.memmap.npy", "prompt_len.memmap.npy"):
        assert (streamed.folder / name).read_bytes() == (listed.folder / name).read_bytes(), name


@pytest.mark.parametrize("short", ["candidates", "judgments"])
def test_files_of_different_lengths_name_both_and_publish_nothing(tmp_path, short):
    candidates = write_candidates(tmp_path / "candidates", num_prompts=5)
    judge_candidates(reward_judge(distinct_letters), candidates, tmp_path / "judged")
    judgments = tmp_path / "judged" / JUDGMENTS_FILE
    cut = {"candidates": candidates, "judgments": judgments}[short]
    cut.write_text("".join(cut.read_text().splitlines(keepends=True)[:3]))
    expected = "has 3 rows but .* has 5" if short == "candidates" else "has 5 rows but .* has 3"
    with pytest.raises(ValueError, match=rf"candidates\.jsonl {expected}"):
        build_preference_pairs(tmp_path / "pairs" / "x", read_judged_prompts(candidates, judgments), max_len=64)
    assert not (tmp_path / "pairs").exists() or list((tmp_path / "pairs").iterdir()) == []  # no temp folder left


def test_judge_and_pairs_heap_does_not_follow_the_number_of_prompts(tmp_path):
    """Before streaming, both steps held every row: a Python heap ~5x the candidates file. Now a
    chunk of rows and a line."""
    candidates = write_candidates(tmp_path / "candidates", num_prompts=3000, num_candidates=4, tokens=60)
    size = candidates.stat().st_size
    peaks = {}
    tracemalloc.start()
    try:
        stats = judge_candidates(reward_judge(distinct_letters), candidates, tmp_path / "judged", chunk_prompts=64)
        peaks["judge"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        pairs = build_preference_pairs(tmp_path / "pairs", read_judged_prompts(
            candidates, tmp_path / "judged" / JUDGMENTS_FILE), max_len=96)
        peaks["pairs"] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.candidates == 12_000 and pairs.stats.prompts == 3000
    assert size > 7_000_000 and max(peaks.values()) < size / 2, (size, peaks)
