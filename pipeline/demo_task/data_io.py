"""Atomic text writes: readers never see a half-written file."""

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to a temp name next to `path`, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
