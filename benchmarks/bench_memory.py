"""Peak memory of the judge and pairs steps against the number of prompts (streamed: it should stay flat).

Workload: synthetic `candidates.jsonl` files shaped like the candidates step's output (N=4 candidates
of 64 new tokens per prompt, 48-token prompts, token ids from a 32k vocabulary, ~3 KB per prompt) at
a small and a larger (8x; 4x with --quick) number of prompts. The real step functions run on them:
`flows.steps.judge_step` with an external reward function (`crc_reward` below: the fast path,
no model, so the sweep takes seconds), then `flows.steps.pairs_step` on its judgments.

Each measurement runs in a fresh child process, forked from a parent that has done nothing but
import the project (torch, transformers: 3-4 s that every child would repeat if it were spawned);
the synthetic files are written by children too, so no child inherits a heap of freed data.
    rss    peak resident memory during the step call: the kernel's VmHWM (/proc/self/status), reset
           at the call's start (`common.PeakMemory`); reported as the rise over the RSS at that point
    heap   peak of Python's allocator during the call (tracemalloc), in its own process because
           tracing slows the call and adds its own memory to the RSS

What streaming leaves is a floor of a few MiB that stops growing: one chunk of prompts, one line,
and the 1 MiB buffer `run_step` hashes the outputs with (less while they are under 1 MiB, which is
why the smaller size reads a little lower). Model judging is not swept: its memory is the model's
plus one chunk (512 prompts), and a run spanning several chunks takes many minutes on 2 CPU cores.
"""

import json
import multiprocessing
import sys
import tempfile
import traceback
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

from common import ROOT, PeakMemory, format_table, load_average, now, parse_args, print_header, write_result

NAME = "memory"
FULL_SIZES = (2_000, 16_000)
QUICK_SIZES = (1_000, 4_000)
NUM_CANDIDATES, RESPONSE_TOKENS, PROMPT_TOKENS, VOCAB = 4, 64, 48, 32_000
WORDS = "the a cat dog sat ran on mat tree red big small why how what list write explain".split()


def crc_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A cheap deterministic external reward with a judge's range (0-9), used as `judge.reward_fn`."""
    return [float(zlib.crc32(r.encode()) % 10) for r in responses]


def write_candidates(path: Path, num_prompts: int, seed: int = 0) -> None:
    """A candidates.jsonl like the candidates step writes (prompt, prompt_ids, N completions)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(num_prompts):
            ids = rng.integers(3, VOCAB, size=(NUM_CANDIDATES, RESPONSE_TOKENS)).tolist()
            row = {
                "prompt": f"prompt {i}: " + " ".join(WORDS[t % len(WORDS)] for t in ids[0][:12]),
                "prompt_ids": rng.integers(3, VOCAB, size=PROMPT_TOKENS).tolist(),
                "candidates": [{"text": " ".join(WORDS[t % len(WORDS)] for t in c), "token_ids": c, "finished": True}
                               for c in ids],
            }
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- child: one measurement


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one step on the prepared folder `spec["root"]` and measure its peak memory (in a child)."""
    steps, StepRecord = _import_steps()
    from pipeline.config import load_config

    root, step, tracer = Path(spec["root"]), spec["step"], spec["tracer"]
    config = load_config(None, ["iteration.judge.reward_fn=bench_memory:crc_reward", "iteration.dpo.max_len=128"])
    model = StepRecord(step="base", path=str(root), fingerprint="synthetic-model")
    candidates = StepRecord(step="candidates", path=str(root / "candidates"), fingerprint=root.name)
    run_dir = root / f"{step}-{tracer}"
    if step == "judge":
        def call():
            return steps.judge_step(config, 1, run_dir, model, candidates, steps.inference_model(config, model))
    else:  # the judgments written by the rss judge child of the same size
        judgments = StepRecord(step="judge", path=str(root / "judge-rss" / "iter-1" / "judgments"), fingerprint=root.name)

        def call():
            return steps.pairs_step(config, 1, run_dir, candidates, judgments)

    start = now()
    if tracer == "heap":
        tracemalloc.start()
        record = call()
        heap_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        memory = {"heap_peak_mib": heap_peak}
    else:
        with PeakMemory() as peak:
            record = call()
        memory = {"rss_start_mib": peak.baseline_mib, "rss_peak_mib": peak.peak_mib, "rss_rise_mib": peak.delta_mib,
                  "rss_method": peak.method}
    seconds = now() - start
    work = record.summary["candidates"] if step == "judge" else record.summary["pairs"]
    return {**spec, **memory, "seconds": seconds, "work": work}


