"""The package's steps: one DPO round from a pairs folder (with held-out pairs, early stopping and
the best weights restored) and SFT from token pairs."""

import pytest
from accelerate import Accelerator
from transformers import LlamaForCausalLM

from dpo import (
    DPODataset,
    EarlyStopping,
    LoraSettings,
    LossSettings,
    OptimSettings,
    split_validation,
    train_dpo,
    train_sft,
    write_preference_memmaps,
)
from dpo.loop import TrainingLoop
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


def test_model_dir_holds_the_trained_policy(tmp_path):
    folder = write_preference_memmaps(tmp_path / "pairs", clear_preference_rows(8))
    policy = tiny_llama(tie=True)
    train_dpo(policy, folder, loss=LossSettings(), optim=OPTIM, model_dir=tmp_path / "model")
    assert state_equal(cpu_state(LlamaForCausalLM.from_pretrained(tmp_path / "model")), cpu_state(policy))


@pytest.fixture
def sharded(monkeypatch):
    """Take the save path of sharded weights (FSDP, DeepSpeed ZeRO-3: GPU only) on one CPU process, where
    `accelerator.get_state_dict` (recorded here) returns the plain state dict of the prepared objective."""
    gathered = []
    real = Accelerator.get_state_dict

    def get_state_dict(self, model, unwrap=True):
        gathered.append(type(self.unwrap_model(model)).__name__)
        return real(self, model, unwrap)

    monkeypatch.setattr(TrainingLoop, "shards_weights", property(lambda self: True))
    monkeypatch.setattr(Accelerator, "get_state_dict", get_state_dict)
    return gathered


def test_sharded_weights_are_gathered_before_the_main_process_saves(tmp_path, sharded):
    folder = write_preference_memmaps(tmp_path / "pairs", clear_preference_rows(8))
    policy = tiny_llama(tie=True)
    train_dpo(policy, folder, loss=LossSettings(), optim=OPTIM, model_dir=tmp_path / "dpo")
    model = tiny_llama(tie=True)
    train_sft(model, [([5, 6, 7], [1, 2, 1, 2])] * 4, optim=OPTIM, max_len=16, model_dir=tmp_path / "sft")
    assert sharded == ["DPO", "_SFTObjective"]  # the objective's weights, of which the policy's are saved
    for trained, saved in ((policy, tmp_path / "dpo"), (model, tmp_path / "sft")):
        reloaded = LlamaForCausalLM.from_pretrained(saved)
        assert state_equal(cpu_state(reloaded), cpu_state(trained))
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_lora_and_round_states_are_refused_with_sharded_weights(tmp_path, sharded):
    folder = write_preference_memmaps(tmp_path / "pairs", clear_preference_rows(8))
    with pytest.raises(ValueError, match="model.lora with sharded weights .* is not supported"):
        train_dpo(tiny_llama(), folder, loss=LossSettings(), optim=OPTIM, lora=LoraSettings(enabled=True, r=2))
    with pytest.raises(ValueError, match="checkpoint_every .* not supported with sharded weights"):
        train_dpo(tiny_llama(), folder, loss=LossSettings(), optim=OPTIM, checkpoint_every=2,
                  state_dir=tmp_path / "state")
