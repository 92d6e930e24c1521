"""Disk full while writing pairs or a checkpoint: a clear `DiskFullError`, nothing half-published,
the previous complete checkpoint still loads.

Two ways to fill the device, in one subprocess (`_disk_full.py`): `RLIMIT_FSIZE` (EFBIG, works
everywhere) and a 2 MiB tmpfs (the real ENOSPC; needs permission to mount, skipped otherwise). The
tmpfs case also covers the memmap stage of the pairs writer, which used to die of SIGBUS there.
"""

import json
import subprocess
import sys

import pytest

from tests.reliability.helpers import REPO

pytestmark = pytest.mark.slow
MODES = ["rlimit", "tmpfs"]


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    root = tmp_path_factory.mktemp("diskfull")
    (root / "rlimit").mkdir()
    (root / "tmpfs").mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root / "tmpfs")],
                             capture_output=True).returncode == 0
    args = [f"rlimit={root / 'rlimit'}"] + ([f"tmpfs={root / 'tmpfs'}"] if mounted else [])
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.reliability._disk_full", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root / "tmpfs")], capture_output=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]  # no SIGBUS, no crash
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mode(findings, mode):
    if mode not in findings:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    return findings[mode]


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.reliability(
    area="disk full", fault=f"device full while writing preference pairs ({m})",
    expected="DiskFullError naming the step and folder; no pairs folder, no temp files left")) for m in MODES])
def test_pairs_on_a_full_disk(findings, mode):
    found = _mode(findings, mode)
    assert found["pairs"]["error"] == "DiskFullError", found["pairs"]
    assert "step iter-1/pairs could not write its outputs" in found["pairs"]["message"]
    assert "Free some space there" in found["pairs"]["message"]
    assert not found["pairs_published"] and found["leftovers"] == []


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.reliability(
    area="disk full", fault=f"device full while saving a checkpoint over a finished one ({m})",
    expected="DiskFullError; the previous complete checkpoint stays published and loadable")) for m in MODES])
def test_checkpoint_on_a_full_disk(findings, mode):
    found = _mode(findings, mode)
    assert found["checkpoint"]["error"] == "DiskFullError", found["checkpoint"]
    assert "step iter-1/dpo could not write its outputs" in found["checkpoint"]["message"]
    assert found["previous_checkpoint_published"] and found["previous_checkpoint_loads"]
    assert found["leftovers"] == []
