"""Bad input table: every row must end the CLI with exit code 2 and one message naming the field,
the file (and line) and what is wrong, without a traceback and before anything is written.

Rows run through `pipeline.cli.main` in-process (the same code as `selfreward run`, without paying
the imports per row); one row also runs as a real subprocess. Config-schema rows (unknown keys,
wrong types, ...) live in tests/pipeline/test_config.py; preference memmaps are checked where they
are read (`DPODataset`), at the end.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline.cli
from dpo import DPODataset, PreferenceDataError, write_preference_memmaps
from pipeline.config import load_config
from pipeline.preflight import check_inputs
from tests._tiny import build_tiny
from tests.reliability.helpers import REPO

GOOD_TEMPLATE = """name: t
template: "Rate: {prompt} / {response}"
score_pattern: 'score:\\s*([0-9]+)'
min_score: 0
max_score: 5
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = build_tiny(root, ["hello world", "rate this answer", "score: 5"] * 4, vocab_size=300,
                       max_position_embeddings=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32).path
    (root / "ift.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n", encoding="utf-8")
    return {"root": root, "model": model}


def _model_variant(files, name, keep, edit=None):
    """A copy of the tiny model directory with only the files `keep(name)` accepts, then `edit(dir)`."""
    target = files["root"] / name
    if not target.exists():
        target.mkdir()
        for f in files["model"].iterdir():
            if keep(f.name):
                (target / f.name).write_bytes(f.read_bytes())
        if edit:
            edit(target)
    return target


def _no_eos(target):
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (target / "tokenizer_config.json").write_text(json.dumps(config))


def _pickle_only(target):
    (target / "pytorch_model.bin").write_bytes(b"not loaded")


def _write(files, name, data: bytes | str):
    path = files["root"] / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _prompts(files, name, data):
    path = _write(files, name, data)
    return ["data.task=null", f"data.ift={files['root'] / 'ift.jsonl'}", f"data.seed_prompts={path}"]


def _template(files, name, text, field="iteration.judge.template"):
    return [f"{field}={_write(files, name, text)}"]


