"""PreferenceWriter: round trip through dpo.DPODataset, overflow policy, crash safety, memory, overwrite."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from dpo.data import PAD_VALUE, PAIRS_FILE, PREFERENCE_SEQ_FILE, PROMPT_LEN_FILE, REWARDS_FILE, DPODataset
from judging import SUMMARY_FILE, PreferenceWriter, WriterError

REPO = Path(__file__).resolve().parents[2]

PAIRS = [  # (prompt, chosen, rejected, chosen_score, rejected_score)
    ([1, 2, 3], [10, 11, 2], [12, 2], 4.5, 1.0),
    ([4], [13], [14, 15, 16, 17], 3.0, 2.0),
    ([5, 6, 7, 8, 9], [18, 19], [20], 5.0, 0.0),
]


def write(folder, pairs=PAIRS, max_len=16, **kwargs):
    with PreferenceWriter(folder, max_len, **kwargs) as writer:
        outcomes = [writer.add(p, c, r, cs, rs, {"prompt": f"prompt {i}"}) for i, (p, c, r, cs, rs) in enumerate(pairs)]
    return writer, outcomes


def expected_row(prompt, response, length):
    row = [*prompt, *response]
    return row + [PAD_VALUE] * (length - len(row))


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_round_trip_through_dpo_dataset(tmp_path):
    writer, outcomes = write(tmp_path / "pairs")
    assert outcomes == [None, None, None] and writer.num_pairs == 3
    ds = DPODataset(tmp_path / "pairs", vocab_size=32)
    length = max(len(p) + max(len(c), len(r)) for p, c, r, _, _ in PAIRS)  # 7: trimmed to the longest row
    assert len(ds) == 3 and ds.max_len == length
    for i, (prompt, chosen, rejected, cs, rs) in enumerate(PAIRS):
        item = ds[i]
        assert item["chosen"].tolist() == expected_row(prompt, chosen, length)
        assert item["rejected"].tolist() == expected_row(prompt, rejected, length)
        assert int(item["prompt_len"]) == len(prompt)
        assert ds.rewards[i].tolist() == [cs, rs]
    seq = np.load(tmp_path / "pairs" / PREFERENCE_SEQ_FILE, mmap_mode="r")
    assert seq.dtype == np.int32 and seq.shape == (3, 2, length)
    assert np.load(tmp_path / "pairs" / REWARDS_FILE).dtype == np.float32
    records = [json.loads(line) for line in (tmp_path / "pairs" / PAIRS_FILE).read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[0] == {"index": 0, "prompt": "prompt 0", "chosen_score": 4.5, "rejected_score": 1.0, "truncated": False}
    summary = json.loads((tmp_path / "pairs" / SUMMARY_FILE).read_text())
    assert summary == {"pairs": 3, "truncated": 0, "skipped": {}, "max_len": 16, "seq_len": length, "pad_value": -1}
    assert leftovers(tmp_path, "pairs") == []


def test_zero_pairs_is_a_valid_empty_dataset(tmp_path):
    writer, _ = write(tmp_path / "empty", pairs=[])
    assert writer.num_pairs == 0
    ds = DPODataset(tmp_path / "empty")
    assert len(ds) == 0 and ds.max_len == 16
    assert np.load(tmp_path / "empty" / PROMPT_LEN_FILE).shape == (0,)
    assert (tmp_path / "empty" / PAIRS_FILE).read_text() == ""


def test_truncate_cuts_responses_from_the_end(tmp_path):
    pairs = [
        ([1, 2, 3], [4, 5, 6, 7, 8], [9, 10], 2.0, 1.0),   # chosen cut to 3 tokens
        ([1, 2, 3, 4, 5, 6], [7], [8], 2.0, 1.0),          # prompt fills the row: prompt_too_long
        ([1, 2], [3, 4, 5, 6, 7], [3, 4, 5, 6, 8], 2.0, 1.0),  # identical after the cut
        ([1], [], [2], 2.0, 1.0),                           # empty response
        ([1, 2], [3], [4], 2.0, 1.0),                       # fits
    ]
    writer, outcomes = write(tmp_path / "t", pairs, max_len=6)
    assert outcomes == [None, "prompt_too_long", "identical", "empty_response", None]
    assert writer.truncated == 1 and writer.skipped == {"prompt_too_long": 1, "identical": 1, "empty_response": 1}
    ds = DPODataset(tmp_path / "t")
    assert ds[0]["chosen"].tolist() == [1, 2, 3, 4, 5, 6]
    assert ds[0]["rejected"].tolist() == [1, 2, 3, 9, 10, -1]
    assert ds[1]["chosen"].tolist() == [1, 2, 3, -1, -1, -1]
    records = [json.loads(x) for x in (tmp_path / "t" / PAIRS_FILE).read_text().splitlines()]
    assert [r["truncated"] for r in records] == [True, False]


def test_skip_policy_drops_too_long_pairs(tmp_path):
    pairs = [([1, 2, 3], [4, 5, 6, 7, 8], [9, 10], 2.0, 1.0), ([1, 2], [3], [4], 2.0, 1.0)]
    writer, outcomes = write(tmp_path / "s", pairs, max_len=6, on_overflow="skip")
    assert outcomes == ["too_long", None]
    assert writer.truncated == 0 and writer.skipped == {"too_long": 1} and len(DPODataset(tmp_path / "s")) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], [1], [2]), "prompt_ids is empty"),
        (([1], [-1], [2]), "chosen_ids: token ids must be in"),
        (([1], [2], [2**31]), "rejected_ids: token ids must be in"),
        (([1], [2.5], [3]), "chosen_ids: token ids must be integers, got dtype float64"),
        (([1], [2], [True]), "rejected_ids: token ids must be integers, got dtype bool"),
    ],
)
def test_bad_ids_raise_and_publish_nothing(tmp_path, args, message):
    with pytest.raises(WriterError, match=message), PreferenceWriter(tmp_path / "bad", 8) as writer:
        writer.add(*args, 1.0, 0.0)
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path, "bad") == []


@pytest.mark.parametrize("scores", [(float("nan"), 1.0), (2.0, float("inf"))])
def test_non_finite_scores_raise(tmp_path, scores):
    with pytest.raises(WriterError, match="must be a finite number"), PreferenceWriter(tmp_path / "bad", 8) as writer:
        writer.add([1], [2], [3], *scores)
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path, "bad") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_len": 1}, "max_len must be an integer >= 2"), ({"pad_value": 0}, "pad_value must be negative"),
     ({"on_overflow": "wrap"}, "on_overflow must be one of")],
)
def test_bad_constructor_arguments(tmp_path, kwargs, message):
    with pytest.raises(WriterError, match=message):
        PreferenceWriter(tmp_path / "x", **{"max_len": 8, **kwargs})


def test_add_outside_with_block(tmp_path):
    with pytest.raises(WriterError, match="outside its `with` block"):
        PreferenceWriter(tmp_path / "x", 8).add([1], [2], [3], 1.0, 0.0)


def test_exception_inside_with_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), PreferenceWriter(tmp_path / "crash", 16) as writer:
        writer.add([1, 2], [3], [4], 1.0, 0.0)
        assert writer.temp_folder.is_dir()  # rows really were streamed to disk before the failure
        raise RuntimeError("boom")
    assert not (tmp_path / "crash").exists()
    assert leftovers(tmp_path, "crash") == []


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from judging import PreferenceWriter
    folder, how = sys.argv[1], sys.argv[2]
    writer = PreferenceWriter(folder, 16).__enter__()
    for i in range(50):
        writer.add([1, 2, 3], [4, i + 5], [6], 2.0, 1.0, {"i": i})
    writer.flush()
    print(writer.temp_folder, flush=True)
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_killed_writer_leaves_no_complete_folder_and_is_cleaned_up(tmp_path, how):
    folder = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(folder), how], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == (3 if how == "exit" else -signal.SIGKILL), proc.stderr
    temp = Path(proc.stdout.strip())
    assert not folder.exists()
    assert temp.is_dir() and temp.name.startswith(".killed.tmp-")  # hidden, and not at `folder`
    assert (temp / "seq.raw").stat().st_size > 0 and not (temp / PREFERENCE_SEQ_FILE).exists()
    # The next writer for the same folder removes the dead process's leftovers and publishes normally.
    write(folder)
    assert not temp.exists() and len(DPODataset(folder)) == len(PAIRS)
    assert leftovers(tmp_path, "killed") == []


def test_memory_stays_bounded_for_many_pairs(tmp_path):
    """20k pairs, max_len 64: holding the int32 rows alone would take 20k*2*64*4 B = 10.2 MB.

    The writer streams rows to disk, so its Python/numpy peak (tracemalloc also tracks numpy buffers)
    must stay far below that; 1 MB leaves room for buffers and the chunked copy.
    """
    n, max_len = 20_000, 64
    tracemalloc.start()
    try:
        with PreferenceWriter(tmp_path / "big", max_len) as writer:
            for i in range(n):
                writer.add([1, 2, 3, 4], [5 + i % 7, 6, 7], [8, 9 + i % 5], float(i % 6), 0.0, {"i": i})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak {peak} B"
    ds = DPODataset(tmp_path / "big")
    assert len(ds) == n
    assert ds[n - 1]["chosen"].tolist() == [1, 2, 3, 4, 5 + (n - 1) % 7, 6, 7]
    assert ds.rewards[n - 1].tolist() == [float((n - 1) % 6), 0.0]


def test_existing_folder_is_refused_then_replaced_with_overwrite(tmp_path):
    folder = tmp_path / "pairs"
    write(folder)
    with pytest.raises(WriterError, match="already exists and is not empty; pass overwrite=True"):
        write(folder, pairs=PAIRS[:1])
    assert len(DPODataset(folder)) == 3  # untouched
    writer, _ = write(folder, pairs=PAIRS[:1], overwrite=True)
    assert len(DPODataset(folder)) == 1 and writer.num_pairs == 1
    assert len((folder / PAIRS_FILE).read_text().splitlines()) == 1
    assert leftovers(tmp_path, "pairs") == []


def test_overwrite_failure_inside_block_keeps_old_dataset(tmp_path):
    folder = tmp_path / "pairs"
    write(folder)
    with pytest.raises(KeyError), PreferenceWriter(folder, 16, overwrite=True) as writer:
        writer.add([1], [2], [3], 1.0, 0.0)
        raise KeyError("interrupted")
    assert len(DPODataset(folder)) == 3


def test_folder_appearing_during_write_is_not_clobbered(tmp_path):
    folder = tmp_path / "race"
    with pytest.raises(WriterError, match="already exists"), PreferenceWriter(folder, 16) as writer:
        writer.add([1], [2], [3], 1.0, 0.0)
        folder.mkdir()
        (folder / "other.txt").write_text("someone else's")
    assert (folder / "other.txt").read_text() == "someone else's"
    assert leftovers(tmp_path, "race") == []


def test_empty_existing_directory_is_filled(tmp_path):
    (tmp_path / "pairs").mkdir()
    write(tmp_path / "pairs")
    assert len(DPODataset(tmp_path / "pairs")) == 3


def test_two_writers_for_one_folder_in_one_process(tmp_path):
    with PreferenceWriter(tmp_path / "p", 8) as first:
        first.add([1], [2], [3], 1.0, 0.0)
        with pytest.raises(WriterError, match="another PreferenceWriter in this process"):
            PreferenceWriter(tmp_path / "p", 8).__enter__()
    assert len(DPODataset(tmp_path / "p")) == 1


def test_pad_value_default_comes_from_dpo():
    assert PreferenceWriter("x", 8).pad_value == PAD_VALUE == -1
    assert os.path.basename(PreferenceWriter("x", 8).temp_folder) == f".x.tmp-{os.getpid()}"
