"""Settings objects of the trainers, one per concern: how to optimise, what loss, when to stop early.

Each is a frozen dataclass that checks its values when built. Field names equal the run config's
(`pipeline.config`), so a config section becomes settings in one call and a setting added here
without its config field fails a test instead of being silently unreachable.
"""

from dataclasses import dataclass
from typing import Literal

from ._types import LossType, Reduction

__all__ = ["ComputeSettings", "EarlyStopping", "LoraSettings", "LossSettings", "OptimSettings"]


def _check(checks: dict[str, tuple[bool, str]], owner: object) -> None:
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"{type(owner).__name__}.{name}={getattr(owner, name)!r} is invalid; expected {expected}")


@dataclass(frozen=True)
class OptimSettings:
    """AdamW, linear warm-up then linear decay, gradient clipping, and the length of a round.

    Attributes:
        batch_size: Examples (pairs for DPO) per micro-batch per process.
        grad_accum_steps: Micro-batches per optimizer step.
        start_learning_rate: Peak learning rate (after warm-up).
        end_learning_rate: Learning rate at the last step of a round.
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW decoupled weight decay (matrices only).
        max_grad_norm: Clipping threshold; None disables clipping (the norm is still logged).
        dropout: Dropout probability set on the policy.
        num_train_steps: Optimizer steps per round, or None.
        num_epochs: Passes over the data per round, or None; with both None a round is one epoch.
    """

    batch_size: int = 16
    grad_accum_steps: int = 1
    start_learning_rate: float = 1e-6
    end_learning_rate: float = 1e-7
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    dropout: float = 0.1
    num_train_steps: int | None = None
    num_epochs: int | None = None

    def __post_init__(self) -> None:
        _check({
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "grad_accum_steps": (self.grad_accum_steps >= 1, "an integer >= 1"),
            "start_learning_rate": (self.start_learning_rate > 0, "a float > 0"),
            "end_learning_rate": (self.end_learning_rate >= 0, "a float >= 0"),
            "warmup_steps": (self.warmup_steps >= 0, "an integer >= 0"),
            "weight_decay": (self.weight_decay >= 0, "a float >= 0"),
            "dropout": (0 <= self.dropout < 1, "a float in [0, 1)"),
            "num_train_steps": (self.num_train_steps is None or self.num_train_steps >= 1, ">= 1 or None"),
            "num_epochs": (self.num_epochs is None or self.num_epochs >= 1, ">= 1 or None"),
        }, self)


@dataclass(frozen=True)
class LossSettings:
    """The preference objective: `DPO(policy, **dataclasses.asdict(loss))`.

    Attributes:
        beta: β of the implicit reward β·log(πθ/πref).
        loss_type: A key of `dpo.LOSSES`.
        label_smoothing: ε of cDPO ("sigmoid") and "robust".
        nll_weight: Weight of an NLL term on the chosen response (RPO); 0 = off.
        ref_ema_decay: 1.0 keeps the reference frozen at M_t (the paper); < 1 makes it an EMA of
            the policy, updated after every optimizer step.
        reduction: "sum" (DPO) or "mean" of the token log-probs of a response.
        share_prompt: Score chosen and rejected in one row holding the prompt once where the model
            family is checked and the batch is cheaper that way.
        replay_weight: Weight of the NLL of replayed SFT examples (judge replay), when a round has any.
    """

    beta: float = 0.1
    loss_type: LossType = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    ref_ema_decay: float = 1.0
    reduction: Reduction = "sum"
    share_prompt: bool = True
    replay_weight: float = 1.0


@dataclass(frozen=True)
class EarlyStopping:
    """When to evaluate during a round and when to stop; the best weights are restored at the end.

    Attributes:
        eval_every: Evaluate every this many optimizer steps and at the last one (None: never).
        patience: Evaluations without improvement before stopping (None: never stop early; the
            best weights are still kept).
        higher_is_better: Direction of the evaluator's score (False for a loss).
        eval_at_start: Also evaluate the round's starting weights, so they can be kept as the best.
    """

    eval_every: int | None = None
    patience: int | None = 3
    higher_is_better: bool = False
    eval_at_start: bool = False

    def __post_init__(self) -> None:
        _check({
            "eval_every": (self.eval_every is None or self.eval_every >= 1, ">= 1 or None"),
            "patience": (self.patience is None or self.patience >= 1, ">= 1 or None"),
        }, self)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters trained instead of the model's weights (see `dpo.lora`).

    Attributes:
        enabled: False trains every weight (the run config's switch; a library caller passes
            `lora=None` instead).
        r: Rank of each adapter (A: r x in, B: out x r).
        alpha: Scaling numerator: an adapter adds (alpha / r) * B A x.
        dropout: Dropout on the adapters' input (LoRA's own; the model's dropout is `OptimSettings`).
        target_modules: "all-linear" (every linear layer but the output head) or module names such
            as ["q_proj", "v_proj"], as peft's `LoraConfig.target_modules` takes them.
    """

    enabled: bool = True
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # from a config section; the dataclass is frozen
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _check({
            "r": (self.r >= 1, "an integer >= 1"),
            "alpha": (self.alpha > 0, "a float > 0"),
            "dropout": (0 <= self.dropout < 1, "a float in [0, 1)"),
            "target_modules": (bool(self.target_modules), '"all-linear" or a non-empty list of module names'),
        }, self)


@dataclass(frozen=True)
class ComputeSettings:
    """How a training step computes: trading compute for memory, and precision.

    Attributes:
        gradient_checkpointing: Recompute each decoder layer's activations in the backward pass
            instead of storing them (HF models; non-reentrant checkpointing, so frozen-base LoRA
            works). Less activation memory, about one more forward per step; same losses.
        autocast: "bf16" runs the forward passes (policy, reference and its precomputation,
            validation) under `torch.autocast` in bfloat16 while weights, gradients and AdamW state
            stay in their dtype (mixed precision); "none" computes in the weights' dtype.
    """

    gradient_checkpointing: bool = False
    autocast: Literal["none", "bf16"] = "none"

    def __post_init__(self) -> None:
        _check({"autocast": (self.autocast in ("none", "bf16"), '"none" or "bf16"')}, self)
