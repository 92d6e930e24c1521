"""One process per run directory: an exclusive `fcntl.flock` on `<run dir>/.lock`.

The kernel releases a flock when its process dies, however it dies (kill -9 included), so a crashed
run never leaves a stale lock behind; the pid written into the file only makes the refusal message
useful. The lock is re-entrant within a process (the CLI takes it before starting Prefect, the flow
takes it again for callers of the Python API).

The lock file is opened with O_NOFOLLOW and must be a plain file with one link: the pid is written
into it, so a symlink or hard link planted at `<run dir>/.lock` would make the run overwrite its
target. `held_by` lets a process the run launched (a training rank) check that the run which
launched it still holds the lock before it publishes anything.
"""

import errno
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLockedError", "held_by", "run_lock"]

LOCK_FILE = ".lock"
_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process


class RunLockedError(ValueError):
    """The run directory's lock cannot be taken: another process is running (or resuming) the same run
    directory, or the lock file is not a plain file this run may write."""


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
    path = Path(run_dir).resolve() / LOCK_FILE  # resolve the folder only: never follow the lock file
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield path
        finally:
            _HELD[path] = (fd, _HELD[path][1] - 1)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(path, os.O_RDWR | os.O_CREAT)
    except OSError as err:
        raise RunLockedError(f"cannot create the run lock {path}: {err.strerror}") from None
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


def _open_lock_file(path: Path, flags: int) -> int:
    """A descriptor of the lock file itself: never a symlink's target, never a file linked elsewhere."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)  # O_NONBLOCK: a planted FIFO never blocks
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunLockedError(f"{path} is a symbolic link; refusing to write through it (remove it and run "
                                 f"again)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "has other hard links" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise RunLockedError(f"{path} {what}; refusing to write into it (remove it and run again)")
    return fd


def held_by(run_dir: str | os.PathLike, pid: int) -> bool:
    """True when process `pid` holds the lock of `run_dir` (it wrote its pid and the flock is taken)."""
    path = Path(run_dir).resolve() / LOCK_FILE
    try:
        fd = _open_lock_file(path, os.O_RDONLY)
    except (OSError, RunLockedError):
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # someone holds it: is it `pid`?
            try:
                return json.loads(os.read(fd, 4096).decode()).get("pid") == pid
            except (ValueError, AttributeError):
                return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False  # nobody holds it
    finally:
        os.close(fd)
