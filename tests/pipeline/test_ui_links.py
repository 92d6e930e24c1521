"""The UI links `selfreward ui` prints: MLflow 3's routes for a run's model metrics, the compare page
(JSON lists in its query string, stages in order) and the verdict artifact."""

import json
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.ui_links import ui_links


def test_links_point_at_the_parent_the_stages_in_order_and_the_champion():
    links = ui_links("http://127.0.0.1:5000/", "3", "p", {"iter-10": "c", "sft": "a", "iter-2": "b"}, "demo-policy", "2")
    assert links["model metrics"] == "http://127.0.0.1:5000/#/experiments/3/runs/p/model-metrics"
    assert links["verdict"] == "http://127.0.0.1:5000/#/experiments/3/runs/p/artifactPath/summary/verdict.md"
    query = parse_qs(urlsplit(links["compare stages"].replace("/#/", "/")).query)
    assert json.loads(unquote(query["runs"][0])) == ["a", "b", "c"] and json.loads(query["experiments"][0]) == ["3"]
    assert links["champion model"] == "http://127.0.0.1:5000/#/models/demo-policy/versions/2"
    assert links["latest stage"] == "http://127.0.0.1:5000/#/experiments/3/runs/c/model-metrics"  # iter-10, not iter-2
    assert "champion model" not in ui_links("http://h", "3", "p", {"sft": "a"}, "demo-policy", None)
