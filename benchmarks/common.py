"""Shared helpers of the benchmark scripts: machine info, timing, peak memory, tables, JSON results.

Every script imports this module by name (`benchmarks/` is on `sys.path` when a script runs as
`python benchmarks/<script>.py`), times the shipped code through the project's public APIs, prints
a table and writes `benchmarks/results/<name>.json` (temp file + rename) with the machine, the
command line and a timestamp.
"""

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # the project packages, when the editable install is missing
    sys.path.insert(1, str(ROOT))

from pipeline.env import apply_env_defaults  # noqa: E402  (light: no torch)

# Scripts can run without make: the entry points' defaults (OMP_WAIT_POLICY=PASSIVE among them: with
# libgomp's active spin-wait, 2 torch threads on 2 busy cores ran 3-9x slower than 1 thread and run-to-
# run noise exploded; on an idle machine passive waiting costs speed instead, a demo-size training step
# took 26 ms active vs 49 ms passive with 2 threads; bench_ceiling.py measures both, export
# OMP_WAIT_POLICY=ACTIVE to benchmark the default), plus what only benchmarks need.
apply_env_defaults()
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# ---------------------------------------------------------------- setup


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The flags every benchmark accepts: --quick, --threads, --no-write (plus script-specific ones)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small smoke version (seconds, not minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results JSON")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def setup_torch(threads: int) -> None:
    """Fix torch's thread count (the machine is shared; 2 cores) and silence library chatter."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()


# ---------------------------------------------------------------- machine


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other engineers share the cores: read results with them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - optional packages: a missing one is simply not reported
        return None


def machine_info() -> dict[str, Any]:
    """Hardware, library versions, torch threads, git revision and the current load."""
    import torch

    total_mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0]
        total_mem = round(int(meminfo.split()[1]) / 2**20, 1)
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": total_mem,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {m: _version(m) for m in ("torch", "transformers", "accelerate", "trl", "prefect", "mlflow")},
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "load_average": load_average(),
    }


# ---------------------------------------------------------------- timing


def now() -> float:
    """Monotonic high-resolution clock (seconds)."""
    return time.perf_counter()


def median(values: Sequence[float]) -> float:
    """Median (NaN for an empty list)."""
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / median, a rough noise figure for a handful of repeats."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else float("nan")


def alternating(names: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """Run order A, B, C, A, B, C, ... so slow drift of the shared machine hits every contender alike."""
    return [(rep, name) for rep in range(repeats) for name in names]


# ---------------------------------------------------------------- memory


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next RSS baseline is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak resident memory while the `with` body ran, and its rise over the RSS at entry (MiB).

    Torch allocates tensors outside Python's allocator, so tracemalloc cannot see them; this uses the
    kernel's VmHWM (reset at entry through /proc/self/clear_refs) or, where that is not allowed,
    psutil RSS sampled every 2 ms by a thread (may miss very short spikes).
    """

    baseline_mib: float = 0.0
    peak_mib: float = 0.0
    method: str = ""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def delta_mib(self) -> float:
        return self.peak_mib - self.baseline_mib

    def __enter__(self) -> "PeakMemory":
        _release_freed_memory()
        rss = _status_kib("VmRSS")
        if rss is not None and _reset_peak_rss():
            self.method, self.baseline_mib = "VmHWM", rss / 1024
            return self
        import psutil

        process = psutil.Process()
        self.method = "psutil-sampling"
        self.baseline_mib = self.peak_mib = process.memory_info().rss / 2**20

        def sample() -> None:
            while not self._stop.wait(0.002):
                self.peak_mib = max(self.peak_mib, process.memory_info().rss / 2**20)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            self.peak_mib = (_status_kib("VmHWM") or 0) / 1024
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


@dataclass
class CudaPeakMemory:
    """PeakMemory's counterpart on a GPU: the CUDA caching allocator's peak of allocated bytes while the
    `with` body ran (reset at entry) and its rise over what was allocated at entry (MiB)."""

    baseline_mib: float = 0.0
    peak_mib: float = 0.0
    method: str = "torch.cuda.max_memory_allocated"

    @property
    def delta_mib(self) -> float:
        return self.peak_mib - self.baseline_mib

    def __enter__(self) -> "CudaPeakMemory":
        import torch

        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.baseline_mib = torch.cuda.memory_allocated() / 2**20
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.cuda.synchronize()
        self.peak_mib = torch.cuda.max_memory_allocated() / 2**20


def peak_memory(gpu: bool) -> PeakMemory | CudaPeakMemory:
    return CudaPeakMemory() if gpu else PeakMemory()


def synchronized_now(gpu: bool) -> float:
    """`now()` once the GPU's queued work is done (kernels run asynchronously)."""
    if gpu:
        import torch

        torch.cuda.synchronize()
    return now()


# ---------------------------------------------------------------- output


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: numbers right-aligned (4 significant figures, thousands separators)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value)

    numeric = [[isinstance(v, int | float) for v in row] for row in rows]
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row, is_number in zip(cells, numeric):
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, is_number)).rstrip())
    return "\n".join(lines)


def print_header(title: str, notes: Sequence[str] = ()) -> None:
    print(f"\n=== {title} ===", flush=True)
    print(f"load average at start (1/5/15 min): {load_average()} on {os.cpu_count()} shared cores; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    for note in notes:
        print(f"  - {note}")


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON to a temp name in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def write_result(name: str, args: argparse.Namespace, payload: dict[str, Any], started: float) -> Path | None:
    """`benchmarks/results/<name>.json` (`<name>-quick.json` in quick mode) with the run's context."""
    if args.no_write:
        return None
    suffix = "-quick" if args.quick else ""
    record = {
        "benchmark": name,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "quick": bool(args.quick),
        "wall_seconds": round(now() - started, 2),
        "load_average_end": load_average(),
        "machine": machine_info(),
        **payload,
    }
    path = write_json_atomic(RESULTS_DIR / f"{name}{suffix}.json", record)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


@contextlib.contextmanager
def quiet_stdio() -> Iterator[None]:
    """Silence progress bars / prints of the code under test (stdout and stderr) inside the block."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield
