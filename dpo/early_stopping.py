"""Early stopping: a score history with an explicit direction, and a CPU weight snapshot.

`EarlyStopper` is pure bookkeeping (no collectives): the trainer feeds it a score that all
processes share (broadcast from the main process), so every process reaches the same
decision at the same step.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._modeling import load_trainable_state, trainable_state

__all__ = ["EarlyStopDecision", "EarlyStopper", "WeightSnapshot"]


@dataclass(frozen=True)
class EarlyStopDecision:
    """Result of one evaluation.

    Attributes:
        score: The score just recorded.
        improved: True when `score` is the new best.
        should_stop: True when `patience` evaluations in a row did not improve.
        best_score: Best score so far (including this one).
    """

    score: float
    improved: bool
    should_stop: bool
    best_score: float


class EarlyStopper:
    """Tracks evaluation scores and decides when to stop.

    Args:
        patience: Evaluations without improvement that trigger a stop; None never stops (the
            best score is still tracked).
        higher_is_better: Direction of the score (False for a loss, True for a win rate).
        min_delta: Minimum change over the best score that counts as an improvement.
    """

    def __init__(self, patience: int | None = 3, higher_is_better: bool = False, min_delta: float = 0.0):
        if patience is not None and patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 or None, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience, self.higher_is_better, self.min_delta = patience, higher_is_better, min_delta
        self.scores: list[float] = []
        self.best_score: float | None = None
        self.bad_evals = 0

    def _is_improvement(self, score: float) -> bool:
        if self.best_score is None:
            return True
        gain = score - self.best_score if self.higher_is_better else self.best_score - score
        return gain > self.min_delta

    def update(self, score: float) -> EarlyStopDecision:
        """Record a score; a NaN score never counts as an improvement.

        Args:
            score: The evaluation score.

        Returns:
            The decision for this evaluation.
        """
        score = float(score)
        self.scores.append(score)
        improved = not math.isnan(score) and self._is_improvement(score)
        if improved:
            self.best_score, self.bad_evals = score, 0
        else:
            self.bad_evals += 1
        should_stop = self.patience is not None and self.bad_evals >= self.patience
        best = self.best_score if self.best_score is not None else float("nan")
        return EarlyStopDecision(score=score, improved=improved, should_stop=should_stop, best_score=best)


class WeightSnapshot:
    """A CPU copy of what training changes in a module (its state dict; a peft model's adapters only)
    that can be restored later."""

    def __init__(self, model: nn.Module, step: int = 0):
        self.step = step
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in trainable_state(model).items()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Load the snapshot back into `model` (tensors are copied to the model's devices)."""
        load_trainable_state(model, self.state)
