"""The run's verdict: did each stage beat the previous one and M1, and did its judge get worse?

One markdown table, every stage against the previous stage and against the first (M1), with
regressions, judge alerts and the champion marked. It is logged on the MLflow parent run
(`summary/verdict.md`) and is the Prefect flow run's own artifact, so both UIs answer the question
without opening a stage.
"""

import math
from collections.abc import Mapping, Sequence

from pipeline.config import PromotionConfig
from pipeline.promotion import Decision, judge_alerts

__all__ = ["verdict_markdown", "verdict_rows"]


def _num(row: Mapping | None, key: str) -> float | None:
    value = (row or {}).get(key)
    return None if not isinstance(value, int | float) or math.isnan(value) else float(value)


def _delta(new: float | None, old: float | None) -> str:
    return "-" if new is None or old is None else f"{new - old:+.3f}"


def verdict_rows(rows: Sequence[Mapping], decisions: Sequence[Decision], cfg: PromotionConfig) -> list[dict]:
    """Per stage: the metric, its change against the previous stage and M1, judge health, pairs,
    parse failures, and flags (`regression`, `judge alert: ...`, `champion`)."""
    promoted = [d.stage for d in decisions if d.promoted]
    champion = promoted[-1] if promoted else None
    reasons = {d.stage: d for d in decisions}
    first = rows[0] if rows else None
    out = []
    for i, row in enumerate(rows):
        previous = rows[i - 1] if i else None
        value, before = _num(row, cfg.metric), _num(previous, cfg.metric)
        flags = []
        if value is not None and before is not None and value < before - cfg.margin:
            flags.append("regression")
        flags += [f"judge alert: {a}" for a in judge_alerts(row, previous, cfg)]
        index = int(row["model"].removeprefix("M")) - 1  # M1 is stage 0
        if index == champion:
            flags.append("champion")
        out.append({
            "stage": row["stage"], "model": row["model"], "metric": value,
            "vs_previous": _delta(value, before), "vs_m1": _delta(value, _num(first, cfg.metric)) if i else "-",
            "judge_accuracy": _num(row, "judge_accuracy"), "judge_parse_failures": _num(row, "judge_parse_failures"),
            "num_pairs": _num(row, "num_pairs"), "parse_failure_rate": _num(row, "parse_failure_rate"),
            "flags": flags, "promotion": reasons[index].reason if index in reasons else None,
        })
    return out


def verdict_markdown(run_name: str, rows: Sequence[Mapping], decisions: Sequence[Decision], cfg: PromotionConfig,
                     links: Mapping[str, str] | None = None) -> str:
    """The verdict table as markdown; `links` ({stage: URL}) link each stage to its MLflow run."""
    table = verdict_rows(rows, decisions, cfg)
    champion = next((r for r in table if "champion" in r["flags"]), None)
    regressions = [r["stage"] for r in table if "regression" in r["flags"]]
    alerts = [r["stage"] for r in table if any(f.startswith("judge alert") for f in r["flags"])]
    headline = [
        f"**champion: {champion['stage']} ({champion['model']})**" if champion else "no champion (promotion off)",
        f"regressions: {', '.join(regressions) or 'none'}",
        f"judge alerts: {', '.join(alerts) or 'none'}",
    ]
    lines = [f"# {run_name}: verdict", "", " · ".join(headline), "",
             f"| stage | {cfg.metric} | vs previous | vs M1 | judge accuracy | judge parse failures | pairs | "
             "pair parse failures | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        stage = f"[{r['stage']}]({links[r['stage']]})" if links and links.get(r["stage"], "").startswith("http") else r["stage"]
        verdict = "; ".join(_mark(f) for f in r["flags"]) or "ok"
        lines.append(f"| {stage} ({r['model']}) | {_fmt(r['metric'])} | {r['vs_previous']} | {r['vs_m1']} | "
                     f"{_fmt(r['judge_accuracy'])} | {_pct(r['judge_parse_failures'])} | {_fmt(r['num_pairs'], 0)} | "
                     f"{_pct(r['parse_failure_rate'])} | {verdict} |")
    reasons = [f"- {r['stage']}: {r['promotion']}" for r in table if r["promotion"]]
    if reasons:
        lines += ["", "Promotion:", *reasons]
    return "\n".join(lines) + "\n"


def _mark(flag: str) -> str:
    # Words first, so the table reads the same where emoji do not render.
    return {"regression": "REGRESSION ⚠", "champion": "champion ★"}.get(flag, f"⚠ {flag}")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
