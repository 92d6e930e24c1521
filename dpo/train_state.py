"""Resumable training state of a DPO round, so a killed round continues where it stopped.

A state folder describes the round after optimizer step `step` and is replaced atomically (every
process writes into `.<name>.tmp-<step>`, then the main process renames it into place), so a crash
while saving leaves the previous complete state. Files:

    policy.safetensors        policy weights (a LoRA policy: its adapter tensors only; the base is M_t)
    reference.safetensors     reference weights (EMA reference only: a frozen one is M_t, rebuilt)
    best.safetensors          best early-stopping snapshot, when there is one
    optimizer.safetensors     AdamW tensors, named `<param index>.<key>` (moments, step counts)
    rng-<rank>.safetensors    torch CPU (and CUDA) generator states of each process
    rng-<rank>.json           Python and NumPy generator states of each process
    state.json                step, data position, optimizer groups and scalars, scheduler state,
                              metric history, early-stopping scores, and the round's identity

Only JSON and safetensors are read back (no pickle). A state whose identity (pairs, steps, batch
size, processes, round, seed) differs from the round being trained is ignored.
"""

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from torch import nn

from ._modeling import is_adapter_model, load_trainable_state, trainable_state
from .files import publish_dir

__all__ = ["RoundState", "load_train_state", "restore_rng", "save_train_state"]

logger = logging.getLogger(__name__)
STATE_FILE = "state.json"


@dataclass
class RoundState:
    """The JSON part of a training state (what is not a tensor).

    Attributes:
        identity: What the round is (pairs, total steps, batch size, ...); must match to resume.
        step: Optimizer steps done in this round.
        global_step: The trainer's step counter over all rounds.
        micro_batches: Batches drawn from the data iterator per process (the data position).
        history: Metrics of every step so far (for the round's summary).
        stopper: Early-stopping bookkeeping: `scores`, `best_score`, `bad_evals`.
        best_step: Step of the best snapshot, or None.
    """

    identity: dict[str, Any]
    step: int
    global_step: int
    micro_batches: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopper: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _jsonable(mapping: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in mapping.items():
        try:
            json.dumps(value)
        except TypeError:
            continue  # e.g. a scheduler's lr_lambdas when they are objects: rebuilt, not saved
        out[key] = value
    return out


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def _save_policy(policy: nn.Module, path: Path) -> None:
    if is_adapter_model(policy):  # adapters only: the frozen base is rebuilt from M_t
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in trainable_state(policy).items()},
                                    str(path))
    else:
        safetensors.torch.save_model(policy, str(path))  # tied weights stored once


def _load_policy(policy: nn.Module, path: Path) -> None:
    if is_adapter_model(policy):
        load_trainable_state(policy, safetensors.torch.load_file(str(path)))
    else:
        safetensors.torch.load_model(policy, str(path))


def save_train_state(
    directory: str | os.PathLike,
    accelerator: Accelerator,
    state: RoundState,
    *,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    reference: nn.Module | None = None,
    best: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the state of the round after `state.step` into `directory` (replaced atomically).

    Called on every process (each saves its own RNG state); collectives inside.

    Args:
        directory: The state folder.
        accelerator: The trainer's accelerator.
        state: Step counters, data position, history and early-stopping bookkeeping.
        policy: The (unwrapped) policy.
        optimizer: The optimizer (AdamW moments are saved).
        scheduler: The LR scheduler (its `state_dict`).
        reference: The reference network when it changes during the round (EMA), else None.
        best: The best early-stopping snapshot's state dict, or None.

    Returns:
        The directory.
    """
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{state.step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    rng_tensors, rng_meta = _rng_parts()
    safetensors.torch.save_file(rng_tensors, str(tmp / f"rng-{rank}.safetensors"))
    (tmp / f"rng-{rank}.json").write_text(json.dumps(rng_meta), encoding="utf-8")
    if accelerator.is_main_process:
        _save_policy(policy, tmp / "policy.safetensors")
        if reference is not None:
            safetensors.torch.save_model(reference, str(tmp / "reference.safetensors"))
        if best is not None:
            safetensors.torch.save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        opt_tensors, opt_meta = _optimizer_parts(optimizer)
        safetensors.torch.save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        payload = {**asdict(state), "optimizer": opt_meta, "scheduler": _jsonable(scheduler.state_dict())}
        (tmp / STATE_FILE).write_text(json.dumps(payload), encoding="utf-8")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_dir(tmp, directory, durable=True)
    accelerator.wait_for_everyone()
    return directory


def load_train_state(
    directory: str | os.PathLike,
    identity: dict[str, Any],
    *,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    reference: nn.Module | None = None,
) -> tuple[RoundState, dict[str, torch.Tensor] | None] | None:
    """Load weights, optimizer and scheduler from a state folder written for the same round.

    RNG states are restored separately (`restore_rng`), after the data iterator has been moved to
    the saved position, because drawing batches must not disturb them.

    Args:
        directory: The state folder.
        identity: The round being trained; a state with another identity is ignored.
        policy: Receives the saved policy weights.
        optimizer: Receives the saved optimizer state.
        scheduler: Receives the saved scheduler state.
        reference: Receives the saved reference weights (EMA reference only).

    Returns:
        `(state, best snapshot or None)`, or None when there is no usable state.
    """
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        return None
    payload = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    if payload.get("identity") != identity:
        logger.warning("ignoring training state in %s: saved for %s, this round is %s",
                       directory, payload.get("identity"), identity)
        return None
    _load_policy(policy, directory / "policy.safetensors")
    if reference is not None:
        safetensors.torch.load_model(reference, str(directory / "reference.safetensors"))
    opt_tensors = safetensors.torch.load_file(str(directory / "optimizer.safetensors"))
    optimizer.load_state_dict(_optimizer_state(opt_tensors, payload.pop("optimizer")))
    scheduler.load_state_dict({**scheduler.state_dict(), **payload.pop("scheduler")})
    best_file = directory / "best.safetensors"
    best = safetensors.torch.load_file(str(best_file)) if best_file.is_file() else None
    return RoundState(**payload), best


def restore_rng(directory: str | os.PathLike, accelerator: Accelerator) -> None:
    """Set this process's torch, CUDA, Python and NumPy generators to their saved states."""
    directory = Path(directory)
    rank = accelerator.process_index
    tensors = safetensors.torch.load_file(str(directory / f"rng-{rank}.safetensors"))
    meta = json.loads((directory / f"rng-{rank}.json").read_text(encoding="utf-8"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
