"""Pair selection: the paper's best-vs-worst, Meta-Rewarding length control, skips and their counts."""

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from judging import PAIR_STRATEGIES, PairChoice, PairSelectionError, PairSkip, PairStats, select_pair


def test_strategies_registered():
    assert set(PAIR_STRATEGIES) == {"max_min", "length_control", "random"}


# ---------------------------------------------------------------- max_min


def test_max_min_picks_extremes_first_index_on_ties():
    choice = select_pair([3, 5, 1, 5, 1], [10, 11, 12, 13, 14])
    assert choice == PairChoice(chosen=1, rejected=2, chosen_score=5.0, rejected_score=1.0,
                                chosen_length=11, rejected_length=12)


def test_max_min_ignores_unscored_and_nan():
    choice = select_pair([None, 4.0, float("nan"), 2.5], [1, 2, 3, 4])
    assert (choice.chosen, choice.rejected) == (1, 3)
    assert (choice.chosen_score, choice.rejected_score) == (4.0, 2.5)


def test_max_min_ignores_rho():
    assert select_pair([1, 2], [5, 1], "max_min", rho=0.9) == select_pair([1, 2], [5, 1])


@pytest.mark.parametrize("scores", [[3, 3, 3], [None, 2.0, 2.0], [4.5, float("nan"), 4.5]])
def test_tie_is_skipped(scores):
    result = select_pair(scores, [1] * len(scores))
    assert result == PairSkip("tie") and not result


@pytest.mark.parametrize("scores", [[], [4.0], [None, 4.0], [None, None, None], [float("nan"), 1.0]])
def test_too_few_scored(scores):
    for strategy in PAIR_STRATEGIES:
        assert select_pair(scores, [1] * len(scores), strategy, rng=random.Random(0)) == PairSkip("too_few_scored")


# ---------------------------------------------------------------- length control


def test_length_control_rho0_takes_extreme_scores_short_chosen_long_rejected():
    # Top tier = the two 5s (lengths 10, 4) -> chosen the 4; bottom = the two 1s (7, 9) -> rejected the 9.
    choice = select_pair([5, 5, 1, 1, 3], [10, 4, 7, 9, 1], "length_control", rho=0.0)
    assert (choice.chosen, choice.rejected) == (1, 3)
    assert (choice.chosen_length, choice.rejected_length) == (4, 9)


def test_length_control_tiers_widen_with_rho():
    """S_max=5, S_min=1, rho=0.25: top tier [0.75*5+0.25*1, 5] = [4, 5]; bottom [1, 0.75*1+0.25*5] = [1, 2]."""
    scores, lengths = [5, 4, 3, 2, 1], [20, 5, 1, 30, 10]
    choice = select_pair(scores, lengths, "length_control", rho=0.25)
    assert (choice.chosen, choice.rejected) == (1, 3)  # shortest of {5, 4}; longest of {2, 1}
    # Same data with rho=0: only the extremes qualify.
    assert (select_pair(scores, lengths, "length_control", rho=0.0).chosen,
            select_pair(scores, lengths, "length_control", rho=0.0).rejected) == (0, 4)


def test_length_control_rho1_shortest_vs_longest_overall():
    choice = select_pair([5, 1, 3], [2, 10, 5], "length_control", rho=1.0)
    assert (choice.chosen, choice.rejected) == (0, 1)


def test_length_control_rho1_skips_when_shortest_scores_lower():
    # Tiers cover everything: chosen = shortest (score 1), rejected = longest (score 5): no margin.
    assert select_pair([1, 5], [2, 10], "length_control", rho=1.0) == PairSkip("no_margin")


def test_length_control_same_candidate_in_both_tiers_is_skipped():
    """rho=0.5, scores 5/3/1: top tier [3, 5] = {0, 1}, bottom tier [1, 3] = {1, 2}.

    Lengths 9/5/1: the 3 (length 5) is the shortest of the top tier AND the longest of the bottom.
    """
    assert select_pair([5, 3, 1], [9, 5, 1], "length_control", rho=0.5) == PairSkip("no_margin")
    # Lengths 4/10/4: shortest of the top is the 5, longest of the bottom is the 3 -> a real pair.
    assert select_pair([5, 3, 1], [4, 10, 4], "length_control", rho=0.5) == PairChoice(0, 1, 5.0, 3.0, 4, 10)


