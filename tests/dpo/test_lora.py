"""LoRA (peft) policies: the reference is the base model (adapters disabled, no copy), only the
adapters train, the step-0 invariant holds, a round resumes mid-way, and rounds end merged."""

import math

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import default_collate

from dpo import (
    DPO,
    DPODataset,
    DPOTrainer,
    LoraSettings,
    LossSettings,
    OptimSettings,
    WeightSnapshot,
    add_lora,
    fold_adapters,
    merge_lora,
    set_dropout,
    train_dpo,
    train_sft,
    write_preference_memmaps,
)
from tests.dpo._helpers import (
    clear_preference_rows,
    cpu_state,
    random_rows,
    settings,
    state_equal,
    tiny_llama,
)

LORA = LoraSettings(r=4, alpha=8.0)


class Crash(Exception):
    """Stands for the process dying mid-round."""


@pytest.fixture
def pairs(tmp_path):
    return DPODataset(write_preference_memmaps(tmp_path / "pairs", random_rows(12, seed=2), max_len=16))


@pytest.fixture
def batch(pairs):
    return default_collate([pairs[i] for i in range(len(pairs))])


def base_weights(model) -> dict:
    """The base model's own tensors inside a peft model (everything but the adapters), by base name."""
    return {k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone()
            for k, v in model.state_dict().items() if "lora_" not in k}


def randomize_adapters(model, seed: int = 0) -> None:
    """Give every B matrix values, as training would (fresh adapters are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def lora_trainer(pairs, state_dir=None, log_fn=None, **options):
    policy = add_lora(tiny_llama(seed=0), LORA, seed=1)
    return DPOTrainer(
        DPO(policy, beta=0.1), train_dataset=pairs, accelerator=Accelerator(cpu=True), seed=3, log_fn=log_fn,
        checkpoint_every=2 if state_dir else None, state_dir=state_dir,
        **settings(batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3, dropout=0.0,
                   num_train_steps=6, **options),
    )


def test_reference_logps_equal_the_base_models_bit_for_bit(batch):
    """The reference of a LoRA policy is its base: the same log-probs, to the bit (fp32), as a frozen
    copy of the model without adapters gives, even when the adapters are far from the identity."""
    args = batch["chosen"], batch["rejected"], batch["prompt_len"]
    expected = DPO(tiny_llama(seed=0)).ref_logps(*args)
    dpo = DPO(add_lora(tiny_llama(seed=0), LORA))
    randomize_adapters(dpo.policy)
    got = dpo.ref_logps(*args)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    with torch.no_grad():  # ... while the policy itself does move
        policy = dpo.eval()(*args)
    assert policy.metrics["rewards/margins"].abs() > 0
    assert dpo.ref_model is None and dpo.reference is dpo.policy  # no second copy of the weights
    assert all(p.requires_grad for n, p in dpo.policy.named_parameters() if "lora_" in n)  # adapters back on


def test_step0_loss_is_ln2_and_margins_zero_with_fresh_adapters(batch):
    """Fresh adapters add B A x with B = 0: exact zeros, so the policy is bit-equal to its reference
    and the sigmoid loss is -log sigma(0) = ln 2, every reward 0."""
    dpo = DPO(add_lora(tiny_llama(seed=0), LORA), beta=0.1).train()
    out = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert out.metrics[name].item() == 0.0, name


def test_only_the_adapters_train_and_the_optimizer_holds_only_them(pairs):
    logs = []
    trainer = lora_trainer(pairs, log_fn=lambda m, s: logs.append(m))
    policy = trainer.dpo.policy
    base_before, adapters_before = base_weights(policy), WeightSnapshot(policy).state
    trainer.train()
    assert state_equal(base_weights(policy), base_before)  # base (= the reference) bit-identical
    adapters_after = WeightSnapshot(policy).state
    assert adapters_after.keys() == adapters_before.keys() and all("lora_" in k for k in adapters_after)
    assert not state_equal(adapters_after, adapters_before)
    optimized = {id(p) for group in trainer.loop.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in policy.named_parameters() if "lora_" in n}
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and logs[0]["rewards/margins"] == 0.0
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_precomputed_and_live_reference_train_alike(pairs):
    histories = []
    for precompute in (True, False):
        logs = []
        trainer = lora_trainer(pairs, log_fn=lambda m, s, logs=logs: logs.append(m["loss"]))
        trainer.precompute_ref_logps = precompute
        trainer.train()
        histories.append(logs)
    torch.testing.assert_close(histories[0], histories[1], atol=1e-5, rtol=1e-5)


def test_interrupted_lora_round_resumes_to_the_weights_of_an_uninterrupted_one(pairs, tmp_path):
    """The training state of a LoRA round holds the adapters (the base is M_t, rebuilt by the caller):
    a new trainer on a freshly wrapped model continues from step 4 and ends bit-identical."""
    clean = lora_trainer(pairs, tmp_path / "clean")
    expected = clean.train()
    expected_adapters = WeightSnapshot(clean.dpo.policy).state

    def crash_at_5(metrics, step):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        lora_trainer(pairs, tmp_path / "state", log_fn=crash_at_5).train()
    saved = load_file(tmp_path / "state" / "policy.safetensors")
    assert saved.keys() == expected_adapters.keys()  # adapters only, not the base

    resumed = lora_trainer(pairs, tmp_path / "state")
    summary = resumed.train()
    assert summary["resumed_from_step"] == 4 and summary["steps"] == expected["steps"] == 6
    assert state_equal(WeightSnapshot(resumed.dpo.policy).state, expected_adapters)
    assert summary["final/loss"] == expected["final/loss"]


def test_a_second_round_folds_the_adapters_into_the_reference(pairs, batch):
    """`update_reference_model_with_policy` with LoRA: the trained adapters move into the base weights
    (the policy computes what it did) and restart at the identity, so round 2's reference is M_2."""
    args = batch["chosen"], batch["rejected"], batch["prompt_len"]
    dpo = DPO(add_lora(tiny_llama(seed=0), LORA))
    assert not fold_adapters(dpo.policy)  # fresh adapters: nothing to fold, nothing changes
    randomize_adapters(dpo.policy)
    with torch.no_grad():
        before = dpo.eval()(*args).metrics["logps/chosen"]
    dpo.update_reference_model_with_policy()
    with torch.no_grad():
        after = dpo.eval()(*args)
    torch.testing.assert_close(after.metrics["logps/chosen"], before, atol=1e-5, rtol=1e-5)
    assert after.metrics["rewards/margins"].abs() < 1e-4  # reference == policy again
    assert all(not p.any() for n, p in dpo.policy.named_parameters() if "lora_B" in n)


