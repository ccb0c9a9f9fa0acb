"""Which parameters the toolkit inspects, and the one error when there are none.

Every tool (monitor, noise, hessian, diagnose, clipping) works on the *trainable*
parameters: ``requires_grad=True``, each tensor once (tied weights count once), in
``model.named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def no_trainable_parameters() -> ValueError:
    """The error every tool raises for a model with nothing to differentiate."""
    return ValueError(
        "model has no parameters with requires_grad=True, so there is no gradient to inspect; "
        "did you freeze it? Unfreeze the parameters you train with `p.requires_grad_(True)`."
    )


def trainable_parameters(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the trainable parameters of ``model``, or of ``names`` only.

    Raises:
        ValueError: no trainable parameter; a name that is unknown or frozen; an empty ``names``.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise no_trainable_parameters()
    if names is None:
        return named
    wanted = list(names)
    unknown = [n for n in wanted if n not in named]
    if unknown or not wanted:
        raise ValueError(f"unknown or frozen parameter names {unknown}; choose from {sorted(named)}")
    return {n: named[n] for n in wanted}


def module_of(name: str) -> str:
    """The module a parameter belongs to: 'hidden.0.linear.weight' -> 'hidden.0.linear'."""
    return name.rpartition(".")[0] or "model"


def parameter_list(parameters: torch.Tensor | Iterable[torch.Tensor], caller: str) -> list[torch.Tensor]:
    """``parameters`` (one tensor or an iterable of them, e.g. ``model.parameters()``) as a list."""
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
