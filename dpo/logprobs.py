"""Log-probabilities of response tokens under a causal LM.

Causal-LM convention: the logits at position t score the token at position t + 1, so the
logits are cut to `logits[:, :-1]` and gathered at `seq[:, 1:]`; the prompt and padding masks
are shifted by one position to match (a target position j counts when j >= prompt_len and the
token at j is real).
"""

from collections.abc import Callable

import torch
from torch import nn

from ._modeling import causal_lm_logits, pad_to_ids
from ._types import Reduction

__all__ = [
    "log_normalizer",
    "mean_token_nll",
    "response_logprobs",
    "response_target_mask",
    "selective_log_softmax",
    "sequence_logprobs",
    "token_logprobs",
]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """log_softmax(logits)[..., index] without materialising a log-softmax copy of `logits`.

    Computes `logit[index] - logsumexp(logits)` one batch row (3-D input) or `chunk_rows` rows
    (2-D input) at a time, so the temporary memory is one slice instead of the whole tensor.
    Half-precision slices are upcast to float32 because logsumexp in bf16/fp16 loses several bits.

    Args:
        logits: Scores of shape (B, T, V) or (N, V).
        index: Token ids of shape (B, T) or (N,), each in [0, V).
        chunk_rows: Rows per logsumexp call for 2-D input.

    Returns:
        Float32 (or float64 for float64 input) log-probabilities shaped like `index`.
    """
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    log_norm = log_normalizer(logits, chunk_rows)
    return picked.to(log_norm.dtype) - log_norm.view(index.shape)


def log_normalizer(logits: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """logsumexp over the last axis, one batch row (3-D) or `chunk_rows` rows (2-D) at a time.

    Returns a flat float32 (float64 for float64 input) tensor with one value per score row.
    """
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # unbind (not reshape): a sliced (B, T, V) input would be copied whole by a reshape
    slices = logits.unbind(0) if logits.dim() == 3 else logits.split(chunk_rows)
    return torch.cat([torch.logsumexp(s.to(out_dtype), dim=-1).reshape(-1) for s in slices])


def response_target_mask(
    seq_len: int, prompt_len: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Which shifted target positions belong to the response.

    Args:
        seq_len: T, the length of the (padded) sequences.
        prompt_len: (B,) number of prompt tokens per row.
        pad_mask: (B, T) True where the token is real (not padding).

    Returns:
        Bool mask of shape (B, T - 1); entry t is True when token t + 1 is a real response token.
    """
    target_pos = torch.arange(1, seq_len, device=pad_mask.device)  # (T-1,)
    is_response = target_pos.unsqueeze(0) >= prompt_len.to(pad_mask.device).unsqueeze(1)  # (B, T-1)
    return is_response & pad_mask[:, 1:]


def token_logprobs(
    logits: torch.Tensor,
    seq: torch.Tensor,
    prompt_len: torch.Tensor | int,
    pad_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response tokens, zero elsewhere.

    Args:
        logits: (B, T, V) model outputs for `seq`.
        seq: (B, T) token ids; negative ids are treated as padding when `pad_mask` is None.
        prompt_len: (B,) or a single int; tokens before it are the prompt.
        pad_mask: Optional (B, T) bool, True for real tokens. Defaults to `seq >= 0`.

    Returns:
        `(logps, mask)`, both (B, T - 1): `logps[b, t]` is log p(seq[b, t+1] | seq[b, :t+1])
        where `mask` is True and 0.0 where it is False.

    Raises:
        ValueError: If the shapes of the inputs disagree.
    """
    if logits.dim() != 3 or seq.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and seq (B, T) with matching B, T; got logits "
            f"{tuple(logits.shape)} and seq {tuple(seq.shape)}"
        )
    if pad_mask is None:
        pad_mask = seq >= 0
    prompt_len = torch.as_tensor(prompt_len, device=seq.device).expand(seq.shape[0])
    mask = response_target_mask(seq.shape[1], prompt_len, pad_mask.bool())  # (B, T-1)
    # clamp returns a new tensor: the caller's ids (with -1 pads) stay untouched.
    labels = seq[:, 1:].clamp(min=0)  # (B, T-1)
    logps = selective_log_softmax(logits[:, :-1], labels)  # (B, T-1)
    # where (not multiply) so that a NaN/inf logit at a padded position cannot leak in.
    return torch.where(mask, logps, torch.zeros_like(logps)), mask


def response_logprobs(
    model: nn.Module, seq: torch.Tensor, prompt_len: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response tokens of a batch, running `model` once.

    Same values as `token_logprobs` on the model's full logits, but the LM head only runs at the
    positions that score a response token (see `causal_lm_logits`' `keep`), not at prompt or
    padding positions.

    Args:
        model: A HF causal LM or a module mapping ids (B, T) to logits (B, T, V).
        seq: (B, T) token ids, right-padded with negative ids.
        prompt_len: (B,) or a single int; tokens before it are the prompt.

    Returns:
        `(logps, mask, pad_mask)`: logps and mask (B, T - 1) as in `token_logprobs`, and the
        (B, T) real-token mask.
    """
    ids, pad_mask = pad_to_ids(seq)
    prompt_len = torch.as_tensor(prompt_len, device=seq.device).expand(seq.shape[0])
    mask = response_target_mask(seq.shape[1], prompt_len, pad_mask)  # (B, T-1)
    # The logits at t score token t + 1; the last position scores nothing.
    keep = torch.cat([mask, mask.new_zeros(mask.shape[0], 1)], dim=1)  # (B, T)
    logits = causal_lm_logits(model, ids, keep=keep)  # (N, V)
    picked = selective_log_softmax(logits, ids[:, 1:][mask])  # (N,)
    logps = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)
    return logps, mask, pad_mask


def mean_token_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood averaged over the masked tokens of the whole batch (0 if none)."""
    return -logps.sum() / mask.sum().clamp(min=1)


def _sum(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logps.sum(dim=-1)


def _mean(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logps.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


REDUCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sum": _sum,
    "mean": _mean,
}


def sequence_logprobs(
    logits: torch.Tensor,
    seq: torch.Tensor,
    prompt_len: torch.Tensor | int,
    pad_mask: torch.Tensor | None = None,
    reduction: Reduction = "sum",
) -> torch.Tensor:
    """Log-probability of each row's response under the model that produced `logits`.

    Args:
        logits: (B, T, V) model outputs for `seq`.
        seq: (B, T) token ids, right-padded; negative ids are padding when `pad_mask` is None.
        prompt_len: (B,) or int, number of prompt tokens (excluded from the score).
        pad_mask: Optional (B, T) bool, True for real tokens.
        reduction: "sum" (the DPO convention) or "mean" (per-token average, used e.g. for IPO).

    Returns:
        (B,) float tensor of response log-probabilities.

    Raises:
        ValueError: If `reduction` is unknown or shapes disagree.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {sorted(REDUCTIONS)}, got {reduction!r}")
    logps, mask = token_logprobs(logits, seq, prompt_len, pad_mask)
    return REDUCTIONS[reduction](logps, mask)
