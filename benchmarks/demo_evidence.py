"""Evidence that the embedded demo keeps improving, actor and judge, over 5 iterations, per remedy.

For each seed, runs the demo config as `selfreward run` child processes (as a user would), once per arm:

    vanilla        the paper's loop: self-instruct, the current model judges, no remedy
    replay         + skill replay: judge, self-instruct and meta-judge SFT data trained with NLL in DPO
    meta_judge     + Meta-Rewarding: judge pairs from the model comparing its own judgments (its SFT
                     data gains meta-judge examples, so its M1 differs)
    consistency    + CREAM: the previous stage re-ranks the candidates; disagreement smooths the labels
    anchored       + anchored rejection: rejected responses from M1's samples for the same prompt
    judge_choice   + the judge with the best held-out health judges, with a gate and a fallback
    default        the demo as shipped (its chosen combination)
    random_pairs   the default with random pairs: the same recipe without the judge's ranking (control)

Every arm shares the seed's data, M0 and M1 with the first arm where its inputs are equal (copied
step folders whose fingerprints match), and the control also shares iteration 1's prompts,
candidates and judgments with `default`. Every arm runs with `iteration.on_degenerate=skip`, so an
iteration that cannot train is recorded as skipped instead of ending the arm.

Prints per arm and stage the mean ± std over seeds of gt_score (ground-truth checker, evaluation
only), held-out judge accuracy and parse failures, candidate-judging parse failures, pairs,
diversity and self-instruct validity; then the issue's targets checked on `default`. Writes
`benchmarks/results/demo_evidence.json` (temp + rename).

    python benchmarks/demo_evidence.py                       # 8 arms x 3 seeds x 5 iterations (about 1-2 h)
    python benchmarks/demo_evidence.py --arms default,vanilla --jobs 2
    python benchmarks/demo_evidence.py --quick               # a smaller model and data: a smoke test
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import ROOT, format_table, load_average, now, parse_args, print_header, write_result

from pipeline.config import load_config

NAME = "demo_evidence"
METRICS = ["gt_score", "judge_accuracy", "judge_parse_failures", "parse_failure_rate", "num_pairs", "diversity",
           "num_prompts", "valid_task_share", "judge_pairwise_accuracy"]
# Everything the shipped demo enables, turned off: the paper's loop.
VANILLA = ["iteration.dpo.replay_batch_size=0", "iteration.candidates.anchor_samples=0",
           "iteration.consistency.enabled=false", "iteration.meta_judge.enabled=false", "data.num_meta_judge=0",
           "iteration.judge.judge_model=current", "iteration.judge.gate.max_parse_failure_rate=null",
           "iteration.judge.gate.min_pairwise_accuracy=null"]
ARMS: dict[str, list[str]] = {
    "default": [],
    "vanilla": VANILLA,
    "replay": [*VANILLA, "iteration.dpo.replay_batch_size=8"],
    "meta_judge": [*VANILLA, "iteration.meta_judge.enabled=true", "data.num_meta_judge=300"],
    "consistency": [*VANILLA, "iteration.consistency.enabled=true"],
    "anchored": [*VANILLA, "iteration.candidates.anchor_samples=4"],
    "judge_choice": [*VANILLA, "iteration.judge.judge_model=best", "iteration.judge.gate.max_parse_failure_rate=0.05",
                     "iteration.judge.gate.min_pairwise_accuracy=0.7", "iteration.on_degenerate=fallback"],
    "random_pairs": ["iteration.pairs.strategy=random"],
}
EVERY_ARM = ["iterations=5", "iteration.on_degenerate=skip"]
# Steps an arm takes from `default` of the same seed (reused only where the fingerprints match).
SHARED_STEPS = ["data", "base", "sft"]
CONTROL_SHARED = [*SHARED_STEPS, "iter-1/prompts", "iter-1/candidates", "iter-1/judgments"]
# --quick: the tests' reduced demo (seconds per step); the numbers only show the script works.
QUICK_OVERRIDES = [
    "data.num_ift=48", "data.num_eft=96", "data.num_seed_prompts=24", "data.num_eval=16", "data.judge_holdout=16",
    "data.num_self_instruct=24", "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64", "model.tiny.vocab_size=300",
    "sft.num_epochs=null", "sft.num_train_steps=40", "sft.batch_size=16", "sft.warmup_steps=4",
    "iteration.prompts.num_prompts=16", "iteration.candidates.num=4", "iteration.dpo.num_epochs=null",
    "iteration.dpo.num_train_steps=4", "iteration.dpo.batch_size=4", "eval.num_judge_pairs=8", "iterations=2",
]


def _extra_args(parser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms (default: all of {list(ARMS)})")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads torch threads)")
    parser.add_argument("--config", default=None, help="run config (default: the embedded configs/demo.yaml)")
    parser.add_argument("--output", default=None, help="keep the runs here (default: a temp folder, removed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every run")


# ---------------------------------------------------------------- runs


def _selfreward() -> list[str]:
    script = Path(sys.executable).with_name("selfreward")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def run_demo(output: Path, run_name: str, overrides: list[str], config: str | None, threads: int) -> dict[str, Any]:
    """One `selfreward run` in a child process; returns its stage rows and wall time."""
    command = [*_selfreward(), "run", *([config] if config else []), "--output", str(output),
               *(arg for o in [f"run_name={run_name}", *overrides] for arg in ("--set", o))]
    env = {**os.environ, "PREFECT_HOME": str(output / "prefect"), "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    env.pop("PREFECT_API_URL", None)  # ephemeral Prefect, never a server the user runs
    env.pop("MLFLOW_TRACKING_URI", None)  # the sqlite store in `output`
    log = output / f"{run_name}.log"
    start = now()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    seconds = now() - start
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"`{' '.join(command)}` exited with {code}; log {log}:\n{tail}")
    rows = json.loads((output / run_name / "stages.json").read_text(encoding="utf-8"))
    return {"run_name": run_name, "wall_seconds": round(seconds, 1), "rows": rows, "log": str(log)}


def share_steps(source_run: Path, target_run: Path, steps: list[str], config) -> list[str]:
    """Copy finished step folders of one run into a new run folder, manifests re-pointed to the copy.

    The flow reuses a step folder whose manifest fingerprint matches its inputs, so the copies are
    used only where the new run's inputs are identical (else the step is recomputed). The folder gets
    the new run's resolved `config` and a fresh identity first, so `selfreward run` takes it as that
    run's folder (it refuses to write into a folder that is not a run's).
    """
    from flows.stepdir import MANIFEST, StepRecord
    from pipeline.rundir import RunIdentity, write_config, write_identity

    target_run.mkdir(parents=True, exist_ok=True)
    write_config(target_run, config)
    if not (target_run / ".identity.json").exists():
        write_identity(target_run, RunIdentity())

    copied = []
    for step in steps:
        src, dst = source_run / step, target_run / step
        if not (src / MANIFEST).is_file() or dst.exists():
            continue
        shutil.copytree(src, dst)
        for manifest in dst.rglob(MANIFEST):
            record = StepRecord.model_validate_json(manifest.read_text(encoding="utf-8"))
            record = record.model_copy(update={"path": str(manifest.parent.resolve())})
            tmp = manifest.with_name(f".{MANIFEST}.tmp")
            tmp.write_text(record.model_dump_json(), encoding="utf-8")
            os.replace(tmp, manifest)
        copied.append(step)
    return copied


def run_arm(args, output: Path, overrides: list[str], arm: str, seed: int) -> dict[str, Any]:
    seed_dir = output / f"seed-{seed}"
    run_name = f"{arm.replace('_', '-')}-seed{seed}"
    reference = seed_dir / f"default-seed{seed}"
    sets = [f"seed={seed}", *EVERY_ARM, *overrides, *ARMS[arm]]
    shared = [] if arm == "default" else share_steps(
        reference, seed_dir / run_name, CONTROL_SHARED if arm == "random_pairs" else SHARED_STEPS,
        load_config(args.config, [f"run_name={run_name}", *sets]))
    run = run_demo(seed_dir, run_name, sets, args.config, args.threads)
    run.update(arm=arm, seed=seed, shared_steps=shared)
    first, last = run["rows"][0], run["rows"][-1]
    print(f"seed {seed} {arm:<13} {run['wall_seconds']:6.1f}s  M1 gt_score {first.get('gt_score', float('nan')):.3f}"
          f" -> {last['model']} {last.get('gt_score', float('nan')):.3f}", flush=True)
    return run


def run_all(args, output: Path, overrides: list[str], arms: list[str]) -> dict[str, list[dict[str, Any]]]:
    """`default` of every seed first (the others share its data and M1), then the rest, `--jobs` at once."""
    for seed in range(args.seeds):
        (output / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
    jobs = [("default", s) for s in range(args.seeds)] if "default" in arms else []
    later = [(arm, s) for s in range(args.seeds) for arm in arms if arm != "default"]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for batch in (jobs, later):
            for run in pool.map(lambda job: run_arm(args, output, overrides, *job), batch):
                runs[run["arm"]].append(run)
    return runs


# ---------------------------------------------------------------- statistics


def _by_stage(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """stage -> metric -> values across seeds (a stage missing a metric contributes nothing)."""
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for row in run["rows"]:
            stage = f"{row['model']} ({row['stage']})"
            for metric in METRICS:
                if isinstance(row.get(metric), int | float):
                    table.setdefault(stage, {}).setdefault(metric, []).append(float(row[metric]))
    return table


def _mean_std(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """stage -> metric -> {mean, std (sample, ddof=1), values per seed}."""
    return {stage: {m: _mean_std(v) for m, v in metrics.items()} for stage, metrics in _by_stage(runs).items()}


def check_targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The self-improvement issue's targets on one arm's runs (all seeds), each with its measurement."""
    rows = [run["rows"] for run in runs]
    gt = [[r.get("gt_score", float("nan")) for r in seed_rows] for seed_rows in rows]
    mean_gt = [statistics.fmean(stage) for stage in zip(*gt)]
    accuracy = [[r.get("judge_accuracy", float("nan")) for r in seed_rows] for seed_rows in rows]
    failures = [max((r.get(key) or 0.0) for r in seed_rows for key in ("judge_parse_failures", "parse_failure_rate"))
                for seed_rows in rows]
    iterations = [r for seed_rows in rows for r in seed_rows[1:]]
    checks = {
        "mean gt_score rises at every stage": (all(b > a for a, b in zip(mean_gt, mean_gt[1:])), mean_gt),
        "M6 - M3 >= 0.05": (len(mean_gt) > 5 and mean_gt[5] - mean_gt[2] >= 0.05,
                            mean_gt[5] - mean_gt[2] if len(mean_gt) > 5 else None),
        "every seed M6 >= M1 + 0.15": (all(g[-1] >= g[0] + 0.15 for g in gt), [g[-1] - g[0] for g in gt]),
        "every seed judge accuracy M6 >= M1 - 0.03": (all(a[-1] >= a[0] - 0.03 for a in accuracy),
                                                       [a[-1] - a[0] for a in accuracy]),
        "parse failures < 5% at every stage": (all(f < 0.05 for f in failures), failures),
        ">= 100 accepted prompts per iteration": (all(r.get("num_prompts", 0) >= 100 for r in iterations),
                                                  min((r.get("num_prompts", 0) for r in iterations), default=None)),
        ">= 80% valid tasks": (all(r.get("valid_task_share", 0) >= 0.8 for r in iterations),
                               min((r.get("valid_task_share", 0) for r in iterations), default=None)),
        "5-iteration run under 10 min": (all(run["wall_seconds"] < 600 for run in runs), [run["wall_seconds"] for run in runs]),
    }
    return {name: {"met": bool(met), "measured": measured} for name, (met, measured) in checks.items()}


