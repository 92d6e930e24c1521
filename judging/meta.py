"""Meta-judging (Meta-Rewarding, Wu et al. 2024, arXiv 2407.19594): the model compares its own judgments.

For one candidate with K judgments, the meta-judge sees the judge prompt and two of the judgments
and says which is better, for every ordered pair, so each pair is shown in both orders and position
bias cancels. The judgment with the most wins and the one with the fewest become a preference pair
*for the judge* (prompt: the judge prompt; chosen: the best judgment; rejected: the worst), trained
beside the actor's pairs. NeMo-Aligner's implementation caps judge pairs at a share of each batch
and warns that beyond about 15% judges start giving identical scores.

A meta-judge template is a YAML mapping:

```yaml
name: meta_default
template: "... {judge_prompt} ... {judgment_a} ... {judgment_b} ..."   # all three placeholders
choice_pattern: 'better\\s*[:=]\\s*(A|B)\\b'                             # one group: A or B
choice_example: "Better: {choice}"
```

The model learns the skill from `meta_judge_examples` (built from EFT data: the reference judgment
against a corrupted copy) when the run asks for it.
"""

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import permutations
from pathlib import Path
from typing import Any

import yaml

from generation import SamplingParams, encode_chat_prompt, generate, iter_jsonl, prompt_budget, write_jsonl
from judging.parse import normalize_judgment
from judging.template import JudgeTemplate, TemplateError

__all__ = [
    "JUDGE_PAIRS_FILE",
    "JudgePair",
    "MetaTemplate",
    "compare_judgments",
    "corrupt_judgment",
    "disputed_judgments",
    "load_meta_template",
    "meta_judge_examples",
    "read_judge_pairs",
    "write_judge_pairs",
]

_PLACEHOLDER_RE = re.compile(r"\{(judge_prompt|judgment_a|judgment_b)\}")
PACKAGED_META_TEMPLATES = {"default": "meta_default.yaml"}


@dataclass(frozen=True)
class MetaTemplate:
    """A meta-judge prompt and how to read its choice back."""

    name: str
    template: str
    choice_pattern: str
    choice_example: str = "Better: {choice}"
    source: str = "<inline>"

    def __post_init__(self) -> None:
        missing = [p for p in ("{judge_prompt}", "{judgment_a}", "{judgment_b}") if p not in self.template]
        if missing:
            raise TemplateError(f"{self.source}: field 'template' must contain the placeholders {missing}")
        try:
            regex = re.compile(self.choice_pattern, re.IGNORECASE)
        except re.error as err:
            raise TemplateError(f"{self.source}: field 'choice_pattern' is not a valid regex ({err})") from None
        for choice in "AB":
            if self._parse(regex, self.example(choice)) != choice:
                raise TemplateError(f"{self.source}: field 'choice_pattern' cannot read {choice!r} back from "
                                    f"'choice_example' {self.example(choice)!r}")

    def render(self, judge_prompt: str, judgment_a: str, judgment_b: str) -> str:
        values = {"judge_prompt": judge_prompt, "judgment_a": judgment_a, "judgment_b": judgment_b}
        return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.template)

    def example(self, choice: str) -> str:
        return self.choice_example.replace("{choice}", choice)

    def parse(self, text: str) -> str | None:
        """"A" or "B" from a meta-judgment (the last match), None when it chose neither."""
        return self._parse(re.compile(self.choice_pattern, re.IGNORECASE), text)

    @staticmethod
    def _parse(regex: re.Pattern, text: str) -> str | None:
        matches = list(regex.finditer(normalize_judgment(text))) if isinstance(text, str) else []
        choice = matches[-1].group(1).upper() if matches else None
        return choice if choice in ("A", "B") else None