def test_ema_reference_is_refused_for_a_lora_policy():
    with pytest.raises(ValueError, match="ref_ema_decay=0.9 .* LoRA"):
        DPO(add_lora(tiny_llama(), LORA), ref_ema_decay=0.9)


def test_train_dpo_with_lora_saves_adapters_and_merges_them_into_the_model(tmp_path):
    from peft import PeftModel

    folder = write_preference_memmaps(tmp_path / "pairs", clear_preference_rows(16))
    model = tiny_llama(seed=0)
    total = sum(p.numel() for p in model.parameters())
    summary = train_dpo(model, folder, loss=LossSettings(beta=0.1), lora=LORA, adapter_dir=tmp_path / "adapter",
                        optim=OptimSettings(batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3,
                                            dropout=0.0, num_train_steps=6), vocab_size=64)
    assert summary["final/rewards/accuracies"] > 0.9 and 0 < summary["trainable_params"] < total / 4
    assert not hasattr(model, "peft_config") and all(p.requires_grad for p in model.parameters())
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    # base + saved adapter, merged by peft, is the model train_dpo left behind
    reloaded = PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path / "adapter").merge_and_unload()
    for name, value in cpu_state(model).items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)
    assert not state_equal(cpu_state(model), cpu_state(tiny_llama(seed=0)))


def test_train_sft_with_lora_trains_adapters_and_merges():
    model = tiny_llama(seed=0)
    before = cpu_state(model)
    summary = train_sft(model, [([5, 6, 7], [1, 2, 1, 2])] * 8, max_len=16, lora=LORA,
                        optim=OptimSettings(batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3,
                                            dropout=0.0, num_train_steps=6))
    assert summary["final/loss"] < summary["mean/loss"] and summary["trainable_params"] > 0
    changed = {k for k, v in cpu_state(model).items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # the adapted linear layers only


def test_disabled_lora_settings_train_every_weight():
    model = tiny_llama(seed=0)
    summary = train_sft(model, [([5, 6, 7], [1, 2])] * 4, max_len=16, lora=LoraSettings(enabled=False),
                        optim=OptimSettings(batch_size=4, start_learning_rate=1e-2, num_train_steps=1))
    assert summary["trainable_params"] == sum(p.numel() for p in model.parameters())


def test_model_dropout_leaves_the_adapters_dropout_alone():
    policy = add_lora(tiny_llama(), LoraSettings(r=4, dropout=0.2))
    set_dropout(policy, 0.05)
    rates = {n.rsplit(".", 1)[0].split(".")[-1]: m.p for n, m in policy.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {"lora_dropout": 0.2}  # the tiny Llama's own dropout is an attribute, set to 0.05
    assert policy.get_base_model().config.attention_dropout == 0.05


def test_add_lora_is_seeded_and_refuses_a_second_wrap():
    a, b = add_lora(tiny_llama(), LORA, seed=4), add_lora(tiny_llama(), LORA, seed=4)
    assert state_equal(WeightSnapshot(a).state, WeightSnapshot(b).state)
    with pytest.raises(ValueError, match="already has adapters"):
        add_lora(a, LORA)
    inner = a.get_base_model()
    assert merge_lora(a) is inner  # the model object that was wrapped, now without adapters
