"""ROUGE-L (hand-computed and brute force) and the self-instruct prompt filters."""

import itertools
import random

import pytest

from generation import PromptFilter, PromptPool, lcs_length, rouge_l


def brute_force_lcs(a: list[str], b: list[str]) -> int:
    """Longest subsequence of `a` (tried from longest) that is also a subsequence of `b`."""

    def is_subsequence(sub, seq) -> bool:
        it = iter(seq)
        return all(tok in it for tok in sub)

    for size in range(min(len(a), len(b)), 0, -1):
        if any(is_subsequence(combo, b) for combo in itertools.combinations(a, size)):
            return size
    return 0


def test_lcs_matches_brute_force_on_random_lists():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == brute_force_lcs(a, b)


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        # LCS "the cat on the mat" = 5; P = R = 5/6.
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
        # LCS "a c" = 2; P = 2/4, R = 2/3; F = 2PR/(P+R) = 4/7.
        ("a b c d", "a c e", 4 / 7),
        # Case and punctuation are ignored by the word tokenizer.
        ("Write a poem!", "write a POEM", 1.0),
        ("alpha beta", "gamma delta", 0.0),
        ("", "anything", 0.0),
    ],
)
def test_rouge_l_hand_computed(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected)


def test_rouge_l_is_symmetric_f1():
    assert rouge_l("a b c d", "a c e") == pytest.approx(rouge_l("a c e", "a b c d"))


SEEDS = ["Write a short poem about the sea.", "Explain how vaccines train the immune system."]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("   \n ", "empty"),
        ("Hi?", "too_short"),
        ("word " * 100, "too_long"),
        ("!!!!!!!!!!!!!!!!!!", "degenerate"),  # one character repeated
        ("aaaaaaaaaaaaaaaaaaa", "degenerate"),
        ("#$%& *()_ +{}: <>?|~ ab", "degenerate"),  # mostly symbols
        ("cat cat cat cat cat dog", "degenerate"),  # one word dominates
        ("go to the go to the go to the go to the go", "degenerate"),  # looping 3-grams
        ("  write A SHORT   poem about the sea. ", "duplicate"),  # case / whitespace only
        ("Write a short poem about the blue sea.", "near_duplicate"),
    ],
)
def test_filter_reasons(text, reason):
    rule = PromptFilter(min_chars=10, max_chars=200)
    assert rule.rejection_reason(text, PromptPool.of(SEEDS)) == reason


def test_filter_accepts_novel_prompt_and_then_rejects_its_repeat():
    rule = PromptFilter(min_chars=10, max_chars=200)
    pool = PromptPool.of(SEEDS)
    accepted, rejected = rule.apply(
        [
            "Describe three uses of a paperclip in an office.",
            "describe three uses of a PAPERCLIP in an office.",  # exact duplicate of the one just accepted
            "Describe three uses of a paperclip at an office.",  # near duplicate of it
            "Summarise the causes of the French revolution.",
            "",
        ],
        pool,
    )
    assert accepted == [
        "Describe three uses of a paperclip in an office.",
        "Summarise the causes of the French revolution.",
    ]
    assert rejected == {"duplicate": 1, "near_duplicate": 1, "empty": 1}
    assert len(pool) == len(SEEDS) + 2


def test_max_rouge_l_threshold_is_respected():
    pool = PromptPool.of(["the cat sat on the mat"])
    text = "the cat is on the mat"  # ROUGE-L 5/6
    assert PromptFilter(max_rouge_l=0.84).rejection_reason(text, pool) is None
    assert PromptFilter(max_rouge_l=0.83).rejection_reason(text, pool) == "near_duplicate"
    assert pool.max_rouge_l(text) == pytest.approx(5 / 6)
