"""What a resume checks first: which stages have trained (a changed input is refused after that)."""

from flows.resume import trained_stages
from flows.stepdir import MANIFEST


def test_trained_stages_are_those_with_a_published_model(tmp_path):
    assert trained_stages(tmp_path) == []
    for folder in ("data", "base", "iter-1/pairs", "sft", "iter-2/checkpoint", "iter-1/checkpoint"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / MANIFEST).write_text("{}")
    (tmp_path / "iter-3" / ".checkpoint.tmp").mkdir(parents=True)  # not published
    assert trained_stages(tmp_path) == ["sft", "iter-1", "iter-2"]
