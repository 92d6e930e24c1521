"""Input file contents: which files a run reads, which reward modules are the user's own code, and
which recorded files changed."""

from pathlib import Path

from pipeline.config import load_config
from pipeline.inputs import changed_inputs, data_digests, input_files, reward_module_file, write_inputs

REPO = Path(__file__).resolve().parents[2]


def test_reward_modules_of_the_user_count_as_inputs_installed_ones_do_not():
    assert reward_module_file("tests.flows.rewards:distinct_letters") == REPO / "tests" / "flows" / "rewards.py"
    assert reward_module_file("json:loads") is None  # the standard library
    assert reward_module_file("yaml:safe_load") is None  # site-packages
    assert reward_module_file("no_such_module:f") is None


def test_changed_files_are_named_once_with_every_field_that_reads_them(tmp_path):
    template = tmp_path / "judge.yaml"
    template.write_text((REPO / "configs" / "judges" / "demo_rules.yaml").read_text())
    ift = tmp_path / "ift.jsonl"
    ift.write_text('{"prompt": "p", "response": "r"}\n')
    config = load_config(None, [f"data.ift={ift}", f"iteration.judge.template={template}",
                                f"overrides.2.judge.template={template}"])
    assert set(input_files(config)) == {"data.ift", "iteration.judge.template", "overrides.2.judge.template"}
    assert changed_inputs(tmp_path, config) == []  # nothing recorded yet
    write_inputs(tmp_path, config)
    digests = data_digests(config.data)
    template.write_text(template.read_text() + "\n# edited\n")
    assert changed_inputs(tmp_path, config) == [f"iteration.judge.template, overrides.2.judge.template ({template})"]
    assert data_digests(config.data) == digests and digests[0].startswith("ift:")
