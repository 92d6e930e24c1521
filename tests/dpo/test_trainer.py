import dataclasses
import math

import pytest
import torch
from torch.utils.data import default_collate

from dpo import (
    DPO,
    DPODataset,
    DPOTrainer,
    EarlyStopping,
    NonFiniteLossError,
    warmup_linear_decay,
    write_preference_memmaps,
)
from tests.dpo._helpers import (
    TinyLM,
    clear_preference_rows,
    cpu_state,
    random_rows,
    settings,
    state_equal,
    tiny_llama,
)

METRICS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "grad_norm",
    "learning_rate",
    "tokens_per_second",
}


@pytest.fixture
def clear_pairs(tmp_path):
    return DPODataset(write_preference_memmaps(tmp_path / "clear", clear_preference_rows(32)), vocab_size=64)


@pytest.fixture
def random_pairs(tmp_path):
    return DPODataset(write_preference_memmaps(tmp_path / "random", random_rows(16, seed=2), max_len=16))


def _trainer(model, dataset, accelerator, **kwargs):
    defaults = dict(
        train_dataset=dataset,
        accelerator=accelerator,
        batch_size=8,
        start_learning_rate=1e-3,
        end_learning_rate=1e-4,
        dropout=0.0,
    )
    return DPOTrainer(model, **settings(**{**defaults, **kwargs}))


def test_clear_preferences_are_learned(clear_pairs, accelerator):
    logs = []
    dpo = DPO(tiny_llama(), beta=0.1)
    trainer = _trainer(dpo, clear_pairs, accelerator, num_train_steps=16, log_fn=lambda m, s: logs.append((s, m)))
    summary = trainer.train()
    assert [s for s, _ in logs] == list(range(1, 17))
    assert set(logs[0][1]) == METRICS
    first = logs[0][1]  # policy == reference before the first update (up to batch-shape rounding)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert summary["final/rewards/accuracies"] > 0.9
    assert summary["final/loss"] < 0.6 and summary["steps"] == 16 and not summary["stopped_early"]
    assert summary["mean/loss"] == pytest.approx(sum(m["loss"] for _, m in logs) / 16)
    assert summary["best_score"] is None and summary["num_pairs"] == 32
    with torch.no_grad():  # fresh look at all pairs against the (frozen) reference
        batch = default_collate([clear_pairs[i] for i in range(len(clear_pairs))])
        out = dpo.eval()(batch["chosen"], batch["rejected"], batch["prompt_len"])
    assert out.metrics["rewards/accuracies"].item() > 0.9


def test_reference_frozen_then_reset_and_generator_runs_first(clear_pairs, random_pairs, accelerator):
    dpo = DPO(tiny_llama())
    events = []
    real_reset = dpo.update_reference_model_with_policy

    def reset():
        events.append("reset")
        real_reset()

    def generator():
        # the reference still holds the previous round's weights when the generator runs
        events.append("gen:ref==policy" if state_equal(cpu_state(dpo.reference), cpu_state(dpo.policy)) else "gen")
        return clear_pairs

    dpo.update_reference_model_with_policy = reset
    prepared = []
    real_prepare = accelerator.prepare
    accelerator.prepare = lambda *objects: prepared.append(objects) or real_prepare(*objects)
    with torch.no_grad():  # make the initial reference differ from the policy
        for p in dpo.reference.parameters():
            p.add_(0.1)
    trainer = _trainer(dpo, random_pairs, accelerator, dataset_generator=generator, num_train_steps=4)
    start = cpu_state(dpo.policy)
    summary = trainer.train()
    assert summary["num_pairs"] == len(clear_pairs)  # generator output overrides train_dataset
    assert state_equal(cpu_state(dpo.reference), start)  # bit-identical after 4 steps
    assert not state_equal(cpu_state(dpo.policy), start)
    round_one_end = cpu_state(dpo.policy)
    trainer.train()
    assert events == ["gen", "reset", "gen", "reset"]
    assert state_equal(cpu_state(dpo.reference), round_one_end)  # reset to M_1 for round two
    assert len(prepared) == 1  # model and optimizer prepared once across rounds


