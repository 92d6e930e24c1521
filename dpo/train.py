"""The package's two training steps as a pipeline runs them: one DPO round from a pairs folder, and
SFT from (prompt, response) token pairs. Both train the model they are given in place.

With `lora` settings, fresh adapters are added to the model and trained instead of its weights
(`dpo.lora` explains why each round starts new adapters on the merged previous model); at the
end they are saved to `adapter_dir` and merged in, so the caller's model object is the trained
model either way. With `model_dir`, the trained model is saved there by the main process; under
FSDP or DeepSpeed ZeRO-3 every process first helps gather the sharded weights.
"""

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ._modeling import is_adapter_model
from .data import DPODataset
from .loop import LogFn, TrainingLoop
from .lora import add_lora, merge_lora, save_adapter
from .model import DPO
from .settings import ComputeSettings, EarlyStopping, LoraSettings, LossSettings, OptimSettings
from .sft import SFTDataset, SFTTrainer
from .trainer import DPOTrainer

__all__ = ["split_validation", "train_dpo", "train_sft"]


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out `fraction` of `dataset` (at least one example, at most all but one) for validation.

    The split is a seeded permutation, so a resumed round holds out the same examples.

    Returns:
        `(train, valid)`; `valid` is None when `fraction` is 0 or the dataset has fewer than 2 examples.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction!r}")
    n = len(dataset)
    if fraction == 0 or n < 2:
        return dataset, None
    held_out = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[held_out:])), Subset(dataset, sorted(order[:held_out]))


@contextlib.contextmanager
def _trained_network(model: nn.Module, lora: LoraSettings | None, seed: int) -> Iterator[nn.Module]:
    """`model`, or `model` with fresh adapters that are merged back into it when the block ends
    (also on an error: a trainer that fails restores good adapter weights first)."""
    if lora is None or not lora.enabled:
        yield model
        return
    network = add_lora(model, lora, seed)
    try:
        yield network
    finally:
        merge_lora(network)


def _save_adapter_on_main(loop: TrainingLoop, network: nn.Module, adapter_dir: str | os.PathLike | None) -> None:
    if adapter_dir is None or not is_adapter_model(network):
        return
    loop.accelerator.wait_for_everyone()
    if loop.accelerator.is_main_process:
        save_adapter(network, adapter_dir)
    loop.accelerator.wait_for_everyone()


def _check_lora_unsharded(loop: TrainingLoop, network: nn.Module) -> None:
    # Merging adapters into sharded base weights, and saving that merged model, is not implemented.
    if is_adapter_model(network) and loop.shards_weights:
        raise ValueError(
            f"model.lora with sharded weights ({loop.accelerator.distributed_type.value} in "
            f"runtime.accelerate_config) is not supported: use LoRA with plain data parallelism (DDP, "
            f"DeepSpeed ZeRO-1/2) or train every weight under FSDP / ZeRO-3"
        )


