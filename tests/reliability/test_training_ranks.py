"""Training ranks under `runtime.launcher: accelerate`: they listen on loopback only, die with the run
that launched them, and never publish into its folder once it is gone.

The end-to-end case runs the real CLI with 2 accelerate processes, pauses rank 0 just before it
publishes `sft/`, reads every listening socket of the CLI's process tree from /proc (what `ss -ltnp`
shows), then SIGKILLs the CLI's process group, as a user's kill -9 does; the ranks live in sessions
of their own, so only `pipeline.lifeline` can take them down. Small subprocess cases check the
watcher (the launching process dies while the rank's parent lives) and the publish guard.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.stepdir import MANIFEST, run_step
from pipeline.lifeline import LAUNCHER_ENV, LauncherGoneError, alive
from pipeline.runlock import run_lock
from tests.reliability.helpers import REPO, cli_env, launch, wait_for_marker, write_config
from tests.servers import kill9

RANK = textwrap.dedent("""
    import sys, time
    from pipeline.lifeline import die_with_launcher
    die_with_launcher()
    print("ready", flush=True)
    time.sleep(120)
""")


def _children(root: int) -> set[int]:
    """Every process below `root` (by parent pid), read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    else:  # IPv6: four little-endian 32-bit words
        words = [bytes.fromhex(host[i:i + 8])[::-1].hex() for i in range(0, 32, 8)]
        ip = "[" + ":".join("".join(words)[i:i + 4] for i in range(0, 32, 4)) + "]"
    return f"{ip}:{int(port, 16)}"


def _listening(pids: set[int]) -> dict[str, int]:
    """{local address: pid} of every TCP socket in LISTEN state that one of `pids` holds (as `ss -ltnp`)."""
    inodes = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found[_address(fields[1])] = inodes[fields[9]]
    return found


LOOPBACK = ("127.0.0.1:", "[0000:0000:0000:0000:0000:0000:0000:0001]:")


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def killed_launch(prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    config_path, config = write_config(tmp / "acc.yaml", "run_name=acc", "iterations=1", "eval.enabled=false",
                                       "runtime.launcher=accelerate", "runtime.num_processes=2", "runtime.retries=0")
    marker, log = tmp / "paused.json", tmp / "run.log"
    proc = launch(config_path, tmp / "out", cli_env(prefect_harness, SELFREWARD_PAUSE_MARKER=str(marker)), log,
                  pause="acc/sft")
    try:
        paused = wait_for_marker(marker, proc, log)
        tree = _children(proc.pid)
        facts = {"listening": _listening(tree | {proc.pid}), "tree": tree, "rank0": paused["pid"],
                 "commands": {pid: _command(pid) for pid in tree}}
        killed = time.monotonic()
        kill9(proc)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        facts["survivors"] = sorted(pid for pid in tree if alive(pid))
        facts["seconds"] = time.monotonic() - killed
        marker.unlink()  # a surviving rank 0 would go on and publish now
        time.sleep(3)
        facts["run_dir"] = tmp / "out" / config.run_name
        facts["log"] = log.read_text()[-4000:]
        return facts
    finally:
        for pid in _children(proc.pid) if proc.poll() is None else ():
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            kill9(proc)


@pytest.mark.slow
@pytest.mark.reliability(area="security", fault="2 accelerate processes on one machine: the elastic agent's rendezvous "
                         "store and the ranks' sockets", expected="every listening socket of the run on 127.0.0.1")
def test_training_ranks_listen_on_loopback_only(killed_launch):
    listening, commands = killed_launch["listening"], killed_launch["commands"]
    owners = {commands.get(pid, "") for pid in listening.values()}
    assert any("pipeline.agent" in c for c in owners), (listening, commands)  # the rendezvous store
    assert any("flows.launch" in c for c in owners), (listening, commands)  # a rank's gloo socket
    assert all(address.startswith(LOOPBACK) for address in listening), listening


@pytest.mark.slow
@pytest.mark.reliability(area="crash and resume", fault="SIGKILL of the CLI's process group while 2 accelerate ranks "
                         "train SFT (ranks in sessions of their own)",
                         expected="every rank dies within seconds; sft/ is never published without the run")
def test_ranks_die_with_the_killed_run_and_publish_nothing(killed_launch):
    assert killed_launch["rank0"] in killed_launch["tree"]
    assert killed_launch["survivors"] == [], killed_launch["log"]
    assert killed_launch["seconds"] < 10
    assert not (killed_launch["run_dir"] / "sft" / MANIFEST).exists()


def _start(code: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kwargs)


@pytest.mark.reliability(area="crash and resume", fault="the launching process SIGKILLed while the rank's parent "
                         "(the accelerate agent) lives on", expected="the rank notices and dies within a second or two")
def test_a_rank_dies_when_its_launcher_dies_even_if_its_parent_lives(tmp_path):
    launcher = _start("import time; time.sleep(120)")
    rank = _start(RANK, {LAUNCHER_ENV: f"{launcher.pid}:{tmp_path}"}, start_new_session=True)
    try:
        assert rank.stdout.readline().strip() == "ready"
        launcher.kill()
        launcher.wait()
        assert rank.wait(timeout=10) == -signal.SIGKILL
    finally:
        for proc in (launcher, rank):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.reliability(area="crash and resume", fault="the rank's parent SIGKILLed (the agent of a killed run)",
                         expected="the kernel kills the rank with it (PR_SET_PDEATHSIG)")
def test_a_rank_dies_with_its_parent(tmp_path):
    parent = _start(textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, {LAUNCHER_ENV!r}: f"{{os.getpid()}}:{tmp_path}"}}
        rank = subprocess.Popen([sys.executable, "-c", {RANK!r}], env=env, start_new_session=True, stdout=subprocess.PIPE)
        rank.stdout.readline()
        print(rank.pid, flush=True)
        time.sleep(120)
    """), start_new_session=True)
    rank = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(rank) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(rank)
    finally:
        if alive(rank):
            os.kill(rank, signal.SIGKILL)


@pytest.mark.reliability(area="crash and resume", fault="a launched rank about to publish a step after its run lost the lock",
                         expected="LauncherGoneError; nothing published (and it publishes while the run holds the lock)")
def test_a_rank_publishes_only_while_its_run_holds_the_lock(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def build(tmp: Path) -> dict:
        tmp.mkdir()
        (tmp / "weights").write_text("w")
        return {}

    monkeypatch.setenv(LAUNCHER_ENV, f"{os.getpid()}:{run_dir}")
    with pytest.raises(LauncherGoneError, match="no longer holds"):
        run_step("sft", run_dir / "sft", "fp", build)  # nobody holds the lock
    assert not (run_dir / "sft").exists()
    monkeypatch.setenv(LAUNCHER_ENV, f"{os.getpid() + 1}:{run_dir}")
    with run_lock(run_dir), pytest.raises(LauncherGoneError):
        run_step("sft", run_dir / "sft", "fp", build)  # another process holds it: not the launching run
    monkeypatch.setenv(LAUNCHER_ENV, f"{os.getpid()}:{run_dir}")
    with run_lock(run_dir):
        run_step("sft", run_dir / "sft", "fp", build)
    assert (run_dir / "sft" / MANIFEST).is_file()
