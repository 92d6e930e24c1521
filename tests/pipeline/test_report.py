"""What a person reads: the stage table, its numbers' formatting, and the PNGs (no pyplot state)."""

import subprocess
import sys

from pipeline.report import (
    artifact_key,
    comparison_rows,
    format_table,
    plot_comparison,
    plot_learning_curves,
    plot_score_histogram,
    stage_name,
)


def test_rows_are_one_per_stage_with_model_names():
    rows = comparison_rows({1: {"gt_score": 0.8, "num_pairs": 400.0}, 0: {"gt_score": 0.7}})
    assert [(r["stage"], r["model"]) for r in rows] == [("sft", "M1"), ("iter-1", "M2")]
    assert stage_name(0) == "sft" and stage_name(3) == "iter-3"
    table = format_table(rows).splitlines()
    assert table[0].split() == ["stage", "model", "num_pairs", "gt_score"]
    assert table[1].split() == ["sft", "M1", "-", "0.700"] and table[2].split() == ["iter-1", "M2", "400", "0.800"]
    assert format_table([]) == "(no finished stages)"


def test_prefect_artifact_keys_use_allowed_characters():
    assert artifact_key("My_Run.v2", "iter-1") == "my-run-v2-iter-1"


def test_plots_are_written_and_nothing_to_plot_writes_nothing(tmp_path):
    rows = comparison_rows({0: {"gt_score": 0.7}, 1: {"gt_score": 0.8}})
    assert plot_comparison(rows, tmp_path / "stages.png").stat().st_size > 1000
    curves = {"loss": [(1, 0.7), (2, 0.6)], "rewards/margins": []}
    assert plot_learning_curves(curves, tmp_path / "curves.png", "iter-1").is_file()
    assert plot_learning_curves({"loss": []}, tmp_path / "none.png", "x") is None
    assert plot_score_histogram({"3": 10, "5": 2}, tmp_path / "hist.png", "scores").is_file()
    assert plot_score_histogram({}, tmp_path / "empty.png", "scores") is None
    # A judge that parsed nothing still shows its (red) unparsed bar: the failure is the news.
    assert plot_score_histogram({}, tmp_path / "unparsed.png", "scores", unparsed=6).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "hist.png", "stages.png", "unparsed.png"]


def test_importing_the_report_selects_no_matplotlib_backend():
    code = "import sys, pipeline.report; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
