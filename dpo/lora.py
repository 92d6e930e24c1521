"""LoRA for the trainers (peft): fresh adapters on a model, folded back into its weights at the end.

A LoRA round trains low-rank adapters ΔW = (alpha / r) · B A on the linear layers of a frozen model
and keeps no second copy of the weights: the DPO reference is the same network with its adapters
switched off (`DPO.ref_logps` runs it inside `adapters_disabled`), which is exactly the frozen base.

Why every round gets NEW adapters on the merged previous model (rather than continuing one adapter
across rounds): the paper's DPO round t trains M_{t+1} with the reference π_ref = M_t. Here M_t is
the previous round's checkpoint with its adapters merged in, and round t adds fresh adapters to it
with B = 0, so

    policy at step 0 = M_t + 0        (bit-equal to M_t: adding exact zeros)
    reference        = M_t             (the same weights, adapters disabled)

and the reference is M_t exactly, with no extra weights, for every round and every way of computing
it (live or precomputed log-probs). Continuing one adapter over rounds would make "adapters off" the
round-1 base M_1 instead of M_t, i.e. a reference that drifts further from the paper each round
(keeping M_t would need a second adapter or a copy). A fresh adapter also starts each round from
fresh optimizer state, as the full-weight rounds do. The cost: the adapter of one round only holds
that round's change (M_{t+1} - M_t); the merged `model/` of each checkpoint holds the whole model.

A round's checkpoint therefore holds `adapter/` (peft's `save_pretrained`: `adapter_config.json`,
`adapter_model.safetensors`, applying on top of M_t) and the merged model that generation,
evaluation and the model registry load.

peft is imported inside the functions (it imports transformers), so `import dpo` stays light.
"""

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ._modeling import is_adapter_model, is_hf_model
from .files import publish_dir, temp_sibling
from .settings import LoraSettings

__all__ = ["adapters_disabled", "add_lora", "fold_adapters", "merge_lora", "save_adapter"]


def add_lora(model: nn.Module, settings: LoraSettings, seed: int = 0) -> nn.Module:
    """Wrap `model` with fresh LoRA adapters; its own weights are frozen (`requires_grad=False`).

    The adapters start as the identity (B = 0, A random from `seed`), so the wrapped model computes
    exactly what `model` computes. peft injects the adapter layers into `model` in place: after
    `merge_lora`, the object passed here is the merged model.

    Args:
        model: A HF causal LM (or a module whose layer names `settings.target_modules` lists).
        settings: Rank, alpha, dropout and target modules.
        seed: Seed of the A matrices (the global random state is left as it was).

    Returns:
        The peft model (train it; inside `adapters_disabled(...)` it computes the base).

    Raises:
        ValueError: If `model` already carries adapters or LoRA is not enabled in `settings`.
    """
    from peft import LoraConfig, get_peft_model

    if not settings.enabled:
        raise ValueError("add_lora needs LoraSettings(enabled=True)")
    if is_adapter_model(model):
        raise ValueError("the model already has adapters: merge them first (merge_lora)")
    target = settings.target_modules
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
        task_type="CAUSAL_LM" if is_hf_model(model) else None,
    )
    # peft creates and initialises the adapters on the CPU before moving them to the layer's device.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft 0.21 still asks transformers 5.x for the deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and remove them: the plain model, trainable again.

    Returns:
        The model `add_lora` was given (the same object), with W <- W + (alpha / r) B A.
    """
    if not is_adapter_model(model):
        raise ValueError(f"{type(model).__name__} has no adapters to merge")
    merged = model.merge_and_unload()
    merged.requires_grad_(True)
    return merged


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block `model` computes with its base weights only (its adapters switched off).

    The same switch as peft's `PeftModel.disable_adapter()`, without the model-status scan that
    context runs on every entry (measured: 118 ms per use on a 24-layer toy Llama vs 22 ms here, most
    of it peft restoring `requires_grad` per layer): the DPO reference enters it once per batch.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@torch.no_grad()
def fold_adapters(model: nn.Module) -> bool:
    """Make the current weights the new base: merge the adapters in, then zero B (adapters = identity).

    This is the reference reset of a LoRA policy (`DPO.update_reference_model_with_policy`): after
    it, "adapters disabled" is the policy as it was. The adapter tensors stay the same objects, so an
    optimizer built on them keeps working.

    Returns:
        False when every adapter already was the identity (nothing changed), else True.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    b_tensors = [p for layer in layers for name in layer.active_adapters for p in _b_params(layer, name)]
    if all(not p.any() for p in b_tensors):
        return False
    for layer in layers:
        layer.merge()
        layer.merged_adapters.clear()  # the change now lives in the base weights; keep the adapters live
    for p in b_tensors:
        p.zero_()
    return True


def _b_params(layer: nn.Module, name: str) -> list[torch.Tensor]:
    if name in layer.lora_B:
        return list(layer.lora_B[name].parameters())
    embedding_b = getattr(layer, "lora_embedding_B", {})
    return [embedding_b[name]] if name in embedding_b else []


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Save the adapters (peft's `adapter_config.json` + `adapter_model.safetensors`), replaced atomically.

    Returns:
        The directory.
    """
    if not is_adapter_model(model):
        raise ValueError(f"{type(model).__name__} has no adapters to save")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(directory)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card template
        publish_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
