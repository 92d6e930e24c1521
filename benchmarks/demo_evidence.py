"""Evidence that the embedded demo's self-rewarding loop improves the model, against a control.

For each seed, runs the demo config twice with `selfreward run` (a child process each, as a user
would, with its own run name in one output folder per seed):

    self_rewarding   the demo as shipped: M_t's own judgments rank its samples, best vs worst
    random_pairs     the same, with `iteration.pairs.strategy=random`: each pair is two of the same
                     judged candidates in random order, on exactly the prompts max_min keeps

The control starts from the self-rewarding run's finished data, M0, SFT (M1) and iteration-1
prompts, candidates and judgments (copied step folders; their fingerprints match, so the flow
reuses them and both arms start from the same M1). Whatever the control gains is what DPO on
unranked self-samples gives by itself; the difference is what the judge's ranking adds.

Prints mean and sample std across seeds per stage (M1 = SFT, M2, M3, ...) for gt_score, gt_success,
judge_pairwise_accuracy and num_pairs, the per-seed gain of the last stage over M1, and a verdict:
the self-rewarding gain in gt_score must exceed the seed spread (the larger std of M1 and of the
last stage) and the control's gain. Writes `benchmarks/results/demo_evidence.json` (temp + rename).

    python benchmarks/demo_evidence.py --seeds 3        # ~2 x 3 demo runs (minutes each)
    python benchmarks/demo_evidence.py --quick          # a smaller model and data: a smoke test
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, format_table, load_average, now, parse_args, print_header, write_result

NAME = "demo_evidence"
METRICS = ["gt_score", "gt_success", "gt_score_sampled", "judge_pairwise_accuracy", "num_pairs", "mean_response_length"]
ARMS: dict[str, list[str]] = {
    "self_rewarding": [],
    "random_pairs": ["iteration.pairs.strategy=random"],
}
# Steps the control arm takes from the self-rewarding run of the same seed (identical inputs).
SHARED_STEPS = ["data", "base", "sft", "iter-1/prompts", "iter-1/candidates", "iter-1/judgments"]
# --quick: the tests' reduced demo (seconds per step); the numbers only show the script works.
QUICK_OVERRIDES = [
    "data.num_ift=48", "data.num_eft=96", "data.num_seed_prompts=24", "data.num_eval=16",
    "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64", "model.tiny.vocab_size=300",
    "sft.num_epochs=null", "sft.num_train_steps=40", "sft.batch_size=16", "sft.warmup_steps=4",
    "iteration.prompts.num_prompts=16", "iteration.candidates.num=4", "iteration.dpo.num_epochs=null",
    "iteration.dpo.num_train_steps=4", "iteration.dpo.batch_size=4", "eval.num_judge_pairs=8",
]


def _extra_args(parser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3; 2 with --quick)")
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
    env = {**os.environ, "PREFECT_HOME": str(output / "prefect"), "OMP_NUM_THREADS": str(threads)}
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


def share_steps(source_run: Path, target_run: Path) -> list[str]:
    """Copy finished step folders of one run into a new run folder, manifests re-pointed to the copy.

    The flow reuses a step folder whose manifest fingerprint matches its inputs, so the copies are
    used only where the new run's inputs are identical (else the step is recomputed).
    """
    from flows.stepdir import MANIFEST, StepRecord

    copied = []
    for step in SHARED_STEPS:
        src, dst = source_run / step, target_run / step
        if not (src / MANIFEST).is_file():
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


def gains(runs: list[dict[str, Any]], metric: str = "gt_score") -> list[float]:
    """Per seed: the last stage's metric minus M1's (paired by seed)."""
    return [run["rows"][-1][metric] - run["rows"][0][metric] for run in runs]


def verdict(summaries: dict[str, dict], runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Does self-rewarding beat M1 by more than the seed spread, and beat the control's gain?"""
    sr = summaries["self_rewarding"]
    first, last = next(iter(sr)), list(sr)[-1]
    spread = max(sr[first]["gt_score"]["std"], sr[last]["gt_score"]["std"])
    sr_gain = statistics.fmean(gains(runs["self_rewarding"]))
    control_gain = statistics.fmean(gains(runs["random_pairs"])) if runs.get("random_pairs") else None
    return {
        "stages": [first, last],
        "self_rewarding_gain": sr_gain,
        "self_rewarding_gain_per_seed": gains(runs["self_rewarding"]),
        "control_gain": control_gain,
        "control_gain_per_seed": gains(runs["random_pairs"]) if runs.get("random_pairs") else None,
        "seed_spread": spread,
        "gain_exceeds_spread": sr_gain > spread,
        "gain_exceeds_control": control_gain is None or sr_gain > control_gain,
    }


