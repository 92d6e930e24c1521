"""One self-rewarding iteration of the demo config, broken down: step compute vs Prefect + MLflow overhead.

Runs the real flow, `flows.self_rewarding_flow(load_config("configs/demo.yaml", ["iterations=1"]))`,
in a child process (its logs go to a file) with a fresh output folder, an ephemeral Prefect
(PREFECT_HOME in a temp folder, PREFECT_API_URL unset) and a sqlite MLflow store in that folder
(MLFLOW_TRACKING_URI unset). The flow builds the data and M0, runs SFT (-> M1) and its
evaluation, then iteration 1 as a Prefect subflow.

Measured with thin timing wrappers around the shipped code (installed before the flow is imported,
no behaviour change):
    step compute   `flows.steps.run_step` (the step body: load inputs, compute, write, manifest),
                   keyed by stage and step (prompts, candidates, judge, pairs, dpo, eval, ...),
                   minus the MLflow calls made inside it
    MLflow         every public `pipeline.tracking.Tracker` method (outermost call only): calls inside
                   a step (the training curves' log_fn) and calls in the flow body
    plots          `pipeline.report.plot_*` (matplotlib figures logged as artifacts)
    iteration      the `iteration_flow` subflow call, as made by the parent flow
    Prefect start  the ephemeral Prefect server's start-up (first API call, before the flow)
Orchestration (Prefect) = wall time - step compute - MLflow - plots, i.e. flow and
task run bookkeeping, state changes, logging to the API, result handling and our flow-body glue.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, format_table, now, parse_args, print_header, write_result

NAME = "iteration"
QUICK_OVERRIDES = [
    "data.num_ift=64", "data.num_eft=64", "data.num_seed_prompts=32", "data.num_eval=16",
    "sft.num_epochs=1", "iteration.prompts.num_prompts=16", "eval.num_judge_pairs=16",
]
ITERATION_STEPS = ["prompts", "candidates", "judge", "pairs", "dpo", "eval"]


# ---------------------------------------------------------------- child: instrumentation


class Probe:
    """Collects timed intervals from the wrappers (thread-local nesting, so nested calls count once)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.local = threading.local()
        self.phase = "setup"  # "setup" (data, M0, SFT, eval-sft, flow start/end) or "iteration"

    def wrap(self, kind: str, name: str, fn: Callable, key: Callable[..., str] | None = None) -> Callable:
        probe = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(probe.local, kind, 0)
            setattr(probe.local, kind, depth + 1)
            start = now()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(probe.local, kind, depth)
                if depth == 0:
                    probe.records.append({
                        "kind": kind, "name": key(*args, **kwargs) if key else name, "phase": probe.phase,
                        "in_step": kind != "step" and getattr(probe.local, "step", 0) > 0,
                        "start": start, "seconds": now() - start,
                    })

        timed.__wrapped__ = fn
        return timed


def _instrument(probe: Probe) -> None:
    """Wrap the shipped functions (see the module docstring) before the flows are imported."""
    import pipeline.report as report
    from pipeline.tracking import Tracker

    for name, attr in list(vars(Tracker).items()):
        if name != "__init__" and name.startswith("_"):
            continue
        # Keep the descriptor kind, so instance / class calls bind exactly as before.
        if isinstance(attr, classmethod | staticmethod):
            setattr(Tracker, name, type(attr)(probe.wrap("mlflow", name, attr.__func__)))
        elif inspect.isfunction(attr):
            setattr(Tracker, name, probe.wrap("mlflow", name, attr))
    for name in [n for n in vars(report) if n.startswith("plot_")]:
        setattr(report, name, probe.wrap("plot", name, getattr(report, name)))
    import flows.run
    import flows.stepdir
    from flows.steps import common, evaluate, generate, judge, start, train

    timed_step = probe.wrap(
        "step", "run_step", flows.stepdir.run_step, key=lambda step, path, *a, **k: f"{Path(path).parent.name}/{step}"
    )
    for module in (common, evaluate, generate, judge, start, train):  # each imported run_step by name
        if hasattr(module, "run_step"):
            module.run_step = timed_step
    iteration_flow = flows.run.iteration_flow

    def timed_iteration(*args: Any, **kwargs: Any) -> Any:
        probe.phase = "iteration"
        try:
            return probe.wrap("iteration", "iteration_flow", iteration_flow)(*args, **kwargs)
        finally:
            probe.phase = "setup"

    flows.run.iteration_flow = timed_iteration


