"""The embedded demo's synthetic task: write a short letter sequence that meets five explicit rules.

An instruction reads::

    Write 6 letters from a to h. Start with b, end with d, include e, no letter twice in a row.

and a correct response is letters separated by spaces, e.g. ``b a e c a d``. Five rules, one point
each (mirroring the paper's additive 5-point judge): ``length`` (exactly n letters, all from the
alphabet), ``start``, ``end``, ``include`` and ``norepeat`` (no letter twice in a row). Everything is
generated from `random.Random(seed)`, so the demo needs no download, and `check` scores any
(instruction, response) pair from the text alone.

Why judging is easier than answering (so a tiny model's self-judgments carry signal before its
answers are good):

- Judging is *verification*: each rule is a local test on a string that is already written
  (compare the first letter, compare the last letter, look for one letter, compare neighbours,
  count at most 8 items). The judgment writes one ``yes``/``no`` per rule, so each output token
  depends on one such test; the final ``Score: n`` only counts the ``yes`` tokens just written.
- Answering is *search*: the rules interact and must hold at once, left to right, with no going
  back. The model must reserve a slot for the included letter, avoid repeating the previous letter,
  place the end letter exactly at position n (not earlier, and not right after an equal letter)
  and stop there, which needs a running count while it writes. One slip breaks a rule.

So the judge can be right about a rule that the policy often gets wrong; ranking the policy's own
samples by its own judgment then favours the samples that got more rules right, and DPO on those
pairs moves the policy towards them. The ground-truth `check` is for evaluation only: training
rewards come only from the model's judgments.

Tokenization: letters are separated by spaces, so a whitespace-aware BPE keeps one token per letter
and a few hundred vocabulary entries cover the whole corpus.
"""

import functools
import json
import math
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALPHABET = "abcdefgh"
MIN_LENGTH = 4
MAX_LENGTH = 8
RULES: tuple[str, ...] = ("length", "start", "end", "include", "norepeat")
MAX_POINTS = len(RULES)

DEMO_JUDGE_TEMPLATE: dict[str, Any] = {
    "name": "demo_rules",
    "template": (
        "Check each rule, then give Score: the number of rules met.\nInstruction: {prompt}\nResponse: {response}"
    ),
    "score_pattern": r"Score:\s*([0-9]+(?:\.[0-9]+)?)",
    "min_score": 0,
    "max_score": MAX_POINTS,
}

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


def _as_spec(spec_or_instruction: "TaskSpec | str") -> TaskSpec:
    if isinstance(spec_or_instruction, TaskSpec):
        return spec_or_instruction
    return parse_instruction(spec_or_instruction)


def parse_response(response: Any) -> list[str]:
    """The response's items: whitespace-separated tokens (non-strings give no items)."""
    return response.split() if isinstance(response, str) else []


def _rule_results(spec: TaskSpec, items: Sequence[str]) -> dict[str, bool]:
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
    rules = _rule_results(_as_spec(spec_or_instruction), parse_response(response))
    points = sum(rules.values())
    return CheckResult(points=points, max_points=MAX_POINTS, score=points / MAX_POINTS, rules=rules)


# ---- constructive responses: uniform samples from all sequences with a given rule outcome ----


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
    subsets = [rng.sample(RULES, num_broken) for _ in range(20)]
    for broken in subsets:
        response = _response_with(spec, broken, rng)
        if response is not None:
            return response
    raise CorruptionError(f"could not break {num_broken} rules of {spec}")  # unreachable for valid specs


# ---- the judge format ----


def _shown(items: Sequence[str], index: int) -> str:
    """An item as the judge quotes it: single characters verbatim, anything else as "-"."""
    return items[index] if items and len(items[index]) == 1 else "-"


def _first_repeat(items: Sequence[str]) -> str:
    """The first item equal to its predecessor, quoted like `_shown`; "-" when there is none."""
    index = next((i for i in range(1, len(items)) if items[i] == items[i - 1]), None)
    return "-" if index is None else _shown(items, index)


def judgment_text(spec_or_instruction: "TaskSpec | str", response: Any) -> str:
    """The judgment a perfect judge writes (~27 tokens), e.g.
    ``length yes, start b b yes, end d c no, include e yes, norepeat - yes. Score: 4``.

    A worked check: start and end quote the wanted letter, then the response's letter; include
    quotes the wanted letter; norepeat quotes the first letter written twice in a row ("-" for
    none). Each quote is an easy, directly supervised copy for a tiny model, and the yes/no then
    compares nearby tokens instead of far-apart ones.
    """
    spec = _as_spec(spec_or_instruction)
    items = parse_response(response)
    rules = check(spec, response).rules
    verdict = {rule: "yes" if met else "no" for rule, met in rules.items()}
    parts = [
        f"length {verdict['length']}",
        f"start {spec.start} {_shown(items, 0)} {verdict['start']}",
        f"end {spec.end} {_shown(items, -1)} {verdict['end']}",
        f"include {spec.include} {verdict['include']}",
        f"norepeat {_first_repeat(items)} {verdict['norepeat']}",
    ]
    return f"{', '.join(parts)}. Score: {sum(rules.values())}"


def render_judge_prompt(
    instruction: str, response: str, template: str = DEMO_JUDGE_TEMPLATE["template"]
) -> str:
    """The judge's user turn. Plain replacement (not str.format), so braces in a response are safe;
    identical to `str.format` for the brace-free demo template."""
    return template.replace("{prompt}", instruction).replace("{response}", response)


