import pytest
import torch

import dpo
from dpo import selective_log_softmax, sequence_logprobs, token_logprobs
from dpo.data import PAD_VALUE
from tests.dpo._helpers import VOCAB, random_rows, tiny_llama


def _padded_batch(rows):
    """Right-padded (B, L) ids with PAD_VALUE and (B,) prompt lengths from (prompt, response)."""
    length = max(len(p) + len(r) for p, r in rows)
    seq = torch.full((len(rows), length), PAD_VALUE)
    for i, (p, r) in enumerate(rows):
        seq[i, : len(p) + len(r)] = torch.tensor(p + r)
    return seq, torch.tensor([len(p) for p, _ in rows])


def _brute_force(model, prompt, response, reduction):
    """Score each response token with its own prefix-only forward pass and log_softmax."""
    full = torch.tensor([prompt + response])
    total = 0.0
    for j in range(len(prompt), len(full[0])):
        logits = model(input_ids=full[:, :j], use_cache=False).logits[0, -1]  # predicts token j
        total += torch.log_softmax(logits.double(), dim=-1)[full[0, j]].item()
    return total / len(response) if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_token_by_token_brute_force_on_tiny_llama(reduction):
    model = tiny_llama(layers=2).eval()
    rows = [(p, c) for p, c, _ in random_rows(5, seed=3)]
    seq, prompt_len = _padded_batch(rows)
    pad_mask = seq >= 0
    with torch.no_grad():
        logits = model(
            input_ids=seq.clamp(min=0), attention_mask=pad_mask.long(), use_cache=False
        ).logits
        got = sequence_logprobs(logits, seq, prompt_len, reduction=reduction)
        expected = [_brute_force(model, p, r, reduction) for p, r in rows]
    assert len({len(p) for p, _ in rows}) > 1 and (~pad_mask).any()  # varied prompts and padding
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=1e-5)


def test_inputs_are_not_modified_and_pads_excluded():
    torch.manual_seed(0)
    seq = torch.tensor([[5, 6, 7, PAD_VALUE, PAD_VALUE], [5, 6, 7, 8, 9]])
    logits = torch.randn(2, 5, VOCAB)
    seq_before, logits_before = seq.clone(), logits.clone()
    logps, mask = token_logprobs(logits, seq, torch.tensor([2, 1]))
    assert torch.equal(seq, seq_before) and torch.equal(logits, logits_before)
    # row 0: targets 1..4 -> only position 2 (token 7) is a real response token
    assert mask.tolist() == [[False, True, False, False], [True, True, True, True]]
    # garbage logits at padded positions must not leak in
    logits[0, 2:] = float("nan")
    assert torch.isfinite(sequence_logprobs(logits, seq, torch.tensor([2, 1]))).all()


def test_off_by_one_gather_is_the_next_token():
    """Logits at position t put all mass on a token: only the t+1 reading scores 0 log-prob."""
    seq = torch.tensor([[3, 4, 5]])
    logits = torch.full((1, 3, 8), -1e4)
    logits[0, 0, 4] = logits[0, 1, 5] = 0.0  # position t predicts seq[t + 1]
    assert sequence_logprobs(logits, seq, 1).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_equals_full_log_softmax(dtype):
    torch.manual_seed(1)
    logits = (torch.randn(3, 7, 50) * 5).to(dtype)
    index = torch.randint(0, 50, (3, 7))
    expected = torch.log_softmax(logits.float(), -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, index), expected, atol=1e-5, rtol=1e-5)


def test_unknown_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        sequence_logprobs(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), 1, reduction="max")


def _lm_head_rows(model) -> list[int]:
    """Records how many positions each forward's LM head projects."""
    rows: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, inputs, _out: rows.append(inputs[0].numel() // inputs[0].shape[-1]))
    return rows


def test_response_logprobs_runs_the_lm_head_on_response_positions_only():
    model = tiny_llama(layers=2).eval()
    seq, prompt_len = _padded_batch([(p, c) for p, c, _ in random_rows(6, seed=5)])
    head_rows = _lm_head_rows(model)
    logps, mask, pad_mask = dpo.response_logprobs(model, seq, prompt_len)
    # independent path: full logits, then the shifted gather of `token_logprobs`
    full = model(input_ids=seq.clamp(min=0), attention_mask=pad_mask.long(), use_cache=False).logits
    expected, expected_mask = token_logprobs(full, seq, prompt_len)
    assert head_rows == [int(mask.sum()), seq.numel()]  # response targets only, then every position
    assert torch.equal(mask, expected_mask) and torch.equal(pad_mask, seq >= 0)
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=1e-5)


def test_response_logprobs_gradients_match_the_full_logits_path():
    model = tiny_llama(layers=1)
    seq, prompt_len = _padded_batch([(p, r) for p, _, r in random_rows(4, seed=6)])
    grads = []
    for fast in (True, False):
        model.zero_grad()
        if fast:
            logps, _, _ = dpo.response_logprobs(model, seq, prompt_len)
        else:
            logits = model(input_ids=seq.clamp(min=0), attention_mask=(seq >= 0).long(), use_cache=False).logits
            logps, _ = token_logprobs(logits, seq, prompt_len)
        logps.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_response_logprobs_on_a_plain_module_selects_from_full_logits():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, VOCAB))
    seq = torch.tensor([[5, 6, 7, PAD_VALUE], [5, 6, 7, 8]])
    logps, mask, _ = dpo.response_logprobs(net, seq, torch.tensor([2, 1]))
    expected, expected_mask = token_logprobs(net(seq.clamp(min=0)), seq, torch.tensor([2, 1]))
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(logps, expected)
