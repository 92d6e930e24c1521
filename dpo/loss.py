"""Preference losses on sequence log-probabilities (DPO and variants).

Notation (as in TRL's loss table): per pair, with policy πθ and reference πref,

    c = log πθ(y+) - log πref(y+)        r = log πθ(y-) - log πref(y-)        Δ = c - r

β is `beta`, ε is `label_smoothing`. Per-pair losses:

    sigmoid  -(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)                     DPO (ε = 0), cDPO (ε > 0)
    ipo      (Δ - 1/(2β))²                                      IPO, Azar et al. 2023
    hinge    relu(1 - βΔ)                                       SLiC / RSO
    robust   (-(1-ε)·logσ(βΔ) + ε·logσ(-βΔ)) / (1 - 2ε)         rDPO, Chowdhury et al. 2024

References: DPO, Rafailov et al. 2023 (arXiv:2305.18290); cDPO note (Mitchell 2023);
TRL v0.28 `dpo_loss` for the label-smoothed forms.

Length normalisation: the losses take whatever log-probs the caller passes. `DPO` sums over
response tokens by default (`reduction="sum"`); TRL's IPO divides by the completion length,
which `DPO(..., loss_type="ipo", reduction="mean")` reproduces.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._types import LossType

__all__ = ["LOSSES", "PreferenceLossOutput", "preference_loss"]


@dataclass
class PreferenceLossOutput:
    """Per-pair outputs of a preference loss.

    Attributes:
        losses: (B,) loss per pair (differentiable); the caller reduces it.
        chosen_rewards: (B,) detached implicit rewards β·c.
        rejected_rewards: (B,) detached implicit rewards β·r.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _sigmoid(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)


def _ipo(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (delta - 1 / (2 * beta)) ** 2


def _hinge(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return torch.relu(1 - beta * delta)


def _robust(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)


LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "hinge": _hinge,
    "robust": _robust,
}

# Loss types that read label_smoothing; for the others a non-zero value is a configuration mistake.
_SMOOTHED = frozenset({"sigmoid", "robust"})


def validate_loss_args(loss_type: str, beta: float, label_smoothing: float) -> None:
    """Raise ValueError naming the bad argument.

    Args:
        loss_type: A key of `LOSSES`.
        beta: Strength of the KL regularisation; must be finite and > 0.
        label_smoothing: ε in [0, 0.5); only allowed non-zero for "sigmoid" and "robust".

    Raises:
        ValueError: On an unknown loss type or out-of-range beta / label_smoothing.
    """
    if loss_type not in LOSSES:
        raise ValueError(f"loss_type must be one of {sorted(LOSSES)}, got {loss_type!r}")
    if not (beta > 0 and beta < float("inf")):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and loss_type not in _SMOOTHED:
        raise ValueError(
            f"label_smoothing={label_smoothing!r} has no effect with loss_type={loss_type!r}; "
            f"it is only used by {sorted(_SMOOTHED)}"
        )


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    loss_type: LossType = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Per-pair preference loss and implicit rewards.

    Args:
        policy_chosen_logps: (B,) log πθ(y+ | x).
        policy_rejected_logps: (B,) log πθ(y- | x).
        ref_chosen_logps: (B,) log πref(y+ | x); treated as a constant.
        ref_rejected_logps: (B,) log πref(y- | x); treated as a constant.
        loss_type: "sigmoid", "ipo", "hinge" or "robust" (see the module docstring).
        beta: β, the inverse temperature of the implicit reward.
        label_smoothing: ε, assumed probability that a label is flipped (sigmoid, robust).

    Returns:
        A `PreferenceLossOutput` with per-pair `losses` and detached rewards β·c and β·r.

    Raises:
        ValueError: On invalid arguments (see `validate_loss_args`).
    """
    validate_loss_args(loss_type, beta, label_smoothing)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()  # (B,)
    losses = LOSSES[loss_type](chosen_logratios - rejected_logratios, beta, label_smoothing)
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )
