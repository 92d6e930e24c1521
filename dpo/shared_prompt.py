"""Score a pair's chosen and rejected responses in one row that holds their prompt once.

    two rows (TRL, the paper's code):  [prompt chosen   pad]   [prompt rejected pad]
    one row (here):                    [prompt chosen rejected pad]

The rejected tokens must not see the chosen ones and must sit at the positions they have after
the prompt alone, so the row gets a 4-D attention mask (causal, and a response token attends to
the prompt and its own response only) and position ids that restart at the prompt length for the
rejected segment. The first rejected token is scored by the logits at the last prompt token, like
the first chosen token. Every log-prob is the two-row value up to float rounding, while the
prompt is computed once instead of twice and a batch pads B rows instead of 2B. (With dropout on,
both responses see the same dropout noise on the prompt, where two rows would draw it twice.)

Only model families checked to give the two-row values take this path (`supports_shared_prompt`):
plain causal attention with SDPA or eager kernels, positions from `position_ids`, every layer full
attention. Sliding-window or chunked attention would lose its window (HF uses a custom mask as
given), ALiBi biases follow the row index, and recurrent or convolution layers would carry the
chosen tokens' state into the rejected ones. And because attention grows with the square of the row
length, a batch whose responses are long next to its prompt runs as two rows instead
(`shared_prompt_pays_off`).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ._modeling import causal_lm_logits, is_hf_model, language_model
from .logprobs import log_normalizer

__all__ = [
    "SharedPromptRows",
    "shared_prompt_logprobs",
    "shared_prompt_pays_off",
    "shared_prompt_rows",
    "supports_shared_prompt",
]

# Segment of each row position.
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3
# HF model types whose shared-prompt log-probs are tested equal to two rows (tests/dpo/test_shared_prompt.py).
CHECKED_MODEL_TYPES = frozenset(
    {"gemma", "gpt2", "gpt_neox", "gptj", "llama", "mistral", "olmo2", "opt", "phi", "phi3", "qwen2", "qwen3"}
)
# Attention implementations that apply a custom 4-D mask as given (flash-attention kernels do not).
_MASKED_ATTENTION = ("sdpa", "eager")


def supports_shared_prompt(model: nn.Module) -> bool:
    """True for a HF model of a checked family, SDPA or eager attention, full attention in every layer."""
    model = language_model(model)  # a peft model: the HF model its adapters sit in
    if not is_hf_model(model):
        return False
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    full_attention = (
        all(kind == "full_attention" for kind in layer_types)
        if layer_types is not None
        else getattr(config, "sliding_window", None) is None
    )
    return (
        getattr(config, "model_type", None) in CHECKED_MODEL_TYPES
        and getattr(config, "_attn_implementation", None) in _MASKED_ATTENTION
        and full_attention
    )


def shared_prompt_pays_off(
    chosen: torch.Tensor, rejected: torch.Tensor, prompt_len: torch.Tensor, hidden_size: int | None
) -> bool:
    """Whether one shared-prompt row per pair costs less than two rows for this batch.

    A row of T positions costs about T * (24 h^2 + a T h) FLOPs per layer: its matmuls plus attention
    scores, with a = 4 for a custom mask (every key is computed) and about 2 for the causal kernel.

    Args:
        chosen, rejected, prompt_len: The batch, as for `shared_prompt_rows`.
        hidden_size: The model's hidden size h; None (unknown) always shares.
    """
    if not hidden_size:
        return True
    p = prompt_len.to(chosen.device)
    c_end, r_end = (chosen >= 0).sum(dim=1), (rejected >= 0).sum(dim=1)  # prompt + response
    shared, two_rows = int((c_end + r_end - p).max()), int(torch.maximum(c_end, r_end).max())
    return shared * (6 * hidden_size + shared) < 2 * two_rows * (6 * hidden_size + two_rows / 2)


@dataclass(frozen=True)
class SharedPromptRows:
    """One row per pair, and where its response tokens are scored.

    Attributes:
        ids: (B, T) token ids, pads are 0.
        position_ids: (B, T) positions; the rejected segment restarts at the prompt length.
        allowed: (B, 1, T, T) bool, True where a query position may attend to a key position.
        keep: (B, T) bool, the positions whose logits score a response token.
        target: (B, T) bool, the response tokens (chosen and rejected).
        source: (B, T) position whose logits score the token at each position (valid at `target`).
        chosen_pos, rejected_pos: (B, R) row position of each pair's k-th chosen / rejected token.
        chosen_mask, rejected_mask: (B, R) bool, True for k < that response's length.
    """

    ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor
    keep: torch.Tensor
    target: torch.Tensor
    source: torch.Tensor
    chosen_pos: torch.Tensor
    rejected_pos: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor


def shared_prompt_rows(chosen: torch.Tensor, rejected: torch.Tensor, prompt_len: torch.Tensor) -> SharedPromptRows:
    """Lay out a batch of pairs as shared-prompt rows.

    Args:
        chosen: (B, L) prompt + chosen ids, right-padded with negative ids.
        rejected: (B, L) prompt + rejected ids, right-padded with negative ids.
        prompt_len: (B,) prompt lengths; every response has at least one token.

    Returns:
        The `SharedPromptRows` of the batch, T = the longest prompt + chosen + rejected.
    """
    device = chosen.device
    p = prompt_len.to(device=device, dtype=torch.long).unsqueeze(1)  # (B, 1)
    j = torch.arange(chosen.shape[1], device=device).unsqueeze(0)  # (1, L)
    differs = ((chosen != rejected) & (j < p)).any(dim=1)
    if differs.any():
        raise ValueError(f"chosen and rejected must share their prompt; they differ in pair {int(differs.nonzero()[0])}")
    c = (chosen >= 0).sum(dim=1, keepdim=True) - p
    r = (rejected >= 0).sum(dim=1, keepdim=True) - p
    length = int((p + c + r).max())
    j = torch.arange(length, device=device).unsqueeze(0)  # (1, T)
    segment = (j >= p).long() + (j >= p + c).long() + (j >= p + c + r).long()  # PROMPT .. PAD
    is_rejected = segment == REJECTED
    last = chosen.shape[1] - 1
    ids = torch.where(
        is_rejected,
        rejected.gather(1, (j - c).clamp(0, last)),
        chosen.gather(1, j.clamp(max=last).expand_as(segment)),
    )
    ids = ids.masked_fill(segment == PAD, 0)  # every other position holds a real token
    position_ids = torch.where(is_rejected, j - c, j).masked_fill(segment == PAD, 0)

    causal = j.T >= j  # (T, T): query i sees key j <= i
    seg_q, seg_k = segment.unsqueeze(2), segment.unsqueeze(1)
    allowed = (causal & ((seg_k == PROMPT) | (seg_k == seg_q))).unsqueeze(1)

    target = (segment == CHOSEN) | is_rejected
    # logits at t score token t + 1, except that the first rejected token follows the prompt
    source = torch.where(j == p + c, p - 1, j - 1).clamp(min=0)
    keep = torch.zeros_like(target).scatter_(1, torch.where(target, source, p - 1), True)

    k = torch.arange(int(torch.maximum(c, r).max()), device=device).unsqueeze(0)  # (1, R)
    return SharedPromptRows(
        ids=ids,
        position_ids=position_ids,
        allowed=allowed,
        keep=keep,
        target=target,
        source=source,
        chosen_pos=(p + k).clamp(max=length - 1),
        rejected_pos=(p + c + k).clamp(max=length - 1),
        chosen_mask=k < c,
        rejected_mask=k < r,
    )


def _attention_mask(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """The 4-D mask in the form the model's attention takes: bool for SDPA, additive for eager."""
    if model.config._attn_implementation == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def shared_prompt_logprobs(
    model: nn.Module, chosen: torch.Tensor, rejected: torch.Tensor, prompt_len: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the chosen and rejected responses, one forward of B shared-prompt rows.

    Args:
        model: A HF causal LM for which `supports_shared_prompt` is True.
        chosen: (B, L) prompt + chosen ids, right-padded with negative ids.
        rejected: (B, L) prompt + rejected ids, right-padded with negative ids.
        prompt_len: (B,) prompt lengths.

    Returns:
        `(logps, mask)`, both (2B, R): rows [chosen; rejected], entry k is the log-prob of the
        k-th response token where `mask` is True and 0.0 elsewhere.
    """
    rows = shared_prompt_rows(chosen, rejected, prompt_len)
    logits = causal_lm_logits(  # (N, V), the kept positions in row-major order
        model,
        rows.ids,
        keep=rows.keep,
        attention_mask=_attention_mask(model, rows.allowed),
        position_ids=rows.position_ids,
    )
    kept_row = (rows.keep.flatten().cumsum(0) - 1).view_as(rows.keep)  # position -> row of `logits`
    scored_by = kept_row.gather(1, rows.source)[rows.target]  # (M,): a kept row may score two tokens
    log_norm = log_normalizer(logits)
    picked = logits[scored_by, rows.ids[rows.target]].to(log_norm.dtype) - log_norm[scored_by]
    per_position = torch.zeros(rows.target.shape, dtype=picked.dtype, device=picked.device)
    per_position = per_position.masked_scatter(rows.target, picked)

    def responses(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, per_position.gather(1, pos), 0.0)

    logps = torch.cat([responses(rows.chosen_pos, rows.chosen_mask), responses(rows.rejected_pos, rows.rejected_mask)])
    return logps, torch.cat([rows.chosen_mask, rows.rejected_mask])