# ---------------------------------------------------------------- output


def print_tables(summaries: dict[str, dict]) -> None:
    for arm, summary in summaries.items():
        rows = [[stage, *(f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" if m in s else "-" for m in METRICS)]
                for stage, s in summary.items()]
        print(f"\n{arm} (mean ± std over seeds)")
        print(format_table(["stage", *METRICS], rows))


def print_targets(arm: str, targets: dict[str, Any]) -> None:
    print(f"\ntargets on `{arm}`:")
    for name, result in targets.items():
        print(f"  [{'met' if result['met'] else 'NOT met'}] {name}: {result['measured']}")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    if args.quick and "--seeds" not in sys.argv:
        args.seeds = 1
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        sys.exit(f"unknown arms {unknown}; choose from {list(ARMS)}")
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides]
    print_header("demo evidence: the loop over 5 iterations, per remedy", [
        f"{args.seeds} seeds x arms {arms} of `selfreward run {args.config or ''}`, {args.jobs} at once, "
        f"torch threads {args.threads} each", f"overrides: {overrides or 'none'}",
    ])
    started, load_start = now(), load_average()
    temp = None if args.output else tempfile.mkdtemp(prefix="selfreward-evidence-")
    output = Path(args.output or temp).resolve()
    try:
        runs = run_all(args, output, overrides, arms)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    summaries = {arm: summarize(arm_runs) for arm, arm_runs in runs.items()}
    print_tables(summaries)
    targets = {arm: check_targets(arm_runs) for arm, arm_runs in runs.items()}
    for arm in ("default", "vanilla"):
        if arm in targets:
            print_targets(arm, targets[arm])
    if args.quick:
        print("(--quick checks the script end to end; its barely trained model says nothing about the targets)")
    write_result(NAME, args, {
        "config": args.config or "configs/demo.yaml", "overrides": overrides, "seeds": args.seeds, "arms": arms,
        "arm_overrides": {arm: ARMS[arm] for arm in arms}, "every_arm": EVERY_ARM, "load_average_start": load_start,
        "summary": summaries, "targets": targets,
        "runs": {arm: [{k: v for k, v in r.items() if k != "log"} for r in arm_runs] for arm, arm_runs in runs.items()},
    }, started)


if __name__ == "__main__":
    main()
