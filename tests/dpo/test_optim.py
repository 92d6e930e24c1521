"""AdamW groups and the warm-up + linear-decay schedule, against values worked out by hand."""

import pytest
import torch

from dpo import build_adamw, build_scheduler, warmup_linear_decay
from tests.dpo._helpers import TinyLM


def test_warmup_linear_decay_values():
    kw = dict(warmup_steps=0, total_steps=5, start_lr=1.0, end_lr=0.2)
    assert [warmup_linear_decay(i, **kw) for i in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    # two warm-up steps (0.5, 1.0), then 1.0 -> 0.2 over the remaining four
    kw = dict(warmup_steps=2, total_steps=6, start_lr=1.0, end_lr=0.2)
    assert [warmup_linear_decay(i, **kw) for i in range(6)] == pytest.approx([0.5, 1.0, 1.0, 0.7333333, 0.4666667, 0.2])


def test_weight_decay_only_on_matrices_and_the_scheduler_restarts_from_start_lr():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_adamw(model, 1e-3, 0.1)
    decayed, plain = optimizer.param_groups
    assert [p.dim() for p in decayed["params"]] == [2] and decayed["weight_decay"] == 0.1
    assert sorted(p.dim() for p in plain["params"]) == [1, 1, 1] and plain["weight_decay"] == 0.0
    scheduler = build_scheduler(optimizer, warmup_steps=0, total_steps=3, start_lr=1e-3, end_lr=1e-4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    build_scheduler(optimizer, warmup_steps=0, total_steps=3, start_lr=1e-3, end_lr=1e-4)  # a new round
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]


def test_bad_rates_and_frozen_models_are_refused():
    with pytest.raises(ValueError, match="learning rate > 0"):
        build_adamw(TinyLM(), 0.0, 0.0)
    frozen = TinyLM().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        build_adamw(frozen, 1e-3, 0.0)