P = json.dumps({"prompt": "a prompt"})
ROWS = [
    # (id, fault, make(files) -> --set overrides, expected message parts)
    ("model-dir-missing", "model.path: directory does not exist",
     lambda f: [f"model.path={f['root'] / 'absent'}"], ["model.path: model directory", "does not exist"]),
    ("model-no-weights", "model.path: directory without weights",
     lambda f: [f"model.path={_model_variant(f, 'noweights', lambda n: not n.endswith('.safetensors'))}"],
     ["model.path:", "has no weights"]),
    ("model-pickle-only", "model.path: only pickle weights (pytorch_model.bin)",
     lambda f: [f"model.path={_model_variant(f, 'pickled', lambda n: not n.endswith('.safetensors'), _pickle_only)}"],
     ["model.path:", "only pickle-based weights", "never loaded"]),
    ("model-no-config", "model.path: no config.json",
     lambda f: [f"model.path={_model_variant(f, 'noconfig', lambda n: n != 'config.json')}"],
     ["model.path:", "config.json is missing"]),
    ("tokenizer-no-eos", "model.path: tokenizer without an EOS token",
     lambda f: [f"model.path={_model_variant(f, 'noeos', lambda n: True, _no_eos)}"], ["model.path:", "no EOS token"]),
    ("prompts-empty-line", "data.seed_prompts: empty line",
     lambda f: _prompts(f, "empty.jsonl", f"{P}\n\n{P}\n"), ["data.seed_prompts:", "empty.jsonl:2: empty line"]),
    ("prompts-bad-json", "data.seed_prompts: bad JSON",
     lambda f: _prompts(f, "bad.jsonl", f'{P}\n{{"prompt": "x"\n'), ["data.seed_prompts:", "bad.jsonl:2: bad JSON"]),
    ("prompts-missing-field", "data.seed_prompts: record without `prompt`",
     lambda f: _prompts(f, "nofield.jsonl", '{"text": "x"}\n'), ["nofield.jsonl:1: missing field 'prompt'"]),
    ("prompts-invalid-utf8", "data.seed_prompts: invalid UTF-8",
     lambda f: _prompts(f, "latin.jsonl", P.encode() + b'\n{"prompt": "caf\xe9"}\n'), ["latin.jsonl:2: invalid UTF-8"]),
    ("prompts-empty-prompt", "data.seed_prompts: empty prompt string",
     lambda f: _prompts(f, "blank.jsonl", '{"prompt": "  "}\n'), ["blank.jsonl:1: empty prompt in field 'prompt'"]),
    ("prompts-not-object", "data.seed_prompts: a JSON list instead of an object",
     lambda f: _prompts(f, "list.jsonl", '["a prompt"]\n'), ["list.jsonl:1: expected a JSON object"]),
    ("prompts-not-jsonl", "data.seed_prompts: a .txt file",
     lambda f: _prompts(f, "prompts.txt", "a prompt\n"), ["data.seed_prompts:", "expected a .jsonl file"]),
    ("ift-missing-response", "data.ift: record without `response`",
     lambda f: ["data.task=null", f"data.ift={_write(f, 'ift-bad.jsonl', P + chr(10))}",
                f"data.seed_prompts={f['root'] / 'ift.jsonl'}"], ["data.ift:", "ift-bad.jsonl:1: missing field 'response'"]),
    ("data-file-missing", "data.ift: file does not exist",
     lambda f: ["data.task=null", f"data.ift={f['root'] / 'absent.jsonl'}", f"data.seed_prompts={f['root'] / 'ift.jsonl'}"],
     ["data.ift: file not found"]),
    ("template-no-placeholder", "judge template without the {response} placeholder",
     lambda f: _template(f, "noresp.yaml", GOOD_TEMPLATE.replace(" / {response}", "")),
     ["iteration.judge.template:", "must contain the placeholder {response}"]),
    ("template-regex-cannot-match", "judge score regex that cannot read its own example",
     lambda f: _template(f, "regex.yaml", GOOD_TEMPLATE.replace("'score:", "'verdict=")),
     ["iteration.judge.template:", "cannot read the score back"]),
    ("template-no-group", "judge score regex without a capture group",
     lambda f: _template(f, "group.yaml", GOOD_TEMPLATE.replace("([0-9]+)", "[0-9]+")), ["exactly one capture group"]),
    ("template-missing", "judge template file does not exist",
     lambda f: [f"iteration.judge.template={f['root'] / 'absent.yaml'}"], ["judge template not found"]),
    ("template-python-tag", "judge template with a `!!python/object` tag",
     lambda f: _template(f, "tag.yaml", "name: !!python/object/apply:os.system ['true']\n"), ["not valid YAML"]),
    ("template-bad-in-override", "a bad judge template only in iteration 2's overrides",
     lambda f: _template(f, "over.yaml", GOOD_TEMPLATE.replace("{prompt}", "?"), field="overrides.2.judge.template"),
     ["overrides.2.judge.template:", "placeholder {prompt}"]),
    ("reward-fn-missing", "judge.reward_fn names a module that does not exist",
     lambda f: ["iteration.judge.reward_fn=no_such_module:score"], ["iteration.judge.reward_fn:", "no_such_module"]),
    ("engine-venv-missing", "engine.name: vllm without the vLLM virtualenv",
     lambda f: ["engine.name=vllm", f"engine.python={f['root'] / 'no-venv' / 'bin' / 'python'}"],
     ["engine.python:", "does not exist: run `make vllm-env`"]),
    ("engine-head-size", "engine.name: vllm with a model whose head size vLLM's CPU attention lacks (the demo's 16)",
     lambda f: ["engine.name=vllm", f"engine.python={sys.executable}"],
     ["engine.name: vllm:", "head size is 16", "model.tiny.num_heads=2"]),
    ("run-name-traversal", "run_name `../escape` (a path outside the output directory)",
     lambda f: ["run_name=../escape"], ["run_name", "should match pattern"]),
    ("run-name-absolute", "run_name `/tmp/x` (an absolute path)",
     lambda f: ["run_name=/tmp/x"], ["run_name", "should match pattern"]),
]


