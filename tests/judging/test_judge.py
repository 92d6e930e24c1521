"""judge_responses on a real tiny Llama, and the averaging / parse-failure accounting by hand."""

import json

import pytest

import judging.judge
from generation import SamplingParams, common_prefix_len, encode_chat_prompt, generate
from judging import (
    CandidateJudgment,
    JudgeError,
    JudgeTemplate,
    JudgingStats,
    aggregate_judgments,
    judge_responses,
    load_template,
    parse_score,
)

DEFAULT = load_template()
# A "digit judge": any digit in the judgment is a score, so a random model's output parses sometimes.
DIGITS = JudgeTemplate("digits", "Rate 0-9.\n{prompt}\n---\n{response}", r"([0-9])", 0, 9, score_example="{score}")
PROMPTS = ["write a list", "why the cat sat"]
CANDIDATES = [["the red cat", "a dog ran on the mat", "what"], ["2 3 4 big tree"]]


# ---------------------------------------------------------------- pure aggregation


def test_mean_over_parsed_judgments_only():
    texts = ["Good answer. Score: 4", "I cannot decide.", "**Score:** 5", "Score: 9", "Score: 3.5"]
    j = aggregate_judgments(texts, DEFAULT)
    assert j.scores == [4.0, None, 5.0, None, 3.5]  # 9 is out of range: a failure, not clipped to 5
    assert j.score == pytest.approx((4 + 5 + 3.5) / 3)
    assert j.judgments == texts


@pytest.mark.parametrize("texts", [[], ["nothing"], ["Score: 6", "Score: -1", "meh"]])
def test_no_parsed_judgment_gives_none(texts):
    assert aggregate_judgments(texts, DEFAULT).score is None


def test_stats_count_failures_and_histogram():
    stats = JudgingStats()
    for texts in (["Score: 4", "x", "Score: 2.5"], ["Score: 3.5", "Score: 0"], ["bad", "worse"]):
        stats.record(aggregate_judgments(texts, DEFAULT))
    assert (stats.candidates, stats.judgments, stats.parse_failures, stats.unscored_candidates) == (3, 7, 3, 1)
    assert stats.parse_failure_rate == pytest.approx(3 / 7)
    # Rounded half up: 2.5 -> 3, 3.5 -> 4.
    assert stats.score_histogram == {4: 2, 3: 1, 0: 1}
    metrics = stats.as_dict()
    assert metrics["judge/score_4"] == 2.0 and metrics["judge/parse_failure_rate"] == pytest.approx(3 / 7)
    summary = stats.summary()
    assert summary["score_histogram"] == {"0": 1, "3": 1, "4": 2} and summary["parse_failures"] == 3
    json.dumps(summary)  # JSON-friendly for step records


# ---------------------------------------------------------------- real tiny model


@pytest.fixture
def generate_calls(monkeypatch):
    """Record the calls judge_responses makes to the real generation.generate."""
    calls = []

    def recording_generate(*args, **kwargs):
        calls.append((args, kwargs))
        return generate(*args, **kwargs)

    monkeypatch.setattr(judging.judge, "generate", recording_generate)
    return calls


def test_judges_every_candidate_k_times_in_one_generate_call(tiny, generate_calls):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, batch_size=8, seed=3)
    stats = JudgingStats()
    out = judge_responses(tiny.model, tiny.tokenizer, PROMPTS, CANDIDATES, template=DIGITS,
                           num_judgments=3, params=params, stats=stats)
    assert [len(row) for row in out] == [3, 1]
    assert len(generate_calls) == 1
    args, kwargs = generate_calls[0]
    assert kwargs["num_samples"] == 3 and len(args[2]) == 4  # all 4 candidates of both prompts at once
    # Each judge prompt is the rendered template in the model's chat format.
    expected_prompts = [encode_chat_prompt(tiny.tokenizer, DIGITS.render(p, c)) for p, cs in zip(PROMPTS, CANDIDATES) for c in cs]
    assert args[2] == expected_prompts
    parsed = failures = 0
    for row in out:
        for j in row:
            assert len(j.judgments) == 3 and len(j.scores) == 3
            assert j.scores == [parse_score(t, DIGITS) for t in j.judgments]
            ok = [s for s in j.scores if s is not None]
            assert j.score == (pytest.approx(sum(ok) / len(ok)) if ok else None)
            parsed += len(ok)
            failures += 3 - len(ok)
    assert parsed > 0 and failures > 0  # with this seed the random judge exercises both paths
    assert (stats.candidates, stats.judgments, stats.parse_failures) == (4, 12, failures)
    assert sum(stats.score_histogram.values()) == parsed
    assert 0 < stats.new_tokens <= 12 * 12 and stats.seconds > 0
    assert stats.max_prompt_tokens == max(len(p) for p in expected_prompts)


