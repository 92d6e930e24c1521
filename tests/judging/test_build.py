"""build_preference_pairs: judged candidates -> selected pairs -> a DPODataset folder, with stats."""

import json

import pytest

from dpo.data import PAIRS_FILE, DPODataset
from generation import Completion, SamplingParams, encode_chat_prompt, generate
from judging import CandidateJudgment, JudgedPrompt, JudgeTemplate, build_preference_pairs, judge_responses

EOS = 2


def cand(ids, finished=True):
    return Completion(token_ids=list(ids) + ([EOS] if finished else []), text=" ".join(map(str, ids)), finished=finished)


def verdict(score):
    return CandidateJudgment(score=score, scores=[score], judgments=[f"Score: {score}"])


def build(folder, prompts, prompt_ids, candidates, judgments, **kwargs):
    """`build_preference_pairs` on the stream of judged prompts these per-prompt lists describe."""
    judged = [JudgedPrompt(*row) for row in zip(prompts, prompt_ids, candidates, judgments, strict=True)]
    return build_preference_pairs(folder, judged, **kwargs)


def test_pairs_written_and_skips_counted(tmp_path):
    prompts = ["p0", "p1", "p2", "p3"]
    prompt_ids = [[10, 11], [12], [13, 14, 15], [16]]
    candidates = [
        [cand([20, 21]), cand([22]), cand([23, 24, 25])],  # scores 3, 5, 1 -> chosen 1, rejected 2
        [cand([26]), cand([27])],                          # tie
        [cand([28]), cand([29, 30])],                      # one unscored -> too few
        [cand([31, 32]), cand([33])],                      # 2 vs 4.5 -> chosen 1
    ]
    judgments = [[verdict(3), verdict(5), verdict(1)], [verdict(2), verdict(2)], [verdict(4), verdict(None)],
                 [verdict(2), verdict(4.5)]]
    summary = build(tmp_path / "pairs", prompts, prompt_ids, candidates, judgments, max_len=32)
    assert summary.num_pairs == 2 and summary.stats.skipped == {"tie": 1, "too_few_scored": 1}
    assert summary.stats.prompts == 4 and summary.truncated == 0
    ds = DPODataset(tmp_path / "pairs")
    assert len(ds) == 2
    row = ds[0]
    assert row["chosen"][:4].tolist() == [10, 11, 22, EOS]
    assert row["rejected"][:6].tolist() == [10, 11, 23, 24, 25, EOS]
    assert int(row["prompt_len"]) == 2
    assert ds.rewards[:].tolist() == [[5.0, 1.0], [4.5, 2.0]]
    records = [json.loads(x) for x in (tmp_path / "pairs" / PAIRS_FILE).read_text().splitlines()]
    assert records[0]["prompt"] == "p0" and records[0]["chosen"] == "22" and records[0]["rejected"] == "23 24 25"
    assert records[0]["scores"] == [3, 5, 1] and records[0]["judgments"]["chosen"] == ["Score: 5"]
    assert records[1]["prompt"] == "p3"
    assert summary.stats.mean_chosen_length == pytest.approx((2 + 2) / 2)  # [22, EOS] and [33, EOS]


def test_writer_skips_are_counted_per_prompt(tmp_path):
    # Different scores but identical tokens (the judge was noisy): no preference signal.
    candidates = [[cand([5, 6]), cand([5, 6])], [cand([7]), cand([8])]]
    judgments = [[verdict(4), verdict(1)], [verdict(4), verdict(1)]]
    summary = build(tmp_path / "p", ["a", "b"], [[1], [1]], candidates, judgments, max_len=8)
    assert summary.num_pairs == 1 and summary.stats.skipped == {"identical": 1}
    assert summary.stats.pairs + summary.stats.num_skipped == summary.stats.prompts == 2


def test_length_control_and_require_finished(tmp_path):
    candidates = [[cand([1, 2, 3, 4]), cand([5]), cand([6, 7], finished=False), cand([8, 9, 10])]]
    judgments = [[verdict(5), verdict(5), verdict(0), verdict(1)]]
    s = build(tmp_path / "a", ["p"], [[1]], candidates, judgments, max_len=16,
                               strategy="length_control", rho=0.0)
    # Top tier (score 5): shortest is [5]; bottom tier (score 0): the unfinished [6, 7].
    assert DPODataset(tmp_path / "a")[0]["rejected"][:3].tolist() == [1, 6, 7]
    assert s.stats.mean_chosen_length == 2
    build(tmp_path / "b", ["p"], [[1]], candidates, judgments, max_len=16,
                           strategy="length_control", rho=0.0, require_finished=True)
    # Unfinished candidates are unscored: the bottom is now the 1.
    assert DPODataset(tmp_path / "b")[0]["rejected"][:5].tolist() == [1, 8, 9, 10, EOS]


def test_no_pairs_gives_an_empty_valid_folder(tmp_path):
    summary = build(tmp_path / "e", ["p"], [[1]], [[cand([2]), cand([3])]],
                                     [[verdict(None), verdict(None)]], max_len=8)
    assert summary.num_pairs == 0 and len(DPODataset(summary.folder)) == 0
    assert summary.as_dict()["pairs/skipped_too_few_scored"] == 1.0
    record = json.loads(json.dumps(summary.summary(), allow_nan=False))  # no NaN means when empty
    assert record["pairs"] == 0 and record["skipped"] == {"too_few_scored": 1} and record["mean_chosen_score"] is None


