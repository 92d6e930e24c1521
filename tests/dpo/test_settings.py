"""Settings objects check their values when built, naming the field."""

import pytest

from dpo import EarlyStopping, LossSettings, OptimSettings


@pytest.mark.parametrize(("make", "field"), [
    (lambda: OptimSettings(grad_accum_steps=0), "grad_accum_steps"),
    (lambda: OptimSettings(start_learning_rate=0.0), "start_learning_rate"),
    (lambda: OptimSettings(dropout=1.0), "dropout"),
    (lambda: OptimSettings(num_epochs=0), "num_epochs"),
    (lambda: EarlyStopping(eval_every=0), "eval_every"),
    (lambda: EarlyStopping(patience=0), "patience"),
])
def test_invalid_values_name_their_field(make, field):
    with pytest.raises(ValueError, match=rf"\.{field}=.* is invalid"):
        make()


def test_defaults_are_the_trainers():
    assert OptimSettings().num_train_steps is None and OptimSettings().max_grad_norm == 1.0
    assert LossSettings().ref_ema_decay == 1.0 and EarlyStopping().eval_every is None
