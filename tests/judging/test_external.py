"""External reward functions named 'module:function': one finite score per pair, NaN means unscored."""

import math
import textwrap

import numpy as np
import pytest
import torch

from judging import CandidateJudgment, JudgingStats, RewardFunctionError, load_reward_fn, score_with_reward_fn

MODULE = textwrap.dedent('''
    import math
    CALLS = []

    def length_reward(prompts, responses):
        CALLS.append((list(prompts), list(responses)))
        return [float(len(r)) - 0.5 * len(p) for p, r in zip(prompts, responses)]

    class Scorer:
        @staticmethod
        def score(prompts, responses):
            return [1.0] * len(responses)

    NOT_CALLABLE = 42

    def raises(prompts, responses):
        raise RuntimeError("model server down")
''')


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("my_rewards")
    yield module
    import sys

    sys.modules.pop("my_rewards", None)


def test_good_spec_scores_every_pair_in_one_call(reward_module):
    fn = load_reward_fn("my_rewards:length_reward")
    assert fn is reward_module.length_reward
    stats = JudgingStats()
    out = score_with_reward_fn(fn, ["ab", "abcd"], [["x", "xyz"], ["", "yy", "zzzz"]], stats=stats)
    # Brute force: len(response) - 0.5 * len(prompt).
    assert [[j.score for j in row] for row in out] == [[0.0, 2.0], [-2.0, 0.0, 2.0]]
    assert out[0][1] == CandidateJudgment(score=2.0, scores=[2.0], judgments=[])
    assert reward_module.CALLS == [(["ab", "ab", "abcd", "abcd", "abcd"], ["x", "xyz", "", "yy", "zzzz"])]
    assert (stats.candidates, stats.judgments, stats.parse_failures) == (5, 5, 0)


def test_nested_attribute_spec(reward_module):
    assert load_reward_fn("my_rewards:Scorer.score")(["p"], ["r"]) == [1.0]


@pytest.mark.parametrize("spec", ["my_rewards", "my_rewards:", ":fn", "a:b:c", "1mod:fn", "mod:fn()", "my rewards:fn", "", None, 3])
def test_malformed_spec(spec):
    with pytest.raises(RewardFunctionError, match="expected 'package.module:function'"):
        load_reward_fn(spec)


def test_missing_module_attribute_and_not_callable(reward_module):
    with pytest.raises(RewardFunctionError, match="cannot import module 'no_such_module_xyz'"):
        load_reward_fn("no_such_module_xyz:fn")
    with pytest.raises(RewardFunctionError, match="module 'my_rewards' has no attribute 'nope'"):
        load_reward_fn("my_rewards:nope")
    with pytest.raises(RewardFunctionError, match="'NOT_CALLABLE' is a int, not a callable"):
        load_reward_fn("my_rewards:NOT_CALLABLE")


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1.0], r"returned shape \(1,\); expected \(3,\)"),
        ([1.0, 2.0, 3.0, 4.0], r"returned shape \(4,\); expected \(3,\)"),
        ([[0.1, 0.9]] * 3, r"returned shape \(3, 2\); expected \(3,\)"),  # per-class logits: never argmax'ed
        (2.0, r"returned shape \(\); expected \(3,\)"),
        (["good", "bad", "ok"], "must return numbers"),
        ({"a": 1}, "must return numbers|returned shape"),
    ],
)
def test_wrong_output_shape_or_type(returned, message):
    def fn(prompts, responses):
        return returned

    with pytest.raises(RewardFunctionError, match=message):
        score_with_reward_fn(fn, ["p"], [["a", "b", "c"]])


def test_non_finite_scores_become_none_and_count_as_failures():
    def fn(prompts, responses):
        return [1.0, float("nan"), None, float("inf"), -2.5]

    stats = JudgingStats()
    out = score_with_reward_fn(fn, ["p", "q"], [["a", "b", "c"], ["d", "e"]], stats=stats)
    assert [[j.score for j in row] for row in out] == [[1.0, None, None], [None, -2.5]]
    assert (stats.parse_failures, stats.unscored_candidates) == (3, 3)


@pytest.mark.parametrize("container", [np.asarray, torch.tensor, tuple])
def test_array_like_outputs(container):
    def fn(prompts, responses):
        return container([0.5, 1.5])

    out = score_with_reward_fn(fn, ["p"], [["a", "b"]])
    assert [j.score for j in out[0]] == [0.5, 1.5]


def test_function_errors_are_wrapped_with_cause(reward_module):
    fn = load_reward_fn("my_rewards:raises")
    with pytest.raises(RewardFunctionError, match="raised RuntimeError: model server down") as info:
        score_with_reward_fn(fn, ["p"], [["a"]])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_no_candidates_does_not_call_the_function(reward_module):
    fn = load_reward_fn("my_rewards:length_reward")
    assert score_with_reward_fn(fn, ["p", "q"], [[], []]) == [[], []]
    assert reward_module.CALLS == []


def test_prompt_candidate_mismatch():
    with pytest.raises(RewardFunctionError, match="got 2 prompts but 1 candidate lists"):
        score_with_reward_fn(lambda p, r: [], ["p", "q"], [["a"]])


def test_scores_are_plain_floats():
    out = score_with_reward_fn(lambda p, r: np.float32([0.25]), ["p"], [["a"]])
    assert type(out[0][0].score) is float and math.isclose(out[0][0].score, 0.25)
