"""Reading prompt files: JSONL, plain text, Parquet (pyarrow) or a local Hugging Face `datasets` directory."""

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class PromptFileError(ValueError):
    """A prompt file is missing, malformed, or holds an empty / non-text prompt."""


def _check_text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise PromptFileError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise PromptFileError(f"{where}: empty prompt in field '{field}'")
    return value.strip()


def _decoded_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) per line; invalid UTF-8 is reported with its line number."""
    lines = []
    raw_lines = path.read_bytes().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline does not start another line
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append((number, raw.decode("utf-8").removesuffix("\r")))
        except UnicodeDecodeError as err:
            raise PromptFileError(
                f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})"
            ) from err
    return lines


def _read_jsonl(path: Path, field: str) -> list[str]:
    prompts = []
    for number, line in _decoded_lines(path):
        where = f"{path}:{number}"
        if not line.strip():
            raise PromptFileError(f"{where}: empty line (expected one JSON object per line)")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{where}: bad JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):
            raise PromptFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if field not in record:
            raise PromptFileError(f"{where}: missing field '{field}' (keys: {sorted(record)})")
        prompts.append(_check_text(record[field], where, field))
    return prompts


def _read_txt(path: Path, field: str) -> list[str]:
    del field  # one prompt per line; there are no fields
    prompts = []
    for number, line in _decoded_lines(path):
        if not line.strip():
            raise PromptFileError(f"{path}:{number}: empty line (expected one prompt per line)")
        prompts.append(line.strip())
    return prompts


def _read_parquet(path: Path, field: str) -> list[str]:
    if importlib.util.find_spec("pyarrow") is None:
        raise PromptFileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise PromptFileError(f"{path}: not a readable Parquet file ({err})") from err
    if field not in table.column_names:
        raise PromptFileError(f"{path}: missing column '{field}' (columns: {table.column_names})")
    values = table.column(field).to_pylist()
    return [_check_text(v, f"{path}: row {i}", field) for i, v in enumerate(values)]


def _read_hf_dataset(path: Path, field: str) -> list[str]:
    if importlib.util.find_spec("datasets") is None:
        raise PromptFileError(
            f"{path}: reading a Hugging Face datasets directory needs `pip install datasets`"
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise PromptFileError(f"{path}: not a datasets directory saved with save_to_disk ({err})") from err
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise PromptFileError(f"{path}: dataset has splits {list(loaded)}; expected a 'train' split")
        loaded = loaded["train"]
    if field not in loaded.column_names:
        raise PromptFileError(f"{path}: missing column '{field}' (columns: {loaded.column_names})")
    return [_check_text(v, f"{path}: row {i}", field) for i, v in enumerate(loaded[field])]


READERS: dict[str, Callable[[Path, str], list[str]]] = {
    ".jsonl": _read_jsonl,
    ".txt": _read_txt,
    ".parquet": _read_parquet,
}


def read_prompts(path: str | os.PathLike, field: str = "prompt") -> list[str]:
    """Read prompts from a file or a local `datasets` directory.

    Formats: `.jsonl` (one JSON object per line holding `field`), `.txt` (one prompt per line),
    `.parquet` (column `field`, needs pyarrow) or a directory written by `Dataset.save_to_disk`
    (needs `datasets`). Prompts are returned stripped.

    Args:
        path: File or directory.
        field: JSON key / column holding the prompt text.

    Returns:
        The prompts in file order.

    Raises:
        PromptFileError: Naming the file, line/row and the problem (bad JSON, missing field, empty
            prompt, invalid UTF-8, unsupported format).
    """
    source = Path(path)
    if source.is_dir():
        return _read_hf_dataset(source, field)
    if not source.is_file():
        raise PromptFileError(f"{source}: prompt file does not exist")
    reader = READERS.get(source.suffix.lower())
    if reader is None:
        raise PromptFileError(f"{source}: unsupported prompt file type; expected one of {sorted(READERS)}")
    prompts = reader(source, field)
    if not prompts:
        raise PromptFileError(f"{source}: no prompts found")
    return prompts