def child(out_json: Path, work: Path, overrides: list[str], threads: int) -> None:
    """Runs in the child process: start Prefect, run the flow, dump the probe's records."""
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    (work / "prefect").mkdir(parents=True, exist_ok=True)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_PROFILES_PATH"):
        os.environ.pop(key, None)
    import torch

    torch.set_num_threads(threads)
    probe = Probe()
    _instrument(probe)
    from prefect.client.orchestration import get_client

    from flows import self_rewarding_flow
    from pipeline.config import load_config

    config = load_config(ROOT / "configs" / "demo.yaml", overrides)
    start = now()
    with get_client(sync_client=True) as client:  # starts the ephemeral Prefect server
        client.api_healthcheck()
    prefect_start = now() - start
    start = now()
    result = self_rewarding_flow(config, output_dir=str(work / "out"))
    flow_wall = now() - start
    out_json.write_text(json.dumps({
        "prefect_start_s": prefect_start,
        "flow_wall_s": flow_wall,
        "records": probe.records,
        "rows": result.get("rows"),
        "config_overrides": overrides,
        "torch_threads": torch.get_num_threads(),
    }, default=str))


# ---------------------------------------------------------------- parent: run and report


def _sum(records: list[dict], **match: Any) -> float:
    return sum(r["seconds"] for r in records if all(r.get(k) == v for k, v in match.items()))


def breakdown(data: dict[str, Any]) -> dict[str, Any]:
    """Iteration rows (share of the iteration's wall time) and whole-flow rows (share of the flow)."""
    records = data["records"]
    iteration_wall = _sum(records, kind="iteration")
    step_records = [r for r in records if r["kind"] == "step" and r["phase"] == "iteration"]
    steps = {r["name"].split("/", 1)[1]: r["seconds"] for r in step_records}
    # MLflow calls made inside a step (the training curves) are tracking, not the step's compute.
    for r in records:
        if r["kind"] == "mlflow" and r["phase"] == "iteration" and r["in_step"]:
            host = next(s for s in step_records if s["start"] <= r["start"] <= s["start"] + s["seconds"])
            steps[host["name"].split("/", 1)[1]] -= r["seconds"]
    it_rows = [(f"step: {name}", steps.get(name, 0.0)) for name in ITERATION_STEPS]
    it_rows += [(f"step: {n} (other)", s) for n, s in steps.items() if n not in ITERATION_STEPS]
    mlflow_in_steps = _sum(records, kind="mlflow", phase="iteration", in_step=True)
    mlflow = mlflow_in_steps + _sum(records, kind="mlflow", phase="iteration", in_step=False)
    plots = _sum(records, kind="plot", phase="iteration")
    orchestration = iteration_wall - sum(steps.values()) - mlflow - plots
    it_rows += [("MLflow (runs, params, metrics incl. training curves, artifacts, registry)", mlflow),
                ("plots (matplotlib)", plots), ("Prefect orchestration + glue (rest)", orchestration)]
    setup_steps = {r["name"]: r["seconds"] for r in records if r["kind"] == "step" and r["phase"] == "setup"}
    setup_mlflow = _sum(records, kind="mlflow", phase="setup", in_step=False)
    setup_plots = _sum(records, kind="plot", phase="setup")
    setup_rest = data["flow_wall_s"] - sum(setup_steps.values()) - iteration_wall - setup_mlflow - setup_plots
    flow_rows = [("Prefect server start (before the flow)", data["prefect_start_s"]),
                 ("setup steps (data, M0, SFT, eval-sft)", sum(setup_steps.values())),
                 ("iteration 1 (subflow, all of the above)", iteration_wall),
                 ("MLflow outside the iteration (store init, parent + SFT runs)", setup_mlflow),
                 ("plots outside the iteration", setup_plots),
                 ("Prefect + glue outside the iteration (rest)", setup_rest)]
    setup_overhead = setup_mlflow + setup_plots + setup_rest
    return {
        "iteration_wall_s": iteration_wall,
        "iteration_rows": [{"part": p, "seconds": s, "share": s / iteration_wall} for p, s in it_rows],
        "iteration_overhead_s": mlflow + plots + orchestration,
        "iteration_overhead_share": (mlflow + plots + orchestration) / iteration_wall,
        "mlflow_inside_steps_s": mlflow_in_steps,
        "setup_steps": setup_steps,
        "flow_rows": [{"part": p, "seconds": s, "share": s / (data["flow_wall_s"] + data["prefect_start_s"])}
                      for p, s in flow_rows],
        "flow_overhead_s": data["prefect_start_s"] + setup_overhead + mlflow + plots + orchestration,
        "flow_overhead_share": (data["prefect_start_s"] + setup_overhead + mlflow + plots + orchestration)
        / (data["flow_wall_s"] + data["prefect_start_s"]),
    }


