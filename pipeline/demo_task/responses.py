"""Constructive responses of controlled quality: all rules met, or exactly k rules broken."""

import functools
import random
from collections.abc import Iterable

from pipeline.demo_task.rules import MAX_POINTS, RULES, TaskSpec


def _sample_sequence(
    spec: TaskSpec, length: int, want: dict[str, bool], rng: random.Random
) -> list[str] | None:
    """A uniformly random letter sequence of `length` whose start/end/include/norepeat outcomes are
    exactly `want`; None when no such sequence exists.

    Dynamic programming over (position, previous letter, include seen, repeat seen) counts the
    completions of each prefix, so sampling never backtracks.
    """
    letters = spec.alphabet

    def allowed(pos: int, letter: str) -> bool:
        if pos == 0 and (letter == spec.start) != want["start"]:
            return False
        return not (pos == length - 1 and (letter == spec.end) != want["end"])

    @functools.cache
    def completions(pos: int, prev: str, has_include: bool, has_repeat: bool) -> int:
        if pos == length:
            return int(has_include == want["include"] and has_repeat != want["norepeat"])
        return sum(
            completions(pos + 1, c, has_include or c == spec.include, has_repeat or c == prev)
            for c in letters
            if allowed(pos, c)
        )

    if completions(0, "", False, False) == 0:
        return None
    items: list[str] = []
    prev, has_include, has_repeat = "", False, False
    for pos in range(length):
        options = [c for c in letters if allowed(pos, c)]
        weights = [
            completions(pos + 1, c, has_include or c == spec.include, has_repeat or c == prev)
            for c in options
        ]
        letter = rng.choices(options, weights=weights)[0]
        has_include, has_repeat = has_include or letter == spec.include, has_repeat or letter == prev
        items.append(letter)
        prev = letter
    return items


class CorruptionError(ValueError):
    """A requested response quality is impossible (e.g. more broken rules than rules)."""


def _response_with(spec: TaskSpec, broken: Iterable[str], rng: random.Random) -> str | None:
    want = {rule: rule not in set(broken) for rule in RULES}
    if want["length"]:
        lengths = [spec.length]
    else:
        # Near-misses (off by one or two) look like a real model's counting slips.
        lengths = [n for n in (spec.length - 2, spec.length - 1, spec.length + 1, spec.length + 2) if n >= 2]
        rng.shuffle(lengths)
    for length in lengths:
        items = _sample_sequence(spec, length, want, rng)
        if items is not None:
            return " ".join(items)
    return None


def good_response(spec: TaskSpec, rng: random.Random) -> str:
    """A response meeting every rule, uniformly random among all such responses."""
    response = _response_with(spec, (), rng)
    assert response is not None  # include differs from start/end and length >= 3: always solvable
    return response


def corrupt_response(spec: TaskSpec, rng: random.Random, num_broken: int) -> str:
    """A response that breaks exactly `num_broken` rules (a random subset), so it scores
    `MAX_POINTS - num_broken` points; `num_broken=0` gives a good response.

    Raises:
        CorruptionError: `num_broken` is outside [0, MAX_POINTS].
    """
    if not 0 <= num_broken <= MAX_POINTS:
        raise CorruptionError(f"num_broken must be in [0, {MAX_POINTS}], got {num_broken}")
    for _ in range(20):  # every subset is feasible for valid specs (checked exhaustively); retries guard
        broken = rng.sample(RULES, num_broken)
        response = _response_with(spec, broken, rng)
        if response is not None:
            return response
    raise CorruptionError(f"could not break {num_broken} rules of {spec}")
