"""The demo task: checker, constructive responses, judge format, seed data and metrics."""

import itertools
import json
import math
import random
import re
from collections import Counter

import pytest
import yaml

from pipeline import demo_task as dt
from pipeline.demo_task import (
    DEMO_JUDGE_TEMPLATE,
    RULES,
    CorruptionError,
    DemoDataError,
    InstructionParseError,
    TaskSpec,
    TaskSpecError,
    check,
    corrupt_response,
    evaluate_responses,
    good_response,
    judgment_text,
    make_task,
    pairwise_judge_accuracy,
    parse_instruction,
    render_judge_prompt,
    write_judge_template_yaml,
    write_seed_data,
)

SPEC = TaskSpec(length=6, start="b", end="d", include="e")
SCORE_RE = re.compile(DEMO_JUDGE_TEMPLATE["score_pattern"])


def random_specs(count: int, seed: int = 0) -> list[TaskSpec]:
    rng = random.Random(seed)
    return [make_task(rng) for _ in range(count)]


def brute_force_rules(spec: TaskSpec, items: list[str]) -> dict[str, bool]:
    """Rules restated independently of the module, for sequences of alphabet letters."""
    repeats = [i for i in range(1, len(items)) if items[i] == items[i - 1]]
    return {
        "length": len(items) == spec.length,
        "start": items[:1] == [spec.start],
        "end": items[-1:] == [spec.end],
        "include": items.count(spec.include) > 0,
        "norepeat": len(items) > 0 and not repeats,
    }


# ---- checker ----


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        ("b a e c a d", set()),
        ("b a e c d", {"length"}),
        ("b a e c a g d", {"length"}),
        ("b a e z a d", {"length"}),  # z is outside a..h: not six letters of the alphabet
        ("b a e cc a d", {"length"}),
        ("c a e c a d", {"start"}),
        ("b a e c a b", {"end"}),
        ("b a f c a d", {"include"}),
        ("b a e e a d", {"norepeat"}),
        ("b d", {"length", "include"}),
        ("  b\ta e\nc a d  ", set()),  # any whitespace separates letters
    ],
)
def test_check_hand_cases(response: str, failed: set[str]) -> None:
    result = check(SPEC, response)
    assert {rule for rule, met in result.rules.items() if not met} == failed
    assert list(result.rules) == list(RULES)
    assert result.points == len(RULES) - len(failed)
    assert result.max_points == 5
    assert result.score == pytest.approx(result.points / 5)


def test_check_takes_instruction_text() -> None:
    assert check(SPEC.instruction(), "b a e c a d") == check(SPEC, "b a e c a d")
    assert check(SPEC.instruction(), "b a e e a b").points == 3


@pytest.mark.parametrize(
    "response",
    ["", "   ", "\n\n", None, 123, b"b a e", ["b"], "b" * 5000, "Score: 5", "{}{response}", "ñ ü 🙂"],
)
def test_check_never_raises_on_garbage(response: object) -> None:
    result = check(SPEC, response)
    assert 0 <= result.points <= result.max_points
    assert 0.0 <= result.score <= 1.0
    judgment = judgment_text(SPEC, response)
    assert judgment.endswith(f"Score: {result.points}")


def test_empty_response_earns_nothing() -> None:
    assert check(SPEC, "").points == 0
    assert check(SPEC, None).points == 0


def test_check_rejects_non_instructions() -> None:
    with pytest.raises(InstructionParseError, match="not a demo-task instruction"):
        check("Write a poem about cats.", "b a e c a d")
    assert issubclass(InstructionParseError, ValueError)


# ---- task specs and instructions ----


def test_instruction_round_trip_for_every_task() -> None:
    tasks = dt.all_tasks()
    assert len(tasks) == len(set(tasks)) == 5 * (8 * 7 * 6 + 8 * 7)
    for spec in tasks:
        assert parse_instruction(spec.instruction()) == spec
    other = TaskSpec(5, "a", "c", "b", alphabet="abcdef")
    assert "from a to f" in other.instruction()
    assert parse_instruction(other.instruction()) == other


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Write 6 letters from a to h.",
        SPEC.instruction().replace("include e", "include b"),  # include equals start
        SPEC.instruction().replace("end with d", "end with z"),  # z is outside a..h
    ],
)
def test_parse_instruction_rejects_bad_text(text: str) -> None:
    with pytest.raises(InstructionParseError):
        parse_instruction(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length": 2},
        {"start": "z"},
        {"include": "b"},
        {"include": "d"},
        {"alphabet": "xyz"},
        {"start": "bb"},
    ],
)
def test_task_spec_validates(kwargs: dict) -> None:
    fields = {"length": 6, "start": "b", "end": "d", "include": "e", **kwargs}
    with pytest.raises(TaskSpecError):
        TaskSpec(**fields)


