"""Model plumbing shared by DPO, SFT and checkpointing: calling a causal LM, dropout, copies.

`dpo` must not import transformers or peft, so both are recognised by duck typing: a module with
a `config` and `save_pretrained` is treated as a HF causal LM, and one with `disable_adapter` and
`peft_config` as a peft model (LoRA adapters over frozen base weights, see `dpo.lora`).
"""

import contextlib
import copy
import inspect
import sys
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "causal_lm_logits",
    "enable_gradient_checkpointing",
    "frozen_copy",
    "gathered_root",
    "is_adapter_model",
    "is_hf_model",
    "language_model",
    "load_trainable_state",
    "pad_to_ids",
    "set_dropout",
    "trainable_state",
    "trim_right_padding",
]

# HF config / module float attributes that control dropout outside nn.Dropout modules
# (Llama reads `attention_dropout` once in __init__ and stores it on each attention module).
_DROPOUT_ATTRS = (
    "attention_dropout",
    "hidden_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


@contextlib.contextmanager
def gathered_root(module: nn.Module) -> Iterator[None]:
    """A block that calls submodules of `module` directly instead of `module.forward` (the reference
    precompute, validation). Under FSDP2 the weights `module` owns itself (those outside its wrapped
    decoder layers: embeddings, final norm, LM head) stay sharded until its forward gathers them, and
    a direct call fails on them ("mixed torch.Tensor and DTensor"); they are gathered for the block.
    A no-op for any other module."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def is_hf_model(model: nn.Module) -> bool:
    """True for a Hugging Face `PreTrainedModel`-like module (has `config` and `save_pretrained`)."""
    return hasattr(model, "config") and callable(getattr(model, "save_pretrained", None))


def is_adapter_model(model: nn.Module) -> bool:
    """True for a peft model: adapters (LoRA) over base weights, with a `disable_adapter()` context."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def language_model(model: nn.Module) -> nn.Module:
    """The network to call: a peft model's HF model (its adapter layers are injected there, and its
    forward takes `logits_to_keep`, which peft's wrapper forward does not pass on), else `model`."""
    return model.get_base_model() if is_adapter_model(model) else model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes, by state-dict name: a peft model's trainable (adapter) tensors,
    else the whole state dict. Snapshots and training states of a LoRA round stay adapter-sized."""
    state = model.state_dict()
    if not is_adapter_model(model):
        return state
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what `trainable_state` returned back into `model` (every trainable tensor must be there)."""
    if not is_adapter_model(model):
        model.load_state_dict(state)
        return
    expected = trainable_state(model).keys()
    if state.keys() != expected:
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        raise ValueError(f"adapter state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state, strict=False)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (HF models only).

    Non-reentrant checkpointing: gradients reach adapters of a frozen base (LoRA) without the
    inputs needing `requires_grad`, and the results equal those without checkpointing.

    Raises:
        ValueError: If the model has no HF checkpointing switch.
    """
    network = language_model(model)
    kwargs = {"use_reentrant": False}
    # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias until v6).
    if callable(getattr(network, "activation_checkpointing_enable", None)):
        network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif callable(getattr(network, "gradient_checkpointing_enable", None)):
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"gradient_checkpointing needs a Hugging Face model; {type(network).__name__} has no switch for it")


def causal_lm_logits(
    model: nn.Module, ids: torch.Tensor, keep: torch.Tensor | None = None, **hf_inputs: torch.Tensor
) -> torch.Tensor:
    """Run a causal LM on a right-padded batch and return its logits, optionally only at `keep`.

    No padding mask is passed (unless the caller gives an `attention_mask` in `hf_inputs`): with
    padding on the right only, causal attention already keeps every real token from seeing the
    pads after it, and the model takes its unmasked causal attention path (5% faster DPO steps on
    CPU than with an explicit padding mask). The logits at pad positions are garbage and must be
    masked by the caller.

    Args:
        model: A HF causal LM (called with `input_ids`, `use_cache=False`, its `.logits` used) or
            any module mapping ids (B, T) to logits (B, T, V).
        ids: (B, T) non-negative token ids, padding (any id) on the right only.
        keep: Optional (B, T) bool of the positions whose logits are needed. HF models that take
            a boolean `logits_to_keep` then apply the LM head only there, which saves the largest
            matmul of a small model on prompt and padding positions.
        **hf_inputs: Further model inputs for HF models only (e.g. a 4-D `attention_mask` and
            `position_ids`, see `dpo.shared_prompt`).

    Returns:
        (B, T, V) logits, or (N, V) for the N kept positions (row-major order) when `keep` is given.
    """
    model = language_model(model)
    if is_hf_model(model):
        kwargs = {"logits_to_keep": keep} if keep is not None and _takes_bool_logits_to_keep(model) else {}
        logits = model(input_ids=ids, use_cache=False, **hf_inputs, **kwargs).logits
        if kwargs:
            if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
                raise RuntimeError(f"{type(model).__name__} ignored logits_to_keep: got logits {tuple(logits.shape)}")
            return logits
    else:
        if hf_inputs:
            raise TypeError(f"{type(model).__name__} is not a HF model: it takes no {sorted(hf_inputs)}")
        out = model(ids)
        logits = out.logits if hasattr(out, "logits") else out
    return logits if keep is None else logits[keep]


def _takes_bool_logits_to_keep(model: nn.Module) -> bool:
    # Boolean masks came with transformers' `slice_logits_to_keep`; older versions took an int or
    # 1-D positions only. transformers is already imported when `model` is a HF model.
    hf_utils = sys.modules.get("transformers.modeling_utils")
    return hasattr(hf_utils, "slice_logits_to_keep") and "logits_to_keep" in inspect.signature(model.forward).parameters


def pad_to_ids(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a right-padded batch (pads < 0) into model ids (pads -> 0) and a real-token mask.

    Args:
        seq: (B, T) int token ids with negative padding.

    Returns:
        `(ids, pad_mask)`, both (B, T); `seq` itself is not modified.
    """
    pad_mask = seq >= 0
    return torch.where(pad_mask, seq, torch.zeros_like(seq)), pad_mask


def trim_right_padding(seq: torch.Tensor) -> torch.Tensor:
    """Drop trailing columns that are padding (< 0) in every row: (B, L) -> (B, T <= L).

    Saves compute when a batch's longest sequence is shorter than the file's L.
    """
    real_cols = (seq >= 0).any(dim=0).nonzero()
    length = int(real_cols.max()) + 1 if real_cols.numel() else 1
    return seq[:, :length]


def set_dropout(model: nn.Module, p: float) -> None:
    """Set the dropout probability on every nn.Dropout and on HF dropout attributes.

    LoRA's own dropout (`lora_dropout` modules, set by `LoraSettings.dropout`) is left as it is.

    Args:
        model: The module to update in place.
        p: Dropout probability in [0, 1).

    Raises:
        ValueError: If `p` is outside [0, 1).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    objects = [m for name, m in model.named_modules() if "lora_dropout" not in name.split(".")]
    config = getattr(model, "config", None)
    if config is not None:
        objects.append(config)
    for obj in objects:
        if isinstance(obj, nn.Dropout):
            obj.p = p
        for name in _DROPOUT_ATTRS:
            value = getattr(obj, name, None)
            if isinstance(value, float | int) and not isinstance(value, bool):
                setattr(obj, name, p)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients disabled, in eval mode (used as the DPO reference)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()
