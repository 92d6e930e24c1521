"""The package's two training steps as a pipeline runs them: one DPO round from a pairs folder, and
SFT from (prompt, response) token pairs. Both train the model they are given in place."""

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .data import DPODataset
from .loop import LogFn
from .model import DPO
from .settings import EarlyStopping, LossSettings, OptimSettings
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
        seed: Data order, dropout and the validation split.
        log_fn: `log_fn(metrics, step)` per optimizer step (main process).

    Returns:
        The trainer's summary (`DPOTrainer.train`), plus `valid_pairs`.
    """
    pairs = DPODataset(Path(pairs_dir), vocab_size=vocab_size)
    train, valid = split_validation(pairs, valid_fraction, seed)
    if early_stopping.eval_every is not None and valid is None:
        raise ValueError("early stopping needs held-out pairs: set valid_fraction > 0")
    trainer = DPOTrainer(
        DPO(policy, **asdict(loss)), optim=optim, dataset_generator=lambda: train, valid_dataset=valid,
        early_stopping=early_stopping, replay_dataset=replay, replay_batch_size=replay_batch_size,
        precompute_ref_logps=precompute_ref_logps,
        checkpoint_every=checkpoint_every, state_dir=state_dir, seed=seed, log_fn=log_fn,
    )
    return {**trainer.train(), "valid_pairs": 0 if valid is None else len(valid)}


def train_sft(
    model: nn.Module,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    optim: OptimSettings,
    max_len: int,
    seed: int = 0,
    log_fn: LogFn | None = None,
) -> dict:
    """Supervised fine-tuning of `model` (in place) on `(prompt_ids, response_ids)` examples.

    Returns:
        The trainer's summary (`SFTTrainer.train`) plus `examples`.
    """
    dataset = SFTDataset.from_pairs(examples, max_len=max_len)
    summary = SFTTrainer(model, train_dataset=dataset, optim=optim, seed=seed, log_fn=log_fn).train()
    return {**summary, "examples": len(examples)}
