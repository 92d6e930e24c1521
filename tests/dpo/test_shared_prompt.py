"""The shared-prompt layout scores every response token exactly as two separate rows would."""

import copy
import math

import pytest
import torch
import transformers
from torch.utils.data import default_collate

from dpo import (
    DPO,
    DPODataset,
    shared_prompt_logprobs,
    supports_shared_prompt,
    token_logprobs,
    write_preference_memmaps,
)
from dpo._modeling import set_dropout
from dpo.shared_prompt import shared_prompt_rows
from tests.dpo._helpers import VOCAB, TinyLM, random_rows, tiny_llama

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64)


def _model(family: str, attn: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                         bos_token_id=1, eos_token_id=2, attn_implementation=attn)
        return transformers.GPT2LMHeadModel(config).double().eval()
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    return model_cls(config_cls(vocab_size=VOCAB, attn_implementation=attn, **SMALL)).double().eval()


def _batch(tmp_path, n: int = 7, seed: int = 3) -> dict[str, torch.Tensor]:
    # lengths from 1: one-token prompts and one-token responses are covered
    rows = random_rows(n, seed=seed, max_prompt=5, max_response=9)
    dataset = DPODataset(write_preference_memmaps(tmp_path, rows, max_len=16))
    return default_collate([dataset[i] for i in range(len(dataset))])


def _one_row_at_a_time(model, seq: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Independent reference: the row alone, unpadded, full logits, token_logprobs."""
    ids = seq[seq >= 0].unsqueeze(0)
    logps, _ = token_logprobs(model(input_ids=ids).logits, ids, prompt_len)
    return logps[0, prompt_len - 1 :]  # the response tokens, in order


def test_layout_of_one_pair():
    # prompt [5, 6], chosen [7, 8], rejected [9, 10, 11]; a second, longer pair sets T
    chosen = torch.tensor([[5, 6, 7, 8, -1, -1], [4, 4, 4, 4, 4, 4]])
    rejected = torch.tensor([[5, 6, 9, 10, 11, -1], [4, 4, 4, 4, 4, 4]])
    rows = shared_prompt_rows(chosen, rejected, torch.tensor([2, 3]))
    assert rows.ids[0].tolist() == [5, 6, 7, 8, 9, 10, 11, 0, 0]
    assert rows.position_ids[0].tolist() == [0, 1, 2, 3, 2, 3, 4, 0, 0]
    segment = [0, 0, 1, 1, 2, 2, 2, 3, 3]
    expected = torch.tensor([
        [k <= q and (segment[k] == 0 or segment[k] == segment[q]) for k in range(9)] for q in range(9)
    ])
    assert torch.equal(rows.allowed[0, 0], expected)
    assert rows.target[0].tolist() == [False, False, True, True, True, True, True, False, False]
    # token 7 and token 9 are both scored by the last prompt token (position 1)
    assert rows.source[0, [2, 3, 4, 5, 6]].tolist() == [1, 2, 1, 4, 5]
    assert rows.keep[0].tolist() == [False, True, True, False, True, True, False, False, False]
    assert rows.chosen_mask[0].tolist() == [True, True, False]
    assert rows.rejected_mask[0].tolist() == [True, True, True]


@pytest.mark.parametrize(
    "family, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("gpt2", "sdpa"), ("gpt2", "eager")]
)
def test_logprobs_equal_each_row_scored_alone(tmp_path, family, attn):
    model = _model(family, attn)
    assert supports_shared_prompt(model)
    batch = _batch(tmp_path)
    logps, mask = shared_prompt_logprobs(model, batch["chosen"], batch["rejected"], batch["prompt_len"])
    rows = torch.cat([batch["chosen"], batch["rejected"]])
    for i, (seq, prompt_len) in enumerate(zip(rows, batch["prompt_len"].repeat(2))):
        expected = _one_row_at_a_time(model, seq, int(prompt_len))
        assert int(mask[i].sum()) == len(expected)
        torch.testing.assert_close(logps[i, : len(expected)], expected, rtol=0, atol=1e-10)
        assert not logps[i, len(expected) :].any()


# Llama's RMSNorm runs in float32 even in a float64 model, so its gradients agree to float32
# round-off only; GPT-2 is float64 throughout and agrees to float64 round-off.
@pytest.mark.parametrize("family, rtol", [("gpt2", 1e-10), ("llama", 1e-5)])
def test_dpo_loss_and_gradients_match_the_two_row_forward(tmp_path, family, rtol):
    batch = _batch(tmp_path)
    model = _model(family, "sdpa")
    set_dropout(model, 0.0)
    shared, two_rows = DPO(model, share_prompt=True), DPO(copy.deepcopy(model), share_prompt=False)
    assert shared.share_prompt and not two_rows.share_prompt
    with torch.no_grad():  # move both policies away from the reference so the loss is not ln 2
        for a, b in zip(shared.policy.parameters(), two_rows.policy.parameters()):
            a.add_(0.05 * torch.randn_like(a))
            b.copy_(a)
    outs = [dpo(batch["chosen"], batch["rejected"], batch["prompt_len"]) for dpo in (shared, two_rows)]
    for out in outs:
        out.loss.backward()
    assert abs(outs[0].loss.item() - math.log(2)) > 1e-3
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=1e-12, atol=0)
    assert outs[0].num_tokens == outs[1].num_tokens == int((batch["chosen"] >= 0).sum() + (batch["rejected"] >= 0).sum())
    for (name, a), b in zip(shared.policy.named_parameters(), two_rows.policy.parameters()):
        scale = b.grad.abs().max().item()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=rtol * scale, msg=name)


def test_eager_attention_gets_an_additive_mask_in_float32(tmp_path):
    batch = _batch(tmp_path)
    model = tiny_llama()
    model.config._attn_implementation = "eager"
    dpo_shared, dpo_two = DPO(model, share_prompt=True).eval(), DPO(model, share_prompt=False).eval()
    with torch.no_grad():
        a = dpo_shared.ref_logps(batch["chosen"], batch["rejected"], batch["prompt_len"])
        b = dpo_two.ref_logps(batch["chosen"], batch["rejected"], batch["prompt_len"])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4)


def test_models_without_a_custom_mask_path_use_two_rows():
    assert not supports_shared_prompt(TinyLM())
    assert not DPO(TinyLM(), share_prompt=True).share_prompt
    model = tiny_llama()
    model.config._attn_implementation = "flex_attention"  # takes block masks, not a dense 4-D mask
    assert not supports_shared_prompt(model)
