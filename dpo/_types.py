"""Small shared types: choice literals, the per-step output of an objective, errors."""

from dataclasses import dataclass, field
from typing import Literal

import torch

LossType = Literal["sigmoid", "ipo", "hinge", "robust"]
Reduction = Literal["sum", "mean"]


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient norm) became NaN or infinite.

    Raised by the trainers after the policy weights were restored to the last known good copy
    (the best early-stopping snapshot, else the weights at the start of the round).
    """


@dataclass
class StepOutput:
    """What a training objective returns for one micro-batch.

    Attributes:
        loss: Scalar tensor to back-propagate (already reduced over the micro-batch).
        metrics: Detached scalar tensors to log, keyed by their public metric name.
        num_tokens: Non-padding tokens processed in the forward pass (for throughput).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    num_tokens: int = 0
