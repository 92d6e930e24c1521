"""Streaming preference pairs to disk in `dpo.data`'s memmap format, published atomically.

Files in the published folder (names from `dpo.data`):

- `preference_seq.memmap.npy`: int32 (n, 2, L); [i, 0] = prompt + chosen, [i, 1] = prompt + rejected,
  right-padded with `pad_value` (-1). L is the longest row written (<= max_len; max_len when n == 0).
- `prompt_len.memmap.npy`: int64 (n,), shared by both rows, in [1, L).
- `rewards.memmap.npy`: float32 (n, 2), judge scores of chosen and rejected.
- `pairs.jsonl`: one readable record per written pair (the caller's record + index, scores, truncated).
- `summary.json`: counts (pairs, truncated, skipped by reason), max_len, L, pad_value.

How it stays safe (two writers sharing file names would truncate each other's rows):

- Rows go to raw files inside a hidden sibling `.<name>.tmp-<pid>` as they arrive, so memory stays
  bounded for any number of pairs. On a clean exit the raw rows are copied in small chunks into the
  `.npy` files (plain reads and writes), everything is fsynced, and the temp folder is renamed to `folder`.
- An exception inside the `with` block removes the temp folder; `folder` is never created. A killed
  process leaves only the hidden temp folder, which the next writer for the same folder removes
  when its pid is no longer alive. A folder at `folder` therefore always means a finished write.
- An existing non-empty `folder` is refused unless `overwrite=True`; then the old folder is renamed
  aside, the new one renamed in, and the old one deleted (readers never see a mix of the two).
- Zero pairs is still a valid dataset (arrays with n = 0): callers check `writer.num_pairs` (or
  `len(DPODataset(folder))`) instead of handling a missing folder.

Too-long pairs: with `on_overflow="truncate"` (default) responses are cut from their end so that
prompt + response fits `max_len` (counted in `truncated`; the EOS is lost, as it is for any
unfinished sample); a prompt that leaves no room for a response token is skipped ("prompt_too_long").
With `on_overflow="skip"` such pairs are skipped ("too_long"). Pairs whose two rows are identical
after truncation carry no preference signal and are skipped ("identical").
"""

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from numpy.lib.format import open_memmap

from dpo.data import PAD_VALUE, PAIRS_FILE, PREFERENCE_SEQ_FILE, PROMPT_LEN_FILE, REWARDS_FILE
from dpo.files import publish_dir

__all__ = ["SUMMARY_FILE", "OverflowPolicy", "PreferenceWriter", "WriterError"]

SUMMARY_FILE = "summary.json"
OverflowPolicy = Literal["truncate", "skip"]
_RAW_SEQ, _RAW_PROMPT_LEN, _RAW_REWARDS = "seq.raw", "prompt_len.raw", "rewards.raw"
_COPY_CHUNK_BYTES = 1 << 18  # bounds the copy's buffers, not correctness
_INT32_MAX = np.iinfo(np.int32).max
_ACTIVE_TEMPS: set[Path] = set()  # temp folders of writers open in this process


class WriterError(ValueError):
    """Misuse of `PreferenceWriter`: bad arguments, bad token ids, or a refused overwrite."""


