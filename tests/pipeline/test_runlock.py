"""One process per run directory: a second process is refused while the first holds the lock, the lock
is re-entrant within a process and released on exit (however the holder ends)."""

import subprocess
import sys
import textwrap

import pytest

from pipeline.runlock import LOCK_FILE, RunLockedError, run_lock

HOLD = textwrap.dedent("""
    import sys, time
    from pipeline.runlock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_process_is_refused_naming_the_holder_until_the_first_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another selfreward run \(pid {holder.pid} on "):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path / "run") as path:  # a killed holder leaves no stale lock
        assert path == (tmp_path / "run" / LOCK_FILE).resolve()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with run_lock(tmp_path / "run"):
        with run_lock(tmp_path / "run"):  # the CLI takes it, then the flow again
            pass
        with run_lock(tmp_path / "run"):
            pass
