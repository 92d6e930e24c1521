"""Bad input table: every row must end the CLI with exit code 2 and one message naming the field,
the file (and line) and what is wrong, without a traceback and before anything is written.

Rows run through `pipeline.cli.main` in-process (the same code as `selfreward run`, without paying
the imports per row); one row also runs as a real subprocess. Config-schema rows (unknown keys,
wrong types, ...) live in tests/pipeline/test_config.py; preference memmaps are checked where they
are read (`DPODataset`), at the end.
"""

import json
import os
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


def _edit_tokenizer(edit):
    def apply(target):
        tokenizer = json.loads((target / "tokenizer.json").read_text())
        edit(tokenizer)
        (target / "tokenizer.json").write_text(json.dumps(tokenizer))
    return apply


def _truncate_weights(target):
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _words(n: int) -> str:
    return " ".join(["qz"] * n)  # n byte-level pre-tokens, so at least n tokens in any BPE


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
    ("tokenizer-no-added-tokens", "model.path: tokenizer.json without `added_tokens`",
     lambda f: [f"model.path={_model_variant(f, 'noadded', lambda n: True, _edit_tokenizer(lambda t: t.pop('added_tokens')))}"],
     ["model.path:", "could not load a tokenizer", "added_tokens"]),
    ("tokenizer-unknown-model-type", "model.path: tokenizer.json with an unknown model type",
     lambda f: [f"model.path={_model_variant(f, 'nomodel', lambda n: True, _edit_tokenizer(lambda t: t['model'].update(type='Nope')))}"],
     ["model.path:", "could not load a tokenizer"]),
    ("model-truncated-weights", "model.path: model.safetensors truncated to half its size",
     lambda f: [f"model.path={_model_variant(f, 'truncated', lambda n: True, _truncate_weights)}"],
     ["model.path:", "model.safetensors' is truncated or corrupt"]),
    ("model-path-is-a-file", "model.path: a file, not a directory",
     lambda f: [f"model.path={f['root'] / 'ift.jsonl'}"], ["model.path:", "ift.jsonl' is a file; give the model directory"]),
    ("set-overrides-int", "`--set overrides=5`",
     lambda f: ["overrides=5"], ["error: --set overrides=5: invalid config", "overrides: Input should be a valid dictionary"]),
    ("set-error-names-the-set", "`--set iteration.pairs.rho=2` (the message cites the --set, not the config file)",
     lambda f: ["iteration.pairs.rho=2"], ["error: --set iteration.pairs.rho=2: invalid config"]),
    ("experiment-empty", "tracking.experiment: ''",
     lambda f: ["tracking.experiment="], ["tracking.experiment: String should have at least 1 character"]),
    ("experiment-too-long", "tracking.experiment of 300 characters (MLflow stores 256)",
     lambda f: ["tracking.experiment=" + "e" * 300], ["tracking.experiment: String should have at most 256", "(302 characters)"]),
    ("set-10mb", "`--set tracking.experiment=<10 MB>` (through the Python API; argv caps it lower)",
     lambda f: ["tracking.experiment=" + "e" * 10_000_000], ["longer than 65,536 characters", "(10,000,022 characters)"]),
    ("unknown-key-long-value", "an unknown key holding 60,000 characters",
     lambda f: ["iteration.dpo.betta=" + "y" * 60_000], ["iteration.dpo.betta: unknown field", "(60,002 characters)"]),
    ("vocab-too-small", "model.tiny.vocab_size: 100 (byte-level BPE needs 256 + 5 special + 1)",
     lambda f: ["model.tiny.vocab_size=100"], ["model.tiny.vocab_size", "greater than or equal to 262"]),
    ("iterations-huge", "iterations: 1000000000",
     lambda f: ["iterations=1000000000"], ["iterations: Input should be less than or equal to 1000"]),
    ("ift-prompt-14000-tokens", "data.ift: a prompt of 14,000 tokens (tiny model, the demo config's sft.max_len 192)",
     lambda f: ["data.task=null", f"data.seed_prompts={f['root'] / 'ift.jsonl'}", "data.ift=" + str(_write(
         f, "ift-long.jsonl", "".join(json.dumps({"prompt": p, "response": "r"}) + "\n" for p in ("p", _words(14_000)))))],
     ["data.ift:", "ift-long.jsonl:2: the prompt has at least 14,000 tokens; sft.max_len (192) allows at most 191"]),
    ("seed-prompt-36000-tokens", "data.seed_prompts: a prompt of 36,000 tokens (tiny model, context 256)",
     lambda f: _prompts(f, "seed-long.jsonl", json.dumps({"prompt": _words(36_000)}) + "\n"),
     ["data.seed_prompts:", "seed-long.jsonl:1: the prompt has at least 36,000 tokens; the model's context (256 tokens)"]),
    ("seed-prompt-beyond-context-exact", "data.seed_prompts: a prompt longer than model.path's context (exact count)",
     lambda f: [f"model.path={f['model']}", *_prompts(f, "seed-100.jsonl", json.dumps({"prompt": _words(100)}) + "\n")],
     ["data.seed_prompts:", "seed-100.jsonl:1: the prompt has ", "tokens; the model's context (64 tokens) allows at most 63"]),
    ("run-name-prefect", "run_name `prefect` (the output folder's Prefect home)",
     lambda f: ["run_name=prefect"], ["run_name 'prefect' is reserved"]),
    ("run-name-mlartifacts", "run_name `mlartifacts` (the MLflow artifact root)",
     lambda f: ["run_name=mlartifacts"], ["run_name 'mlartifacts' is reserved"]),
    ("run-name-mlflow-db", "run_name `mlflow.db` (the MLflow store)",
     lambda f: ["run_name=mlflow.db"], ["run_name 'mlflow.db' is reserved"]),
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
    sets = make(files)
    started = time.monotonic()
    code = pipeline.cli.main(["run", "--output", str(out), *[a for s in sets for a in ("--set", s)]])
    stderr = capsys.readouterr().err
    assert code == 2, stderr[:3000]
    message = stderr.strip()
    assert message.startswith("selfreward: error:") and message.count("selfreward: error:") == 1, message[:3000]
    for part in expected:
        assert part in message, message[:3000]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert len(message) < 2000 and time.monotonic() - started < 30  # never megabytes echoed, never minutes


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