class PreferenceWriter:
    """Context manager that streams preference pairs into a new dataset folder.

    Example:
        >>> with PreferenceWriter(out_dir, max_len=256) as writer:  # doctest: +SKIP
        ...     writer.add(prompt_ids, chosen_ids, rejected_ids, 4.5, 2.0, {"prompt": text})
    """

    def __init__(
        self,
        folder: str | Path,
        max_len: int,
        pad_value: int = PAD_VALUE,
        *,
        overwrite: bool = False,
        on_overflow: OverflowPolicy = "truncate",
    ) -> None:
        if not isinstance(max_len, int) or max_len < 2:
            raise WriterError(f"max_len must be an integer >= 2 (prompt + at least one response token), got {max_len!r}")
        if pad_value >= 0:
            raise WriterError(f"pad_value must be negative so padding never equals a token id, got {pad_value}")
        if on_overflow not in _OVERFLOW:
            raise WriterError(f"on_overflow must be one of {sorted(_OVERFLOW)}, got {on_overflow!r}")
        self.folder = Path(folder).absolute()
        self.max_len = max_len
        self.pad_value = int(pad_value)
        self.overwrite = overwrite
        self.on_overflow = on_overflow
        self.temp_folder = self.folder.parent / f".{self.folder.name}.tmp-{os.getpid()}"
        self.num_pairs = 0
        self.truncated = 0
        self.skipped: dict[str, int] = {}
        self._longest = 0
        self._files: dict[str, Any] = {}
        self._row = np.empty((2, max_len), dtype=np.int32)  # reused per pair: no per-pair growth

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> "PreferenceWriter":
        self._check_target()
        if self.temp_folder in _ACTIVE_TEMPS:
            raise WriterError(f"{self.folder}: another PreferenceWriter in this process is writing it")
        _remove_stale_temps(self.folder)
        if self.temp_folder.exists():  # left by an earlier writer of this process that failed to clean up
            shutil.rmtree(self.temp_folder)
        self.temp_folder.mkdir(parents=True)
        _ACTIVE_TEMPS.add(self.temp_folder)
        try:
            for name in (_RAW_SEQ, _RAW_PROMPT_LEN, _RAW_REWARDS):
                self._files[name] = open(self.temp_folder / name, "wb")  # closed in _close_files
            self._files[PAIRS_FILE] = open(self.temp_folder / PAIRS_FILE, "w", encoding="utf-8")
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self._finalize()
        except BaseException:
            self.abort()
            raise

    def flush(self) -> None:
        """Push the rows added so far to the operating system (they stay in the hidden temp folder)."""
        for f in self._files.values():
            f.flush()

    def abort(self) -> None:
        """Discard everything written so far; `folder` is left untouched."""
        self._close_files(strict=False)
        shutil.rmtree(self.temp_folder, ignore_errors=True)
        _ACTIVE_TEMPS.discard(self.temp_folder)

    # ------------------------------------------------------------------ writing

    def add(
        self,
        prompt_ids: Sequence[int],
        chosen_ids: Sequence[int],
        rejected_ids: Sequence[int],
        chosen_score: float,
        rejected_score: float,
        record: dict[str, Any] | None = None,
    ) -> str | None:
        """Append one pair (unless it has to be skipped).

        Args:
            prompt_ids: chat-rendered prompt ending with the assistant header.
            chosen_ids: response tokens of the chosen candidate (EOS included when it finished).
            rejected_ids: response tokens of the rejected candidate.
            chosen_score: judge score of the chosen candidate.
            rejected_score: judge score of the rejected candidate.
            record: JSON-friendly details written to `pairs.jsonl` (prompt text, responses, judgments).

        Returns:
            None when the pair was written, else the skip reason ("too_long", "prompt_too_long",
            "identical", "empty_response"), which is also counted in `skipped`.

        Raises:
            WriterError: the writer is not open, the prompt is empty, a score is not finite, or a
                token id is not an integer in [0, 2**31).
        """
        if not self._files:
            raise WriterError("PreferenceWriter.add called outside its `with` block")
        prompt = _as_ids(prompt_ids, "prompt_ids")
        chosen, rejected = _as_ids(chosen_ids, "chosen_ids"), _as_ids(rejected_ids, "rejected_ids")
        if prompt.size == 0:
            raise WriterError("prompt_ids is empty; a pair needs a prompt (its length is stored in [1, L))")
        for name, score in (("chosen_score", chosen_score), ("rejected_score", rejected_score)):
            if not math.isfinite(score):
                raise WriterError(f"{name} must be a finite number, got {score!r} (unscored candidates cannot be paired)")
        chosen, rejected, outcome = self._fit(prompt.size, chosen, rejected)
        if outcome not in (None, "truncated"):
            self.skipped[outcome] = self.skipped.get(outcome, 0) + 1
            return outcome
        self._write_row(prompt, chosen, rejected, float(chosen_score), float(rejected_score))
        line = {"index": self.num_pairs, **(record or {}), "chosen_score": float(chosen_score),
                "rejected_score": float(rejected_score), "truncated": outcome == "truncated"}
        self._files[PAIRS_FILE].write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.num_pairs += 1
        self.truncated += outcome == "truncated"
        return None

    def _fit(self, prompt_len: int, chosen: np.ndarray, rejected: np.ndarray):
        """Apply the overflow policy: (chosen, rejected, None | "truncated" | skip reason)."""
        if chosen.size == 0 or rejected.size == 0:
            return chosen, rejected, "empty_response"
        room = self.max_len - prompt_len
        outcome = None
        if max(chosen.size, rejected.size) > room:
            outcome = _OVERFLOW[self.on_overflow](room)
            if outcome != "truncated":
                return chosen, rejected, outcome
            chosen, rejected = chosen[:room], rejected[:room]
        if chosen.size == rejected.size and np.array_equal(chosen, rejected):
            return chosen, rejected, "identical"
        return chosen, rejected, outcome

    def _write_row(self, prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
                   chosen_score: float, rejected_score: float) -> None:
        p = prompt.size
        self._row.fill(self.pad_value)
        for side, response in enumerate((chosen, rejected)):
            self._row[side, :p] = prompt
            self._row[side, p:p + response.size] = response
        self._longest = max(self._longest, p + chosen.size, p + rejected.size)
        self._files[_RAW_SEQ].write(self._row.tobytes())
        self._files[_RAW_PROMPT_LEN].write(np.int64(p).tobytes())
        self._files[_RAW_REWARDS].write(np.array([chosen_score, rejected_score], dtype=np.float32).tobytes())

    # ------------------------------------------------------------------ publishing

    def _finalize(self) -> None:
        for f in self._files.values():
            f.flush()
        self._close_files()
        n, width = self.num_pairs, self._longest if self.num_pairs else self.max_len
        tmp = self.temp_folder
        _raw_to_npy(tmp / _RAW_SEQ, tmp / PREFERENCE_SEQ_FILE, np.int32, (n, 2, self.max_len), width)
        _raw_to_npy(tmp / _RAW_PROMPT_LEN, tmp / PROMPT_LEN_FILE, np.int64, (n,))
        _raw_to_npy(tmp / _RAW_REWARDS, tmp / REWARDS_FILE, np.float32, (n, 2))
        for name in (_RAW_SEQ, _RAW_PROMPT_LEN, _RAW_REWARDS):
            (tmp / name).unlink()
        summary = {"pairs": n, "truncated": self.truncated, "skipped": self.skipped,
                   "max_len": self.max_len, "seq_len": width, "pad_value": self.pad_value}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        self._check_target()  # again: something may have appeared while we were writing
        publish_dir(tmp, self.folder, durable=True)
        _ACTIVE_TEMPS.discard(self.temp_folder)

    def _check_target(self) -> None:
        if self.overwrite or not os.path.lexists(self.folder):
            return
        if self.folder.is_dir() and not self.folder.is_symlink() and not any(self.folder.iterdir()):
            return  # an empty directory holds nothing to lose
        raise WriterError(f"{self.folder}: already exists and is not empty; pass overwrite=True to replace it")

    def _close_files(self, strict: bool = True) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            try:
                f.close()
            except OSError:
                if strict:  # aborting: a full disk also fails the final flush; clean up anyway
                    raise


