"""The task's rules: `TaskSpec`, its instruction text and the ground-truth checker `check`.

`check` is for evaluation only; training rewards come only from the model's own judgments. The
seed-data writer uses `rule_results` directly, so `check` has no caller inside the training path.
"""

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ALPHABET = "abcdefgh"
MIN_LENGTH = 4
MAX_LENGTH = 8
RULES: tuple[str, ...] = ("length", "start", "end", "include", "norepeat")
MAX_POINTS = len(RULES)

_INSTRUCTION_RE = re.compile(
    r"Write (\d+) letters from a to ([a-z])\. Start with ([a-z]), end with ([a-z]), "
    r"include ([a-z]), no letter twice in a row\."
)


class TaskSpecError(ValueError):
    """A task's rules are inconsistent (e.g. a letter outside the alphabet)."""


class InstructionParseError(ValueError):
    """A text is not an instruction of the demo task."""


@dataclass(frozen=True)
class TaskSpec:
    """The rules of one instruction.

    `include` differs from `start` and `end`, so every rule can be broken on its own.
    """

    length: int
    start: str
    end: str
    include: str
    alphabet: str = ALPHABET

    def __post_init__(self) -> None:
        if not (
            len(self.alphabet) >= 3 and self.alphabet == "abcdefghijklmnopqrstuvwxyz"[: len(self.alphabet)]
        ):
            raise TaskSpecError(f"alphabet must be 'a..x' with at least 3 letters, got {self.alphabet!r}")
        if self.length < 3:
            raise TaskSpecError(f"length must be >= 3, got {self.length}")
        for name in ("start", "end", "include"):
            if getattr(self, name) not in self.alphabet or len(getattr(self, name)) != 1:
                raise TaskSpecError(
                    f"{name} must be one letter of {self.alphabet!r}, got {getattr(self, name)!r}"
                )
        if self.include in (self.start, self.end):
            raise TaskSpecError(f"include ({self.include!r}) must differ from start and end")

    def instruction(self) -> str:
        """The text the model sees (about 25 tokens)."""
        return (
            f"Write {self.length} letters from a to {self.alphabet[-1]}. Start with {self.start}, "
            f"end with {self.end}, include {self.include}, no letter twice in a row."
        )


@dataclass(frozen=True)
class CheckResult:
    """Ground-truth score of one response: one point per rule met."""

    points: int
    max_points: int
    score: float  # points / max_points, in [0, 1]
    rules: dict[str, bool] = field(default_factory=dict)  # rule name -> met, in RULES order


def all_tasks(
    alphabet: str = ALPHABET, min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH
) -> list[TaskSpec]:
    """Every distinct task, in a fixed order (1960 with the defaults)."""
    return [
        TaskSpec(n, s, e, i, alphabet)
        for n in range(min_length, max_length + 1)
        for s in alphabet
        for e in alphabet
        for i in alphabet
        if i not in (s, e)
    ]


def make_task(
    rng: random.Random, alphabet: str = ALPHABET, min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH
) -> TaskSpec:
    """One random task."""
    start, end = rng.choice(alphabet), rng.choice(alphabet)
    include = rng.choice([c for c in alphabet if c not in (start, end)])
    return TaskSpec(rng.randint(min_length, max_length), start, end, include, alphabet)


def parse_instruction(text: str) -> TaskSpec:
    """The `TaskSpec` behind an instruction text (inverse of `TaskSpec.instruction`).

    Raises:
        InstructionParseError: `text` is not a demo-task instruction.
    """
    match = _INSTRUCTION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InstructionParseError(f"not a demo-task instruction: {text!r}")
    length, last, start, end, include = match.groups()
    try:
        return TaskSpec(int(length), start, end, include, "abcdefghijklmnopqrstuvwxyz"[: ord(last) - 96])
    except TaskSpecError as err:
        raise InstructionParseError(f"inconsistent demo-task instruction {text!r}: {err}") from err


def as_spec(spec_or_instruction: "TaskSpec | str") -> TaskSpec:
    """A `TaskSpec` as is, or parsed from its instruction text (raises `InstructionParseError`)."""
    if isinstance(spec_or_instruction, TaskSpec):
        return spec_or_instruction
    return parse_instruction(spec_or_instruction)


def parse_response(response: Any) -> list[str]:
    """The response's items: whitespace-separated tokens (non-strings give no items)."""
    return response.split() if isinstance(response, str) else []


def rule_results(spec: TaskSpec, items: Sequence[str]) -> dict[str, bool]:
    """Rule name -> met, in `RULES` order, for a parsed response (see `parse_response`)."""
    return {
        "length": len(items) == spec.length and all(len(x) == 1 and x in spec.alphabet for x in items),
        "start": bool(items) and items[0] == spec.start,
        "end": bool(items) and items[-1] == spec.end,
        "include": spec.include in items,
        # An empty response earns nothing, not a vacuous "no repeats" point.
        "norepeat": bool(items) and all(a != b for a, b in zip(items, items[1:])),
    }


def check(spec_or_instruction: "TaskSpec | str", response: Any) -> CheckResult:
    """Ground-truth score of a response (evaluation only; never a training reward).

    Never raises on any `response` (garbage scores low).

    Raises:
        InstructionParseError: `spec_or_instruction` is a text that is not a demo-task instruction.
    """
    rules = rule_results(as_spec(spec_or_instruction), parse_response(response))
    points = sum(rules.values())
    return CheckResult(points=points, max_points=MAX_POINTS, score=points / MAX_POINTS, rules=rules)
