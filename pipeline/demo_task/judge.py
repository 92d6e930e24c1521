"""The judge format of the demo task: the judge template and the ideal judgment text."""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.demo_task.data_io import atomic_write_text
from pipeline.demo_task.rules import MAX_POINTS, TaskSpec, as_spec, parse_response, rule_results

DEMO_JUDGE_TEMPLATE: dict[str, Any] = {
    "name": "demo_rules",
    "template": (
        "Check each rule, then give Score: the number of rules met.\nInstruction: {prompt}\nResponse: {response}"
    ),
    "score_pattern": r"Score:\s*([0-9]+(?:\.[0-9]+)?)",
    "min_score": 0,
    "max_score": MAX_POINTS,
    # One yes/no per rule: a judgment's score should be its number of "yes" (judge health checks it).
    "verdict_pattern": r"\b(yes|no)\b",
    "positive_verdict": "yes",
    "negative_verdict": "no",
}


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
    spec = as_spec(spec_or_instruction)
    items = parse_response(response)
    rules = rule_results(spec, items)
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
    atomic_write_text(path, yaml.safe_dump(DEMO_JUDGE_TEMPLATE, sort_keys=False, allow_unicode=True))
    return path