_OVERFLOW: dict[str, Callable[[int], str]] = {
    "truncate": lambda room: "truncated" if room >= 1 else "prompt_too_long",
    "skip": lambda room: "too_long",
}


def _as_ids(ids: Sequence[int], name: str) -> np.ndarray:
    arr = np.asarray(ids).reshape(-1)
    if arr.size and arr.dtype.kind not in "iu":  # floats or bools would be silently cast to ids
        raise WriterError(f"{name}: token ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() > _INT32_MAX):
        raise WriterError(f"{name}: token ids must be in [0, {_INT32_MAX}] (negative values mean padding), "
                          f"got min {arr.min()}, max {arr.max()}")
    return arr


def _raw_to_npy(raw: Path, npy: Path, dtype: type, shape: tuple[int, ...], width: int | None = None) -> None:
    """Copy a raw row file into an `.npy` file in chunks (trimming the last axis to `width`).

    Plain reads and writes, not memmaps: pages touched through a mapping stay in the process's
    resident memory until it is unmapped, so a memmap copy grew the RSS with the number of pairs.
    """
    out_shape = shape[:-1] + (width,) if width is not None else shape
    header = open_memmap(npy, mode="w+", dtype=dtype, shape=out_shape)  # writes the header, sizes the file
    offset = header.offset
    del header
    _preallocate(npy)
    n = shape[0]
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    buffer = np.empty((max(1, min(n, _COPY_CHUNK_BYTES // row_bytes)), *shape[1:]), dtype=dtype)
    with open(raw, "rb") as src, open(npy, "r+b") as dst:
        dst.seek(offset)
        for start in range(0, n, len(buffer)):
            chunk = buffer[: min(len(buffer), n - start)]
            if src.readinto(memoryview(chunk).cast("B")) != chunk.nbytes:
                raise WriterError(f"{raw}: shorter than the {n} rows written to it")
            dst.write(np.ascontiguousarray(chunk[..., :width]) if width is not None else chunk)


def _preallocate(path: Path) -> None:
    """Reserve the file's blocks now: on a full disk this raises ENOSPC, whereas writing pages of
    a sparse memmap would kill the process with SIGBUS."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, max(1, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _remove_stale_temps(folder: Path) -> None:
    """Delete `.<name>.tmp-<pid>` siblings whose writer process no longer exists (it was killed)."""
    for temp in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid_text = temp.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            shutil.rmtree(temp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
