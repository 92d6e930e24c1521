"""`ComputeSettings`: gradient checkpointing changes memory, not results; bf16 autocast runs on CPU."""

import math

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import default_collate

from dpo import DPO, ComputeSettings, DPODataset, DPOTrainer, LoraSettings, add_lora, write_preference_memmaps
from dpo._modeling import enable_gradient_checkpointing
from tests.dpo._helpers import TinyLM, cpu_state, random_rows, settings, tiny_llama


@pytest.fixture
def pairs(tmp_path):
    return DPODataset(write_preference_memmaps(tmp_path / "pairs", random_rows(12, seed=2), max_len=16))


def _run(pairs, compute: ComputeSettings, lora: bool = False):
    logs = []
    policy = tiny_llama(seed=0, layers=2)
    if lora:
        policy = add_lora(policy, LoraSettings(r=4), seed=1)
    trainer = DPOTrainer(
        DPO(policy, beta=0.1), train_dataset=pairs, accelerator=Accelerator(cpu=True), compute=compute, seed=3,
        log_fn=lambda m, s: logs.append(m),
        **settings(batch_size=4, start_learning_rate=1e-2, end_learning_rate=1e-3, dropout=0.0, num_train_steps=4),
    )
    trainer.train()
    return logs, cpu_state(trainer.dpo.policy)


def test_checkpointed_forward_gives_the_same_loss_and_gradients(pairs):
    batch = default_collate([pairs[i] for i in range(len(pairs))])
    grads = []
    for checkpointing in (False, True):
        dpo = DPO(tiny_llama(seed=0, layers=2)).train()
        with torch.no_grad():  # move off the reference so the gradient is not the step-0 one
            for p in dpo.policy.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        if checkpointing:
            enable_gradient_checkpointing(dpo.policy)
            assert dpo.policy.model.gradient_checkpointing
        out = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in dpo.policy.named_parameters()}))
    (loss, plain), (loss_ckpt, ckpt) = grads
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_with_gradient_checkpointing_matches_without(pairs, lora):
    plain_logs, plain_weights = _run(pairs, ComputeSettings(), lora)
    ckpt_logs, ckpt_weights = _run(pairs, ComputeSettings(gradient_checkpointing=True), lora)
    for key in ("loss", "grad_norm", "rewards/margins"):
        torch.testing.assert_close([m[key] for m in ckpt_logs], [m[key] for m in plain_logs], atol=1e-6, rtol=1e-5)
    for name, value in plain_weights.items():
        torch.testing.assert_close(ckpt_weights[name], value, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_bf16_autocast_trains_on_cpu_with_fp32_weights(pairs, lora):
    fp32_logs, _ = _run(pairs, ComputeSettings(), lora)
    logs, weights = _run(pairs, ComputeSettings(autocast="bf16"), lora)
    # the reference was precomputed under the same autocast: policy == reference at step 0
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and logs[0]["rewards/margins"] == 0.0
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in logs)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert all(v.dtype == torch.float32 for v in weights.values())
    # bf16 keeps ~3 significant digits: the curves agree with fp32's to that
    torch.testing.assert_close([m["loss"] for m in logs], [m["loss"] for m in fp32_logs], atol=3e-2, rtol=3e-2)


def test_autocast_really_computes_in_bf16(pairs):
    loop_seen = []
    trainer = DPOTrainer(DPO(tiny_llama()), train_dataset=pairs, accelerator=Accelerator(cpu=True),
                         compute=ComputeSettings(autocast="bf16"), **settings(batch_size=4, num_train_steps=1))
    hook = trainer.dpo.policy.lm_head.register_forward_hook(lambda m, i, o: loop_seen.append(o.dtype))
    trainer.train()
    hook.remove()
    assert loop_seen and set(loop_seen) == {torch.bfloat16}  # precompute and training steps alike


def test_gradient_checkpointing_needs_a_hf_model(pairs):
    with pytest.raises(ValueError, match="gradient_checkpointing needs a Hugging Face model"):
        DPOTrainer(DPO(TinyLM()), train_dataset=pairs, accelerator=Accelerator(cpu=True),
                   compute=ComputeSettings(gradient_checkpointing=True), **settings(batch_size=4))


def test_invalid_autocast_names_the_field():
    with pytest.raises(ValueError, match=r"\.autocast='fp8' is invalid"):
        ComputeSettings(autocast="fp8")