def test_length_control_equal_lengths_break_ties_by_score_then_index():
    choice = select_pair([4, 5, 5, 1, 2], [3, 3, 3, 6, 6], "length_control", rho=0.25)
    # top tier [4, 5]: indices 0,1,2 all length 3 -> highest score (5) then first index -> 1
    # bottom tier [1, 2]: indices 3,4 both length 6 -> lowest score -> 3
    assert (choice.chosen, choice.rejected) == (1, 3)


def _brute_force_length_control(scores, lengths, rho):
    """Independent restatement of Meta-Rewarding section 2.1 with this project's tie rules."""
    valid = [i for i, s in enumerate(scores) if s is not None]
    if len(valid) < 2:
        return PairSkip("too_few_scored")
    hi, lo = max(scores[i] for i in valid), min(scores[i] for i in valid)
    if hi == lo:
        return PairSkip("tie")
    top = sorted((i for i in valid if scores[i] >= (1 - rho) * hi + rho * lo - 1e-9),
                 key=lambda i: (lengths[i], -scores[i], i))
    bottom = sorted((i for i in valid if scores[i] <= (1 - rho) * lo + rho * hi + 1e-9),
                    key=lambda i: (-lengths[i], scores[i], i))
    c, r = top[0], bottom[0]
    if scores[c] <= scores[r]:
        return PairSkip("no_margin")
    return PairChoice(c, r, float(scores[c]), float(scores[r]), lengths[c], lengths[r])


candidate_lists = st.integers(0, 7).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.none(), st.sampled_from([0, 1, 2, 2.5, 3, 4, 4.5, 5])), min_size=n, max_size=n),
    st.lists(st.integers(1, 6), min_size=n, max_size=n),
))


@settings(max_examples=300, deadline=None)
@given(candidate_lists, st.sampled_from([0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 1.0]))
def test_length_control_matches_brute_force(data, rho):
    scores, lengths = data
    assert select_pair(scores, lengths, "length_control", rho) == _brute_force_length_control(scores, lengths, rho)


