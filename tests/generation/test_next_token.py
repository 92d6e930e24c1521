"""Next-token selection: greedy, temperature, top-k and top-p against brute-force definitions."""

import pytest
import torch

from generation import SamplingParams, SamplingParamsError, encode_chat_prompt, generate, sample_next_tokens
from generation.next_token import NUCLEUS_PROBE, mask_top_k, nucleus, sample_index


def brute_force_top_p_keep(probs: list[float], top_p: float) -> set[int]:
    """Walk tokens from most to least likely, keeping each until the kept mass reaches top_p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return kept


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("batch_size", 0),
    ],
)
def test_invalid_params_rejected_with_field_name(field, value):
    with pytest.raises(SamplingParamsError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value})


def test_top_k_keeps_exactly_the_k_best():
    scores = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    masked = mask_top_k(scores, 5)
    for row, row_masked in zip(scores, masked, strict=True):
        best = set(torch.argsort(row, descending=True)[:5].tolist())
        assert set(torch.nonzero(torch.isfinite(row_masked)).flatten().tolist()) == best
        assert torch.equal(row_masked[list(best)], row[list(best)])


@pytest.mark.parametrize("vocab", [12, 4 * NUCLEUS_PROBE])  # the short list, and the full-sort fallback
@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_top_p_set_matches_brute_force(top_p, vocab):
    scale = 2.0 if vocab < NUCLEUS_PROBE else 0.3  # a flat distribution needs more than the short list
    probs = torch.softmax(torch.randn(8, vocab, generator=torch.Generator().manual_seed(1)) * scale, -1)
    weights, token_ids = nucleus(probs, top_p)
    for row_probs, row_weights, row_ids in zip(probs, weights, token_ids, strict=True):
        expected = brute_force_top_p_keep(row_probs.tolist(), top_p)
        assert set(row_ids[row_weights > 0].tolist()) == expected
        assert torch.equal(row_weights[row_weights > 0], row_probs[row_ids[row_weights > 0]])


def test_sample_index_never_draws_a_zero_weight_column():
    weights = torch.zeros(5000, 9)
    weights[:, [2, 5]] = torch.tensor([1e-30, 1.0])  # a tiny weight, and trailing zero columns
    draws = sample_index(weights, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) <= {2, 5} and (draws == 5).all()


def test_top_p_sampling_frequencies_follow_the_renormalized_set():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]]).repeat(20000, 1)
    draws = sample_next_tokens(logits, SamplingParams(temperature=1.0, top_p=0.8), torch.Generator().manual_seed(4))
    probs = torch.softmax(logits[0], -1)
    kept = sorted(brute_force_top_p_keep(probs.tolist(), 0.8))
    expected = torch.zeros(5)
    expected[kept] = probs[kept] / probs[kept].sum()
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, expected, atol=0.015)


def test_greedy_and_degenerate_filters_pick_argmax():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(2))
    argmax = logits.argmax(-1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_tokens(logits, SamplingParams(temperature=0.0)), argmax)
    assert torch.equal(sample_next_tokens(logits, SamplingParams(temperature=1.0, top_k=1), gen), argmax)
    assert torch.equal(sample_next_tokens(logits, SamplingParams(temperature=1.0, top_p=1e-6), gen), argmax)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_frequencies_follow_softmax_of_scaled_logits(temperature):
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).repeat(20000, 1)
    draws = sample_next_tokens(
        logits, SamplingParams(temperature=temperature), torch.Generator().manual_seed(3)
    )
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    expected = torch.softmax(logits[0] / temperature, -1)
    assert torch.allclose(freq, expected, atol=0.015)


def test_top_k_1_and_tiny_top_p_equal_greedy_generation(tiny):
    prompts = [encode_chat_prompt(tiny.tokenizer, t) for t in ["the cat sat on the mat", "why", "list a dog"]]
    greedy = generate(tiny.model, tiny.tokenizer, prompts, SamplingParams(max_new_tokens=10, temperature=0.0))
    top_k = generate(
        tiny.model,
        tiny.tokenizer,
        prompts,
        SamplingParams(max_new_tokens=10, temperature=1.3, top_k=1, seed=5),
    )
    top_p = generate(
        tiny.model,
        tiny.tokenizer,
        prompts,
        SamplingParams(max_new_tokens=10, temperature=1.3, top_p=1e-4, seed=6),
    )
    assert top_k == greedy
    assert top_p == greedy
