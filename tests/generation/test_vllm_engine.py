"""`VllmEngine`: vLLM in its own virtualenv, behind `generation.generate`.

The engine tests need `.venv-vllm` (`make vllm-env`; `make test` builds it). Without it they are
skipped, except under CI, where a missing venv must fail. One engine serves the whole module: a
start costs ~15 s on 2 cores. The tiny model has head size 32 (hidden 64, 2 heads): vLLM's CPU
attention has no kernel for the 8 or 16 of the other test models.
"""

import ast
import os
import random
import sys
from pathlib import Path

import pytest

from generation import (
    EngineUnavailableError,
    PromptError,
    SamplingParams,
    VllmEngine,
    VllmEngineError,
    common_prefix_len,
    encode_chat_prompt,
    generate,
)
from generation.vllm_engine import DEFAULT_PYTHON, WORKER, resolve_python
from judging import load_template
from tests._tiny import Tiny, build_tiny
from tests.generation.conftest import tiny_corpus

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = resolve_python(DEFAULT_PYTHON)
requires_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.is_file() and not os.environ.get("CI"),
    reason=f"{VLLM_PYTHON} is missing: run `make vllm-env` (`make test` does)",
)


class EosView:
    """The tokenizer with another EOS id: a token the random model often emits, so samples finish."""

    def __init__(self, tokenizer, eos_token_id: int) -> None:
        self._tokenizer, self.eos_token_id = tokenizer, eos_token_id

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory) -> Tiny:
    return build_tiny(tmp_path_factory.mktemp("tiny32"), tiny_corpus(), vocab_size=300,
                      max_position_embeddings=256, hidden_size=64, num_heads=2)


@pytest.fixture(scope="module")
def engine(tiny32):
    with VllmEngine(tiny32.path, dtype="float32") as engine:
        yield engine


@pytest.fixture(scope="module")
def prompts(tiny32) -> list[list[int]]:
    rng = random.Random(0)
    chat = [encode_chat_prompt(tiny32.tokenizer, text) for text in tiny_corpus(10, seed=1)]
    noise = [[rng.randrange(5, 300) for _ in range(rng.randint(1, 60))] for _ in range(6)]
    return chat + noise


def token_ids(outputs):
    return [[c.token_ids for c in row] for row in outputs]


# ---------------------------------------------------------------- without vLLM


def test_a_missing_venv_says_how_to_create_it(tmp_path, tiny32):
    with pytest.raises(EngineUnavailableError, match=r"does not exist: run `make vllm-env`"):
        VllmEngine(tiny32.path, python=tmp_path / "no-venv" / "bin" / "python")


def test_a_python_without_vllm_is_named_by_the_worker(tiny32, tmp_path):
    # the project's venv: no vLLM there
    engine = VllmEngine(tiny32.path, python=sys.executable, log_file=tmp_path / "worker.log")
    with pytest.raises(EngineUnavailableError, match=r"vLLM is not importable by .*make vllm-env"):
        generate(engine, tiny32.tokenizer, [[5, 6, 7]], SamplingParams(max_new_tokens=2))
    assert not engine.running


def test_bad_prompts_fail_before_a_worker_starts(tiny32):
    engine = VllmEngine(tiny32.path, python=sys.executable)
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        generate(engine, tiny32.tokenizer, [[5], []], params)
    with pytest.raises(PromptError, match=r"outside \[0, 300\)"):
        generate(engine, tiny32.tokenizer, [[5, 300]], params)
    with pytest.raises(PromptError, match="at most 255 prompt tokens"):
        generate(engine, tiny32.tokenizer, [[5] * 256], params)
    with pytest.raises(PromptError, match="share only their first 1 tokens"):
        generate(engine, tiny32.tokenizer, [[5, 6, 7], [5, 7]], params, shared_prefix_len=2)
    assert generate(engine, tiny32.tokenizer, [], params) == []
    assert not engine.running and engine.config.max_position_embeddings == 256


def test_the_worker_imports_nothing_from_the_project():
    tree = ast.parse(WORKER.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"generation", "judging", "dpo", "pipeline", "flows", "tests"}
    assert 'if __name__ == "__main__":' in WORKER.read_text(encoding="utf-8")


# ---------------------------------------------------------------- with vLLM


@requires_vllm
def test_greedy_float32_equals_the_native_engine_token_for_token(engine, tiny32, prompts):
    params = SamplingParams(max_new_tokens=40, temperature=0.0, batch_size=8)
    emitted = [t for row in generate(tiny32.model, tiny32.tokenizer, prompts, params) for t in row[0].token_ids]
    tokenizer = EosView(tiny32.tokenizer, max(set(emitted), key=emitted.count))  # some samples stop early

    ours = generate(tiny32.model, tokenizer, prompts, params)
    theirs = generate(engine, tokenizer, prompts, params)

    assert token_ids(theirs) == token_ids(ours)
    assert [c.finished for row in theirs for c in row] == [c.finished for row in ours for c in row]
    assert [c.text for row in theirs for c in row] == [c.text for row in ours for c in row]
    assert any(row[0].finished for row in ours) and any(len(row[0].token_ids) == 40 for row in ours)
    assert engine.ready["dtype"] == "float32" and engine.ready["device"] == "cpu"


