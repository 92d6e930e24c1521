"""What a stage records: its outcome in words, the parent's per-stage summary (n/a for 0 of 0), and
step summaries flattened into metrics."""

import math

from flows.stage import _flat, parent_summary, stage_outcome
from flows.stepdir import StepRecord
from pipeline.report import comparison_rows, format_table


def record(step: str, **summary) -> StepRecord:
    return StepRecord(step=step, path=step, fingerprint="f", summary=summary)


def test_rates_of_nothing_are_nan_and_show_as_n_a():
    records = {"prompts": record("prompts", prompts=0, rejected={"fewshot_too_long": 40}),
               "judgments": record("judge", judgments=0, parse_failure_rate=None),
               "pairs": record("pairs", pairs=0, skip_rate=None)}
    summary = parent_summary(records, record("dpo", skipped="no prompts"), {})
    assert summary["num_prompts"] == 0 and summary["num_pairs"] == 0
    assert math.isnan(summary["parse_failure_rate"]) and math.isnan(summary["skip_rate"])
    table = format_table(comparison_rows({1: summary})).splitlines()
    row = dict(zip(table[0].split(), table[1].split()))
    assert row["parse_failure_rate"] == "n/a" and row["skip_rate"] == "n/a" and row["num_prompts"] == "0"


def test_summaries_flatten_one_level_for_mlflow():
    flat = dict(_flat("prompts", {"prompts": 5, "rejected": {"duplicate": 3}, "source": "seed", "ok": True}))
    assert flat == {"prompts/prompts": 5, "prompts/rejected/duplicate": 3}


def test_outcome_names_a_skipped_stage_and_its_reason():
    skipped = record("dpo", skipped="self-instruct produced no prompts")
    assert stage_outcome(3, skipped, None) == "skipped: self-instruct produced no prompts; M4 = M3"
    assert stage_outcome(3, record("dpo", steps=4), None) == "completed"