@pytest.mark.parametrize(
    ("make", "expected"),
    [pytest.param(make, expected, id=row_id, marks=pytest.mark.reliability(
        area="bad input", fault=fault, expected="exit 2, message names field and file (and line), no traceback, nothing written"))
     for row_id, fault, make, expected in ROWS],
)
def test_bad_input_exits_2_with_a_clear_message(files, tmp_path, capsys, monkeypatch, make, expected):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a bad input got past the checks and a run started")

    monkeypatch.setattr(pipeline.cli, "_run", must_not_run)
    out = tmp_path / "out"
    code = pipeline.cli.main(["run", "--output", str(out), *[a for s in make(files) for a in ("--set", s)]])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    message = stderr.strip()
    assert message.startswith("selfreward: error:") and message.count("selfreward: error:") == 1, message
    for part in expected:
        assert part in message, message
    assert "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.reliability(area="bad input", fault="tokenizer without EOS, through a real `python -m pipeline.cli run`",
                         expected="process exits 2 with the message only, before Prefect starts")
def test_bad_model_in_a_real_cli_process(files, tmp_path):
    model = _model_variant(files, "noeos", lambda n: True, _no_eos)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--output", str(tmp_path / "out"),
                           "--set", f"model.path={model}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("selfreward: error: model.path:") and "no EOS token" in proc.stderr
    assert "Traceback" not in proc.stderr and "Prefect" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability(area="bad input", fault="judge template checked at config-load time",
                         expected="rejected in under 1 s (after imports), not minutes into a run")
def test_bad_template_fails_within_a_second(files):
    path = files["root"] / "slow.yaml"
    path.write_text(GOOD_TEMPLATE.replace("'score:", "'verdict="), encoding="utf-8")
    config = load_config(None, [f"iteration.judge.template={path}"])
    check_inputs(load_config(None))  # warm imports and the packaged template
    started = time.perf_counter()
    with pytest.raises(ValueError, match="cannot read the score back"):
        check_inputs(config)
    assert time.perf_counter() - started < 1.0


def _memmaps(root: Path, name: str, edit) -> Path:
    folder = write_preference_memmaps(root / name, [([5, 6], [7, 8], [9]), ([5], [7], [8, 9])], max_len=6)
    edit(folder)
    return folder


def _save(path: Path, array) -> None:
    np.save(path, array)


def _edit_rejected_prompt(path: Path) -> None:
    seq = np.load(path)
    seq[0, 1, 0] += 1  # pair 0's rejected row gets another first prompt token
    _save(path, seq)


MEMMAP_ROWS = [
    ("wrong shape (n, 3, L)", lambda f: _save(f / "preference_seq.memmap.npy", np.zeros((2, 3, 6), np.int32)),
     "expected shape (n, 2, L)"),
    ("float dtype", lambda f: _save(f / "preference_seq.memmap.npy", np.zeros((2, 2, 6), np.float32)),
     "expected an integer dtype"),
    ("truncated file", lambda f: (f / "preference_seq.memmap.npy").write_bytes((f / "preference_seq.memmap.npy").read_bytes()[:150]),
     "not a readable .npy file"),
    ("token id beyond the vocabulary", lambda f: _save(f / "preference_seq.memmap.npy",
                                                        np.where(np.load(f / "preference_seq.memmap.npy") == 9, 999, np.load(f / "preference_seq.memmap.npy")).astype(np.int32)),
     "token id >= vocab_size 64"),
    ("prompt lengths of another size", lambda f: _save(f / "prompt_len.memmap.npy", np.array([2, 1, 1])),
     "has 3 entries but"),
    ("padding inside the prompt", lambda f: _save(f / "prompt_len.memmap.npy", np.array([4, 1])),
     "padding inside the prompt"),
    ("chosen and rejected with different prompts", lambda f: _edit_rejected_prompt(f / "preference_seq.memmap.npy"),
     "chosen and rejected differ inside the prompt"),
    ("missing prompt_len file", lambda f: (f / "prompt_len.memmap.npy").unlink(), "file not found"),
]


@pytest.mark.parametrize(("edit", "expected"), [pytest.param(edit, expected, id=name, marks=pytest.mark.reliability(
    area="bad input", fault=f"preference memmaps: {name}", expected="PreferenceDataError naming the file"))
    for name, edit, expected in MEMMAP_ROWS])
def test_bad_preference_memmaps_are_rejected(tmp_path, edit, expected):
    folder = _memmaps(tmp_path, "pairs", edit)
    with pytest.raises(PreferenceDataError) as err:
        DPODataset(folder, vocab_size=64)
    assert expected in str(err.value) and str(folder) in str(err.value)
