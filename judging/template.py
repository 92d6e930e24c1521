"""Judge templates: the rubric prompt a model fills in, plus how to read the score back.

A template is a small YAML mapping (loaded with `yaml.safe_load`, so no Python-object tags):

```yaml
name: additive_5pt
template: "... {prompt} ... {response} ..."   # both placeholders required
score_pattern: 'score\\s*[:=]\\s*([0-9]+(?:\\.[0-9]*)?)'   # exactly one capture group
min_score: 0
max_score: 5
score_example: "Score: {score}"   # optional (this is the default): a line the judge would write
description: optional free text
verdict_pattern: '\b(yes|no)\b'    # optional: one verdict per criterion, for judge-health checks
positive_verdict: "yes"             # the verdict that earns a point (an additive rubric's score
negative_verdict: "no"              # is the number of positive verdicts)
```

The score pattern is matched case-insensitively, after `parse.normalize_judgment` has stripped markdown
asterisks and unified quotes. Loading checks that the pattern reads back `score_example` rendered
with `max_score` and with `min_score`, so a template whose regex can never parse its own format fails
at load time instead of silently producing no pairs.
"""

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from judging.parse import normalize_judgment, parse_score

__all__ = ["PACKAGED_TEMPLATES", "JudgeTemplate", "TemplateError", "load_template"]

# Names accepted by `load_template` besides file paths; values are files in judging/templates/.
PACKAGED_TEMPLATES: dict[str, str] = {
    "default": "additive_5pt.yaml",
    "additive_5pt": "additive_5pt.yaml",
}

_REQUIRED_FIELDS = ("name", "template", "score_pattern", "min_score", "max_score")
_OPTIONAL_FIELDS = ("score_example", "description", "verdict_pattern", "positive_verdict", "negative_verdict")
_PLACEHOLDERS = ("{prompt}", "{response}")
# One pass over the template, so a `{response}` typed inside the user's prompt is never substituted.
_PLACEHOLDER_RE = re.compile(r"\{(prompt|response)\}")


class TemplateError(ValueError):
    """A judge template is invalid; the message names the file (or source) and the field."""


@dataclass(frozen=True)
class JudgeTemplate:
    """A validated judge prompt and its score format.

    Attributes:
        name: short identifier, logged with the run.
        template: prompt text with `{prompt}` and `{response}` placeholders.
        score_pattern: regex with exactly one capture group holding the number.
        min_score: lowest valid score (inclusive).
        max_score: highest valid score (inclusive).
        score_example: a score line with a `{score}` placeholder that the pattern must read back.
        description: free text.
        verdict_pattern: optional regex (one group) finding per-criterion verdicts in a judgment.
        positive_verdict: the verdict worth a point; an additive judgment's score should equal
            the number of positive verdicts it wrote (`points`).
        negative_verdict: the verdict worth no point.
        source: where the template came from, used in error messages.
    """

    name: str
    template: str
    score_pattern: str
    min_score: float
    max_score: float
    score_example: str = "Score: {score}"
    description: str = ""
    verdict_pattern: str = ""
    positive_verdict: str = ""
    negative_verdict: str = ""
    source: str = "<inline>"
    regex: re.Pattern = field(init=False, repr=False, compare=False)
    verdict_regex: re.Pattern | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fields(self, self.source)
        object.__setattr__(self, "regex", _compile_pattern(self.score_pattern, self.source))
        object.__setattr__(self, "verdict_regex", _compile_verdicts(self))
        _check_example_parses(self)

    def verdicts(self, judgment: str) -> list[str]:
        """The per-criterion verdicts a judgment wrote, in order (none without `verdict_pattern`)."""
        if self.verdict_regex is None or not isinstance(judgment, str):
            return []
        return [m.group(1).lower() for m in self.verdict_regex.finditer(normalize_judgment(judgment))]

    def points(self, judgment: str) -> int | None:
        """Positive verdicts in `judgment`: what its score should be under an additive rubric (None
        when the template defines no verdicts or the judgment wrote none)."""
        verdicts = self.verdicts(judgment)
        return sum(v == self.positive_verdict.lower() for v in verdicts) if verdicts else None

    def render(self, prompt: str, response: str) -> str:
        """Fill the placeholders; braces or placeholder-like text in the inputs stay literal."""
        values = {"prompt": prompt, "response": response}
        return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.template)

    def example_score_line(self, score: float) -> str:
        """`score_example` filled with `score` as a judge would write it (integers without ".0")."""
        return self.score_example.replace("{score}", _format_number(score))


