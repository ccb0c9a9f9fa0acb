"""The layer-gradient probes: one implementation each, checked against brute-force autograd."""

import pytest
import torch
from torch import nn

from gradflow_lessons import probes, skips, widgets
from gradflow_lessons.models import MLP


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 3, generator=g, dtype=torch.float64), torch.arange(20) % 3


def test_weight_gradient_norms_equal_autograd_and_leave_grad_alone(batch):
    inputs, targets = batch
    torch.manual_seed(0)
    model = MLP(3, 3, depth=3, width=5).double()
    layers = [m for _, m in model.linear_layers()]
    norms, loss = probes.weight_gradient_norms(model, layers, inputs, targets)
    reference = nn.functional.cross_entropy(model(inputs), targets)
    reference.backward()
    assert norms == pytest.approx([m.weight.grad.norm().item() for m in layers], rel=1e-12)
    assert loss == pytest.approx(reference.item())


def test_weight_gradient_norms_do_not_fill_grad(batch):
    torch.manual_seed(0)
    model = MLP(3, 3, depth=2, width=4).double()
    probes.weight_gradient_norms(model, [model.output], *batch)
    assert all(p.grad is None for p in model.parameters())


def test_seeded_restores_the_global_random_state():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    probes.seeded(lambda: MLP(3, 2, depth=4), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_gradient_profile_accepts_float64_inputs(batch):
    profile = probes.gradient_profile("residual", 3, *batch, width=6)
    assert len(profile.grad_norms) == 5 and all(n > 0 for n in profile.grad_norms)


def test_mlp_gradient_norms_match_a_residual_free_mlp_built_with_the_seed(batch):
    inputs, targets = batch
    norms = probes.mlp_gradient_norms(inputs, targets, depth=4, width=6, seed=2)
    torch.manual_seed(2)
    model = MLP(3, 3, 4, 6, "relu", "kaiming").double()
    layers = [m for _, m in model.linear_layers()]
    assert norms == pytest.approx(probes.weight_gradient_norms(model, layers, inputs, targets)[0])


@pytest.mark.parametrize("name", ["gradient_profile", "GradientProfile", "hidden_layers"])
def test_old_skips_names_are_the_probes(name):
    assert getattr(skips, name) is getattr(probes, name)


@pytest.mark.parametrize("name", ["mlp_gradient_norms", "recurrence_gradient_norms"])
def test_old_widgets_names_are_the_probes(name):
    assert getattr(widgets, name) is getattr(probes, name)


def test_skips_still_names_unknown_attributes():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        skips.nope  # noqa: B018
