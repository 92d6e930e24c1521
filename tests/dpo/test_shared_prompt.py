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
    set_dropout,
    shared_prompt_logprobs,
    supports_shared_prompt,
    token_logprobs,
    write_preference_memmaps,
)
from dpo.shared_prompt import CHECKED_MODEL_TYPES, shared_prompt_pays_off, shared_prompt_rows
from tests.dpo._helpers import VOCAB, TinyLM, random_rows, tiny_llama

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
T = transformers
# Every family in CHECKED_MODEL_TYPES, as a tiny config: (config class, model class, overrides of SMALL).
FAMILIES = {
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(head_dim=8)),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, {}),
    "gptj": (T.GPTJConfig, T.GPTJForCausalLM, dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)),
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(sliding_window=None)),
    "olmo2": (T.Olmo2Config, T.Olmo2ForCausalLM, {}),
    "opt": (T.OPTConfig, T.OPTForCausalLM, dict(ffn_dim=64, word_embed_proj_dim=32)),
    "phi": (T.PhiConfig, T.PhiForCausalLM, {}),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(pad_token_id=0)),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(head_dim=8)),
}


def _model(family: str, attn: str = "sdpa", **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(vocab_size=VOCAB, **{**SMALL, **extra, **overrides})
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = model_cls(config).double().eval()
    set_dropout(model, 0.0)
    return model


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


def test_every_checked_family_is_tested():
    assert set(FAMILIES) == CHECKED_MODEL_TYPES


# transformers' eager attention (5.x) takes its softmax in float32 even in a float64 model, and a
# shared row's softmax runs over more (masked) keys than a row alone, so eager agrees to float32
# round-off of the attention weights (up to 2.7e-8 seen with transformers 5.24; a wrong mask moves
# log-probs by 0.1 or more); SDPA stays float64 throughout.
EXACT = {"sdpa": 1e-10, "eager": 1e-6}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logprobs_equal_each_row_scored_alone(tmp_path, family, attn):
    model = _model(family, attn)
    assert supports_shared_prompt(model)
    batch = _batch(tmp_path)
    logps, mask = shared_prompt_logprobs(model, batch["chosen"], batch["rejected"], batch["prompt_len"])
    rows = torch.cat([batch["chosen"], batch["rejected"]])
    for i, (seq, prompt_len) in enumerate(zip(rows, batch["prompt_len"].repeat(2))):
        expected = _one_row_at_a_time(model, seq, int(prompt_len))
        assert int(mask[i].sum()) == len(expected)
        torch.testing.assert_close(logps[i, : len(expected)], expected, rtol=0, atol=EXACT[attn])
        assert not logps[i, len(expected) :].any()


# Llama's RMSNorm runs in float32 even in a float64 model, so its gradients agree to float32
# round-off only; GPT-2 is float64 throughout and agrees to float64 round-off.
@pytest.mark.parametrize("family, rtol", [("gpt2", 1e-10), ("llama", 1e-5)])
def test_dpo_loss_and_gradients_match_the_two_row_forward(tmp_path, family, rtol):
    batch = _batch(tmp_path)
    model = _model(family)
    assert shared_prompt_pays_off(batch["chosen"], batch["rejected"], batch["prompt_len"], model.config.hidden_size)
    shared, two_rows = DPO(model, share_prompt=True), DPO(copy.deepcopy(model), share_prompt=False)
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


@pytest.mark.parametrize(
    "build",
    [
        lambda: TinyLM(),  # not a HF model: no 4-D mask input
        lambda: _model("mistral", sliding_window=4),  # a custom mask would drop the window
        lambda: _model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0),
        lambda: _model("llama", attn="flex_attention"),  # takes block masks, not a dense 4-D mask
        lambda: transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=1, n_head=4)),  # ALiBi
    ],
    ids=["plain-module", "mistral-sliding-window", "qwen2-sliding-window", "flex-attention", "bloom-alibi"],
)
def test_unchecked_models_use_two_rows(build):
    assert not supports_shared_prompt(build())


def _rows_per_forward(dpo: DPO, batch: dict) -> int:
    seen = []
    hook = dpo.policy.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        dpo(batch["chosen"], batch["rejected"], batch["prompt_len"])
    hook.remove()
    return seen[0]


def test_long_responses_after_a_short_prompt_run_as_two_rows(tmp_path):
    # one shared row of T = p + c + r costs more attention than two rows of p + max(c, r) once
    # T is large next to the hidden size
    long_rows = [([5], list(range(3, 60)), list(range(4, 61)))] * 2
    short_rows = [(list(range(3, 40)), [7, 8], [9])] * 2
    dpo = DPO(_model("llama"))
    for rows, expected in [(long_rows, 4), (short_rows, 2)]:
        folder = tmp_path / str(expected)
        dataset = DPODataset(write_preference_memmaps(folder, rows, max_len=64))
        batch = default_collate([dataset[i] for i in range(len(dataset))])
        assert _rows_per_forward(dpo, batch) == expected
    assert shared_prompt_pays_off(batch["chosen"], batch["rejected"], batch["prompt_len"], None)


def test_prompts_that_differ_are_rejected():
    chosen, rejected = torch.tensor([[5, 6, 7]]), torch.tensor([[5, 9, 7]])
    with pytest.raises(ValueError, match="share their prompt; they differ in pair 0"):
        shared_prompt_rows(chosen, rejected, torch.tensor([2]))