def main() -> None:
    def extra(parser) -> None:
        parser.add_argument("--child", nargs=2, help=argparse_hidden())
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="extra config override, e.g. --set iteration.prompts.source=self_instruct")

    args = parse_args(__doc__.splitlines()[0], extra)
    overrides = ["iterations=1", *(QUICK_OVERRIDES if args.quick else []), *args.overrides]
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), overrides, args.threads)
        return
    started = now()
    print_header("One iteration of the demo config: step compute vs orchestration + tracking", [
        "real flow (flows.self_rewarding_flow) on configs/demo.yaml with --set " + " ".join(overrides),
        "ephemeral Prefect + sqlite MLflow in a temp folder; flow logs go to a file (path printed on failure)",
    ])
    work = Path(tempfile.mkdtemp(prefix="bench-iteration-"))
    try:
        out_json, log = work / "timings.json", work / "flow.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out_json), str(work),
                   "--threads", str(args.threads), *(["--quick"] if args.quick else []),
                   *(f"--set={o}" for o in args.overrides)]
        with open(log, "w") as handle:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
        if code != 0 or not out_json.is_file():
            tail = log.read_text(errors="replace").splitlines()[-40:]
            keep = work.with_name(work.name + "-failed")
            shutil.move(str(work), keep)
            raise SystemExit(f"flow run failed (exit {code}); log kept in {keep / 'flow.log'}:\n" + "\n".join(tail))
        data = json.loads(out_json.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = breakdown(data)
    stage = next((r for r in data.get("rows") or [] if r.get("stage") == "iter-1"), {})
    print(f"iteration 1 wall time {result['iteration_wall_s']:.2f} s; whole flow {data['flow_wall_s']:.2f} s "
          f"(+ Prefect start {data['prefect_start_s']:.2f} s); iteration 1 made {stage.get('num_pairs', 0):.0f} "
          f"preference pairs (judge parse failure rate {stage.get('parse_failure_rate', float('nan')):.0%})")
    print(format_table(["iteration 1 part", "seconds", "share"],
                       [[r["part"], round(r["seconds"], 3), f"{r['share']:.1%}"] for r in result["iteration_rows"]]))
    print(f"orchestration + tracking overhead of the iteration: {result['iteration_overhead_s']:.2f} s = "
          f"{result['iteration_overhead_share']:.1%} (of which {result['mlflow_inside_steps_s']:.2f} s MLflow "
          "metric logging inside the DPO step)")
    print(format_table(["whole flow part", "seconds", "share"],
                       [[r["part"], round(r["seconds"], 3), f"{r['share']:.1%}"] for r in result["flow_rows"]]))
    print(f"whole flow: orchestration + tracking overhead {result['flow_overhead_s']:.2f} s = "
          f"{result['flow_overhead_share']:.1%} of {data['flow_wall_s'] + data['prefect_start_s']:.2f} s "
          "(Prefect start included)")
    write_result(NAME, args, {"raw": data, **result}, started)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
