"""Meta-judging: the template reads its choice back, corrupted judgments are wrong but well formed,
every pair of judgments is compared in both orders, and judge pairs are capped."""

import random

import pytest

from dpo import DPODataset
from judging import (
    CandidateJudgment,
    JudgedPrompt,
    JudgePair,
    MetaTemplate,
    TemplateError,
    build_preference_pairs,
    compare_judgments,
    corrupt_judgment,
    load_meta_template,
    load_template,
    meta_judge_examples,
)
from tests.judging.test_build import cand, verdict

RULES = load_template("configs/judges/demo_rules.yaml")
META = load_meta_template("configs/judges/demo_meta.yaml")
JUDGMENT = "length yes, start b b yes, end d c no, include e yes, norepeat - yes. Score: 4"


def test_templates_read_their_choice_back_and_bad_ones_are_refused():
    assert META.parse("Better: B") == "B" and META.parse("Better: A. Better: B") == "B" and META.parse("no") is None
    assert load_meta_template().parse("better: a") == "A"
    with pytest.raises(TemplateError, match="placeholders"):
        MetaTemplate("x", "{judge_prompt} only", r"Better: (A|B)")
    with pytest.raises(TemplateError, match="cannot read"):
        MetaTemplate("x", "{judge_prompt}{judgment_a}{judgment_b}", r"Winner: (A|B)")


def test_a_corrupted_judgment_flips_one_verdict_and_recounts_its_score():
    for seed in range(10):
        bad = corrupt_judgment(JUDGMENT, RULES, random.Random(seed))
        assert sum(a != b for a, b in zip(RULES.verdicts(bad), RULES.verdicts(JUDGMENT))) == 1
        assert RULES.points(bad) == int(bad.rsplit("Score: ", 1)[1]) != 4  # consistent, and wrong
    plain = corrupt_judgment("fine. Score: 3", load_template(), random.Random(0))
    assert plain.startswith("fine. Score: ") and plain != "fine. Score: 3"
    assert corrupt_judgment("no score here", RULES, random.Random(0)) is None


def test_meta_examples_name_the_reference():
    rows = [{"prompt": "Check. Instruction: x Response: b", "response": JUDGMENT}]
    examples = meta_judge_examples(rows, RULES, META, 6, seed=1)
    assert len(examples) == 6
    for example in examples:
        choice = META.parse(example["response"])
        assert f"{choice}: {JUDGMENT}" in example["prompt"]
        assert JUDGMENT in example["prompt"] and example["prompt"].count("Score:") == 2


def test_every_pair_is_compared_in_both_orders(tiny):
    from generation import SamplingParams

    items = [("judge this", ["j0", "j1", "j2"]), ("and this", ["k0", "k1"])]
    outcomes = compare_judgments(tiny.model, tiny.tokenizer, items, META, SamplingParams(max_new_tokens=3, seed=0))
    for outcome, (_, judgments) in zip(outcomes, items):
        assert sum(outcome.wins) == len(judgments) * (len(judgments) - 1)  # one win (or two halves) per comparison
        assert (outcome.best is None) == (max(outcome.wins) == min(outcome.wins))


def test_judge_pairs_follow_the_actor_pairs_and_are_capped(tmp_path):
    rows = [JudgedPrompt(f"p{i}", [1], [cand([10 + i]), cand([30 + i])], [verdict(5), verdict(1)]) for i in range(17)]
    judge = [JudgePair([2, 3], [7, 2], [8, 8, 2], {"i": i}) for i in range(10)]
    summary = build_preference_pairs(tmp_path / "pairs", rows, max_len=16, judge_pairs=judge, judge_share=0.15)
    assert summary.num_pairs == 17 and summary.judge_pairs == 3  # 3 / (17 + 3) = 15%
    data = DPODataset(tmp_path / "pairs")
    assert len(data) == 20 and data[17]["chosen"][:4].tolist() == [2, 3, 7, 2]
    assert summary.summary()["judge_pairs"] == 3


def test_anchored_rejection_pairs_the_best_candidate_with_the_worst_anchor(tmp_path):
    from judging import select_anchored

    choice = select_anchored([3, 3], [2, 2], [1, 4, 0.5], [5, 5, 6])
    assert (choice.chosen, choice.rejected, choice.anchored, choice.rejected_score) == (0, 2, True, 0.5)
    assert select_anchored([3, 3], [2, 2], [3, 4], [1, 1]) is None  # no anchor below the best candidate
    rows = [JudgedPrompt("tie", [1], [cand([10]), cand([11])], [verdict(3), verdict(3)],
                         [cand([12])], [CandidateJudgment(1.0, [1.0], [])])]
    summary = build_preference_pairs(tmp_path / "anchored", rows, max_len=8)
    assert summary.num_pairs == 1 and summary.stats.anchored == 1  # the candidates tie: only the anchor pairs
    assert DPODataset(tmp_path / "anchored")[0]["rejected"][:2].tolist() == [1, 12]
