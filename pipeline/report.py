"""What a person reads: the per-stage comparison table, its PNG plots and the Prefect summaries."""

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot state, no backend to select

from dpo import write_text_atomic

# Columns of `selfreward compare` (every metric is in `--json` and in MLflow).
TABLE_COLUMNS = [
    "stage", "model", "num_prompts", "valid_task_share", "diversity", "num_pairs", "skip_rate", "parse_failure_rate",
    "judge_accuracy", "judge_parse_failures", "dpo_reward_accuracy", "gt_score", "gt_success", "judge_pairwise_accuracy",
    "self_judge_score", "mean_response_length",
]
CURVES = ["sft/loss", "dpo/loss", "dpo/rewards/accuracies", "dpo/rewards/margins"]
# Per-stage plots use fixed margins: tight_layout measures every label and took 40% of the
# rendering time (70 of 175 ms for the learning curves), paid on every iteration.
_FIXED_MARGINS = {"left": 0.12, "right": 0.97, "bottom": 0.17, "top": 0.88, "wspace": 0.35}


def stage_name(index: int) -> str:
    return "sft" if index == 0 else f"iter-{index}"


def artifact_key(run_name: str, stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{run_name}-{stage}".lower()).strip("-")


def comparison_rows(stage_metrics: Mapping[int, Mapping[str, float]]) -> list[dict]:
    """One row per stage (0 = SFT), model M_{index+1}, from the parent run's per-stage metrics."""
    return [
        {"stage": stage_name(i), "model": f"M{i + 1}", **dict(stage_metrics[i])}
        for i in sorted(stage_metrics)
    ]


def format_table(rows: Sequence[Mapping]) -> str:
    """A fixed-width text table of the comparison rows."""
    if not rows:
        return "(no finished stages)"
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    cells = [[_cell(r.get(c), count=c.startswith("num_")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value, count: bool = False) -> str:
    if value is None:
        return "-"  # the metric does not apply to this stage
    if isinstance(value, float) and math.isnan(value):
        return "n/a"  # a rate of 0 of 0
    if isinstance(value, float) and count:
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def plot_comparison(rows: Sequence[Mapping], path: Path, metrics: Sequence[str] | None = None) -> Path:
    """A PNG with one panel per metric across stages (M1, M2, ...)."""
    numeric = [k for k in (metrics or _plottable(rows)) if any(isinstance(r.get(k), int | float) for r in rows)]
    cols = min(3, max(1, len(numeric)))
    nrows = max(1, -(-len(numeric) // cols))
    fig = Figure(figsize=(4 * cols, 3 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    labels = [r["model"] for r in rows]
    for ax, key in zip(axes.flat, numeric):
        ax.plot(labels, [r.get(key, float("nan")) for r in rows], marker="o")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(numeric):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _plottable(rows: Sequence[Mapping]) -> list[str]:
    preferred = ["gt_score", "gt_success", "judge_pairwise_accuracy", "judge_accuracy", "judge_parse_failures",
                 "mean_response_length", "num_pairs", "dpo_reward_accuracy", "parse_failure_rate"]
    keys = [k for k in preferred if any(k in r for r in rows)]
    return keys or [k for k in rows[0] if k not in ("stage", "model")] if rows else []


def plot_learning_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path | None:
    present = {k: v for k, v in curves.items() if v}
    if not present:
        return None
    fig = Figure(figsize=(4 * len(present), 3))
    axes = fig.subplots(1, len(present), squeeze=False)
    for ax, (key, points) in zip(axes.flat, present.items()):
        ax.plot([s for s, _ in points], [v for _, v in points])
        ax.set_title(f"{title}: {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.subplots_adjust(**_FIXED_MARGINS)
    return _save(fig, path)


def plot_score_histogram(histogram: Mapping[str, int], path: Path, title: str, unparsed: int = 0) -> Path | None:
    """Bars of parsed judgment scores (rounded to an integer bucket) plus one bar, in another colour,
    for the judgments whose score could not be parsed."""
    if not histogram and not unparsed:
        return None
    keys = sorted(histogram, key=lambda k: float(k) if _is_number(k) else float("inf"))
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.bar(keys, [histogram[k] for k in keys], label="parsed")
    if unparsed:
        ax.bar(["unparsed"], [unparsed], color="tab:red", label="unparsed")
    ax.set_title(title)
    ax.set_xlabel("judge score")
    ax.set_ylabel("judgments")
    # The y label sits left of the default 0.12 margin: a wider one keeps it inside the image.
    fig.subplots_adjust(**{**_FIXED_MARGINS, "left": 0.16, "bottom": 0.2})
    return _save(fig, path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path


def stage_summary_markdown(run_name: str, stage: str, metrics: Mapping[str, float], link: str) -> str:
    lines = [f"# {run_name}: {stage}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in sorted(metrics.items())]
    lines += ["", f"MLflow: {link}"]
    return "\n".join(lines)


# What a model version's description shows first (every metric is on the stage run).
KEY_METRICS = ["gt_score", "gt_success", "self_judge_score", "judge_accuracy", "judge_parse_failures",
               "num_pairs", "parse_failure_rate", "dpo_reward_accuracy"]


def version_description(run_name: str, stage: str, metrics: Mapping[str, float], outcome: str) -> str:
    """Markdown description of a stage's registered model version: what it is and its key metrics."""
    model = "M1 (SFT)" if stage == "sft" else f"M{int(stage.removeprefix('iter-')) + 1}"
    lines = [f"**{run_name} {stage}**: {model} of self-rewarding run `{run_name}`; outcome: {outcome}.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(metrics[key], count=key.startswith('num_'))} |" for key in KEY_METRICS if key in metrics]
    return "\n".join(lines)


def jsonable(value):
    """`value` with NaN (a rate of 0 of 0) as None, so the JSON is standard (null)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, data) -> Path:
    return write_text_atomic(path, json.dumps(jsonable(data), indent=2, default=str))
