"""The README's config reference: every field with its type, its real default and what it means."""

from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from pipeline.config.schema import RunConfig


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if get_origin(annotation) is dict:
        return "mapping"
    return "None" if annotation is NoneType else getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """A markdown table of every config field: path, type, default, description (for the README).

    Defaults are read from a default `RunConfig()`, not from the classes, so a nested section whose
    default differs from its class's (the prompts' sampling, say) shows the value a run really gets.
    """
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]

    def walk(section: BaseModel, prefix: str) -> None:
        for name, field in type(section).model_fields.items():
            path, value = f"{prefix}{name}", getattr(section, name)
            if isinstance(value, BaseModel):
                walk(value, f"{path}.")
                continue
            kind = _type_name(field.annotation).replace("|", "\\|")
            rows.append(f"| `{path}` | `{kind}` | `{value!r}` | {field.description or ''} |")

    walk(RunConfig(), "")
    return "\n".join(rows)


README_MARKERS = ("<!-- config-reference:start", "<!-- config-reference:end -->")


def update_readme(path: Path) -> None:
    """Rewrite the config reference between the README's markers (`make readme`)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(README_MARKERS[0])
    start = text.index("\n", start) + 1
    end = text.index(README_MARKERS[1])
    path.write_text(text[:start] + config_reference() + "\n" + text[end:], encoding="utf-8")
