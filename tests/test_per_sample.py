"""gradflow_lessons.per_sample: per-sample gradients and norms against one backward per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradflow_lessons import noise, per_sample
from gradflow_lessons.monitor import count_hooks

N = 5


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def problem():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, nn.CrossEntropyLoss(), torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 2, (N,))


def looped_sq_norms(model, loss_fn, x, y) -> dict[str, torch.Tensor]:
    """Per layer, |g_i|^2 [N] from one backward pass per sample: the definition."""
    rows: dict[str, list[torch.Tensor]] = {}
    for xi, yi in zip(x, y):
        model.zero_grad()
        loss_fn(model(xi[None]), yi[None]).backward()
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                sq = module.weight.grad.square().sum() + module.bias.grad.square().sum()
                rows.setdefault(name, []).append(sq)
    model.zero_grad(set_to_none=True)
    return {k: torch.stack(v) for k, v in rows.items()}


def test_hook_sq_norms_match_one_backward_per_sample():
    model, loss_fn, x, y = problem()
    fast = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    slow = looped_sq_norms(model, loss_fn, x, y)
    assert sorted(fast) == sorted(slow)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-12, atol=1e-14)
    assert count_hooks(model) == 0


def test_vmap_gradients_square_to_the_hook_norms():
    model, loss_fn, x, y = problem()
    grads = per_sample.per_sample_gradients(model, loss_fn, x, y)
    fast = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    for layer in fast:
        ref = sum(g.reshape(N, -1).square().sum(1) for k, g in grads.items() if k.startswith(layer + "."))
        torch.testing.assert_close(fast[layer], ref)


def test_the_moved_names_are_still_importable_from_noise():
    assert noise.per_sample_gradients is per_sample.per_sample_gradients
    assert noise.per_sample_grad_sq_norms is per_sample.per_sample_grad_sq_norms
