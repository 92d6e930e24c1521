"""The README's config reference shows every field with the default a run really gets
(regenerate it with `make readme`)."""

import re
from pathlib import Path

from pipeline.config import README_MARKERS, RunConfig, config_reference

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `([^`]+)` \| `[^`]*` \| `(.*)` \| .*\|$")


def readme_defaults() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    block = text[text.index(README_MARKERS[0]) : text.index(README_MARKERS[1])]
    return dict(m.groups() for m in map(ROW.match, block.splitlines()) if m)


def leaves(values: dict, prefix: str = "") -> dict[str, object]:
    """Every leaf of a default config's dump, by dotted path (an empty mapping is a leaf)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_readme_lists_every_field_with_the_default_of_a_default_run():
    documented, actual = readme_defaults(), leaves(RunConfig().model_dump())
    assert sorted(documented) == sorted(actual)
    wrong = {path: (documented[path], repr(value)) for path, value in actual.items() if documented[path] != repr(value)}
    assert not wrong, f"README defaults differ from RunConfig() (run `make readme`): {wrong}"
    # the values that the class-level table once got wrong
    assert documented["iteration.prompts.sampling.max_new_tokens"] == "48"
    assert documented["iteration.prompts.sampling.temperature"] == "0.8"


def test_readme_reference_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    assert config_reference() in text, "README config reference is stale: run `make readme`"
