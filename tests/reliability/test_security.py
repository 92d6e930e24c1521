"""Security: weights load only from safetensors, YAML only through the safe loader, no pickle, servers
on loopback only. A source scan keeps it that way; the functional tests show that a booby-trapped
pickle next to (or instead of) the weights is never unpickled."""

import pickle
import re
from pathlib import Path

import pytest

import dpo
from pipeline.cli import ui_command
from pipeline.models import ModelLoadError, load_model_and_tokenizer
from tests._tiny import build_tiny
from tests.reliability.helpers import REPO

PACKAGES = ["pipeline", "dpo", "generation", "judging", "flows", "benchmarks"]
SKIP_PARTS = {".venv", ".venv-vllm", "build", "__pycache__", ".git", "selfreward.egg-info", "runs"}
THIS = Path(__file__).resolve()
# (what, regex): any match in a Python file is a finding.
FORBIDDEN = [
    ("yaml.load / unsafe loaders (use yaml.safe_load)", r"yaml\.(load|unsafe_load|full_load|load_all)\(|(Unsafe|Full)Loader"),
    ("pickle loading", r"\b(c?pickle|dill|joblib)\.loads?\("),
    ("numpy pickle loading", r"allow_pickle\s*=\s*True"),
    ("remote code from a model repo", r"trust_remote_code\s*=\s*True"),
    ("a server on every interface", r"0\.0\.0\.0"),
]


def _python_files(roots: list[str] | None = None) -> list[Path]:
    bases = [REPO / r for r in roots] if roots else [REPO]
    return sorted(p for base in bases for p in base.rglob("*.py")
                  if not SKIP_PARTS & set(p.relative_to(REPO).parts) and p.resolve() != THIS)


def _call_text(source: str, start: int) -> str:
    """The argument text of the call whose "(" is at `start - 1`."""
    depth, i = 1, start
    while depth and i < len(source):
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        i += 1
    return source[start:i]


@pytest.mark.reliability(area="security", fault="source scan: torch.load without weights_only=True",
                         expected="no occurrence anywhere in the repository")
def test_no_unsafe_torch_load():
    findings = []
    for path in _python_files():
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", source):
            if "weights_only=True" not in _call_text(source, match.end()):
                findings.append(f"{path.relative_to(REPO)}:{source[:match.start()].count(chr(10)) + 1}")
    assert findings == []


@pytest.mark.reliability(area="security", fault="source scan: yaml.load / unsafe loaders, pickle, allow_pickle, trust_remote_code, 0.0.0.0",
                         expected="no occurrence anywhere in the repository")
def test_no_unsafe_deserialisation_or_public_bind():
    findings = []
    for path in _python_files() + sorted(REPO.glob("*.yaml")) + sorted((REPO / "configs").rglob("*.yaml")) + [REPO / "Makefile"]:
        source = path.read_text(encoding="utf-8")
        for what, pattern in FORBIDDEN:
            for match in re.finditer(pattern, source):
                findings.append(f"{path.relative_to(REPO)}:{source[:match.start()].count(chr(10)) + 1}: {what}")
    assert findings == []


@pytest.mark.reliability(area="security", fault="source scan: model from_pretrained without use_safetensors=True",
                         expected="every model load in the packages forces safetensors")
def test_model_loads_force_safetensors():
    calls, findings = 0, []
    for path in _python_files(PACKAGES):
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\b(AutoModel\w*|\w+For\w+|\w+Model)\.from_pretrained\(", source):
            calls += 1
            if "use_safetensors=True" not in _call_text(source, match.end()):
                findings.append(f"{path.relative_to(REPO)}:{source[:match.start()].count(chr(10)) + 1}")
    assert calls >= 1 and findings == []


class _Trap:
    """Unpickling this creates the file `path`: proof that a pickle was loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    return build_tiny(root, ["some text to learn from"] * 4, vocab_size=280, max_position_embeddings=32,
                      hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32).path


@pytest.mark.reliability(area="security", fault="booby-trapped pytorch_model.bin beside / instead of safetensors",
                         expected="the pickle is never loaded (model loads from safetensors, or a clear error)")
def test_pickle_weights_are_never_unpickled(tiny_model_dir, tmp_path):
    sentinel = tmp_path / "pickle-was-loaded"
    trap = pickle.dumps({"lm_head.weight": _Trap(sentinel)})
    (tiny_model_dir / "pytorch_model.bin").write_bytes(trap)
    model, _ = load_model_and_tokenizer(tiny_model_dir)  # safetensors beside the trap
    assert model is not None and not sentinel.exists()

    only_pickle = tmp_path / "only-pickle"
    only_pickle.mkdir()
    for f in tiny_model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (only_pickle / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ModelLoadError, match="only pickle-based weights"):
        load_model_and_tokenizer(only_pickle)
    with pytest.raises(dpo.CheckpointError, match="neither model.safetensors"):
        dpo.load_checkpoint(model, only_pickle)
    assert not sentinel.exists()


@pytest.mark.reliability(area="security", fault="`selfreward ui` server address",
                         expected="bound to 127.0.0.1 only")
def test_ui_binds_loopback_only(tmp_path):
    command = ui_command(tmp_path, 5000)
    assert command[command.index("--host") + 1] == "127.0.0.1"


@pytest.mark.reliability(area="security", fault="`judge.reward_fn` imports and runs the named module (preflight, judging)",
                         expected="documented as code execution by design in the README's security notes")
def test_reward_fn_code_execution_is_documented():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    notes = readme[readme.index("Security notes:"):]
    assert "reward_fn" in notes and "code execution by design" in notes and "only name modules you trust" in notes