def write_judge_template_yaml(path: str | os.PathLike) -> Path:
    """Writes `DEMO_JUDGE_TEMPLATE` as YAML (loadable by `judging.load_template`), atomically."""
    import yaml  # pyyaml is a project dependency; imported here to keep the module stdlib at import

    path = Path(path)
    _atomic_write_text(path, yaml.safe_dump(DEMO_JUDGE_TEMPLATE, sort_keys=False, allow_unicode=True))
    return path


# ---- seed data ----


class DemoDataError(ValueError):
    """Requested demo data sizes do not fit the task's pool of distinct instructions."""


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def _jsonl(records: Iterable[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_seed_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_ift: int = 600,
    num_eft: int = 600,
    num_seed_prompts: int = 200,
    num_eval: int = 100,
) -> dict[str, Path]:
    """Writes the demo's seed data, deterministic in `seed`.

    Instructions are split three ways with no overlap: `eval.jsonl` (held out), `seed_prompts.jsonl`
    (the prompt pool of the self-rewarding iterations) and the IFT/EFT instructions (reused with
    fresh responses when more examples are asked for than instructions remain). EFT responses break
    0..5 rules in equal shares, so every judge score is equally represented.

    Returns:
        Paths by name: ift, eft, seed_prompts, eval, tokenizer_corpus.

    Raises:
        DemoDataError: a size is negative, or eval + seed prompts leave no training instructions.
    """
    pool = all_tasks()
    if min(num_ift, num_eft, num_seed_prompts, num_eval) < 0 or num_eval + num_seed_prompts >= len(pool):
        raise DemoDataError(
            f"need sizes >= 0 and num_eval + num_seed_prompts < {len(pool)} (distinct instructions), "
            f"got num_eval={num_eval}, num_seed_prompts={num_seed_prompts}, num_ift={num_ift}, num_eft={num_eft}"
        )
    rng = random.Random(seed)
    rng.shuffle(pool)
    eval_specs, seed_specs = pool[:num_eval], pool[num_eval : num_eval + num_seed_prompts]
    train_specs = pool[num_eval + num_seed_prompts :]

    ift = []
    for i in range(num_ift):
        spec = train_specs[i % len(train_specs)]
        ift.append({"prompt": spec.instruction(), "response": good_response(spec, rng)})
    eft = []
    for i in range(num_eft):
        spec = rng.choice(train_specs)
        response = corrupt_response(spec, rng, i % (MAX_POINTS + 1))
        prompt = render_judge_prompt(spec.instruction(), response)
        eft.append({"prompt": prompt, "response": judgment_text(spec, response)})
    rng.shuffle(eft)

    out = Path(out_dir)
    texts = {
        "ift": _jsonl(ift),
        "eft": _jsonl(eft),
        "seed_prompts": _jsonl({"prompt": s.instruction()} for s in seed_specs),
        "eval": _jsonl({"prompt": s.instruction()} for s in eval_specs),
    }
    corpus = [r[key] for r in ift + eft for key in ("prompt", "response")] + [
        s.instruction() for s in seed_specs
    ]
    paths = {name: out / f"{name}.jsonl" for name in texts}
    paths["tokenizer_corpus"] = out / "tokenizer_corpus.txt"
    texts["tokenizer_corpus"] = "\n".join(corpus) + "\n"
    for name, text in texts.items():
        _atomic_write_text(paths[name], text)
    return paths


# ---- evaluation ----


def evaluate_responses(prompts: Sequence[str], responses: Sequence[Any]) -> dict[str, float]:
    """Ground-truth metrics of responses to demo instructions.

    Returns:
        gt_score (mean points / 5), gt_success (share meeting every rule), mean_response_length
        (characters), num_responses, and gt_rule_<rule> (share meeting each rule). Means are NaN
        for no responses.

    Raises:
        ValueError: `prompts` and `responses` differ in length.
        InstructionParseError: a prompt is not a demo-task instruction.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    results = [check(p, r) for p, r in zip(prompts, responses)]
    count = len(results)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / count if count else math.nan

    metrics = {
        "gt_score": mean(r.score for r in results),
        "gt_success": mean(float(r.points == r.max_points) for r in results),
        "mean_response_length": mean(len(r) if isinstance(r, str) else 0 for r in responses),
        "num_responses": float(count),
    }
    metrics.update({f"gt_rule_{rule}": mean(float(r.rules[rule]) for r in results) for rule in RULES})
    return metrics


def pairwise_judge_accuracy(
    gt_scores_a: Sequence[float],
    gt_scores_b: Sequence[float],
    judge_scores_a: Sequence[float | None],
    judge_scores_b: Sequence[float | None],
) -> float:
    """How often the judge orders two responses to the same prompt as the checker does.

    Pairs the checker scores equal are left out. A judge tie, or a missing judge score (None: the
    judgment had no parsable score), counts half: the judge did no better than a coin flip there,
    so a judge that always ties scores 0.5, like chance, and can't look good by abstaining.

    Returns:
        Accuracy in [0, 1]; NaN when the checker ties on every pair.

    Raises:
        ValueError: the four sequences differ in length.
    """
    sizes = {len(gt_scores_a), len(gt_scores_b), len(judge_scores_a), len(judge_scores_b)}
    if len(sizes) != 1:
        raise ValueError(f"score sequences differ in length: {sorted(sizes)}")
    credit, pairs = 0.0, 0
    for gt_a, gt_b, judge_a, judge_b in zip(gt_scores_a, gt_scores_b, judge_scores_a, judge_scores_b):
        if gt_a == gt_b:
            continue
        pairs += 1
        if judge_a is None or judge_b is None or judge_a == judge_b:
            credit += 0.5
        elif (judge_a > judge_b) == (gt_a > gt_b):
            credit += 1.0
    return credit / pairs if pairs else math.nan