def test_ema_reference_tracks_policy_from_step_one(random_pairs, accelerator):
    decay = 0.5
    dpo = DPO(TinyLM(), ref_ema_decay=decay)
    expected = {}

    def log_fn(metrics, step):  # runs after the optimizer step and the EMA update
        policy = cpu_state(dpo.policy)
        base = expected or cpu_state_start
        expected.update({k: decay * base[k] + (1 - decay) * policy[k] for k in policy})
        for k, v in cpu_state(dpo.reference).items():
            torch.testing.assert_close(v, expected[k], msg=f"step {step}: {k}")

    trainer = _trainer(dpo, random_pairs, accelerator, num_train_steps=3, batch_size=4, log_fn=log_fn)
    cpu_state_start = cpu_state(dpo.policy)
    trainer.train()
    assert len(expected) > 0 and not state_equal(cpu_state(dpo.reference), cpu_state_start)


def test_precomputed_reference_logps_train_like_the_live_reference(random_pairs, accelerator):
    histories = []
    for precompute in (True, False):
        logs = []
        trainer = _trainer(
            DPO(TinyLM(seed=3)), random_pairs, accelerator, num_train_steps=4, batch_size=4,
            precompute_ref_logps=precompute, log_fn=lambda m, s, logs=logs: logs.append(m["loss"]),
        )
        trainer.train()
        histories.append(logs)
    assert histories[0][-1] < histories[0][0]
    torch.testing.assert_close(torch.tensor(histories[0]), torch.tensor(histories[1]))


@pytest.mark.parametrize(("higher_is_better", "best_step", "stop_step"), [(True, 3, 5), (False, 1, 3)])
def test_early_stopping_restores_best_weights(random_pairs, accelerator, higher_is_better, best_step, stop_step):
    scores, seen = [1.0, 2.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0], []

    def evaluator(policy):
        seen.append(cpu_state(policy))
        assert not policy.training
        return scores[len(seen) - 1]

    dpo = DPO(TinyLM())
    trainer = _trainer(
        dpo, random_pairs, accelerator, num_train_steps=8, batch_size=4, eval_every=1,
        evaluator=evaluator, higher_is_better=higher_is_better, early_stopping_patience=2,
    )
    summary = trainer.train()
    assert summary["stopped_early"] and summary["steps"] == stop_step and len(seen) == stop_step
    assert summary["best_step"] == best_step and summary["best_score"] == scores[best_step - 1]
    assert state_equal(cpu_state(dpo.policy), seen[best_step - 1])
    assert not state_equal(cpu_state(dpo.policy), seen[-1])
    assert dpo.policy.training  # evaluation mode was undone


def test_default_evaluator_is_validation_loss(clear_pairs, accelerator):
    trainer = _trainer(
        DPO(tiny_llama()), clear_pairs, accelerator, valid_dataset=clear_pairs, num_train_steps=6,
        eval_every=3, eval_at_start=True, early_stopping_patience=None,
    )
    assert trainer.validation_loss() == pytest.approx(math.log(2), abs=1e-6)
    summary = trainer.train()
    assert summary["best_score"] < math.log(2) - 0.01 and summary["best_step"] in (3, 6)


@pytest.mark.parametrize("ref_ema_decay", [1.0, 0.9], ids=["frozen-ref", "ema-ref"])
def test_non_finite_loss_raises_and_restores_finite_weights(random_pairs, accelerator, ref_ema_decay):
    dpo = DPO(TinyLM(), ref_ema_decay=ref_ema_decay)
    start = cpu_state(dpo.policy)

    def poison(metrics, step):
        if step == 2:
            with torch.no_grad():
                dpo.policy.mix.weight.fill_(float("nan"))

    trainer = _trainer(dpo, random_pairs, accelerator, num_train_steps=5, batch_size=4, log_fn=poison)
    with pytest.raises(NonFiniteLossError, match="step 3.*restored to the"):
        trainer.train()
    assert all(torch.isfinite(v).all() for v in cpu_state(dpo.policy).values())
    assert state_equal(cpu_state(dpo.policy), start)