def test_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="2 candidates but 1 judgments"):
        build(tmp_path / "x", ["p"], [[1]], [[cand([2]), cand([3])]], [[verdict(1)]], max_len=8)

    def stream_that_fails():
        yield JudgedPrompt("p", [1], [cand([2]), cand([3])], [verdict(1), verdict(2)])
        raise ValueError("the second file ended early")

    with pytest.raises(ValueError, match="ended early"):
        build_preference_pairs(tmp_path / "x", stream_that_fails(), max_len=8)
    assert not (tmp_path / "x").exists()


def test_end_to_end_with_the_tiny_model(tiny, tmp_path):
    """Candidates sampled by the model, judged by the model, pairs written and read back for DPO."""
    judge = JudgeTemplate("digits", "Rate 0-9.\n{prompt}\n---\n{response}", r"([0-9])", 0, 9, score_example="{score}")
    prompts = ["write a list", "why the cat sat", "how big"]
    prompt_ids = [encode_chat_prompt(tiny.tokenizer, p) for p in prompts]
    candidates = generate(tiny.model, tiny.tokenizer, prompt_ids, SamplingParams(max_new_tokens=10, temperature=1.0),
                          num_samples=4)
    judgments = judge_responses(tiny.model, tiny.tokenizer, prompts, [[c.text for c in cs] for cs in candidates],
                                 template=judge, num_judgments=3,
                                 params=SamplingParams(max_new_tokens=10, temperature=1.0, seed=1))
    summary = build(tmp_path / "pairs", prompts, prompt_ids, candidates, judgments, max_len=64)
    ds = DPODataset(summary.folder, vocab_size=tiny.model.config.vocab_size)
    assert len(ds) == summary.num_pairs > 0 and summary.stats.prompts == 3
    records = [json.loads(x) for x in (summary.folder / PAIRS_FILE).read_text().splitlines()]
    for i, rec in enumerate(records):
        p = prompts.index(rec["prompt"])
        chosen = candidates[p][rec["chosen_index"]].token_ids
        assert ds[i]["chosen"][: len(prompt_ids[p]) + len(chosen)].tolist() == prompt_ids[p] + chosen
        assert rec["chosen_score"] > rec["rejected_score"]


def test_random_control_keeps_max_min_volume_and_is_seeded(tmp_path):
    """The `random` control writes a pair for exactly the prompts `max_min` does (distinct token
    sequences here, so no writer skips), and the seed alone decides which pairs."""
    scores = [[3, 5, 1, 4], [2, 2, 2, 2], [1, None, 4, 0], [5, 4, 3, 2], [0, 1, 0, 1]] * 4
    candidates = [[cand([10 + 4 * i + j]) for j in range(4)] for i in range(len(scores))]
    judgments = [[verdict(s) for s in row] for row in scores]
    prompts, prompt_ids = [f"p{i}" for i in range(len(scores))], [[1]] * len(scores)

    def run(name, strategy, seed=0):
        return build(tmp_path / name, prompts, prompt_ids, candidates, judgments, max_len=8, strategy=strategy,
                     seed=seed)

    ref, a, b, c = run("mm", "max_min"), run("a", "random", 1), run("b", "random", 1), run("c", "random", 2)
    assert a.num_pairs == ref.num_pairs == 16 and a.stats.skipped == ref.stats.skipped == {"tie": 4}

    def picks(summary):
        records = map(json.loads, (summary.folder / PAIRS_FILE).read_text().splitlines())
        return [(int(r["prompt"][1:]), r["chosen_index"], r["rejected_index"]) for r in records]

    assert picks(a) == picks(b) and picks(a) != picks(c)
    assert [p for p, _, _ in picks(a)] == [p for p, _, _ in picks(ref)]  # the same prompts
    # The judge's order is ignored: some "chosen" responses scored below their "rejected".
    assert any(scores[p][ch] < scores[p][rj] for p, ch, rj in picks(a))


def test_generators_are_consumed_in_lockstep_and_give_the_same_dataset(tmp_path):
    """One-shot generators work like lists, and are read one prompt at a time (never drained first)."""
    scores = [[3, 5, 1], [2, 2, 4], [None, 1, 0], [5, 4, 3], [1, 1, 1]]
    prompts, prompt_ids = [f"p{i}" for i in range(len(scores))], [[1, 2 + i] for i in range(len(scores))]
    candidates = [[cand([10 + 3 * i + j]) for j in range(3)] for i in range(len(scores))]
    judgments = [[verdict(s) for s in row] for row in scores]
    read = {"prompts": 0, "judgments": 0}

    def stream(name, items):
        for item in items:
            read[name] += 1
            # zip pulls the prompt of row i before its judgments: never more than one row apart.
            assert read["prompts"] - read["judgments"] <= 1, read
            yield item

    lists = build(tmp_path / "lists", prompts, prompt_ids, candidates, judgments, max_len=8)
    streamed = build(tmp_path / "gen", stream("prompts", prompts), iter(prompt_ids),
                                      (row for row in candidates), stream("judgments", judgments), max_len=8)
    assert read == {"prompts": 5, "judgments": 5}
    assert streamed.summary() | {"folder": None} == lists.summary() | {"folder": None}
    assert streamed.num_pairs == 4 and streamed.stats.skipped == {"tie": 1}
    for name in (PAIRS_FILE, "preference_seq.memmap.npy", "rewards.memmap.npy", "prompt_len.memmap.npy"):
        assert (tmp_path / "gen" / name).read_bytes() == (tmp_path / "lists" / name).read_bytes(), name