def test_make_task_is_deterministic_and_varied() -> None:
    assert random_specs(50, seed=3) == random_specs(50, seed=3)
    specs = random_specs(300, seed=3)
    assert {s.length for s in specs} == set(range(dt.MIN_LENGTH, dt.MAX_LENGTH + 1))
    assert len({(s.start, s.end, s.include) for s in specs}) > 150
    assert all(s.include not in (s.start, s.end) for s in specs)


# ---- constructive responses ----


def test_good_response_meets_every_rule() -> None:
    rng = random.Random(7)
    for spec in random_specs(200, seed=1):
        response = good_response(spec, rng)
        assert check(spec, response).score == 1.0
        assert brute_force_rules(spec, response.split()) == dict.fromkeys(RULES, True)


@pytest.mark.parametrize("num_broken", range(6))
def test_corrupt_response_loses_exactly_k_points(num_broken: int) -> None:
    rng = random.Random(num_broken)
    broken_rules: Counter[str] = Counter()
    for spec in random_specs(100, seed=10 + num_broken):
        response = corrupt_response(spec, rng, num_broken)
        rules = check(spec, response).rules
        assert sum(rules.values()) == 5 - num_broken
        # the module's checker agrees with an independent restatement on these letter sequences
        assert rules == brute_force_rules(spec, response.split())
        broken_rules.update(rule for rule, met in rules.items() if not met)
    if 0 < num_broken < 5:
        assert set(broken_rules) == set(RULES)  # every rule gets broken, not one favourite


@pytest.mark.parametrize("num_broken", [-1, 6])
def test_corrupt_response_rejects_impossible_counts(num_broken: int) -> None:
    with pytest.raises(CorruptionError, match="num_broken"):
        corrupt_response(SPEC, random.Random(0), num_broken)


def test_good_response_is_uniform_over_all_solutions() -> None:
    spec = TaskSpec(4, "a", "b", "c", alphabet="abcd")
    solutions = {
        " ".join(seq)
        for seq in itertools.product("abcd", repeat=4)
        if all(brute_force_rules(spec, list(seq)).values())
    }
    rng = random.Random(0)
    draws = Counter(good_response(spec, rng) for _ in range(3000))
    assert set(draws) == solutions
    expected = 3000 / len(solutions)
    assert all(abs(count - expected) < 0.35 * expected for count in draws.values())


# ---- judge format ----


def test_judgment_text_quotes_and_scores() -> None:
    assert judgment_text(SPEC, "b a e c a d") == (
        "length yes, start b b yes, end d d yes, include e yes, norepeat - yes. Score: 5"
    )
    assert judgment_text(SPEC, "c e e d") == (
        "length no, start b c no, end d d yes, include e yes, norepeat e no. Score: 2"
    )
    assert (
        judgment_text(SPEC, "")
        == "length no, start b - no, end d - no, include e no, norepeat - no. Score: 0"
    )


def test_judgment_text_ends_with_the_checker_score() -> None:
    rng = random.Random(5)
    for spec in random_specs(60, seed=5):
        for num_broken in range(6):
            response = corrupt_response(spec, rng, num_broken)
            judgment = judgment_text(spec.instruction(), response)
            assert judgment.endswith(f"Score: {5 - num_broken}")
            assert float(SCORE_RE.findall(judgment)[-1]) == 5 - num_broken
            assert len(judgment.split()) <= 25  # ~30 BPE tokens: well under 40 new tokens


def test_judge_template_renders_and_writes_yaml(tmp_path) -> None:
    template = DEMO_JUDGE_TEMPLATE["template"]
    assert template.format(prompt="P", response="R") == render_judge_prompt("P", "R")
    assert render_judge_prompt("P", "{x} {prompt}").endswith("Response: {x} {prompt}")
    assert re.compile(DEMO_JUDGE_TEMPLATE["score_pattern"]).groups == 1

    path = write_judge_template_yaml(tmp_path / "judges" / "demo_rules.yaml")
    assert yaml.safe_load(path.read_text()) == DEMO_JUDGE_TEMPLATE
    assert [p.name for p in path.parent.iterdir()] == ["demo_rules.yaml"]


# ---- seed data ----


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def embedded_instruction(judge_prompt: str) -> str:
    return re.search(r"Instruction: (.*)\n", judge_prompt).group(1)


def embedded_response(judge_prompt: str) -> str:
    return judge_prompt.split("Response: ", 1)[1]


