import pytest
import torch

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