def test_learning_rate_warms_up_then_decays_once_per_step(random_pairs, accelerator):
    lrs = []
    trainer = _trainer(
        DPO(TinyLM()), random_pairs, accelerator, batch_size=2, grad_accum_steps=2, num_epochs=2,
        warmup_steps=2, log_fn=lambda m, s: lrs.append(m["learning_rate"]),
    )
    summary = trainer.train()
    # 16 pairs / batch 2 = 8 batches; 2 per step -> 4 steps per epoch, 8 steps in 2 epochs
    assert summary["steps"] == 8
    expected = [
        warmup_linear_decay(i, warmup_steps=2, total_steps=8, start_lr=1e-3, end_lr=1e-4) for i in range(8)
    ]
    assert lrs == pytest.approx(expected)
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3]) and lrs[-1] == pytest.approx(1e-4)


def test_round_length_and_checkpoint(random_pairs, accelerator, tmp_path):
    trainer = _trainer(DPO(TinyLM()), random_pairs, accelerator, batch_size=5, checkpoint_dir=tmp_path / "ckpt")
    assert trainer.train()["steps"] == 4  # default: one epoch, ceil(16 / 5) batches
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    trainer.loop.optim = dataclasses.replace(trainer.loop.optim, num_train_steps=3, num_epochs=2)
    assert trainer.train()["steps"] == 3  # the smaller of the two limits


def test_configuration_errors(random_pairs, accelerator):
    with pytest.raises(ValueError, match="train_dataset or a dataset_generator"):
        DPOTrainer(TinyLM(), accelerator=accelerator)
    with pytest.raises(ValueError, match="eval_every needs"):
        DPOTrainer(TinyLM(), train_dataset=random_pairs, accelerator=accelerator, early_stopping=EarlyStopping(eval_every=2))
    trainer = DPOTrainer(TinyLM(), dataset_generator=lambda: [], accelerator=accelerator)
    with pytest.raises(ValueError, match="empty"):
        trainer.train()


def test_dropout_is_set_on_policy_modules_and_hf_attributes(random_pairs, accelerator):
    model = tiny_llama()
    _trainer(model, random_pairs, accelerator, dropout=0.25)
    attention = model.model.layers[0].self_attn
    assert model.config.attention_dropout == 0.25 and attention.attention_dropout == 0.25
    plain = TinyLM()
    _trainer(plain, random_pairs, accelerator, dropout=0.3)
    assert plain.dropout.p == 0.3


def test_replay_rides_along_without_changing_the_order_of_the_pairs(random_pairs, accelerator):
    from dpo import SFTDataset

    replay = SFTDataset.from_pairs([([3, 4], [5, 6, 7])] * 6, max_len=8)
    seen = {}
    for name, extra in (("plain", {}), ("replay", {"replay_dataset": replay, "replay_batch_size": 2})):
        trainer = _trainer(DPO(TinyLM()), random_pairs, accelerator, num_train_steps=3, batch_size=4, **extra)
        batches, _ = trainer.loop.begin_round(random_pairs, trainer.replay_dataset, trainer.replay_batch_size)
        seen[name] = [next(batches) for _ in range(3)]
    for plain, mixed in zip(seen["plain"], seen["replay"]):
        assert torch.equal(plain["chosen"], mixed["chosen"]) and "replay_seq" not in plain
        assert mixed["replay_seq"].shape == (2, 8) and mixed["replay_prompt_len"].tolist() == [2, 2]
    trainer = _trainer(DPO(TinyLM()), random_pairs, accelerator, num_train_steps=3, batch_size=4,
                       replay_dataset=replay, replay_batch_size=2)
    logs = []
    trainer.loop.log_fn = lambda m, s: logs.append(m)
    trainer.train()
    assert len(logs) == 3 and all("replay/nll" in m and m["replay/nll"] > 0 for m in logs)
