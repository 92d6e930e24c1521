"""What ties launched processes to their run: the environment entry and the liveness test."""

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.lifeline import LAUNCHER_ENV, alive, check_launcher_alive, launcher_env


def test_launcher_env_names_this_process_and_the_run_folder(tmp_path):
    assert launcher_env(tmp_path) == {LAUNCHER_ENV: f"{os.getpid()}:{tmp_path.resolve()}"}


def test_a_finished_process_is_not_alive_even_before_it_is_reaped():
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not alive(child.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)  # exited, not reaped yet
    assert not alive(zombie.pid)
    zombie.wait()


def test_the_publish_check_is_a_no_op_outside_launched_processes(monkeypatch):
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    check_launcher_alive()
