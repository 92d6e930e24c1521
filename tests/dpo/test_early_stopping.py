import math

import pytest
import torch

from dpo import EarlyStopper, WeightSnapshot
from tests.dpo._helpers import TinyLM, cpu_state, state_equal


def test_lower_is_better_with_patience_and_min_delta():
    stopper = EarlyStopper(patience=2, higher_is_better=False, min_delta=0.1)
    decisions = [stopper.update(s) for s in (1.0, 0.95, 0.5, 0.6, 0.35)]
    assert [d.improved for d in decisions] == [True, False, True, False, True]
    assert [d.should_stop for d in decisions] == [False, False, False, False, False]
    stop = [stopper.update(s) for s in (0.3, 0.34)]  # 0.3 is better, but by less than min_delta
    assert [d.should_stop for d in stop] == [False, True] and stop[-1].best_score == 0.35


def test_higher_is_better_and_nan_never_improves():
    stopper = EarlyStopper(patience=1, higher_is_better=True)
    assert stopper.update(0.3).improved and stopper.update(0.4).improved
    nan = stopper.update(float("nan"))
    assert not nan.improved and nan.should_stop and nan.best_score == 0.4 and math.isnan(nan.score)


def test_no_patience_never_stops_and_bad_patience_rejected():
    stopper = EarlyStopper(patience=None)
    assert not any(stopper.update(float(s)).should_stop for s in range(10))
    with pytest.raises(ValueError, match="patience"):
        EarlyStopper(patience=0)


def test_snapshot_is_an_independent_cpu_copy():
    model = TinyLM()
    snapshot = WeightSnapshot(model, step=7)
    before = cpu_state(model)
    with torch.no_grad():
        model.mix.weight.add_(1.0)
    assert state_equal(snapshot.state, before)
    snapshot.restore(model)
    assert state_equal(cpu_state(model), before) and snapshot.step == 7
