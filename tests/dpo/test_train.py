"""The package's steps: one DPO round from a pairs folder (with held-out pairs, early stopping and
the best weights restored) and SFT from token pairs."""

import pytest

from dpo import (
    DPODataset,
    EarlyStopping,
    LossSettings,
    OptimSettings,
    split_validation,
    train_dpo,
    train_sft,
    write_preference_memmaps,
)
from tests.dpo._helpers import clear_preference_rows, cpu_state, state_equal, tiny_llama

OPTIM = OptimSettings(batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3, dropout=0.0, num_train_steps=6)


def test_held_out_split_is_seeded_disjoint_and_never_empty(tmp_path):
    pairs = DPODataset(write_preference_memmaps(tmp_path, clear_preference_rows(10)))
    train, valid = split_validation(pairs, 0.25, seed=1)
    again, same_valid = split_validation(pairs, 0.25, seed=1)
    assert len(valid) == 2 and len(train) == 8 and set(train.indices).isdisjoint(valid.indices)
    assert valid.indices == same_valid.indices and split_validation(pairs, 0.25, seed=2)[1].indices != valid.indices
    assert split_validation(pairs, 0.0, seed=1) == (pairs, None)
    assert len(split_validation(pairs, 0.01, seed=1)[1]) == 1  # at least one pair


def test_a_round_from_a_folder_learns_the_preferences(tmp_path):
    folder = write_preference_memmaps(tmp_path / "pairs", clear_preference_rows(16))
    summary = train_dpo(tiny_llama(), folder, loss=LossSettings(beta=0.1), optim=OPTIM, vocab_size=64)
    assert summary["steps"] == 6 and summary["num_pairs"] == 16 and summary["valid_pairs"] == 0
    assert summary["final/rewards/accuracies"] > 0.9


def test_early_stopping_on_held_out_pairs_restores_the_best_weights(tmp_path):
    folder = write_preference_memmaps(tmp_path / "pairs", clear_preference_rows(16))
    log = []
    policy = tiny_llama()
    summary = train_dpo(policy, folder, loss=LossSettings(beta=0.1, ref_ema_decay=0.5), optim=OPTIM,
                        early_stopping=EarlyStopping(eval_every=2, patience=None), valid_fraction=0.25,
                        log_fn=lambda m, s: log.append((s, m)), seed=3)
    scores = [m["eval/score"] for _, m in log if "eval/score" in m]
    assert summary["valid_pairs"] == 4 and summary["num_pairs"] == 12 and len(scores) == 3
    assert summary["best_score"] == min(scores) and summary["best_step"] == 2 * (scores.index(min(scores)) + 1)
    with pytest.raises(ValueError, match="held-out pairs"):
        train_dpo(tiny_llama(), folder, loss=LossSettings(), optim=OPTIM, early_stopping=EarlyStopping(eval_every=2))


def test_sft_trains_the_model_in_place_on_token_pairs():
    model = tiny_llama()
    before = cpu_state(model)
    examples = [([5, 6, 7], [1, 2, 1, 2])] * 8
    summary = train_sft(model, examples, optim=OPTIM, max_len=16)
    assert summary["examples"] == 8 and summary["steps"] == 6 and summary["final/loss"] < summary["mean/loss"]
    assert not state_equal(cpu_state(model), before)
