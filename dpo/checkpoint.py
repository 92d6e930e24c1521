"""Save and load policy weights as safetensors, atomically.

`save_checkpoint` writes into a temporary sibling directory and renames it into place, so a
crash never leaves a half-written checkpoint under the final name. Hugging Face models are
saved with `save_pretrained` (config + `model.safetensors`, tied weights stored once) so
`from_pretrained` can load them; other modules with `safetensors.torch.save_model`.
Loading only ever reads safetensors (no pickle).
"""

import json
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ._modeling import is_hf_model
from .files import publish_dir, temp_sibling
from .model import DPO

__all__ = ["WEIGHTS_FILE", "CheckpointError", "load_checkpoint", "save_checkpoint"]

WEIGHTS_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or does not match the model."""


def _policy(model: nn.Module) -> nn.Module:
    return model.policy if isinstance(model, DPO) else model


def save_checkpoint(model: nn.Module, directory: str | os.PathLike,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the policy weights to `directory` (replaced atomically if it exists).

    Args:
        model: A `DPO` (its policy is saved), a HF causal LM or any module.
        directory: Target directory.
        state_dict: The weights to write instead of the module's own, keyed like its `state_dict()`:
            the full weights gathered from ranks that each hold a shard (FSDP, DeepSpeed ZeRO-3).

    Returns:
        The directory path.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    policy = _policy(model)
    tmp = temp_sibling(directory)
    tmp.mkdir()
    try:
        if is_hf_model(policy):
            policy.save_pretrained(tmp, state_dict=state_dict)
        elif state_dict is not None:
            safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS_FILE))
        else:
            safetensors.torch.save_model(policy, str(tmp / WEIGHTS_FILE))
        publish_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / WEIGHTS_FILE).is_file():
        return safetensors.torch.load_file(directory / WEIGHTS_FILE, device="cpu")
    index = directory / _INDEX_FILE
    if not index.is_file():
        raise CheckpointError(f"{directory}: neither {WEIGHTS_FILE} nor {_INDEX_FILE} found")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(safetensors.torch.load_file(directory / shard, device="cpu"))
    return state


def load_checkpoint(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load weights saved by `save_checkpoint` into `model` (in place).

    Keys missing from the file are accepted only when they alias a loaded tensor (tied weights,
    e.g. `lm_head.weight` tied to the input embedding).

    Args:
        model: A `DPO` (weights go to its policy) or the module that was saved.
        directory: Checkpoint directory.

    Returns:
        The policy module with the loaded weights.

    Raises:
        CheckpointError: On missing files, unexpected keys or untied missing keys.
    """
    directory = Path(directory)
    policy = _policy(model)
    state = _read_state(directory)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{directory}: tensors not in the model: {sorted(unexpected)[:5]}")
    current = policy.state_dict()
    loaded_ptrs = {current[k].data_ptr() for k in state if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise CheckpointError(f"{directory}: weights missing from the checkpoint: {sorted(untied)[:5]}")
    return policy
