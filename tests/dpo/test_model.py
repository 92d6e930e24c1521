import math

import pytest
import torch
from torch.utils.data import default_collate

from dpo import DPO, DPODataset, sequence_logprobs, write_preference_memmaps
from tests.dpo._helpers import TinyLM, cpu_state, random_rows, state_equal, tiny_llama


@pytest.fixture
def batch(tmp_path):
    dataset = DPODataset(write_preference_memmaps(tmp_path, random_rows(6, seed=1), max_len=16))
    return default_collate([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("make_model", [tiny_llama, TinyLM], ids=["llama", "plain"])
def test_step0_loss_is_ln2_and_rewards_zero(batch, make_model):
    dpo = DPO(make_model(), beta=0.1).eval()
    out = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert out.metrics[name].item() == 0.0, name
    assert out.metrics["logps/chosen"].item() < 0


def test_inputs_untouched_and_gradients_reach_only_the_policy(batch):
    dpo = DPO(tiny_llama())
    before = {k: v.clone() for k, v in batch.items()}
    out = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    out.loss.backward()
    assert all(torch.equal(before[k], batch[k]) for k in batch)  # pads still -1
    assert all(p.grad is not None for p in dpo.policy.parameters())
    assert any(p.grad.abs().sum() > 0 for p in dpo.policy.parameters())
    assert all(p.grad is None and not p.requires_grad for p in dpo.reference.parameters())


def test_precomputed_reference_logps_give_the_same_loss(batch):
    dpo = DPO(tiny_llama())
    with torch.no_grad():  # perturb the policy so that the loss is not ln 2
        for p in dpo.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    live = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    ref_chosen, ref_rejected = dpo.ref_logps(batch["chosen"], batch["rejected"], batch["prompt_len"])
    pre = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"], ref_chosen, ref_rejected)
    assert abs(live.loss.item() - math.log(2)) > 1e-4
    torch.testing.assert_close(pre.loss, live.loss)


def test_extra_padding_columns_do_not_change_the_loss(batch):
    dpo = DPO(tiny_llama()).eval()
    pad = torch.full((batch["chosen"].shape[0], 7), -1)
    with torch.no_grad():
        for p in dpo.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
        a = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"]).loss
        b = dpo(torch.cat([batch["chosen"], pad], 1), torch.cat([batch["rejected"], pad], 1), batch["prompt_len"]).loss
    torch.testing.assert_close(a, b)


def test_nll_term_is_token_mean_over_chosen_responses(batch):
    model = tiny_llama()
    plain, rpo = DPO(model).eval(), DPO(model, nll_weight=0.5).eval()
    out_plain = plain(batch["chosen"], batch["rejected"], batch["prompt_len"])
    out_rpo = rpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    ids = batch["chosen"].clamp(min=0)
    logits = model(input_ids=ids, attention_mask=(batch["chosen"] >= 0).long()).logits
    total = sequence_logprobs(logits, batch["chosen"], batch["prompt_len"]).sum()
    n_tokens = ((batch["chosen"] >= 0).sum(1) - batch["prompt_len"]).sum()
    nll = -total / n_tokens
    torch.testing.assert_close(out_rpo.metrics["nll"], nll.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_rpo.loss, out_plain.loss + 0.5 * nll, atol=1e-5, rtol=1e-5)


def test_replayed_sft_examples_add_their_weighted_token_mean_nll(batch):
    """Judge replay: loss = DPO loss + w * (NLL of the replay responses, token mean), computed here
    independently with `sft_loss` on the full logits."""
    from dpo import sft_loss

    policy = tiny_llama()
    dpo = DPO(policy, beta=0.1, replay_weight=0.5).eval()
    replay_seq = torch.tensor([[3, 4, 5, 6, -1], [7, 8, 9, 10, 11]])
    replay_prompt_len = torch.tensor([2, 3])
    plain = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    mixed = dpo(batch["chosen"], batch["rejected"], batch["prompt_len"], replay_seq=replay_seq,
                replay_prompt_len=replay_prompt_len)
    with torch.no_grad():
        expected_nll, _ = sft_loss(policy(input_ids=replay_seq.clamp(min=0)).logits, replay_seq, replay_prompt_len)
    assert mixed.metrics["replay/nll"].item() == pytest.approx(expected_nll.item(), rel=1e-5)
    assert mixed.loss.item() == pytest.approx(plain.loss.item() + 0.5 * expected_nll.item(), rel=1e-5)
    assert mixed.num_tokens == plain.num_tokens + 9


def test_reset_copies_policy_into_reference():
    dpo = DPO(tiny_llama())
    with torch.no_grad():
        next(dpo.policy.parameters()).add_(1.0)
    assert not state_equal(cpu_state(dpo.policy), cpu_state(dpo.reference))
    dpo.update_reference_model_with_policy()
    assert state_equal(cpu_state(dpo.policy), cpu_state(dpo.reference))
    assert not any(p.requires_grad for p in dpo.reference.parameters())


def test_frozen_reference_ignores_ema_updates_and_stays_in_eval_mode():
    dpo = DPO(TinyLM(), ref_ema_decay=1.0)
    initial = cpu_state(dpo.reference)
    with torch.no_grad():
        dpo.policy.mix.weight.add_(1.0)
    dpo.update_reference_ema()
    dpo.train()
    assert state_equal(initial, cpu_state(dpo.reference))
    assert dpo.policy.training and not dpo.reference.training


def test_ema_reference_follows_the_formula_from_the_first_update():
    decay = 0.8
    dpo = DPO(TinyLM(), ref_ema_decay=decay)
    expected = cpu_state(dpo.reference)
    for step in range(3):
        with torch.no_grad():
            for p in dpo.policy.parameters():
                p.add_(0.1 * (step + 1))
        dpo.update_reference_ema()
        policy = cpu_state(dpo.policy)
        expected = {k: decay * expected[k] + (1 - decay) * policy[k] for k in expected}
        for k, v in cpu_state(dpo.reference).items():
            torch.testing.assert_close(v, expected[k], msg=f"step {step + 1}: {k}")
        # no warm-up copying: the reference is strictly between its old value and the policy
        assert not state_equal(cpu_state(dpo.reference), policy)


def test_invalid_dpo_arguments():
    with pytest.raises(ValueError, match="ref_ema_decay"):
        DPO(TinyLM(), ref_ema_decay=1.5)
    with pytest.raises(ValueError, match="reduction"):
        DPO(TinyLM(), reduction="max")
    with pytest.raises(ValueError, match="loss_type"):
        DPO(TinyLM(), loss_type="nope")
