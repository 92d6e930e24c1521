"""AdamW and the learning-rate schedule shared by the DPO and SFT trainers.

Schedule (one scheduler step per optimizer step): linear warm-up from start_lr / warmup_steps
to start_lr over `warmup_steps` steps, then linear decay from start_lr to end_lr, reaching
end_lr at the last step of the round.
"""

from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_adamw", "build_scheduler", "warmup_linear_decay"]


def warmup_linear_decay(
    step: int, *, warmup_steps: int, total_steps: int, start_lr: float, end_lr: float
) -> float:
    """Learning rate used by optimizer step `step` (0-based).

    Args:
        step: Index of the optimizer step.
        warmup_steps: Steps of linear warm-up (0 = none).
        total_steps: Optimizer steps in the round.
        start_lr: Peak learning rate (reached at the end of warm-up).
        end_lr: Learning rate of the last step.

    Returns:
        The learning rate.
    """
    if step < warmup_steps:
        return start_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return start_lr + progress * (end_lr - start_lr)


def build_adamw(model: nn.Module, lr: float, weight_decay: float) -> AdamW:
    """AdamW over the trainable parameters; matrices get weight decay, biases and norms do not.

    Uses torch's fused implementation where the parameters allow it.

    Args:
        model: Module whose parameters with `requires_grad` are optimised.
        lr: Initial learning rate.
        weight_decay: Decoupled weight decay for parameters with 2 or more dimensions.

    Returns:
        The optimizer.

    Raises:
        ValueError: If the model has no trainable parameters or a rate is negative.
    """
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"need learning rate > 0 and weight_decay >= 0, got {lr!r}, {weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel updates all tensors in one pass: 4x faster than foreach on a 4M-param model
    # on CPU (benchmarks/bench_dpo.py's optimizer_step_ms); it needs floating-point CPU/CUDA tensors.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return AdamW([g for g in groups if g["params"]], lr=lr, fused=fused)


def build_scheduler(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, start_lr: float, end_lr: float
) -> LambdaLR:
    """A LambdaLR following `warmup_linear_decay`, starting from step 0.

    Resets each param group's learning rate to `start_lr` first, so a new round starts a fresh
    schedule on an optimizer reused from the previous round.

    Args:
        optimizer: The (unwrapped) torch optimizer.
        warmup_steps: Warm-up steps.
        total_steps: Optimizer steps in the round.
        start_lr: Peak learning rate.
        end_lr: Final learning rate.

    Returns:
        The scheduler; call `.step()` once after every optimizer step.
    """
    if start_lr <= 0 or end_lr < 0 or warmup_steps < 0:
        raise ValueError(
            f"need start_learning_rate > 0, end_learning_rate >= 0, warmup_steps >= 0; got "
            f"{start_lr!r}, {end_lr!r}, {warmup_steps!r}"
        )
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = start_lr

    def factor(step: int) -> float:
        lr = warmup_linear_decay(
            step, warmup_steps=warmup_steps, total_steps=total_steps, start_lr=start_lr, end_lr=end_lr
        )
        return lr / start_lr

    return LambdaLR(optimizer, factor)