def test_judgments_are_the_models_own_generations(tiny):
    """Greedy judgments equal an independent generate call on the same chat-rendered judge prompts."""
    params = SamplingParams(max_new_tokens=8, temperature=0.0, batch_size=4)
    out = judge_responses(tiny.model, tiny.tokenizer, PROMPTS, CANDIDATES, template=DEFAULT,
                           num_judgments=2, params=params)
    judge_prompts = [encode_chat_prompt(tiny.tokenizer, DEFAULT.render(p, c)) for p, cs in zip(PROMPTS, CANDIDATES) for c in cs]
    reference = generate(tiny.model, tiny.tokenizer, judge_prompts, params, num_samples=1)
    flat = [j for row in out for j in row]
    assert [j.judgments[0] for j in flat] == [r[0].text for r in reference]
    assert all(j.judgments[0] == j.judgments[1] for j in flat)  # greedy: both samples agree
    assert common_prefix_len(judge_prompts) > 100  # the rubric is shared (prefilled once)


def test_num_judgments_respected(tiny):
    params = SamplingParams(max_new_tokens=4, temperature=1.0, batch_size=8)
    for k in (1, 4):
        out = judge_responses(tiny.model, tiny.tokenizer, PROMPTS[:1], CANDIDATES[:1], template=DIGITS,
                               num_judgments=k, params=params)
        assert all(len(j.judgments) == k == len(j.scores) for j in out[0])


def test_new_token_budget_is_new_tokens_only(tiny):
    """The budget counts new tokens: it must not be spent on the (long) judge prompt."""
    params = SamplingParams(max_new_tokens=5, temperature=1.0, batch_size=8)
    stats = JudgingStats()
    judge_responses(tiny.model, tiny.tokenizer, PROMPTS, CANDIDATES, template=DEFAULT, num_judgments=2,
                     params=params, stats=stats)
    assert stats.max_prompt_tokens > 5 * 10  # prompts far longer than the budget...
    assert 0 < stats.new_tokens <= 4 * 2 * 5  # ...and still up to 5 new tokens per judgment


def test_long_response_is_cut_to_the_prompt_budget(tiny):
    params = SamplingParams(max_new_tokens=4, temperature=1.0)
    long_response = " ".join(["the big red cat sat on the mat"] * 40)
    short_len = len(encode_chat_prompt(tiny.tokenizer, DIGITS.render(PROMPTS[0], "")))
    budget = short_len + 10
    stats = JudgingStats()
    out = judge_responses(tiny.model, tiny.tokenizer, PROMPTS[:1], [[long_response, "a cat"]], template=DIGITS,
                           num_judgments=2, params=params, stats=stats, max_prompt_tokens=budget)
    assert stats.truncated_responses == 1 and stats.too_long_prompts == 0
    assert stats.max_prompt_tokens <= budget
    assert all(len(j.judgments) == 2 for j in out[0])


def test_prompt_that_cannot_fit_is_left_unscored(tiny):
    params = SamplingParams(max_new_tokens=4, temperature=1.0)
    stats = JudgingStats()
    out = judge_responses(tiny.model, tiny.tokenizer, PROMPTS[:1], [["a cat", "a dog"]], template=DEFAULT,
                           num_judgments=2, params=params, stats=stats, max_prompt_tokens=20)
    assert out == [[CandidateJudgment(None, [], []), CandidateJudgment(None, [], [])]]
    assert (stats.too_long_prompts, stats.unscored_candidates, stats.new_tokens) == (2, 2, 0)


def test_auto_budget_leaves_room_for_the_judgment(tiny):
    context = tiny.model.config.max_position_embeddings
    params = SamplingParams(max_new_tokens=context - 60, temperature=1.0)  # only 60 prompt tokens fit
    stats = JudgingStats()
    out = judge_responses(tiny.model, tiny.tokenizer, PROMPTS[:1], [["a cat"]], template=DEFAULT,
                           num_judgments=1, params=params, stats=stats)
    assert out[0][0].score is None and stats.too_long_prompts == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_judgments": 0}, "num_judgments must be an integer >= 1"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be an integer >= 1, 'auto' or None"),
        ({"candidates": [["a"]]}, "got 2 prompts but 1 candidate lists"),
    ],
)
def test_invalid_arguments(tiny, kwargs, message):
    args = {"prompts": PROMPTS, "candidates": CANDIDATES, "template": DEFAULT, "params": SamplingParams(), **kwargs}
    with pytest.raises(JudgeError, match=message):
        judge_responses(tiny.model, tiny.tokenizer, **args)
