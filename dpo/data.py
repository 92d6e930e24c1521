"""The preference-pair file format and `DPODataset`.

A preference folder holds numpy `.npy` files opened as read-only memmaps (never fully loaded):

    preference_seq.memmap.npy   int (n, 2, L)   [i, 0] = prompt + chosen, [i, 1] = prompt + rejected,
                                                right-padded with PAD_VALUE (-1)
    prompt_len.memmap.npy       int (n,)        prompt length shared by both rows, in [1, L)
    rewards.memmap.npy          float32 (n, 2)  judge scores of chosen / rejected (optional)
    pairs.jsonl                 one readable record per pair (written by judging, not read here)

Every file is validated when opened; problems raise `PreferenceDataError` naming the file.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "PAD_VALUE",
    "PAIRS_FILE",
    "PREFERENCE_SEQ_FILE",
    "PROMPT_LEN_FILE",
    "REWARDS_FILE",
    "DPODataset",
    "PreferenceDataError",
    "check_token_rows",
    "open_npy",
    "save_npy_atomic",
    "write_preference_memmaps",
]

PREFERENCE_SEQ_FILE = "preference_seq.memmap.npy"
PROMPT_LEN_FILE = "prompt_len.memmap.npy"
REWARDS_FILE = "rewards.memmap.npy"
PAIRS_FILE = "pairs.jsonl"
PAD_VALUE = -1

# Rows are validated in chunks of about this many bytes so memory stays bounded on big files.
_CHUNK_BYTES = 1 << 22


class PreferenceDataError(ValueError):
    """A preference (or SFT) data file is missing, malformed or inconsistent."""


def open_npy(path: Path, ndim: int, error: type[ValueError] = PreferenceDataError) -> np.ndarray:
    """Open a `.npy` file as a read-only memmap and check its rank.

    Args:
        path: File to open.
        ndim: Expected number of dimensions.
        error: Exception class to raise.

    Returns:
        The memmapped array (nothing is read beyond the header).

    Raises:
        error: If the file is missing, truncated, not a valid .npy file or has the wrong rank.
    """
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise error(f"{path}: not a readable .npy file (truncated or corrupt?): {exc}") from exc
    if array.ndim != ndim:
        raise error(f"{path}: expected {ndim} dimensions, got shape {array.shape}")
    return array


def _require_int(array: np.ndarray, path: Path, error: type[ValueError]) -> None:
    if not np.issubdtype(array.dtype, np.integer):
        raise error(f"{path}: expected an integer dtype, got {array.dtype}")


def check_token_rows(
    seq: np.ndarray,
    prompt_len: np.ndarray,
    seq_path: Path,
    vocab_size: int | None,
    error: type[ValueError] = PreferenceDataError,
) -> None:
    """Validate token rows chunk by chunk.

    Checks, for every row: ids in [PAD_VALUE, vocab_size), the prompt is free of padding, the
    padding is on the right only, and at least one response token follows the prompt; and that
    the rows of one example (chosen and rejected) hold the same prompt.

    Args:
        seq: (n, ..., L) token ids (memmap); the middle axes are the rows of one example.
        prompt_len: (n,) prompt lengths, already known to be in [1, L).
        seq_path: File name for error messages.
        vocab_size: Upper bound (exclusive) for token ids, or None to skip that check.
        error: Exception class to raise.

    Raises:
        error: Naming the file, the first bad example index and the problem.
    """
    n, length = seq.shape[0], seq.shape[-1]
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, seq[0:1].nbytes))
    positions = np.arange(length)
    for start in range(0, n, rows_per_chunk):
        chunk = np.asarray(seq[start : start + rows_per_chunk]).reshape(-1, seq[0].size // length, length)
        lens = np.asarray(prompt_len[start : start + rows_per_chunk]).reshape(-1, 1, 1)
        real = chunk >= 0
        problems = {
            f"token id < {PAD_VALUE}": (chunk < PAD_VALUE).any(axis=(1, 2)),
            "padding inside the prompt": (~real & (positions < lens)).any(axis=(1, 2)),
            "a real token after padding (rows must be right-padded)": (
                real[..., 1:] & ~real[..., :-1]
            ).any(axis=(1, 2)),
            "no response token after the prompt": ~np.take_along_axis(real, lens, axis=2).all(axis=(1, 2)),
            "chosen and rejected differ inside the prompt": (
                (chunk != chunk[:, :1]) & (positions < lens)
            ).any(axis=(1, 2)),
        }
        if vocab_size is not None:
            problems[f"token id >= vocab_size {vocab_size}"] = (chunk >= vocab_size).any(axis=(1, 2))
        for problem, bad in problems.items():
            if bad.any():
                raise error(f"{seq_path}: example {start + int(np.argmax(bad))}: {problem}")


class DPODataset(Dataset):
    """Preference pairs read lazily from a folder of memmaps (see the module docstring).

    Args:
        folder: Directory with `PREFERENCE_SEQ_FILE` and `PROMPT_LEN_FILE` (and optionally
            `REWARDS_FILE`).
        vocab_size: If given, every token id must be < vocab_size.

    Raises:
        PreferenceDataError: If a file is missing, truncated, of the wrong shape or dtype, or a
            row is invalid.
    """

    def __init__(self, folder: str | os.PathLike, vocab_size: int | None = None) -> None:
        self.folder = Path(folder)
        seq_path, len_path = self.folder / PREFERENCE_SEQ_FILE, self.folder / PROMPT_LEN_FILE
        self.seq = open_npy(seq_path, ndim=3)
        self.prompt_len = open_npy(len_path, ndim=1)
        _require_int(self.seq, seq_path, PreferenceDataError)
        _require_int(self.prompt_len, len_path, PreferenceDataError)
        n, pair, length = self.seq.shape
        if pair != 2:
            raise PreferenceDataError(f"{seq_path}: expected shape (n, 2, L), got {self.seq.shape}")
        if self.prompt_len.shape[0] != n:
            raise PreferenceDataError(
                f"{len_path}: has {self.prompt_len.shape[0]} entries but {seq_path} has {n} pairs"
            )
        bad = np.flatnonzero((np.asarray(self.prompt_len) < 1) | (np.asarray(self.prompt_len) >= length))
        if bad.size:
            raise PreferenceDataError(
                f"{len_path}: example {bad[0]}: prompt_len {self.prompt_len[bad[0]]} not in [1, {length})"
            )
        check_token_rows(self.seq, self.prompt_len, seq_path, vocab_size)
        self.rewards = self._open_rewards(n)

    def _open_rewards(self, n: int) -> np.ndarray | None:
        path = self.folder / REWARDS_FILE
        if not path.exists():
            return None
        rewards = open_npy(path, ndim=2)
        if rewards.shape != (n, 2):
            raise PreferenceDataError(f"{path}: expected shape ({n}, 2), got {rewards.shape}")
        return rewards

    @property
    def max_len(self) -> int:
        """L, the padded sequence length."""
        return int(self.seq.shape[2])

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = torch.from_numpy(np.array(self.seq[index], dtype=np.int64))  # copy: memmap is read-only
        return {
            "chosen": pair[0],
            "rejected": pair[1],
            "prompt_len": torch.tensor(int(self.prompt_len[index])),
            "index": torch.tensor(index),
        }


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` via a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:  # a file handle stops np.save from appending ".npy"
        np.save(handle, array)
    os.replace(tmp, path)


def write_preference_memmaps(
    folder: str | os.PathLike,
    rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    max_len: int | None = None,
    rewards: Sequence[tuple[float, float]] | None = None,
) -> Path:
    """Write small in-memory pairs in the preference format (tests, examples).

    The streaming writer used by the pipeline lives in `judging`; this helper builds the arrays
    in memory.

    Args:
        folder: Output directory (created if missing).
        rows: `(prompt_ids, chosen_ids, rejected_ids)` per pair; responses must be non-empty.
        max_len: L; defaults to the longest prompt + response. Longer rows raise ValueError.
        rewards: Optional `(chosen_score, rejected_score)` per pair.

    Returns:
        The folder path.

    Raises:
        PreferenceDataError: If a row is empty or does not fit in `max_len`.
    """
    folder = Path(folder)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in rows]
    max_len = max_len or max(lengths, default=2)
    seq = np.full((len(rows), 2, max_len), PAD_VALUE, dtype=np.int32)
    prompt_len = np.zeros(len(rows), dtype=np.int64)
    for i, (prompt, chosen, rejected) in enumerate(rows):
        if not prompt or not chosen or not rejected or lengths[i] > max_len:
            raise PreferenceDataError(
                f"pair {i}: needs a non-empty prompt and responses within max_len={max_len} "
                f"(prompt {len(prompt)}, chosen {len(chosen)}, rejected {len(rejected)})"
            )
        for j, response in enumerate((chosen, rejected)):
            seq[i, j, : len(prompt) + len(response)] = [*prompt, *response]
        prompt_len[i] = len(prompt)
    folder.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(folder / PREFERENCE_SEQ_FILE, seq)
    save_npy_atomic(folder / PROMPT_LEN_FILE, prompt_len)
    if rewards is not None:
        save_npy_atomic(folder / REWARDS_FILE, np.asarray(rewards, dtype=np.float32).reshape(-1, 2))
    return folder
