"""Accelerate plumbing shared by `DPOTrainer` and `SFTTrainer` (composition, not a base class).

`TrainingLoop` owns the prepared model and optimizer (prepared once, in `__init__`), builds a
dataloader and a fresh LR schedule per round, and runs one optimizer step at a time:

    for each of grad_accum_steps micro-batches: forward, backward (gradient sync on the last)
    gather metrics -> stop on a non-finite loss -> clip -> optimizer step -> scheduler step

`ComputeSettings` are applied here: gradient checkpointing is switched on in the policy once, and
`autocast()` is the bf16 region the forward passes run in (the backward runs outside it, as torch
recommends; the weights, gradients and AdamW state keep their dtype).
"""

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast, send_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from ._modeling import enable_gradient_checkpointing, set_dropout
from ._types import NonFiniteLossError, StepOutput
from .checkpoint import save_checkpoint
from .optim import build_adamw, build_scheduler
from .settings import ComputeSettings, OptimSettings

__all__ = ["LogFn", "TrainingLoop", "iter_shard_batches", "submodule_state", "summarize"]

LogFn = Callable[[dict[str, float], int], None]


def _repeat(loader: DataLoader) -> Iterator[dict]:
    """Endless iterator over a dataloader; each pass re-shuffles (unlike itertools.cycle)."""
    while True:
        yield from loader


def iter_shard_batches(
    dataset: Dataset, batch_size: int, accelerator: Accelerator, lengths: Sequence[int] | None = None
) -> Iterator[tuple[torch.Tensor, dict]]:
    """This process's share of `dataset` (positions rank, rank + world, ...) in batches.

    Used for evaluation and reference precomputation, where every example must be seen exactly
    once across processes (a prepared dataloader would pad the last batch with duplicates).
    Every process yields the same number of batches, because under DeepSpeed ZeRO-3 every forward pass
    gathers weights from all processes (the reason for HF `generate`'s `synced_gpus`): a process with
    fewer examples ends with filler batches whose positions are empty (a copy of example 0, computed
    and ignored).

    Args:
        dataset: Map-style dataset.
        batch_size: Examples per batch.
        accelerator: Gives this process's rank and device.
        lengths: Optional token length of every example: batches are then formed in length order,
            so each batch is padded little (for work whose result does not depend on the order).

    Yields:
        `(positions, batch)`: (b,) int64 dataset positions and the collated batch on the device.
    """
    positions = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    if lengths is not None:
        positions.sort(key=lambda i: lengths[i])
    chunks = [positions[start : start + batch_size] for start in range(0, len(positions), batch_size)]
    most = math.ceil(math.ceil(len(dataset) / accelerator.num_processes) / batch_size)  # rank 0's count
    for chunk in chunks + [[]] * (most - len(chunks)):
        batch = default_collate([dataset[i] for i in chunk or [0]])
        yield torch.tensor(chunk, dtype=torch.long), send_to_device(batch, accelerator.device)