def _import_steps():
    """`flows.steps` without `flows/__init__.py`, which imports the Prefect flows (5 s, unused here)."""
    import types

    package = types.ModuleType("flows")
    package.__path__ = [str(ROOT / "flows")]
    sys.modules.setdefault("flows", package)
    from flows import steps
    from flows.stepdir import StepRecord

    return steps, StepRecord


def _child(conn, fn, args) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))


def in_child(fn, *args) -> Any:
    """`fn(*args)` in a fresh forked process; its return value comes back through a pipe."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, args))
    process.start()
    send.close()
    status, value = receive.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"child {fn.__name__}{args} failed:\n{value}")
    return value


# ---------------------------------------------------------------- main


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = now()
    _import_steps()  # once, inherited by every forked child
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    print_header("Peak memory of the judge and pairs steps vs the number of prompts", [
        f"synthetic candidates: {NUM_CANDIDATES} candidates x {RESPONSE_TOKENS} tokens, {PROMPT_TOKENS}-token prompts, "
        f"vocab {VOCAB}; judged by an external reward fn (no model)",
        "each figure from a fresh forked child; rss: VmHWM rise during the step call; heap: tracemalloc peak "
        "(separate child)",
    ])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n in sizes:
            root = Path(tmp) / f"prompts-{n}"
            in_child(write_candidates, root / "candidates" / "candidates.jsonl", n)
            file_mib = (root / "candidates" / "candidates.jsonl").stat().st_size / 2**20
            for step in ("judge", "pairs"):  # pairs reads the judge step's output
                row: dict[str, Any] = {"step": step, "prompts": n, "candidates_file_mib": file_mib}
                for tracer in ("rss", "heap"):
                    result = in_child(measure, {"root": str(root), "step": step, "tracer": tracer})
                    row.update({k: v for k, v in result.items() if k not in ("root", "tracer", "seconds")})
                    row[f"seconds_{tracer}"] = result["seconds"]
                rows.append(row)
                print(f"  {step:5s} {n:6d} prompts: RSS +{row['rss_rise_mib']:.1f} MiB, heap peak "
                      f"{row['heap_peak_mib']:.1f} MiB ({row['seconds_rss']:.1f} s)  load {load_average()[:1]}", flush=True)
    print(format_table(
        ["step", "prompts", "candidates MiB", "RSS at start MiB", "peak RSS MiB", "RSS rise MiB", "heap peak MiB", "s"],
        [[r["step"], r["prompts"], r["candidates_file_mib"], r["rss_start_mib"], r["rss_peak_mib"], r["rss_rise_mib"],
          r["heap_peak_mib"], r["seconds_rss"]] for r in rows],
    ))
    growth = []
    for step in ("judge", "pairs"):
        small, large = (r for r in rows if r["step"] == step)
        growth.append({"step": step, "prompts_ratio": large["prompts"] / small["prompts"],
                       "rss_rise_ratio": large["rss_rise_mib"] / max(small["rss_rise_mib"], 1e-9),
                       "heap_peak_ratio": large["heap_peak_mib"] / max(small["heap_peak_mib"], 1e-9)})
    print(format_table(["step", "prompts x", "RSS rise x", "heap peak x"],
                       [[g["step"], f"{g['prompts_ratio']:.0f}x", f"{g['rss_rise_ratio']:.2f}x",
                         f"{g['heap_peak_ratio']:.2f}x"] for g in growth]))
    write_result(NAME, args, {
        "workload": {"sizes": list(sizes), "num_candidates": NUM_CANDIDATES, "response_tokens": RESPONSE_TOKENS,
                     "prompt_tokens": PROMPT_TOKENS, "vocab": VOCAB, "judge": "external reward fn (crc_reward)"},
        "rows": rows,
        "growth": growth,
    }, started)


if __name__ == "__main__":
    main()