# ---------------------------------------------------------------- output


def print_tables(summaries: dict[str, dict]) -> None:
    for arm, summary in summaries.items():
        rows = [[stage, *(f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" if m in s else "-" for m in METRICS)]
                for stage, s in summary.items()]
        print(f"\n{arm} (mean ± std over seeds)")
        print(format_table(["stage", *METRICS], rows))


def print_verdict(result: dict[str, Any]) -> None:
    first, last = result["stages"]
    per_seed = ", ".join(f"{g:+.3f}" for g in result["self_rewarding_gain_per_seed"])
    print(f"\ngt_score gain {last} - {first}: self-rewarding {result['self_rewarding_gain']:+.3f} "
          f"(per seed {per_seed}); seed spread (larger std) {result['seed_spread']:.3f}")
    if result["control_gain"] is not None:
        per_seed = ", ".join(f"{g:+.3f}" for g in result["control_gain_per_seed"])
        print(f"random-pair control gain {result['control_gain']:+.3f} (per seed {per_seed})")
    ok = result["gain_exceeds_spread"] and result["gain_exceeds_control"]
    print(f"verdict: {'PASS' if ok else 'FAIL'} (gain > spread: {result['gain_exceeds_spread']}, "
          f"gain > control: {result['gain_exceeds_control']})")


def run_all(args, output: Path, overrides: list[str]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        seed_dir = output / f"seed-{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        for arm, arm_overrides in ARMS.items():
            run_name = f"{arm.replace('_', '-')}-seed{seed}"
            shared = [] if arm == "self_rewarding" else share_steps(seed_dir / f"self-rewarding-seed{seed}", seed_dir / run_name)
            run = run_demo(seed_dir, run_name, [f"seed={seed}", *overrides, *arm_overrides], args.config, args.threads)
            run.update(seed=seed, shared_steps=shared)
            runs[arm].append(run)
            last = run["rows"][-1]
            print(f"seed {seed} {arm:<15} {run['wall_seconds']:6.1f}s  M1 gt_score {run['rows'][0].get('gt_score', float('nan')):.3f}"
                  f" -> {last['model']} {last.get('gt_score', float('nan')):.3f}", flush=True)
    return runs


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    if args.quick and "--seeds" not in sys.argv:
        args.seeds = 2
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides]
    print_header("demo evidence: self-rewarding vs random-pair control", [
        f"{args.seeds} seeds x {len(ARMS)} arms of `selfreward run {args.config or ''}`, torch threads {args.threads}",
        f"overrides: {overrides or 'none'}",
    ])
    started, load_start = now(), load_average()
    temp = None if args.output else tempfile.mkdtemp(prefix="selfreward-evidence-")
    output = Path(args.output or temp).resolve()
    try:
        runs = run_all(args, output, overrides)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    summaries = {arm: summarize(arm_runs) for arm, arm_runs in runs.items()}
    print_tables(summaries)
    result = verdict(summaries, runs)
    print_verdict(result)
    if args.quick:
        print("(--quick checks the script end to end; its barely trained judge writes few or no parsable "
              "scores, so there are few pairs and the verdict means nothing)")
    sr_walls = [r["wall_seconds"] for r in runs["self_rewarding"]]
    print(f"self-rewarding run wall time: {', '.join(f'{w:.0f}s' for w in sr_walls)} (whole `selfreward run`, incl. start-up)")
    write_result(NAME, args, {
        "config": args.config or "configs/demo.yaml", "overrides": overrides, "seeds": args.seeds,
        "load_average_start": load_start,
        "summary": summaries, "verdict": result,
        "runs": {arm: [{k: v for k, v in r.items() if k != "log"} for r in arm_runs] for arm, arm_runs in runs.items()},
    }, started)


if __name__ == "__main__":
    main()