@settings(max_examples=200, deadline=None)
@given(candidate_lists, st.sampled_from([0.0, 0.2, 0.49]))
def test_disjoint_tiers_always_give_a_pair_with_margin(data, rho):
    scores, lengths = data
    valid = [s for s in scores if s is not None]
    result = select_pair(scores, lengths, "length_control", rho)
    if len(valid) >= 2 and max(valid) > min(valid):
        assert isinstance(result, PairChoice) and result.chosen_score > result.rejected_score
        mm = select_pair(scores, lengths, "max_min")
        assert (mm.chosen_score, mm.rejected_score) == (max(valid), min(valid))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "best_worst"}, "pair strategy 'best_worst' is unknown"),
        ({"strategy": "length_control", "rho": -0.1}, r"rho must be a number in \[0, 1\]"),
        ({"strategy": "length_control", "rho": 1.5}, r"rho must be a number in \[0, 1\]"),
        ({"lengths": [1]}, "got 2 scores but 1 lengths"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = {"scores": [1, 2], "lengths": [3, 4], **kwargs}
    with pytest.raises(PairSelectionError, match=message):
        select_pair(**args)


# ---------------------------------------------------------------- random (control)


_SCORES = st.lists(st.one_of(st.none(), st.integers(0, 5).map(float)), min_size=0, max_size=6)


@settings(max_examples=200, deadline=None)
@given(scores=_SCORES, seed=st.integers(0, 2**31))
def test_random_skips_exactly_what_max_min_skips(scores, seed):
    lengths = list(range(1, len(scores) + 1))
    rand = select_pair(scores, lengths, "random", rng=random.Random(seed))
    ref = select_pair(scores, lengths, "max_min")
    assert bool(rand) == bool(ref)
    if not ref:
        assert rand == ref  # same skip reason
    else:
        scored = {i for i, s in enumerate(scores) if s is not None}
        assert rand.chosen != rand.rejected and {rand.chosen, rand.rejected} <= scored
        assert (rand.chosen_score, rand.rejected_score) == (scores[rand.chosen], scores[rand.rejected])
        assert (rand.chosen_length, rand.rejected_length) == (lengths[rand.chosen], lengths[rand.rejected])


def test_random_is_uniform_over_ordered_pairs_whatever_the_scores():
    """Scores 5, 1, None, 3: the 3 scored candidates give 6 ordered pairs, each drawn ~1/6 of the
    time, so the 'chosen' scores lower than the 'rejected' half the time."""
    rng = random.Random(1234)
    draws = 6000
    counts = Counter()
    for _ in range(draws):
        choice = select_pair([5, 1, None, 3], [4, 5, 6, 7], "random", rng=rng)
        counts[(choice.chosen, choice.rejected)] += 1
    assert set(counts) == {(a, b) for a in (0, 1, 3) for b in (0, 1, 3) if a != b}
    # Binomial(6000, 1/6): sd ~ 29, so +-150 is > 5 sd.
    assert all(abs(n - draws / 6) < 150 for n in counts.values()), counts
    inverted = sum(n for (a, b), n in counts.items() if [5, 1, None, 3][a] < [5, 1, None, 3][b])
    assert abs(inverted - draws / 2) < 250


def test_random_is_reproducible_from_the_seed():
    batch = [([5, 1, 3, 2], [1, 2, 3, 4]), ([2, 2], [1, 1]), ([0, 4, 1], [3, 2, 1])] * 20

    def run(seed):
        rng = random.Random(seed)
        return [select_pair(s, n, "random", rng=rng) for s, n in batch]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("rng", [None, 7])
def test_random_needs_a_generator(rng):
    with pytest.raises(PairSelectionError, match="needs rng=random.Random"):
        select_pair([1, 2], [3, 4], "random", rng=rng)


# ---------------------------------------------------------------- stats


def test_batch_continues_after_tie_and_stats_count_skips():
    """A tie skips only its own prompt (a `break` would drop the rest of the batch): every prompt is judged."""
    batch = [
        ([5, 1, 3], [4, 8, 2]),      # pair: 5 (len 4) vs 1 (len 8)
        ([2, 2, 2], [1, 1, 1]),      # tie
        ([None, 4], [3, 3]),         # too few scored
        ([1, 4, None, 0], [5, 6, 7, 9]),  # pair: 4 (len 6) vs 0 (len 9)
        ([3, 3], [1, 2]),            # tie
    ]
    stats = PairStats()
    results = [select_pair(s, n) for s, n in batch]
    for r in results:
        stats.record(r)
    assert [bool(r) for r in results] == [True, False, False, True, False]
    assert (stats.prompts, stats.pairs, stats.skipped) == (5, 2, {"tie": 2, "too_few_scored": 1})
    assert stats.pairs + stats.num_skipped == stats.prompts
    assert stats.skip_rate == pytest.approx(3 / 5)
    assert stats.mean_chosen_score == pytest.approx((5 + 4) / 2)
    assert stats.mean_rejected_score == pytest.approx((1 + 0) / 2)
    assert stats.mean_chosen_length == pytest.approx((4 + 6) / 2)
    assert stats.mean_rejected_length == pytest.approx((8 + 9) / 2)
    metrics = stats.as_dict()
    assert metrics["pairs/skipped_tie"] == 2.0 and metrics["pairs/skip_rate"] == pytest.approx(0.6)
    summary = stats.summary()
    assert summary["pairs"] == 2 and summary["skipped"] == {"tie": 2, "too_few_scored": 1}
    assert summary["mean_chosen_score"] == pytest.approx(4.5)


def test_empty_stats_are_well_defined():
    stats = PairStats()
    assert stats.skip_rate is None and math.isnan(stats.as_dict()["pairs/skip_rate"])  # 0 of 0 is n/a, not 0
    assert math.isnan(stats.mean_chosen_score)
    assert stats.as_dict()["pairs/prompts"] == 0.0
