"""`DPOTrainer(checkpoint_every=N, state_dir=...)`: a round interrupted after any step continues from
its saved training state and ends bit-identical to an uninterrupted round (weights and summary).

The interruption is an exception thrown from `log_fn` (what a crash does to the Python objects: the
trainer, its model and optimizer are dropped; a new trainer on a freshly built model resumes). The
real SIGKILL of a DPO step is in test_crash_resume.py.
"""

import pytest
import torch
from accelerate import Accelerator

from dpo import DPO, DPODataset, DPOTrainer, write_preference_memmaps
from tests.dpo._helpers import cpu_state, random_rows, settings, state_equal, tiny_llama

STEPS = 6


class Crash(Exception):
    """Stands for the process dying: nothing after it runs."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    train = DPODataset(write_preference_memmaps(folder / "train", random_rows(12, seed=2), max_len=16))
    valid = DPODataset(write_preference_memmaps(folder / "valid", random_rows(6, seed=5), max_len=16))
    return train, valid


# Settings that exercise every part of the state: dropout (RNG), an EMA reference (reference
# weights), gradient accumulation over several epochs (data position), warm-up (scheduler), and
# evaluation with early stopping (scores and the best snapshot).
VARIANTS = {
    "ema-ref+dropout+accum": dict(ref_ema_decay=0.9, dropout=0.1, grad_accum_steps=2, num_epochs=3, warmup_steps=2),
    "frozen-ref+precomputed": dict(ref_ema_decay=1.0, dropout=0.0, num_train_steps=STEPS),
    "eval+best-snapshot": dict(ref_ema_decay=1.0, dropout=0.1, num_train_steps=STEPS, eval_every=2,
                               early_stopping_patience=None, eval_at_start=True),
}


def _trainer(pairs, state_dir, variant, log_fn=None, **extra):
    train, valid = pairs
    options = dict(VARIANTS[variant])
    decay = options.pop("ref_ema_decay")
    return DPOTrainer(
        DPO(tiny_llama(seed=0), ref_ema_decay=decay), train_dataset=train, valid_dataset=valid,
        accelerator=Accelerator(cpu=True), checkpoint_every=2, state_dir=state_dir, seed=3, log_fn=log_fn,
        **settings(batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3, **{**options, **extra}),
    )


def _crash_at(step):
    def log_fn(metrics, current):
        if current == step:
            raise Crash

    return log_fn


def _comparable(summary):
    return {k: v for k, v in summary.items() if "tokens_per_second" not in k and k != "resumed_from_step"}


@pytest.mark.parametrize(
    ("variant", "crash_step", "resumed_from"),
    [pytest.param(v, c, r, id=f"{v}-crash@{c}", marks=pytest.mark.reliability(
        area="DPO training state", fault=f"round interrupted after step {c} of {STEPS} ({v})",
        expected=f"resumes from step {r}; final weights and summary equal an uninterrupted round"))
     for v, c, r in [("ema-ref+dropout+accum", 5, 4), ("frozen-ref+precomputed", 3, 2), ("eval+best-snapshot", 6, 4)]],
)
def test_interrupted_round_resumes_bit_identical(pairs, tmp_path, variant, crash_step, resumed_from):
    torch.manual_seed(0)
    clean = _trainer(pairs, tmp_path / "clean", variant)
    expected = clean.train()
    expected_weights = cpu_state(clean.dpo.policy)
    assert expected["steps"] == STEPS

    with pytest.raises(Crash):
        _trainer(pairs, tmp_path / "state", variant, log_fn=_crash_at(crash_step)).train()
    torch.manual_seed(123)  # a new process: the global RNG is wherever it is
    resumed = _trainer(pairs, tmp_path / "state", variant)
    summary = resumed.train()
    assert summary["resumed_from_step"] == resumed_from
    assert state_equal(cpu_state(resumed.dpo.policy), expected_weights)
    assert _comparable(summary) == _comparable(expected)


@pytest.mark.reliability(area="DPO training state", fault="crash while the training state is being saved",
                         expected="the half-written state is ignored; resume from the previous complete one")
def test_half_written_state_is_never_used(pairs, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(Crash):
        _trainer(pairs, state, "frozen-ref+precomputed", log_fn=_crash_at(5)).train()
    # What a kill in the middle of saving step 4's state leaves: a temp folder with some files.
    partial = tmp_path / ".state.tmp-4"
    partial.mkdir()
    (partial / "policy.safetensors").write_bytes(b"\0" * 100)
    summary = _trainer(pairs, state, "frozen-ref+precomputed").train()
    assert summary["resumed_from_step"] == 4  # the published state (step 4), not the fragment


@pytest.mark.reliability(area="DPO training state", fault="a saved state from a round of another shape",
                         expected="ignored (fresh round), never mixed into this one")
def test_state_of_another_round_is_ignored(pairs, tmp_path):
    with pytest.raises(Crash):
        _trainer(pairs, tmp_path / "state", "frozen-ref+precomputed", log_fn=_crash_at(3)).train()
    other = _trainer(pairs, tmp_path / "state", "frozen-ref+precomputed", num_train_steps=STEPS + 2)
    summary = other.train()
    assert summary["resumed_from_step"] == 0 and summary["steps"] == STEPS + 2