def test_write_seed_data_files(tmp_path) -> None:
    paths = write_seed_data(tmp_path, seed=3, num_ift=120, num_eft=120, num_seed_prompts=50, num_eval=40)
    ift, eft = read_jsonl(paths["ift"]), read_jsonl(paths["eft"])
    seeds, evals = read_jsonl(paths["seed_prompts"]), read_jsonl(paths["eval"])
    assert (len(ift), len(eft), len(seeds), len(evals)) == (120, 120, 50, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no temp files

    assert all(check(r["prompt"], r["response"]).score == 1.0 for r in ift)
    eft_scores = Counter()
    for record in eft:
        instruction, response = embedded_instruction(record["prompt"]), embedded_response(record["prompt"])
        assert record["prompt"] == render_judge_prompt(instruction, response)
        assert record["response"] == judgment_text(instruction, response)
        eft_scores[check(instruction, response).points] += 1
    assert eft_scores == dict.fromkeys(range(6), 20)  # balanced across judge scores

    eval_set = {r["prompt"] for r in evals}
    seed_set = {r["prompt"] for r in seeds}
    train_set = {r["prompt"] for r in ift} | {embedded_instruction(r["prompt"]) for r in eft}
    assert len(eval_set) == 40 and len(seed_set) == 50
    assert not eval_set & (train_set | seed_set)
    assert not seed_set & train_set

    corpus = paths["tokenizer_corpus"].read_text()
    assert all(r["response"] in corpus and r["prompt"] in corpus for r in ift + eft)


def test_write_seed_data_is_deterministic(tmp_path) -> None:
    sizes = {"num_ift": 30, "num_eft": 30, "num_seed_prompts": 20, "num_eval": 10}
    first = write_seed_data(tmp_path / "a", seed=1, **sizes)
    second = write_seed_data(tmp_path / "b", seed=1, **sizes)
    other = write_seed_data(tmp_path / "c", seed=2, **sizes)
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes()
    assert first["eval"].read_bytes() != other["eval"].read_bytes()


def test_eval_is_fixed_by_seed_not_by_training_sizes(tmp_path) -> None:
    small = write_seed_data(tmp_path / "a", seed=4, num_ift=10, num_eft=10, num_seed_prompts=20, num_eval=25)
    large = write_seed_data(tmp_path / "b", seed=4, num_ift=90, num_eft=60, num_seed_prompts=20, num_eval=25)
    assert small["eval"].read_bytes() == large["eval"].read_bytes()


def test_write_seed_data_rejects_impossible_sizes(tmp_path) -> None:
    with pytest.raises(DemoDataError, match="num_eval"):
        write_seed_data(tmp_path, num_eval=1000, num_seed_prompts=1000)
    assert not (tmp_path / "ift.jsonl").exists()


# ---- metrics ----


def test_evaluate_responses_matches_hand_computation() -> None:
    prompts = [SPEC.instruction()] * 4
    responses = ["b a e c a d", "b a e e a d", "", "b a f c a b"]  # 5, 4, 0 and 3 points
    metrics = evaluate_responses(prompts, responses)
    assert metrics["gt_score"] == pytest.approx((5 + 4 + 0 + 3) / 20)
    assert metrics["gt_success"] == pytest.approx(0.25)
    assert metrics["mean_response_length"] == pytest.approx((11 + 11 + 0 + 11) / 4)
    assert metrics["gt_rule_norepeat"] == pytest.approx(0.5)
    assert metrics["gt_rule_include"] == pytest.approx(0.5)
    assert metrics["num_responses"] == 4
    assert math.isnan(evaluate_responses([], [])["gt_score"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        evaluate_responses(prompts[:2], responses[:1])


def test_pairwise_judge_accuracy_hand_cases() -> None:
    # pair 1 right, pair 2 wrong, pair 3 a judge tie (half), pair 4 a checker tie (left out),
    # pair 5 a missing judge score (half)
    accuracy = pairwise_judge_accuracy(
        [1.0, 0.2, 0.8, 0.4, 0.6], [0.4, 0.6, 0.2, 0.4, 0.2], [5, 4, 3, 2, None], [2, 1, 3, 1, 2]
    )
    assert accuracy == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert math.isnan(pairwise_judge_accuracy([0.2], [0.2], [1], [3]))
    with pytest.raises(ValueError, match="differ in length"):
        pairwise_judge_accuracy([1.0], [0.0, 1.0], [1], [2])


def test_pairwise_judge_accuracy_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 30)
        gt_a, gt_b = ([rng.randint(0, 5) / 5 for _ in range(n)] for _ in range(2))
        judge_a, judge_b = ([rng.choice([None, 0, 1, 2, 3, 4, 5]) for _ in range(n)] for _ in range(2))
        # Kendall-style: concordance s = sign(gt diff) * sign(judge diff) in {-1, 0, 1}, credit (1 + s) / 2
        sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
        credits = [
            (
                1
                + sign(gt_a[i] - gt_b[i])
                * (0 if None in (judge_a[i], judge_b[i]) else sign(judge_a[i] - judge_b[i]))
            )
            / 2
            for i in range(n)
            if gt_a[i] != gt_b[i]
        ]
        got = pairwise_judge_accuracy(gt_a, gt_b, judge_a, judge_b)
        if credits:
            assert got == pytest.approx(sum(credits) / len(credits))
        else:
            assert math.isnan(got)