def _trainable_params(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def train_dpo(
    policy: nn.Module,
    pairs_dir: str | os.PathLike,
    *,
    loss: LossSettings,
    optim: OptimSettings,
    early_stopping: EarlyStopping = EarlyStopping(),
    valid_fraction: float = 0.0,
    replay: Dataset | None = None,
    replay_batch_size: int = 0,
    precompute_ref_logps: bool = True,
    vocab_size: int | None = None,
    checkpoint_every: int | None = None,
    state_dir: str | os.PathLike | None = None,
    seed: int = 0,
    log_fn: LogFn | None = None,
    lora: LoraSettings | None = None,
    compute: ComputeSettings = ComputeSettings(),
    adapter_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> dict:
    """One DPO round of `policy` on the preference pairs in `pairs_dir` (M_t -> M_{t+1}).

    The pairs reach the trainer through its `dataset_generator` hook, which runs first in
    `train()`; the reference is then reset to the policy, so M_t is the reference of this round.
    With `valid_fraction > 0` that share of the pairs is held out and scored by the validation DPO
    loss (lower is better) every `early_stopping.eval_every` steps; the best weights are restored.

    Args:
        policy: The model to train (in place).
        pairs_dir: A preference folder (`DPODataset` format).
        loss: The preference objective and reference kind.
        optim: Optimizer, schedule and round length.
        early_stopping: Evaluation cadence and patience (needs `valid_fraction > 0` to evaluate).
        valid_fraction: Share of the pairs held out for validation.
        replay: SFT examples trained with NLL alongside the pairs (e.g. judge data, so the judge
            keeps its format), `replay_batch_size` per micro-batch, weighted by `loss.replay_weight`.
        replay_batch_size: Replay examples per micro-batch (0: none).
        precompute_ref_logps: Reference log-probs once per round (frozen reference only).
        vocab_size: Every token id of the pairs must be below it (checked on open).
        checkpoint_every: Save the resumable round state every N optimizer steps (needs `state_dir`).
        state_dir: Folder of that state; a killed round resumes from it.
        seed: Data order, dropout, the validation split and the adapters' initialisation.
        log_fn: `log_fn(metrics, step)` per optimizer step (main process).
        lora: Train fresh LoRA adapters (reference: the policy with adapters disabled, i.e. M_t)
            and merge them into `policy` at the end; None or `enabled=False` trains every weight.
        compute: Gradient checkpointing and bf16 autocast.
        adapter_dir: Where the trained adapters are saved (main process; LoRA only).
        model_dir: Where the trained (merged) policy M_{t+1} is saved (main process).

    Returns:
        The trainer's summary (`DPOTrainer.train`), plus `valid_pairs` and `trainable_params`.

    Raises:
        ValueError: For an EMA reference (`loss.ref_ema_decay < 1`) with LoRA, among others.
    """
    pairs = DPODataset(Path(pairs_dir), vocab_size=vocab_size)
    train, valid = split_validation(pairs, valid_fraction, seed)
    if early_stopping.eval_every is not None and valid is None:
        raise ValueError("early stopping needs held-out pairs: set valid_fraction > 0")
    with _trained_network(policy, lora, seed) as network:
        trainer = DPOTrainer(
            DPO(network, **asdict(loss)), optim=optim, dataset_generator=lambda: train, valid_dataset=valid,
            early_stopping=early_stopping, replay_dataset=replay, replay_batch_size=replay_batch_size,
            precompute_ref_logps=precompute_ref_logps, compute=compute,
            checkpoint_every=checkpoint_every, state_dir=state_dir, seed=seed, log_fn=log_fn,
        )
        _check_lora_unsharded(trainer.loop, network)
        summary = trainer.train()
        _save_adapter_on_main(trainer.loop, network, adapter_dir)
        trainable = _trainable_params(network)
    if model_dir is not None:
        trainer.loop.save_on_main(policy, model_dir)
    return {**summary, "valid_pairs": 0 if valid is None else len(valid), "trainable_params": trainable}


def train_sft(
    model: nn.Module,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    optim: OptimSettings,
    max_len: int,
    seed: int = 0,
    log_fn: LogFn | None = None,
    lora: LoraSettings | None = None,
    compute: ComputeSettings = ComputeSettings(),
    adapter_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> dict:
    """Supervised fine-tuning of `model` (in place) on `(prompt_ids, response_ids)` examples.

    With `lora`, fresh adapters are trained, saved to `adapter_dir` and merged into `model`. With
    `model_dir`, the trained model is saved there (main process).

    Returns:
        The trainer's summary (`SFTTrainer.train`) plus `examples` and `trainable_params`.
    """
    dataset = SFTDataset.from_pairs(examples, max_len=max_len)
    with _trained_network(model, lora, seed) as network:
        trainer = SFTTrainer(network, train_dataset=dataset, optim=optim, compute=compute, seed=seed, log_fn=log_fn)
        _check_lora_unsharded(trainer.loop, network)
        summary = trainer.train()
        _save_adapter_on_main(trainer.loop, network, adapter_dir)
        trainable = _trainable_params(network)
    if model_dir is not None:
        trainer.loop.save_on_main(model, model_dir)
    return {**summary, "examples": len(examples), "trainable_params": trainable}
