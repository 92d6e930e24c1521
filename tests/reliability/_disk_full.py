"""Run in a subprocess by test_disk_full.py: write pairs and a checkpoint onto a full device.

    python -m tests.reliability._disk_full rlimit=DIR [tmpfs=DIR2]
      rlimit: RLIMIT_FSIZE, no file may grow past 64 KiB (EFBIG)
      tmpfs:  DIR2 is a small tmpfs mounted by the test (ENOSPC)

First a complete checkpoint step is published, then the device is made (almost) full and the pairs
step and a new checkpoint for the same folder are attempted. Prints one JSON object of findings.
"""

import json
import os
import resource
import signal
import sys
from pathlib import Path

import dpo
from flows.stepdir import DiskFullError, finished, run_step
from judging.writer import PreferenceWriter
from tests._tiny import tiny_llama

LIMIT = 64 * 1024


def tiny_model(seed: int):
    return tiny_llama(seed, vocab_size=300)


def save_step(folder: Path, fingerprint: str, model) -> dict:
    return run_step("dpo", folder, fingerprint, lambda tmp: {"saved": dpo.save_checkpoint(model, tmp / "model").name})


def write_pairs(tmp: Path, n: int) -> dict:
    # Raw rows fit, the .npy copies do not: the memmap stage used to die of SIGBUS here.
    with PreferenceWriter(tmp, max_len=64) as writer:
        for i in range(n):
            writer.add([1, 2, 3], list(range(4, 40)), list(range(5, 41)), 2.0, 1.0, {"i": i})
    return {"pairs": n}


def attempt(fn) -> dict:
    try:
        fn()
    except DiskFullError as err:
        return {"error": "DiskFullError", "message": str(err)}
    except Exception as err:  # reported, not hidden: the test expects DiskFullError only
        return {"error": type(err).__name__, "message": str(err)}
    return {"error": None}


def fill(root: Path, leave: int) -> None:
    """Write a ballast file so that about `leave` bytes stay free on root's device."""
    stats = os.statvfs(root)
    free = stats.f_bavail * stats.f_frsize
    with open(root / "ballast", "ab") as f:
        f.write(b"\0" * max(0, free - leave))


def main(root: Path, mode: str) -> dict:
    iter_dir = root / "run" / "iter-1"
    checkpoint = iter_dir / "checkpoint"
    good = tiny_model(seed=0)
    save_step(checkpoint, "fp-good", good)
    if mode == "rlimit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        try:
            return _attempt_all(root, iter_dir, checkpoint, good, mode)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return _attempt_all(root, iter_dir, checkpoint, good, mode)


def _attempt_all(root: Path, iter_dir: Path, checkpoint: Path, good, mode: str) -> dict:
    found: dict = {}
    if mode == "tmpfs":
        fill(root, leave=700 * 1024)
    found["pairs"] = attempt(lambda: run_step("pairs", iter_dir / "pairs", "fp-pairs", lambda tmp: write_pairs(tmp, 1000)))
    if mode == "tmpfs":
        fill(root, leave=32 * 1024)  # less than one checkpoint
    found["checkpoint"] = attempt(lambda: save_step(checkpoint, "fp-new", tiny_model(seed=1)))
    record = finished(checkpoint, "fp-good")
    restored = tiny_model(seed=2)
    dpo.load_checkpoint(restored, checkpoint / "model")
    good_state, restored_state = good.state_dict(), restored.state_dict()
    found["previous_checkpoint_published"] = record is not None
    found["previous_checkpoint_loads"] = all((good_state[k] == restored_state[k]).all().item() for k in good_state)
    found["pairs_published"] = (iter_dir / "pairs").exists()
    found["leftovers"] = sorted(p.name for p in iter_dir.iterdir() if p.name.startswith("."))
    return found


if __name__ == "__main__":
    modes = dict(arg.split("=", 1) for arg in sys.argv[1:])
    print(json.dumps({mode: main(Path(root), mode) for mode, root in modes.items()}))
