"""Closed-form checks of the preference losses.

Two hand-made pairs with beta = 0.5:

    pair A: policy (chosen, rejected) = (-1, -3), reference = (-2, -2) -> c = 1,  r = -1, Δ = 2
    pair B: policy (chosen, rejected) = (-3, -1), reference = (-2, -2) -> c = -1, r = 1,  Δ = -2

so βΔ = (1, -1), and with s(x) = -logσ(x) = log(1 + e^-x): s(1) = 0.3132617, s(-1) = 1.3132617.

    sigmoid           (s(1), s(-1))                                   = (0.3132617, 1.3132617)
    sigmoid, ε = 0.1  (0.9 s(1) + 0.1 s(-1), 0.9 s(-1) + 0.1 s(1))    = (0.4132617, 1.2132617)
    ipo               ((Δ - 1/(2β))²) = ((2 - 1)², (-2 - 1)²)         = (1, 9)
    hinge             relu(1 - βΔ) = (relu(0), relu(2))               = (0, 2)
    robust, ε = 0.1   ((0.9 s(1) - 0.1 s(-1)) / 0.8, (0.9 s(-1) - 0.1 s(1)) / 0.8)
                                                                      = (0.1882617, 1.4382617)
    rewards           chosen β·c = (0.5, -0.5), rejected β·r = (-0.5, 0.5)
"""

import math

import pytest
import torch

from dpo import LOSSES, preference_loss

POLICY_CHOSEN = torch.tensor([-1.0, -3.0])
POLICY_REJECTED = torch.tensor([-3.0, -1.0])
REF = torch.tensor([-2.0, -2.0])


@pytest.mark.parametrize(
    ("loss_type", "eps", "expected"),
    [
        ("sigmoid", 0.0, [0.3132617, 1.3132617]),
        ("sigmoid", 0.1, [0.4132617, 1.2132617]),
        ("ipo", 0.0, [1.0, 9.0]),
        ("hinge", 0.0, [0.0, 2.0]),
        ("robust", 0.1, [0.1882617, 1.4382617]),
    ],
)
def test_closed_form(loss_type, eps, expected):
    out = preference_loss(
        POLICY_CHOSEN, POLICY_REJECTED, REF, REF, loss_type=loss_type, beta=0.5, label_smoothing=eps
    )
    torch.testing.assert_close(out.losses, torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.5]))


def test_registry_lists_all_types():
    assert set(LOSSES) == {"sigmoid", "ipo", "hinge", "robust"}


def test_equal_policy_and_reference_gives_ln2():
    logps = torch.tensor([-4.0, -7.5, -1.25])
    out = preference_loss(logps, logps + 1, logps, logps + 1)
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2)))
    assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0


def test_rewards_are_detached_and_gradient_flows_to_policy_only():
    policy_chosen = POLICY_CHOSEN.clone().requires_grad_()
    ref_chosen = REF.clone().requires_grad_()
    out = preference_loss(policy_chosen, POLICY_REJECTED, ref_chosen, REF, beta=0.5)
    out.losses.sum().backward()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    # d/dc of -logσ(βΔ) = -β σ(-βΔ)
    expected = -0.5 * torch.sigmoid(-0.5 * torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(policy_chosen.grad, expected)
    assert ref_chosen.grad is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_type": "kto"}, "loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preference_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, **kwargs)
