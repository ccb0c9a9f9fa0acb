"""Probes: how much gradient reaches each layer, or each time step, of a network.

One forward and one backward pass each, on a model built from a seed (the global random
state is left as it was). The lessons call them to make a point; the explorers in
``gradflow_lessons.widgets`` call them on every slider move.

- ``weight_gradient_norms``: ``||dL/dW_l||_F`` of chosen layers (the common core).
- ``mlp_gradient_norms``: the same for every linear layer of a seeded ``models.MLP`` (lesson 02).
- ``gradient_profile``: the same for a plain, residual or dense network (lesson 06).
- ``recurrence_gradient_norms``: ``||dL/dh_t||`` of ``h_t = phi(W h_{t-1})`` (lesson 03).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .models import MLP
from .skips import DenseMLP, ResidualMLP, build_network


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with the global torch RNG seeded by ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def weight_gradient_norms(
    model: nn.Module, layers: Sequence[nn.Module], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[list[float], float]:
    """``||dL/dW||_F`` of each layer's ``weight`` for the cross-entropy loss on one batch.

    Args:
        model: a classifier, ``[N, ...] -> [N, C]``.
        layers: modules of ``model`` with a ``weight``, in the order wanted.
        inputs: ``[N, ...]``.
        targets: ``[N]`` class labels.

    Returns:
        The norms (floats, in the order of ``layers``) and the loss.

    Cost: one forward and one backward pass; ``.grad`` is left untouched (``autograd.grad``).
    """
    loss = nn.functional.cross_entropy(model(inputs), targets)
    grads = torch.autograd.grad(loss, [layer.weight for layer in layers])
    return torch.stack([g.norm() for g in grads]).cpu().tolist(), loss.item()


def _to_inputs(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    return model.to(inputs.device, inputs.dtype) if inputs.is_floating_point() else model.to(inputs.device)


def mlp_gradient_norms(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    depth: int,
    width: int = 64,
    activation: str = "relu",
    init: str = "kaiming",
    gain: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Frobenius norm of every linear layer's weight gradient, input layer first.

    Builds ``MLP(D, C, depth, width, activation, init, gain)`` with ``seed`` (the global
    random state is left as it was) and takes the cross-entropy loss on ``inputs`` [N, D]
    and class labels ``targets`` [N]: ``||dL/dW_l||_F`` for ``l = 1 .. depth``.
    Cost: one forward and one backward pass.
    """
    model = seeded(lambda: MLP(inputs.shape[1], int(targets.max()) + 1, depth, width, activation,
                               init, gain), seed)
    model = _to_inputs(model, inputs)
    return weight_gradient_norms(model, [m for _, m in model.linear_layers()], inputs, targets)[0]


def hidden_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every weight layer between the stem and the head of a
    ``skips`` network, input to output: the last layer of each residual branch, or each
    dense layer."""
    if isinstance(model, ResidualMLP):
        return [(f"blocks.{i}.branch.{name}", layer)
                for i, block in enumerate(model.blocks)
                for name, layer in [list(block.branch.named_children())[-1]]]
    if isinstance(model, DenseMLP):
        return [(f"dense.layers.{i}.{name}", layer)
                for i, seq in enumerate(model.dense.layers)
                for name, layer in [list(seq.named_children())[-1]]]
    raise ValueError(f"expected a ResidualMLP/ResidualCNN/DenseMLP/DenseCNN, got {type(model).__name__}")


@dataclass(frozen=True)
class GradientProfile:
    """Weight-gradient norms of one network, input to output.

    Attributes:
        connection: ``"plain"``, ``"residual"`` or ``"dense"``.
        depth: number of hidden layers (blocks).
        layers: names: ``"stem"``, the hidden layers, ``"head"``.
        grad_norms: ``||dL/dW||_F`` of each layer in ``layers``.
        loss: the loss the gradient was taken of.
    """

    connection: str
    depth: int
    layers: list[str]
    grad_norms: list[float]
    loss: float

    @property
    def first_layer(self) -> float:
        """The stem's gradient norm: what reaches the input end of the network."""
        return self.grad_norms[0]


def gradient_profile(
    connection: str,
    depth: int,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    width: int = 64,
    seed: int = 0,
    **kwargs,
) -> GradientProfile:
    """Build a ``connection`` network of ``depth`` layers (seeded) and measure the Frobenius
    norm of each layer's weight gradient for the cross-entropy loss on one batch.

    Args:
        connection: ``"plain"``, ``"residual"`` or ``"dense"`` (see ``skips.build_network``).
        depth: hidden layers.
        inputs: ``[N, D]``.
        targets: ``[N]`` class labels.
        width: units per layer (the dense network's stem width).
        seed: seeds the initialisation: plain and residual share their weights.
        **kwargs: passed to the builder (``activation``, ``init``, ``norm``, ...).

    Cost: one forward and one backward pass.
    """
    model = seeded(lambda: build_network(connection, inputs.shape[1], int(targets.max()) + 1, depth,
                                         width, **kwargs), seed)
    model = _to_inputs(model, inputs)
    named = [("stem", model.stem), *hidden_layers(model), ("head", model.head.linear)]
    norms, loss = weight_gradient_norms(model, [layer for _, layer in named], inputs, targets)
    return GradientProfile(connection, depth, [n for n, _ in named], norms, loss)


def recurrence_gradient_norms(
    radius: float, steps: int, width: int = 32, nonlinearity: str = "linear", batch: int = 16,
    seed: int = 0,
) -> list[float]:
    """``||dL/dh_t||`` for ``t = 0 .. steps`` of ``h_t = phi(W h_{t-1})`` (mean over a batch).

    ``W`` is a Gaussian ``[width, width]`` matrix rescaled so that its spectral radius (largest
    |eigenvalue|) is ``radius``; ``phi`` is the identity, tanh or ReLU. The loss is
    ``L = sum(h_T * v)`` for a fixed random ``v``, so ``dL/dh_t = v (J_T ... J_{t+1})``: for the
    linear recurrence ``v W^(T-t)``, which grows or shrinks like ``radius^(T-t)``.
    Cost: ``steps`` matrix products forward and backward.
    """
    phis = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}
    if nonlinearity not in phis:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(phis)}")
    if steps < 1 or radius <= 0:
        raise ValueError(f"need steps >= 1 and radius > 0, got steps={steps}, radius={radius}")
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g, dtype=torch.float64)
    W = W * (radius / torch.linalg.eigvals(W).abs().max())
    states = [torch.randn(batch, width, generator=g, dtype=torch.float64).requires_grad_(True)]
    for _ in range(steps):
        states.append(phis[nonlinearity](states[-1] @ W.T))
    v = torch.randn(width, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((states[-1] * v).sum(), states, allow_unused=True)
    return [g.norm(dim=1).mean().item() if g is not None else 0.0 for g in grads]
