"""JSON Lines helpers for the files the loop's steps hand each other (streamed both ways)."""

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["iter_jsonl", "write_jsonl"]


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file, one at a time (memory bounded by the longest line)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as they come (a generator is consumed lazily); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