def load_template(name_or_path: str | Path = "default") -> JudgeTemplate:
    """Load and validate a judge template.

    Args:
        name_or_path: a packaged name (a key of `PACKAGED_TEMPLATES`, e.g. "default") or a YAML path.

    Returns:
        The validated template.

    Raises:
        TemplateError: the file is missing, is not YAML, is not a mapping, or a field is invalid;
            the message names the file and the field.
    """
    key = str(name_or_path)
    if key in PACKAGED_TEMPLATES:
        ref = resources.files("judging") / "templates" / PACKAGED_TEMPLATES[key]
        return _from_text(ref.read_text(encoding="utf-8"), source=f"judging/templates/{PACKAGED_TEMPLATES[key]}")
    path = Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(sorted(PACKAGED_TEMPLATES))
        raise TemplateError(f"{path}: judge template not found (give a YAML path or one of: {known})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"{path}: cannot read judge template ({err})") from None
    return _from_text(text, source=str(path))


def _from_text(text: str, source: str) -> JudgeTemplate:
    try:
        data = yaml.safe_load(text)  # safe loader: `!!python/object` tags are rejected here
    except yaml.YAMLError as err:
        raise TemplateError(f"{source}: not valid YAML (or uses a disallowed tag): {err}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{source}: expected a mapping with fields {list(_REQUIRED_FIELDS)}, "
                            f"got {type(data).__name__}")
    missing = [k for k in _REQUIRED_FIELDS if k not in data]
    if missing:
        raise TemplateError(f"{source}: missing field(s) {missing}; required: {list(_REQUIRED_FIELDS)}")
    unknown = sorted(str(k) for k in data if k not in _REQUIRED_FIELDS + _OPTIONAL_FIELDS)
    if unknown:
        raise TemplateError(f"{source}: unknown field(s) {unknown}; allowed: "
                            f"{list(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)}")
    fields: dict[str, Any] = {k: data[k] for k in _REQUIRED_FIELDS + _OPTIONAL_FIELDS if k in data}
    return JudgeTemplate(**fields, source=source)


def _check_fields(t: JudgeTemplate, source: str) -> None:
    for key in ("name", "template", "score_pattern", "score_example"):
        value = getattr(t, key)
        if not isinstance(value, str) or not value.strip():
            raise TemplateError(f"{source}: field '{key}' must be a non-empty string, got {value!r}")
    for key in ("description", "verdict_pattern", "positive_verdict", "negative_verdict"):
        if not isinstance(getattr(t, key), str):
            raise TemplateError(f"{source}: field '{key}' must be a string, got {getattr(t, key)!r}")
    if "{score}" not in t.score_example:
        raise TemplateError(f"{source}: field 'score_example' must contain the placeholder {{score}}, "
                            f"got {t.score_example!r}")
    for placeholder in _PLACEHOLDERS:
        if placeholder not in t.template:
            raise TemplateError(f"{source}: field 'template' must contain the placeholder {placeholder}")
    for key in ("min_score", "max_score"):
        value = getattr(t, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TemplateError(f"{source}: field '{key}' must be a finite number, got {value!r}")
    if not t.min_score < t.max_score:
        raise TemplateError(f"{source}: field 'min_score' ({t.min_score}) must be less than "
                            f"'max_score' ({t.max_score})")


def _compile_pattern(pattern: str, source: str, field: str = "score_pattern", group: str = "the number") -> re.Pattern:
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise TemplateError(f"{source}: field '{field}' is not a valid regex ({err}): {pattern!r}") from None
    if regex.groups != 1:
        raise TemplateError(f"{source}: field '{field}' must have exactly one capture group "
                            f"({group}), found {regex.groups}: {pattern!r}")
    return regex


def _compile_verdicts(t: JudgeTemplate) -> re.Pattern | None:
    if not t.verdict_pattern:
        return None
    regex = _compile_pattern(t.verdict_pattern, t.source, "verdict_pattern", "the verdict")
    for key in ("positive_verdict", "negative_verdict"):
        word = getattr(t, key)
        match = regex.search(word) if word else None
        if match is None or match.group(1).lower() != word.lower():
            raise TemplateError(f"{t.source}: field '{key}' ({word!r}) must be a verdict that 'verdict_pattern' "
                                f"{t.verdict_pattern!r} matches")
    return regex


def _check_example_parses(t: JudgeTemplate) -> None:
    for score in (t.max_score, t.min_score):
        example = t.example_score_line(score)
        if parse_score(example, t) != float(score):
            raise TemplateError(f"{t.source}: field 'score_pattern' {t.score_pattern!r} cannot read the "
                                f"score back from the example line {example!r} (field 'score_example')")


def _format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