BILLION_LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi"))
FILE_ROWS = [
    # (id, fault, config file text, expected message parts)
    ("duplicate-key", "a duplicated `sft:` section in the config file (YAML keeps the last silently)",
     "sft: {batch_size: 4}\niterations: 2\nsft: {batch_size: 8}\n",
     ["found the key 'sft' twice (first on line 1)", "line 3"]),
    ("alias-bomb", "YAML alias bomb (billion laughs: 9^9 values in 10 lines)", BILLION_LAUGHS,
     ["aliases expand to more than 100,000 values"]),
    ("iterations-huge-in-file", "iterations: 1000000000 in the config file", "iterations: 1000000000\n",
     ["iterations: Input should be less than or equal to 1000"]),
    ("experiment-10mb", "tracking.experiment of 10 MB in the config file",
     "tracking: {experiment: " + "x" * 10_000_000 + "}\n", ["config file is larger than 1 MiB"]),
    ("unknown-key-500kb", "an unknown key holding 500 KB in the config file",
     "sft: {unknown: " + "y" * 500_000 + "}\n", ["sft.unknown: unknown field", "(500,002 characters)"]),
]


@pytest.fixture
def refuse_runs(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a bad input got past the checks and a run started")

    monkeypatch.setattr(pipeline.cli, "_run", must_not_run)


def _refused(capsys, *argv: str) -> str:
    started = time.monotonic()
    code = pipeline.cli.main(["run", *argv])
    stderr = capsys.readouterr().err
    assert code == 2, stderr[:3000]
    assert stderr.startswith("selfreward: error:") and "Traceback" not in stderr, stderr[:3000]
    assert len(stderr) < 2000 and time.monotonic() - started < 10, (len(stderr), time.monotonic() - started)
    return stderr


@pytest.mark.parametrize(("text", "expected"), [pytest.param(text, expected, id=row_id, marks=pytest.mark.reliability(
    area="bad input", fault=fault, expected="exit 2 within seconds, message names the file (and line), bounded, nothing written"))
    for row_id, fault, text, expected in FILE_ROWS])
def test_bad_config_file_is_refused_within_seconds(tmp_path, capsys, refuse_runs, text, expected):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    message = _refused(capsys, str(path), "--output", str(tmp_path / "out"))
    assert str(path) in message
    for part in expected:
        assert part in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability(area="bad input", fault="--output is a file",
                         expected="exit 2 naming --output, the file untouched")
def test_output_that_is_a_file_is_refused(tmp_path, capsys, refuse_runs):
    target = tmp_path / "runs"
    target.write_text("not a folder")
    assert "--output" in _refused(capsys, "--output", str(target)) and target.read_text() == "not a folder"


@pytest.mark.reliability(area="bad input", fault="--output is a read-only directory",
                         expected="exit 2 naming --output, nothing written")
def test_read_only_output_is_refused(tmp_path, capsys, refuse_runs):
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits and cannot mount a read-only tmpfs here")
        folder.chmod(0o555)
    try:
        message = _refused(capsys, "--output", str(folder / "runs"))
        assert f"--output {folder / 'runs'} is not writable (it would be created in {folder})" in message
        assert list(folder.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        folder.chmod(0o755)


@pytest.mark.reliability(area="bad input", fault="run_name of an existing folder (or file) that is not a run folder",
                         expected="exit 2 naming the folder; never merged into it")
def test_run_name_of_a_foreign_folder_is_refused(tmp_path, capsys, refuse_runs):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "report.pdf").write_text("mine")
    for name in ("notes", "report.pdf"):
        message = _refused(capsys, "--output", str(tmp_path), "--set", f"run_name={name}")
        assert f"{tmp_path / name} exists and is not a run folder" in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes", "report.pdf", "todo.txt"]


@pytest.mark.parametrize("link", [pytest.param(link, id=link, marks=pytest.mark.reliability(
    area="security", fault=f"`<run>/.lock` is a {link} to another file",
    expected="exit 2, the lock file refused; the other file untouched")) for link in ("symlink", "hard link")])
def test_a_planted_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys, refuse_runs, link):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run_dir = tmp_path / "out" / "demo"
    run_dir.mkdir(parents=True)
    (os.symlink if link == "symlink" else os.link)(precious, run_dir / ".lock")
    message = _refused(capsys, "--output", str(tmp_path / "out"))
    assert str(run_dir / ".lock") in message and ("symbolic link" in message or "other hard links" in message)
    assert precious.read_text() == "keep me" and sorted(p.name for p in run_dir.iterdir()) == [".lock"]
