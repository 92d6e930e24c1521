"""Quality and novelty filters for self-instructed prompts (length, degeneracy, exact and ROUGE-L duplicates)."""

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

RejectReason = Literal["empty", "too_short", "too_long", "degenerate", "duplicate", "near_duplicate"]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens used for ROUGE-L and n-gram checks."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive key for exact-duplicate detection."""
    return " ".join(text.lower().split())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) DP)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            current.append(previous[j] + 1 if token_a == token_b else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: list[str] | str, reference: list[str] | str) -> float:
    """ROUGE-L F1 between two texts (or word lists): 2PR / (P + R) with P, R from the LCS length."""
    cand = words(candidate) if isinstance(candidate, str) else candidate
    ref = words(reference) if isinstance(reference, str) else reference
    if not cand or not ref:
        return 0.0
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _rouge_l_upper_bound(cand: list[str], ref: list[str], cand_bag: Counter, ref_bag: Counter) -> float:
    """Cheap bound: the LCS cannot exceed the multiset overlap of the two word bags."""
    overlap = sum((cand_bag & ref_bag).values())
    return 2 * overlap / (len(cand) + len(ref)) if overlap else 0.0


@dataclass
class PromptPool:
    """Prompts a new candidate must differ from (seeds plus already accepted prompts)."""

    _keys: set[str] = field(default_factory=set)
    _tokens: list[tuple[list[str], Counter]] = field(default_factory=list)

    @classmethod
    def of(cls, texts: Iterable[str]) -> "PromptPool":
        pool = cls()
        for text in texts:
            pool.add(text)
        return pool

    def add(self, text: str) -> None:
        self._keys.add(normalize(text))
        tokens = words(text)
        self._tokens.append((tokens, Counter(tokens)))

    def __contains__(self, text: str) -> bool:
        return normalize(text) in self._keys

    def __len__(self) -> int:
        return len(self._tokens)

    def max_rouge_l(self, text: str, stop_at: float = 2.0) -> float:
        """Highest ROUGE-L F1 against the pool; returns early once `stop_at` is reached."""
        cand = words(text)
        cand_bag = Counter(cand)
        best = 0.0
        for ref, ref_bag in self._tokens:
            if not cand or not ref or _rouge_l_upper_bound(cand, ref, cand_bag, ref_bag) <= best:
                continue
            best = max(best, rouge_l(cand, ref))
            if best >= stop_at:
                break
        return best


@dataclass(frozen=True)
class PromptFilter:
    """Rules a generated prompt must pass.

    Attributes:
        min_chars: Shortest accepted prompt (after stripping).
        max_chars: Longest accepted prompt.
        max_rouge_l: Reject when ROUGE-L F1 against any pooled prompt is at or above this.
        ngram: Word n-gram size for the repetition check.
        min_distinct_ngram_frac: Reject when distinct n-grams / all n-grams falls below this.
        max_word_frac: Reject when one word makes up more than this share of >= 4 words.
        max_symbol_frac: Reject when more than this share of non-space characters is not alphanumeric.
    """

    min_chars: int = 10
    max_chars: int = 2000
    max_rouge_l: float = 0.7
    ngram: int = 3
    min_distinct_ngram_frac: float = 0.5
    max_word_frac: float = 0.5
    max_symbol_frac: float = 0.5

    def is_degenerate(self, text: str) -> bool:
        """True for repetitive or symbol soup text (one character/word repeated, looping n-grams)."""
        chars = [c for c in text if not c.isspace()]
        if len(set(chars)) <= 2:
            return True
        if sum(not c.isalnum() for c in chars) / len(chars) > self.max_symbol_frac:
            return True
        tokens = words(text)
        if len(tokens) >= 4 and Counter(tokens).most_common(1)[0][1] / len(tokens) > self.max_word_frac:
            return True
        grams = [tuple(tokens[i : i + self.ngram]) for i in range(len(tokens) - self.ngram + 1)]
        return len(grams) >= 4 and len(set(grams)) / len(grams) < self.min_distinct_ngram_frac

    def rejection_reason(self, text: str, pool: PromptPool) -> RejectReason | None:
        """Why `text` is rejected against `pool`, or None when it is accepted."""
        stripped = text.strip()
        if not stripped:
            return "empty"
        if len(stripped) < self.min_chars:
            return "too_short"
        if len(stripped) > self.max_chars:
            return "too_long"
        if self.is_degenerate(stripped):
            return "degenerate"
        if stripped in pool:
            return "duplicate"
        if pool.max_rouge_l(stripped, stop_at=self.max_rouge_l) >= self.max_rouge_l:
            return "near_duplicate"
        return None

    def apply(self, candidates: Iterable[str], pool: PromptPool) -> tuple[list[str], Counter]:
        """Accepted candidates (stripped, added to `pool` as accepted) and rejection counts by reason."""
        accepted: list[str] = []
        rejected: Counter = Counter()
        for candidate in candidates:
            reason = self.rejection_reason(candidate, pool)
            if reason is None:
                accepted.append(candidate.strip())
                pool.add(candidate.strip())
            else:
                rejected[reason] += 1
        return accepted, rejected
