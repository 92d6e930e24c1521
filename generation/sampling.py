"""Sampling parameters and next-token selection from logits (greedy, temperature, top-k, top-p)."""

from dataclasses import dataclass

import torch


class SamplingParamsError(ValueError):
    """A `SamplingParams` field holds a value outside its valid range."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens during generation.

    Attributes:
        max_new_tokens: Upper bound on NEW tokens per sequence (the prompt is not counted).
        temperature: Softmax temperature; 0.0 means greedy argmax decoding.
        top_p: Nucleus sampling mass; 1.0 disables it.
        top_k: Keep only the k most likely tokens; 0 disables it.
        batch_size: Sequences per forward batch.
        seed: Seed of the sampling generator; the same seed gives the same output.
    """

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": (self.max_new_tokens >= 1, "an integer >= 1"),
            "temperature": (self.temperature >= 0.0, "a float >= 0 (0 = greedy)"),
            "top_p": (0.0 < self.top_p <= 1.0, "a float in (0, 1]"),
            "top_k": (self.top_k >= 0, "an integer >= 0 (0 = disabled)"),
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise SamplingParamsError(
                    f"SamplingParams.{name}={getattr(self, name)!r} is invalid; expected {expected}"
                )

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (temperature 0)."""
        return self.temperature == 0.0


def _mask_top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every score below the k-th largest of its row to -inf (ties at the k-th value survive)."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth_best = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (B, 1)
    return scores.masked_fill(scores < kth_best, float("-inf"))


def _mask_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches `top_p`."""
    if top_p >= 1.0:
        return scores
    sorted_scores, sorted_ids = torch.sort(scores, dim=-1, descending=True)  # (B, V)
    sorted_probs = torch.softmax(sorted_scores, dim=-1)
    # Mass strictly before each token: the most likely token always has 0 here, so it is always kept.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_ids, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def sample_next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row from next-token logits.

    Args:
        logits: Next-token logits, shape (B, V), taken at each row's last real position.
        params: Temperature / top-k / top-p settings.
        generator: Random generator for reproducible sampling (unused when greedy).

    Returns:
        Token ids, shape (B,), dtype int64.
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    # Float32 so bf16/fp16 logits do not lose the tail of the distribution in softmax.
    scores = logits.float() / params.temperature  # (B, V)
    scores = _mask_top_k(scores, params.top_k)
    scores = _mask_top_p(scores, params.top_p)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
