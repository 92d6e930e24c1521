"""A round's training state round-trips exactly (weights, AdamW moments, schedule, RNG, bookkeeping),
is published atomically, and a state saved for another round is ignored."""

import random

import numpy as np
import torch
from accelerate import Accelerator

from dpo import RoundState, build_adamw, build_scheduler, load_train_state, restore_rng, save_train_state
from tests.dpo._helpers import TinyLM, cpu_state, state_equal

IDENTITY = {"num_pairs": 8, "total_steps": 4}


def trained(seed: int):
    model = TinyLM(seed=seed)
    optimizer = build_adamw(model, 1e-2, 0.1)
    scheduler = build_scheduler(optimizer, warmup_steps=1, total_steps=4, start_lr=1e-2, end_lr=1e-3)
    for _ in range(2):
        model(torch.arange(6).unsqueeze(0)).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_state_round_trips_exactly(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = trained(seed=0)
    best = cpu_state(TinyLM(seed=5))
    state = RoundState(IDENTITY, step=2, global_step=7, micro_batches=2, history=[{"loss": 0.5}],
                       stopper={"scores": [1.0], "best_score": 1.0, "bad_evals": 0}, best_step=1)
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    save_train_state(tmp_path / "state", accelerator, state, policy=model, optimizer=optimizer, scheduler=scheduler,
                     best=best)
    expected_draws = (torch.rand(3), random.random(), np.random.rand())

    other, other_opt, other_sched = trained(seed=1)
    loaded, loaded_best = load_train_state(tmp_path / "state", IDENTITY, policy=other, optimizer=other_opt,
                                           scheduler=other_sched)
    assert loaded == state and state_equal(loaded_best, best)
    assert state_equal(cpu_state(other), cpu_state(model))
    for a, b in zip(other_opt.state.values(), optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert other_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"] == 2
    restore_rng(tmp_path / "state", accelerator)
    draws = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # published by rename, nothing left beside it


def test_a_state_of_another_round_is_ignored(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = trained(seed=0)
    save_train_state(tmp_path / "state", accelerator, RoundState(IDENTITY, 2, 2, 2), policy=model,
                     optimizer=optimizer, scheduler=scheduler)
    fresh = TinyLM(seed=3)
    before = cpu_state(fresh)
    assert load_train_state(tmp_path / "state", {**IDENTITY, "num_pairs": 9}, policy=fresh, optimizer=optimizer,
                            scheduler=scheduler) is None
    assert state_equal(cpu_state(fresh), before)
    assert load_train_state(tmp_path / "missing", IDENTITY, policy=fresh, optimizer=optimizer, scheduler=scheduler) is None
