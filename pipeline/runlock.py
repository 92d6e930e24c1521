"""One process per run directory: an exclusive `fcntl.flock` on `<run dir>/.lock`.

The kernel releases a flock when its process dies, however it dies (kill -9 included), so a crashed
run never leaves a stale lock behind; the pid written into the file only makes the refusal message
useful. The lock is re-entrant within a process (the CLI takes it before starting Prefect, the flow
takes it again for callers of the Python API).
"""

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLockedError", "run_lock"]

LOCK_FILE = ".lock"
_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process


class RunLockedError(ValueError):
    """Another process is running (or resuming) the same run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory's lock for the duration of the block (creates the directory).

    Raises:
        RunLockedError: another live process holds it; the message names that process.
    """
    path = (Path(run_dir) / LOCK_FILE).resolve()
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield path
        finally:
            _HELD[path] = (fd, _HELD[path][1] - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"run directory {path.parent} is in use by another selfreward run ({_holder(path)}); wait for it "
            f"to finish or stop it, then run the same command again to resume"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        _HELD[path] = (fd, 1)
        yield path
    finally:
        _HELD.pop(path, None)
        os.close(fd)  # releases the flock; the file stays (deleting it would race a waiting locker)
