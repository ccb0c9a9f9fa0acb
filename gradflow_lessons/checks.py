"""Checks for the exercises: the same functions the learner runs and the grader grades with.

A check cell calls these helpers on the learner's values. Each check either prints one
line starting with a tick, or raises ``AssertionError`` with a message that says what
was expected, what came back, and where to look. Values are type-checked before they
are compared, so an object that claims to equal everything earns nothing.

Notebooks import this module (``from gradflow_lessons.checks import check_close``); it
loads torch and NumPy and nothing of the grader.
"""


from __future__ import annotations

import numbers

import numpy as np
import torch

PASS = "\u2713"  # the tick printed by a passing check


class CheckFailed(AssertionError):
    """A check did not pass; the message is the feedback for the learner."""


def as_tensor(value: object, name: str) -> torch.Tensor:
    """``value`` as a float64 CPU tensor, if it is a tensor, a NumPy array or a real number.

    Raises:
        CheckFailed: anything else (``None``, a string, a custom object).
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            return torch.from_numpy(value).to(torch.float64)
        raise CheckFailed(
            f"{name}: expected a tensor or a number, got {type(value).__name__}. "
            "Did your function return its result (and not print it, or return None)?"
        )
    return torch.tensor(float(value), dtype=torch.float64)


def check_shape(value: object, shape: tuple[int, ...], name: str) -> None:
    """Fail unless ``value`` is a tensor of exactly ``shape``."""
    tensor = as_tensor(value, name)
    if tuple(tensor.shape) != tuple(shape):
        raise CheckFailed(f"{name}: expected shape {list(shape)}, got {list(tensor.shape)}")


def check_close(
    value: object,
    expected: object,
    name: str,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    hint: str = "",
    quiet: bool = False,
) -> None:
    """Fail unless ``value`` matches ``expected`` elementwise: |v - e| <= atol + rtol |e|.

    Args:
        value: the learner's result (tensor, array or number).
        expected: the reference result.
        name: what is being checked, as the learner would say it.
        rtol, atol: tolerances, as in ``torch.allclose``.
        hint: where to look when the check fails.
        quiet: pass without printing (for hidden checks that run many cases).

    Raises:
        CheckFailed: wrong type, shape, a NaN/Inf, or a value outside the tolerance.
    """
    got = as_tensor(value, name)
    want = as_tensor(expected, f"{name} (reference)")
    suffix = f" Hint: {hint}" if hint else ""
    if got.shape != want.shape:
        raise CheckFailed(
            f"{name}: expected shape {list(want.shape)}, got {list(got.shape)}.{suffix}"
        )
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{name}: contains NaN or Inf.{suffix}")
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        error = (got - want).abs().max().item()
        scale = want.abs().max().item()
        raise CheckFailed(
            f"{name}: off by up to {error:.3g} (reference values up to {scale:.3g}; "
            f"tolerance rtol={rtol:g}, atol={atol:g}).{suffix}"
        )
    if not quiet:
        print(f"{PASS} {name}")


def check_true(condition: object, name: str, message: str, quiet: bool = False) -> None:
    """Fail with ``message`` unless ``condition`` is a real ``True`` (not merely truthy).
    ``quiet``: pass without printing (for hidden checks that run many cases)."""
    if isinstance(condition, torch.Tensor) and condition.numel() == 1:
        condition = bool(condition.item())
    elif isinstance(condition, np.bool_):
        condition = bool(condition)
    if condition is not True:
        raise CheckFailed(f"{name}: {message}")
    if not quiet:
        print(f"{PASS} {name}")