def load_meta_template(name_or_path: str | Path = "default") -> MetaTemplate:
    """A packaged meta-judge template ("default") or one from a YAML file, validated.

    Raises:
        TemplateError: the file is missing, not YAML, or a field is invalid (file and field named).
    """
    key = str(name_or_path)
    if key in PACKAGED_META_TEMPLATES:
        source = f"judging/templates/{PACKAGED_META_TEMPLATES[key]}"
        text = (resources.files("judging") / "templates" / PACKAGED_META_TEMPLATES[key]).read_text(encoding="utf-8")
    else:
        source = key
        try:
            text = Path(name_or_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TemplateError(f"{source}: cannot read meta-judge template ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TemplateError(f"{source}: not valid YAML: {err}") from None
    fields = ("name", "template", "choice_pattern", "choice_example")
    if not isinstance(data, dict) or not {"name", "template", "choice_pattern"} <= data.keys() or set(data) - set(fields):
        raise TemplateError(f"{source}: expected a mapping with fields name, template, choice_pattern "
                            f"(and optionally choice_example)")
    return MetaTemplate(**data, source=source)


def corrupt_judgment(judgment: str, template: JudgeTemplate, rng: random.Random) -> str | None:
    """A plausible but wrong copy of a judgment: one verdict flipped and the score recounted (templates
    with verdicts), else a different valid score. None when the judgment has no score to change."""
    text = normalize_judgment(judgment)
    scores = list(template.regex.finditer(text))
    if not scores:
        return None
    verdicts = list(template.verdict_regex.finditer(text)) if template.verdict_regex is not None else []
    if verdicts:
        flip = rng.choice(verdicts)
        positive = flip.group(1).lower() == template.positive_verdict.lower()
        word = template.negative_verdict if positive else template.positive_verdict
        points = (template.points(text) or 0) + (-1 if positive else 1)
        text = text[:flip.start(1)] + word + text[flip.end(1):]
        scores = list(template.regex.finditer(text))
        new_score = str(points)
    else:
        low, high = int(template.min_score), int(template.max_score)
        current = scores[-1].group(1)
        options = [str(v) for v in range(low, high + 1) if str(v) != current]
        new_score = rng.choice(options)
    last = scores[-1]
    return text[:last.start(1)] + new_score + text[last.end(1):]


def meta_judge_examples(eft_rows: Sequence[dict[str, str]], template: JudgeTemplate, meta: MetaTemplate,
                        count: int, seed: int) -> list[dict[str, str]]:
    """SFT examples of meta-judging: an EFT example's reference judgment against a corrupted copy,
    in a random order, answered with the letter of the reference."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count * 2):  # a judgment without a score cannot be corrupted: try again
        if len(rows) == count or not eft_rows:
            break
        row = rng.choice(list(eft_rows))
        bad = corrupt_judgment(row["response"], template, rng)
        if bad is None or bad == normalize_judgment(row["response"]):
            continue
        good_first = rng.random() < 0.5
        a, b = (row["response"], bad) if good_first else (bad, row["response"])
        rows.append({"prompt": meta.render(row["prompt"], a, b), "response": meta.example("A" if good_first else "B")})
    return rows


@dataclass(frozen=True)
class MetaOutcome:
    """Wins of each judgment of one candidate; best and worst indices (None when all tie)."""

    wins: list[float]
    best: int | None
    worst: int | None


def compare_judgments(model: Any, tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], meta: MetaTemplate,
                      params: SamplingParams) -> list[MetaOutcome]:
    """Meta-judge every ordered pair of judgments of every item (judge prompt, its K judgments).

    A win counts 1 for the chosen judgment; an unparsable or too-long comparison counts half for
    each side, so it decides nothing.
    """
    budget = prompt_budget(model, params.max_new_tokens)
    queries, slots = [], []
    for item, (judge_prompt, judgments) in enumerate(items):
        for a, b in permutations(range(len(judgments)), 2):
            ids = encode_chat_prompt(tokenizer, meta.render(judge_prompt, judgments[a], judgments[b]))
            slots.append((item, a, b, len(queries) if budget is None or len(ids) <= budget else None))
            if slots[-1][3] is not None:
                queries.append(ids)
    outputs = generate(model, tokenizer, queries, params) if queries else []
    wins = [[0.0] * len(judgments) for _, judgments in items]
    for item, a, b, slot in slots:
        choice = meta.parse(outputs[slot][0].text) if slot is not None else None
        if choice is None:
            wins[item][a] += 0.5
            wins[item][b] += 0.5
        else:
            wins[item][a if choice == "A" else b] += 1.0
    outcomes = []
    for counts in wins:
        if not counts or max(counts) == min(counts):
            outcomes.append(MetaOutcome(counts, None, None))
            continue
        best = max(range(len(counts)), key=lambda i: (counts[i], -i))
        worst = min(range(len(counts)), key=lambda i: (counts[i], i))
        outcomes.append(MetaOutcome(counts, best, worst))
    return outcomes


@dataclass(frozen=True)
class JudgePair:
    """A preference pair for the judge: its prompt, the better and the worse of its judgments."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    record: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids,
                "record": self.record}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "JudgePair":
        return cls(list(row["prompt_ids"]), list(row["chosen_ids"]), list(row["rejected_ids"]), dict(row["record"]))


JUDGE_PAIRS_FILE = "judge_pairs.jsonl"


def disputed_judgments(judged: Iterable[Any], template: JudgeTemplate, limit: int) -> list[tuple[str, list[str]]]:
    """(judge prompt, judgments) of the first `limit` candidates whose K judgments disagree (different
    scores, or some unparsable): the ones where picking the better judgment teaches something."""
    items = []
    for row in judged:
        for candidate, judgment in zip(row.candidates, row.judgments):
            if len(set(judgment.judgments)) > 1 and len(set(judgment.scores)) > 1:
                items.append((template.render(row.prompt, candidate.text), list(judgment.judgments)))
                if len(items) == limit:
                    return items
    return items


def write_judge_pairs(model: Any, tokenizer: Any, judged: Iterable[Any], out_dir: str | Path, *,
                      template: JudgeTemplate, meta: MetaTemplate, params: SamplingParams,
                      max_candidates: int) -> dict[str, Any]:
    """The meta-judge step: compare the judgments of up to `max_candidates` disputed candidates and
    write best-vs-worst judge pairs to `out_dir/judge_pairs.jsonl`; returns counts."""
    items = disputed_judgments(judged, template, max_candidates)
    outcomes = compare_judgments(model, tokenizer, items, meta, params)
    eos = [tokenizer.eos_token_id]
    pairs = [
        JudgePair(encode_chat_prompt(tokenizer, prompt), tokenizer.encode(judgments[o.best], add_special_tokens=False) + eos,
                  tokenizer.encode(judgments[o.worst], add_special_tokens=False) + eos,
                  {"judge_prompt": prompt, "chosen": judgments[o.best], "rejected": judgments[o.worst], "wins": o.wins})
        for (prompt, judgments), o in zip(items, outcomes) if o.best is not None
    ]
    write_jsonl(Path(out_dir) / JUDGE_PAIRS_FILE, (p.to_json() for p in pairs))
    return {"compared_candidates": len(items), "comparisons": sum(len(j) * (len(j) - 1) for _, j in items),
            "judge_pairs": len(pairs)}


def read_judge_pairs(path: str | Path) -> list[JudgePair]:
    return [JudgePair.from_json(row) for row in iter_jsonl(path)]
