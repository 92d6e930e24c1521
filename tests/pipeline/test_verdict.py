"""The verdict table: each stage against the previous one and M1, a regression and a judge alert
marked where they happened, the champion named, stage links only where MLflow has a UI."""

from pipeline.config import PromotionConfig
from pipeline.promotion import decisions
from pipeline.report import comparison_rows
from pipeline.verdict import verdict_markdown, verdict_rows

CFG = PromotionConfig(margin=0.01)
METRICS = {
    0: {"gt_score": 0.70, "judge_accuracy": 0.90, "judge_parse_failures": 0.02},
    1: {"gt_score": 0.80, "judge_accuracy": 0.88, "judge_parse_failures": 0.05, "num_pairs": 40.0,
        "parse_failure_rate": 0.1},
    2: {"gt_score": 0.75, "judge_accuracy": 0.70, "judge_parse_failures": 0.5, "num_pairs": 12.0,
        "parse_failure_rate": 0.5},
}


def test_each_stage_against_previous_and_m1_with_regressions_alerts_and_champion():
    rows = verdict_rows(comparison_rows(METRICS), decisions(METRICS, CFG), CFG)
    assert [(r["stage"], r["vs_previous"], r["vs_m1"]) for r in rows] == [
        ("sft", "-", "-"), ("iter-1", "+0.100", "+0.100"), ("iter-2", "-0.050", "+0.050")]
    assert rows[0]["flags"] == [] and rows[1]["flags"] == ["champion"]
    assert rows[2]["flags"][0] == "regression"
    assert rows[2]["flags"][1:] == ["judge alert: judge parse failures 50% > 25%",
                                    "judge alert: judge accuracy 0.700 fell 0.180 below 0.880 (> 0.1)"]
    assert rows[2]["promotion"].startswith("vetoed:")


def test_markdown_headline_table_and_links():
    links = {"sft": "http://127.0.0.1:5000/#/experiments/1/runs/a", "iter-1": "mlflow run b", "iter-2": "mlflow run c"}
    text = verdict_markdown("demo", comparison_rows(METRICS), decisions(METRICS, CFG), CFG, links)
    assert "**champion: iter-1 (M2)** · regressions: iter-2 · judge alerts: iter-2" in text
    assert "| [sft](http://127.0.0.1:5000/#/experiments/1/runs/a) (M1) | 0.700 |" in text
    assert "| iter-1 (M2) | 0.800 | +0.100 | +0.100 | 0.880 | 5% | 40 | 10% | champion ★ |" in text
    assert "REGRESSION ⚠; ⚠ judge alert: judge parse failures 50% > 25%" in text
    off = verdict_markdown("demo", comparison_rows(METRICS), [], PromotionConfig(enabled=False))
    assert "no champion (promotion off)" in off and "Promotion:" not in off