def submodule_state(state: dict[str, torch.Tensor], root: nn.Module, module: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of `state` (a state dict of `root`) that belong to `module`, a submodule of `root`,
    keyed as in `module.state_dict()`: the policy's weights out of the DPO objective's."""
    if module is root:
        return state
    prefix = next((name for name, sub in root.named_modules() if sub is module), None)
    if prefix is None:
        raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")
    prefix += "."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Flat `final/<metric>` (last step) and `mean/<metric>` (over the round) entries."""
    if not history:
        return {}
    final = {f"final/{k}": v for k, v in history[-1].items()}
    mean = {f"mean/{k}": sum(m[k] for m in history) / len(history) for k in history[0]}
    return {**final, **mean}


class TrainingLoop:
    """One optimizer step at a time on Accelerate, for any objective returning `StepOutput`.

    Args:
        objective: Module whose `forward(**inputs)` returns a `StepOutput` (e.g. `DPO`).
        policy: The trainable network inside `objective` (gets AdamW and dropout).
        input_keys: Batch keys forwarded to the objective (others, like "index", are dropped).
        optim: Optimizer, schedule and round length.
        compute: Gradient checkpointing of the policy and the autocast of forward passes.
        accelerator: Accelerator to use; a default one is created when None.
        seed: Seed of the data order (offset by the round index).
        log_fn: Optional callback `log_fn(metrics, step)`, called on the main process.
    """

    def __init__(
        self,
        objective: nn.Module,
        policy: nn.Module,
        *,
        input_keys: tuple[str, ...],
        optim: OptimSettings,
        compute: ComputeSettings = ComputeSettings(),
        accelerator: Accelerator | None = None,
        seed: int = 0,
        log_fn: LogFn | None = None,
    ) -> None:
        self.accelerator = accelerator or Accelerator()
        if self.accelerator.gradient_accumulation_steps != 1:
            # accelerator.backward would divide the loss a second time.
            raise ValueError(
                "pass grad_accum_steps in OptimSettings and leave Accelerator(gradient_accumulation_steps) at 1"
            )
        self.input_keys, self.optim, self.seed, self.log_fn = input_keys, optim, seed, log_fn
        self.batch_size, self.grad_accum_steps = optim.batch_size, optim.grad_accum_steps
        set_dropout(policy, optim.dropout)
        if compute.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        self.policy, self.compute = policy, compute
        optimizer = build_adamw(policy, optim.start_learning_rate, optim.weight_decay)
        # Prepared once: later rounds reuse the same wrapped model and optimizer (one DDP wrapper
        # per parameter set, however many rounds).
        self.model, self.optimizer = self.accelerator.prepare(objective, optimizer)
        self.scheduler = None
        self.global_step = 0
        self.round = 0

    # ---------------------------------------------------------------- rounds
    def plan_steps(self, num_batches: int) -> int:
        """Optimizer steps in a round: min of num_train_steps and num_epochs epochs (1 epoch default)."""
        per_epoch = math.ceil(num_batches / self.grad_accum_steps)
        limits = [n for n in (self.optim.num_train_steps,) if n is not None]
        if self.optim.num_epochs is not None:
            limits.append(self.optim.num_epochs * per_epoch)
        return min(limits) if limits else per_epoch

    def begin_round(self, dataset: Dataset, replay: Dataset | None = None,
                    replay_batch_size: int = 0) -> tuple[Iterator[dict], int]:
        """Fresh data order, AdamW state and LR schedule for a new round.

        With `replay` (SFT examples: "seq", "prompt_len"), every micro-batch also carries
        `replay_batch_size` of them as "replay_seq" / "replay_prompt_len", drawn from their own
        shuffled, endlessly repeated stream; the round's length still counts `dataset` only.

        Returns:
            `(batches, total_steps)`: an endless batch iterator and the optimizer steps to run.

        Raises:
            ValueError: If the dataset is empty.
        """
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty: nothing to train on")
        loader = self._loader(dataset, self.batch_size, self.seed + self.round)
        total_steps = self.plan_steps(len(loader))
        self.steps_per_epoch = math.ceil(len(loader) / self.grad_accum_steps)
        self.optimizer.state.clear()  # each round starts from fresh AdamW moments
        self.scheduler = build_scheduler(
            self.optimizer.optimizer,
            warmup_steps=self.optim.warmup_steps,
            total_steps=total_steps,
            start_lr=self.optim.start_learning_rate,
            end_lr=self.optim.end_learning_rate,
        )
        self.round += 1
        batches = _repeat(loader)
        if replay is not None and len(replay) and replay_batch_size:
            # Its own generator: adding replay leaves the order of the pairs unchanged.
            replay_batches = _repeat(self._loader(replay, replay_batch_size, self.seed + self.round + 1_000_003))
            batches = ({**pairs, "replay_seq": extra["seq"], "replay_prompt_len": extra["prompt_len"]}
                       for pairs, extra in zip(batches, replay_batches))
        return batches, total_steps

    def _loader(self, dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return self.accelerator.prepare_data_loader(
            DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator))

    # ---------------------------------------------------------------- one step
    def _micro_batches(self, batches: Iterator[dict]) -> tuple[dict[str, torch.Tensor], int]:
        """Forward + backward over grad_accum_steps micro-batches; returns mean metrics and tokens."""
        sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for micro in range(self.grad_accum_steps):
            batch = next(batches)
            inputs = {k: batch[k] for k in self.input_keys if k in batch}
            last = micro == self.grad_accum_steps - 1
            # Gradients are all-reduced only on the last micro-batch.
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                with self.autocast():
                    out: StepOutput = self.model(**inputs)
                self.accelerator.backward(out.loss / self.grad_accum_steps)
            for name, value in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() / self.grad_accum_steps
            tokens += out.num_tokens
        return sums, tokens

    def gather_means(self, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Mean of each scalar across processes (one all-reduce; same keys on every process)."""
        names = sorted(values)
        local = torch.tensor([float(values[n]) for n in names], device=self.accelerator.device)
        mean = self.accelerator.reduce(local, reduction="mean")
        return dict(zip(names, mean.tolist()))

    def train_step(self, batches: Iterator[dict]) -> dict[str, float]:
        """Run one optimizer step and return its metrics (means across processes).

        Raises:
            NonFiniteLossError: If the loss or gradient norm is NaN/inf; no weights are updated.
        """
        start = time.perf_counter()
        self.model.train()
        sums, tokens = self._micro_batches(batches)
        max_norm = self.optim.max_grad_norm or float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.policy.parameters(), max_norm)
        metrics = self.gather_means({**sums, "tokens": float(tokens), "grad_norm": float(grad_norm)})
        # fp16 loss scaling produces inf gradients by design; the scaler skips those steps.
        norm_ok = math.isfinite(metrics["grad_norm"]) or self.accelerator.scaler is not None
        if not (math.isfinite(metrics["loss"]) and norm_ok):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"non-finite training loss {metrics['loss']} / gradient norm {metrics['grad_norm']} "
                f"at optimizer step {self.global_step + 1}"
            )
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        total_tokens = metrics.pop("tokens") * self.accelerator.num_processes
        metrics["learning_rate"] = learning_rate
        metrics["tokens_per_second"] = total_tokens / max(time.perf_counter() - start, 1e-9)
        return metrics

    def epoch_mean(self, history: list[dict[str, float]], total_steps: int) -> dict[str, float]:
        """`{"epoch_loss": mean loss of the epoch's steps}` when the round's latest step (the last of
        `history`) ends an epoch or the round, else `{}`: one point per epoch beside the noisy curve."""
        step = len(history)
        if step % self.steps_per_epoch and step != total_steps:
            return {}
        epoch = history[(step - 1) // self.steps_per_epoch * self.steps_per_epoch:]
        return {"epoch_loss": sum(h["loss"] for h in epoch) / len(epoch)}

    # ---------------------------------------------------------------- helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        """The region forward passes run in: bf16 autocast on the accelerator's device, or nothing."""
        if self.compute.autocast == "bf16":
            return torch.autocast(device_type=self.accelerator.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def log(self, metrics: dict[str, float]) -> None:
        """Send metrics to the accelerator's trackers and to `log_fn` (main process)."""
        self.accelerator.log(metrics, step=self.global_step)
        if self.log_fn is not None and self.accelerator.is_main_process:
            self.log_fn(dict(metrics), self.global_step)

    @property
    def shards_weights(self) -> bool:
        """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3)."""
        kind = self.accelerator.distributed_type
        if kind == DistributedType.DEEPSPEED:
            return self.accelerator.deepspeed_config["zero_optimization"].get("stage") == 3
        return kind == DistributedType.FSDP

    def save_on_main(self, model: nn.Module, directory: str | os.PathLike) -> None:
        """Save `model` (the objective's policy) with `save_checkpoint` from the main process, all processes
        waiting. Call it on every process: with sharded weights they first gather the full weights
        together (`accelerator.get_state_dict`, which only the main process receives)."""
        state = None
        if self.shards_weights:
            state = submodule_state(self.accelerator.get_state_dict(self.model),
                                    self.accelerator.unwrap_model(self.model), model)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(model, directory, state_dict=state)
        self.accelerator.wait_for_everyone()

    def progress(self, total: int, desc: str) -> tqdm:
        """A tqdm bar on the local main process only; TQDM_DISABLE=1 in the environment hides it."""
        hidden = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
        return tqdm(total=total, desc=desc, disable=hidden or not self.accelerator.is_local_main_process)

    def broadcast_float(self, value: float) -> float:
        """The main process's `value`, on every process."""
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        return float(broadcast(tensor, from_process=0).item())
