"""Supervised fine-tuning on (prompt, response) token sequences, on the DPO training machinery.

Data format (folder): `sft_seq.memmap.npy` int (n, L), prompt + response right-padded with
PAD_VALUE (-1), and `prompt_len.memmap.npy` int (n,). The loss is the cross-entropy of the
response tokens only (causal shift; prompt and padding masked), averaged over tokens.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from ._modeling import gathered_root, trim_right_padding
from ._types import StepOutput
from .data import PAD_VALUE, PROMPT_LEN_FILE, check_token_rows, open_npy, save_npy_atomic
from .logprobs import mean_token_nll, response_logprobs, token_logprobs
from .loop import LogFn, TrainingLoop, iter_shard_batches, summarize
from .settings import ComputeSettings, OptimSettings

__all__ = ["SFT_SEQ_FILE", "SFTDataError", "SFTDataset", "SFTTrainer", "sft_loss", "write_sft_memmaps"]

SFT_SEQ_FILE = "sft_seq.memmap.npy"


class SFTDataError(ValueError):
    """An SFT data file or example is missing, malformed or inconsistent."""


def _pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (prompt, response) pairs into (n, max_len) ids; long responses keep their start."""
    seq = np.full((len(examples), max_len), PAD_VALUE, dtype=np.int32)
    prompt_len = np.zeros(len(examples), dtype=np.int64)
    for i, (prompt, response) in enumerate(examples):
        if not prompt or not response or len(prompt) >= max_len:
            raise SFTDataError(
                f"example {i}: needs a non-empty prompt shorter than max_len={max_len} and a non-empty "
                f"response (prompt {len(prompt)}, response {len(response)} tokens)"
            )
        row = [*prompt, *response][:max_len]
        seq[i, : len(row)] = row
        prompt_len[i] = len(prompt)
    return seq, prompt_len


class SFTDataset(Dataset):
    """(prompt + response) sequences, from a folder of memmaps or from memory.

    Items are dicts of int64 tensors: `{"seq": (L,), "prompt_len": (), "index": ()}` with
    padding left as -1.

    Args:
        folder: Directory with `SFT_SEQ_FILE` and `PROMPT_LEN_FILE`.
        vocab_size: If given, every token id must be < vocab_size.

    Raises:
        SFTDataError: If a file is missing, truncated, mis-shaped or a row is invalid.
    """

    def __init__(self, folder: str | os.PathLike, vocab_size: int | None = None) -> None:
        folder = Path(folder)
        seq = open_npy(folder / SFT_SEQ_FILE, ndim=2, error=SFTDataError)
        prompt_len = open_npy(folder / PROMPT_LEN_FILE, ndim=1, error=SFTDataError)
        self._init_arrays(seq, prompt_len, folder / SFT_SEQ_FILE, vocab_size)

    @classmethod
    def from_pairs(
        cls,
        examples: Sequence[tuple[Sequence[int], Sequence[int]]],
        max_len: int,
        vocab_size: int | None = None,
    ) -> "SFTDataset":
        """Build an in-memory dataset from `(prompt_ids, response_ids)` pairs.

        Responses longer than fits in `max_len` are truncated (their start is kept).
        """
        seq, prompt_len = _pack(examples, max_len)
        dataset = cls.__new__(cls)
        dataset._init_arrays(seq, prompt_len, Path("<memory>"), vocab_size)
        return dataset

    def _init_arrays(self, seq: np.ndarray, prompt_len: np.ndarray, path: Path, vocab_size: int | None) -> None:
        for array in (seq, prompt_len):
            if not np.issubdtype(array.dtype, np.integer):
                raise SFTDataError(f"{path}: expected an integer dtype, got {array.dtype}")
        if prompt_len.shape[0] != seq.shape[0]:
            raise SFTDataError(f"{path}: {seq.shape[0]} sequences but {prompt_len.shape[0]} prompt lengths")
        bad = np.flatnonzero((np.asarray(prompt_len) < 1) | (np.asarray(prompt_len) >= seq.shape[1]))
        if bad.size:
            raise SFTDataError(f"{path}: example {bad[0]}: prompt_len not in [1, {seq.shape[1]})")
        check_token_rows(seq, prompt_len, path, vocab_size, error=SFTDataError)
        self.seq, self.prompt_len = seq, prompt_len

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "seq": torch.from_numpy(np.array(self.seq[index], dtype=np.int64)),
            "prompt_len": torch.tensor(int(self.prompt_len[index])),
            "index": torch.tensor(index),
        }


def write_sft_memmaps(
    folder: str | os.PathLike, examples: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int
) -> Path:
    """Write `(prompt_ids, response_ids)` pairs in the SFT folder format (atomic per file)."""
    folder = Path(folder)
    seq, prompt_len = _pack(examples, max_len)
    folder.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(folder / SFT_SEQ_FILE, seq)
    save_npy_atomic(folder / PROMPT_LEN_FILE, prompt_len)
    return folder


