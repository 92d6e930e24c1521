import numpy as np
import pytest
import torch

import dpo.data as data_module
from dpo import (
    PAD_VALUE,
    PREFERENCE_SEQ_FILE,
    PROMPT_LEN_FILE,
    REWARDS_FILE,
    DPODataset,
    PreferenceDataError,
    write_preference_memmaps,
)

ROWS = [([5, 6], [7, 8, 9], [10]), ([11], [12], [13, 14]), ([15, 16, 17], [18], [19, 20])]


def _write(folder, seq=None, prompt_len=None):
    """Write raw arrays, bypassing the helper's checks."""
    folder.mkdir(exist_ok=True)
    if seq is not None:
        np.save(folder / PREFERENCE_SEQ_FILE, seq)
    if prompt_len is not None:
        np.save(folder / PROMPT_LEN_FILE, prompt_len)
    return folder


def _good_arrays():
    seq = np.full((2, 2, 6), PAD_VALUE, dtype=np.int32)
    seq[:, :, :4] = 3
    return seq, np.array([2, 3], dtype=np.int64)


def test_round_trip_with_padding_and_memmap(tmp_path):
    write_preference_memmaps(tmp_path, ROWS, max_len=6, rewards=[(5, 1), (4, 2), (3, 0)])
    dataset = DPODataset(tmp_path, vocab_size=32)
    assert len(dataset) == 3 and dataset.max_len == 6
    assert isinstance(dataset.seq, np.memmap)  # lazily read, not loaded
    item = dataset[0]
    assert item["chosen"].tolist() == [5, 6, 7, 8, 9, -1]
    assert item["rejected"].tolist() == [5, 6, 10, -1, -1, -1]
    assert item["prompt_len"].item() == 2 and item["index"].item() == 0
    assert item["chosen"].dtype == torch.int64
    assert dataset.rewards.shape == (3, 2) and dataset.rewards[2, 0] == 3


def test_missing_files(tmp_path):
    seq, lens = _good_arrays()
    with pytest.raises(PreferenceDataError, match=PREFERENCE_SEQ_FILE):
        DPODataset(_write(tmp_path / "a", prompt_len=lens))
    with pytest.raises(PreferenceDataError, match=PROMPT_LEN_FILE):
        DPODataset(_write(tmp_path / "b", seq=seq))


@pytest.mark.parametrize(
    ("mutate", "file", "match"),
    [
        (lambda s, n: (s[:, 0], n), PREFERENCE_SEQ_FILE, "3 dimensions"),
        (lambda s, n: (np.concatenate([s, s[:, :1]], 1), n), PREFERENCE_SEQ_FILE, r"\(n, 2, L\)"),
        (lambda s, n: (s, n[:1]), PROMPT_LEN_FILE, "has 1 entries"),
        (lambda s, n: (s.astype(np.float32), n), PREFERENCE_SEQ_FILE, "integer dtype"),
        (lambda s, n: (s, n.astype(np.float64)), PROMPT_LEN_FILE, "integer dtype"),
        (lambda s, n: (s, np.array([0, 3])), PROMPT_LEN_FILE, r"prompt_len 0 not in \[1, 6\)"),
        (lambda s, n: (s, np.array([2, 6])), PROMPT_LEN_FILE, r"example 1: prompt_len 6"),
        (lambda s, n: (s, np.array([2, 4])), PREFERENCE_SEQ_FILE, "example 1: no response token"),
    ],
)
def test_structural_problems_name_the_file(tmp_path, mutate, file, match):
    seq, lens = mutate(*_good_arrays())
    with pytest.raises(PreferenceDataError, match=match) as info:
        DPODataset(_write(tmp_path, seq, lens))
    assert file in str(info.value)


def _token_case(value_at, position):
    seq, lens = _good_arrays()
    seq[1, 1, position] = value_at
    return seq, lens


@pytest.mark.parametrize(
    ("value", "position", "match"),
    [
        (64, 3, "token id >= vocab_size 64"),
        (-2, 3, "token id < -1"),
        (PAD_VALUE, 1, "padding inside the prompt"),
        (9, 5, "a real token after padding"),
        (9, 0, "chosen and rejected differ inside the prompt"),
    ],
)
def test_token_problems(tmp_path, value, position, match):
    seq, lens = _token_case(value, position)
    with pytest.raises(PreferenceDataError, match=f"{PREFERENCE_SEQ_FILE}: example 1: {match}"):
        DPODataset(_write(tmp_path, seq, lens), vocab_size=64)


def test_bad_row_found_in_a_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_CHUNK_BYTES", 64)  # one pair per chunk
    rows = [([3], [4], [5])] * 7 + [([3], [99], [5])]
    write_preference_memmaps(tmp_path, rows, max_len=4)
    assert len(DPODataset(tmp_path)) == 8  # fine without a vocabulary bound
    with pytest.raises(PreferenceDataError, match="example 7: token id >= vocab_size 64"):
        DPODataset(tmp_path, vocab_size=64)


def test_truncated_and_corrupt_files(tmp_path):
    write_preference_memmaps(tmp_path, ROWS, max_len=6)
    path = tmp_path / PREFERENCE_SEQ_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(PreferenceDataError, match=f"{PREFERENCE_SEQ_FILE}.*truncated"):
        DPODataset(tmp_path)
    path.write_bytes(b"not a numpy file at all" * 4)
    with pytest.raises(PreferenceDataError, match=PREFERENCE_SEQ_FILE):
        DPODataset(tmp_path)


def test_rewards_shape_is_checked(tmp_path):
    write_preference_memmaps(tmp_path, ROWS, max_len=6)
    np.save(tmp_path / REWARDS_FILE, np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(PreferenceDataError, match=REWARDS_FILE):
        DPODataset(tmp_path)


def test_writer_rejects_empty_or_too_long_rows(tmp_path):
    with pytest.raises(PreferenceDataError, match="pair 0"):
        write_preference_memmaps(tmp_path, [([1], [], [2])])
    with pytest.raises(PreferenceDataError, match="max_len=3"):
        write_preference_memmaps(tmp_path, [([1, 2], [3, 4], [5])], max_len=3)
    assert not (tmp_path / PREFERENCE_SEQ_FILE).exists()