@requires_vllm
def test_judge_prompts_with_a_shared_template_and_several_samples_equal_native(engine, tiny32):
    template = load_template(ROOT / "configs" / "judges" / "demo_rules.yaml")
    texts = tiny_corpus(8, seed=2)
    judge_prompts = [encode_chat_prompt(tiny32.tokenizer, template.render(p, r))
                     for p, r in zip(texts, reversed(texts), strict=True)]
    shared = common_prefix_len(judge_prompts)
    assert shared > 10
    params = SamplingParams(max_new_tokens=24, temperature=0.0, batch_size=6)

    ours = generate(tiny32.model, tiny32.tokenizer, judge_prompts, params, num_samples=3, shared_prefix_len=shared)
    theirs = generate(engine, tiny32.tokenizer, judge_prompts, params, num_samples=3, shared_prefix_len=shared)

    assert token_ids(theirs) == token_ids(ours)
    assert all(len(row) == 3 and row[0].token_ids == row[2].token_ids for row in theirs)


@requires_vllm
def test_sampling_is_reproducible_and_independent_of_the_other_prompts(engine, tiny32, prompts):
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=7)
    first = token_ids(generate(engine, tiny32.tokenizer, prompts, params, num_samples=3))

    assert token_ids(generate(engine, tiny32.tokenizer, prompts, params, num_samples=3)) == first
    assert all(len({tuple(s) for s in row}) > 1 for row in first)  # samples of a prompt differ
    # Sample j of prompt i is seeded with seed + 3 i + j, whatever else is in the call.
    for i in (0, 5, len(prompts) - 1):
        alone = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=7 + 3 * i)
        assert token_ids(generate(engine, tiny32.tokenizer, [prompts[i]], alone, num_samples=3)) == [first[i]]
    other_seed = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=8)
    assert token_ids(generate(engine, tiny32.tokenizer, prompts, other_seed, num_samples=3)) != first
    largest = SamplingParams(max_new_tokens=4, temperature=0.9, seed=2**63 - 1)  # judging's chunk seeds reach it
    assert len(generate(engine, tiny32.tokenizer, prompts, largest, num_samples=3)) == len(prompts)


@requires_vllm
def test_top_k_reaches_vllm(engine, tiny32, prompts):
    greedy = generate(engine, tiny32.tokenizer, prompts, SamplingParams(max_new_tokens=12, temperature=0))
    top1 = generate(engine, tiny32.tokenizer, prompts, SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1))
    assert token_ids(top1) == token_ids(greedy)


@requires_vllm
def test_stop_ids_outside_the_vocabulary_never_stop_and_are_accepted(engine, tiny32, prompts):
    # e.g. a benchmark's "no EOS" id; vLLM itself refuses such ids
    outputs = generate(engine, EosView(tiny32.tokenizer, 10_000), prompts, SamplingParams(max_new_tokens=6))
    assert all(len(c.token_ids) == 6 and not c.finished for row in outputs for c in row)


@requires_vllm
@pytest.mark.slow
def test_a_head_size_vllm_cannot_run_is_named(tmp_path):
    tiny = build_tiny(tmp_path, tiny_corpus(), vocab_size=300, max_position_embeddings=64, hidden_size=64,
                      num_heads=4)  # head size 16
    engine = VllmEngine(tiny.path, dtype="float32", log_file=tmp_path / "worker.log")
    with pytest.raises(EngineUnavailableError, match=r"head_dim=16; vLLM's CPU attention supports only"):
        engine.start()


@requires_vllm
@pytest.mark.slow
def test_a_dead_worker_is_reported_and_the_next_call_starts_another(engine, tiny32, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=0)
    before = token_ids(generate(engine, tiny32.tokenizer, prompts, params))
    engine._process.kill()
    scratch = Path(engine._scratch)
    with pytest.raises(VllmEngineError, match=r"the vLLM worker stopped \(worker exit code -9\); worker log"):
        generate(engine, tiny32.tokenizer, prompts, params)
    assert not scratch.exists()  # vLLM's temp files go with the killed worker
    assert token_ids(generate(engine, tiny32.tokenizer, prompts, params)) == before


@requires_vllm
def test_close_stops_the_worker_and_removes_its_log(engine, tiny32):  # last: it stops the module's engine
    assert generate(engine, tiny32.tokenizer, [[5, 6, 7]], SamplingParams(max_new_tokens=2))[0][0].token_ids
    process, log, scratch = engine._process, engine.log_file, Path(engine._scratch)
    engine.close()
    assert process.returncode == 0 and not engine.running and not log.exists() and not scratch.exists()