def sft_loss(
    logits: torch.Tensor, seq: torch.Tensor, prompt_len: torch.Tensor, pad_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over response tokens.

    Args:
        logits: (B, T, V) outputs for `seq`.
        seq: (B, T) ids; negative ids are padding when `pad_mask` is None.
        prompt_len: (B,) prompt lengths (prompt tokens are not trained on).
        pad_mask: Optional (B, T) bool, True for real tokens.

    Returns:
        `(loss, num_targets)`: scalar token-mean NLL and the number of response targets.
    """
    logps, mask = token_logprobs(logits, seq, prompt_len, pad_mask)  # (B, T-1)
    return mean_token_nll(logps, mask), mask.sum()


class _SFTObjective(nn.Module):
    """Wraps the model so the prepared (possibly DDP) module returns a `StepOutput`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.policy = model

    def forward(self, seq: torch.Tensor, prompt_len: torch.Tensor) -> StepOutput:
        logps, mask, pad_mask = response_logprobs(self.policy, trim_right_padding(seq), prompt_len)
        loss = mean_token_nll(logps, mask)
        return StepOutput(loss=loss, metrics={"loss": loss.detach()}, num_tokens=int(pad_mask.sum()))


class SFTTrainer:
    """Supervised fine-tuning with the same optimizer, schedule and loop as `DPOTrainer`.

    Args:
        model: HF causal LM or a module mapping ids (B, T) -> logits (B, T, V).
        train_dataset: An `SFTDataset` (or any dataset with "seq" and "prompt_len" items).
        optim: Optimizer, schedule and length (the paper's SFT: learning rate 5.5e-6 -> 1.1e-6).
        valid_dataset: Optional dataset; its token-mean NLL is reported as `valid_loss`.
        compute: Gradient checkpointing and bf16 autocast.
        accelerator: Accelerator to run on (a default one when None).
        checkpoint_dir: Where the trained model is saved at the end (None: not saved).
        seed: Seed for the data order.
        log_fn: `log_fn(metrics, step)` callback (main process).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        train_dataset: Dataset,
        optim: OptimSettings = OptimSettings(start_learning_rate=5.5e-6, end_learning_rate=1.1e-6),
        valid_dataset: Dataset | None = None,
        compute: ComputeSettings = ComputeSettings(),
        accelerator: Accelerator | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        seed: int = 0,
        log_fn: LogFn | None = None,
    ) -> None:
        self.train_dataset, self.valid_dataset, self.batch_size = train_dataset, valid_dataset, optim.batch_size
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.loop = TrainingLoop(_SFTObjective(model), model, input_keys=("seq", "prompt_len"), optim=optim,
                                 compute=compute, accelerator=accelerator, seed=seed, log_fn=log_fn)
        self.accelerator = self.loop.accelerator
        self.objective = self.accelerator.unwrap_model(self.loop.model)

    @property
    def model(self) -> nn.Module:
        """The trained model (unwrapped)."""
        return self.objective.policy

    @torch.no_grad()
    def evaluate(self, dataset: Dataset | None = None) -> float:
        """Token-mean NLL of the response tokens of `dataset` (default: valid_dataset)."""
        dataset = dataset if dataset is not None else self.valid_dataset
        if dataset is None or len(dataset) == 0:
            raise ValueError("evaluate needs a non-empty dataset")
        was_training = self.objective.training
        self.objective.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.accelerator.device)  # (nll sum, tokens)
        with gathered_root(self.objective):
            for positions, batch in iter_shard_batches(dataset, self.batch_size, self.accelerator):
                with self.loop.autocast():
                    logps, mask, _ = response_logprobs(self.objective.policy, batch["seq"], batch["prompt_len"])
                if len(positions):  # not a filler batch
                    total += torch.stack([-logps.sum().double(), mask.sum().double()])
        self.objective.train(was_training)
        total = self.accelerator.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp(min=1))

    def train(self) -> dict:
        """Train for the configured steps/epochs.

        Returns:
            Flat dict: `steps`, `global_step`, `valid_loss` (None without a valid_dataset), and
            `final/<metric>` / `mean/<metric>` for `loss`, `grad_norm`, `learning_rate`,
            `tokens_per_second`.

        Raises:
            NonFiniteLossError: If the loss becomes NaN/inf (no update is applied for that step).
        """
        batches, total_steps = self.loop.begin_round(self.train_dataset)
        history = []
        bar = self.loop.progress(total_steps, "sft")
        for _ in range(total_steps):
            metrics = self.loop.train_step(batches)
            history.append(metrics)
            self.loop.log({**metrics, **self.loop.epoch_mean(history, total_steps)})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        bar.close()
        valid_loss = self.evaluate() if self.valid_dataset is not None else None
        if valid_loss is not None:
            self.loop.log({"eval/loss": valid_loss})
        if self.checkpoint_dir is not None:
            self.loop.save_on_main(self.model, self.checkpoint_dir)
        return {
            "steps": len(history),
            "global_step": self.loop.global_step,
            **summarize(history),
            "valid_loss": valid_loss,
        }

    __call__ = train
