"""Processes a run launches die with it, and never publish into its folder once it is gone.

`accelerate launch` starts each training rank in a session of its own, so killing the CLI's process
group (kill -9, a lost terminal) used to leave the ranks running: they kept training, logging to
MLflow and published step folders into a run folder whose lock nobody held. The flow process passes
its pid and run folder to what it launches (`launcher_env`, inherited by the accelerate agent and its
ranks), and each of those calls `die_with_launcher()` first thing:

- the kernel SIGKILLs it when its parent dies (`PR_SET_PDEATHSIG`, Linux): a rank dies with the
  agent, the agent with the flow process;
- a watcher thread SIGKILLs it once the flow process is gone (any parent chain, any OS);
- `check_launcher_alive()`, called right before a step folder is published, refuses unless the flow
  process still holds the run lock (`pipeline.runlock.held_by`).
"""

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

from pipeline.runlock import LOCK_FILE, held_by

__all__ = ["LAUNCHER_ENV", "LauncherGoneError", "check_launcher_alive", "die_with_launcher", "launcher_env"]

LAUNCHER_ENV = "SELFREWARD_LAUNCHER"  # "<pid>:<run folder>" of the flow process that launched this one
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.5


class LauncherGoneError(RuntimeError):
    """The run that launched this process no longer holds its run folder."""


def launcher_env(run_dir: str | os.PathLike) -> dict[str, str]:
    """Environment entries that tie the processes this one launches to it (see the module docstring)."""
    return {LAUNCHER_ENV: f"{os.getpid()}:{Path(run_dir).resolve()}"}


def _launcher() -> tuple[int, Path] | None:
    pid, _, run_dir = os.environ.get(LAUNCHER_ENV, "").partition(":")
    return (int(pid), Path(run_dir)) if pid.isdigit() and run_dir else None


def alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, dead but not yet reaped by its parent, is not alive)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(pid: int) -> None:
    while alive(pid):
        time.sleep(_POLL_SECONDS)
    _kill_self()


def die_with_launcher() -> None:
    """Tie this process's life to the flow process named in LAUNCHER_ENV (no-op when not launched)."""
    launcher = _launcher()
    if launcher is None:
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still ends this process
    if not alive(launcher[0]):  # it died before the signal was set up
        _kill_self()
    threading.Thread(target=_watch, args=(launcher[0],), name="selfreward-lifeline", daemon=True).start()


def check_launcher_alive() -> None:
    """Refuse to go on unless the flow process that launched this one still holds the run lock.

    Raises:
        LauncherGoneError: it died, or another process holds the run folder now.
    """
    launcher = _launcher()
    if launcher is not None and not held_by(launcher[1], launcher[0]):
        raise LauncherGoneError(
            f"the run that launched this process (pid {launcher[0]}) no longer holds {launcher[1] / LOCK_FILE}; "
            f"nothing is published (run the same command again to resume)")
