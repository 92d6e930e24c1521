"""The README's config reference is the schema's: regenerate it with `make readme`."""

from pathlib import Path

from pipeline.config import README_MARKERS, config_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_reference_matches_the_schema():
    text = README.read_text(encoding="utf-8")
    block = text[text.index(README_MARKERS[0]) : text.index(README_MARKERS[1])]
    assert config_reference() in block, "README config reference is stale: run `make readme`"
