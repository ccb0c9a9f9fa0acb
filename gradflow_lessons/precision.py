"""Low-precision floats and what they do to gradients (lesson 12).

A float stores a sign, an exponent and a mantissa. The exponent bits set the *range*
(how large and how small a number can be), the mantissa bits the *precision* (how close
two neighbouring numbers are). float16 has 5 exponent and 10 mantissa bits; bfloat16 has
float32's 8 exponent bits and 7 mantissa bits: the range of float32 at a third of its
precision. The facts lesson 12 needs, computed from ``torch.finfo``:

- ``float_format(dtype)``: bits, largest value, smallest normal and subnormal, epsilon.
- ``spacing(values, dtype)``: the gap to the next representable number (one *ulp*) at
  each value. An update smaller than half of it is rounded away: ``w + u == w``.
- ``cast_report(tensor, dtype)``: how many entries of a (float32 or float64) tensor become
  zero, subnormal or infinite when cast to ``dtype``: the underflow of a gradient.
- ``lost_update_fraction(weights, updates, dtype)``: the fraction of updates that leave
  the weight unchanged when ``w + u`` is computed in ``dtype``: why master weights are
  kept in float32 in mixed-precision training (Micikevicius et al., 2018).

Everything is counted in float64 or in the target dtype itself, vectorised, with one
host sync per call; nothing is printed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_float(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"expected a floating-point torch dtype (e.g. torch.float16), got {dtype!r}")


@dataclass(frozen=True)
class FloatFormat:
    """The facts of one floating-point format (all values positive, as Python floats).

    Attributes:
        name: ``"float16"``, ``"bfloat16"``, ...
        bits: total width (sign + exponent + mantissa).
        exponent_bits, mantissa_bits: the stored exponent and fraction widths.
        eps: the gap between 1 and the next number, ``2 ** -mantissa_bits``.
        max: the largest finite value; anything larger rounds to ``inf``.
        smallest_normal: ``2 ** (1 - bias)``; below it numbers are *subnormal* and lose
            precision bit by bit.
        smallest_subnormal: ``smallest_normal * eps``; below half of it a number rounds to 0.
    """

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    eps: float
    max: float
    smallest_normal: float
    smallest_subnormal: float

    @property
    def decimal_digits(self) -> float:
        """About how many significant decimal digits the format holds: ``-log10(eps)``."""
        return -math.log10(self.eps)


def float_format(dtype: torch.dtype) -> FloatFormat:
    """The ``FloatFormat`` of a floating-point ``dtype`` (from ``torch.finfo``).

    Raises:
        ValueError: ``dtype`` is not a floating-point dtype.
    """
    _check_float(dtype)
    info = torch.finfo(dtype)
    mantissa = round(-torch.log2(torch.tensor(info.eps, dtype=torch.float64)).item())
    exponent = info.bits - 1 - mantissa
    return FloatFormat(
        name=str(dtype).removeprefix("torch."),
        bits=info.bits,
        exponent_bits=exponent,
        mantissa_bits=mantissa,
        eps=float(info.eps),
        max=float(info.max),
        smallest_normal=float(info.smallest_normal),
        smallest_subnormal=float(info.smallest_normal * info.eps),
    )


def spacing(values: Tensor, dtype: torch.dtype) -> Tensor:
    """The ulp of ``dtype`` at each of ``values``: the gap from ``|x|`` (rounded to ``dtype``)
    to the next larger representable number, as float64, same shape as ``values``.

    ``w + u`` computed in ``dtype`` equals ``w`` whenever ``|u|`` is below half of it
    (round to nearest).
    """
    _check_float(dtype)
    x = values.detach().to(dtype).abs()
    up = torch.nextafter(x, torch.full_like(x, float("inf")))
    return up.double() - x.double()


@dataclass(frozen=True)
class CastReport:
    """What casting a tensor to ``dtype`` did to its entries (counts and fractions).

    Attributes:
        dtype: the target format's name.
        numel: number of entries.
        nonzero: entries that were not zero before the cast.
        underflow: nonzero, finite entries that became exactly zero.
        subnormal: nonzero entries that became subnormal (nonzero, below the smallest normal).
        overflow: finite entries that became ``inf``.
    """

    dtype: str
    numel: int
    nonzero: int
    underflow: int
    subnormal: int
    overflow: int

    @property
    def underflow_fraction(self) -> float:
        """Fraction of the nonzero entries that became zero (0.0 for an all-zero tensor)."""
        return self.underflow / self.nonzero if self.nonzero else 0.0

    @property
    def subnormal_fraction(self) -> float:
        """Fraction of the nonzero entries that became subnormal."""
        return self.subnormal / self.nonzero if self.nonzero else 0.0

    @property
    def overflow_fraction(self) -> float:
        """Fraction of all entries that became infinite."""
        return self.overflow / self.numel if self.numel else 0.0


def cast_report(tensor: Tensor, dtype: torch.dtype) -> CastReport:
    """Count what casting ``tensor`` (any shape, any float dtype) to ``dtype`` does.

    An entry *underflows* when it is nonzero and finite but casts to 0, is *subnormal* when
    it casts to a nonzero value below ``float_format(dtype).smallest_normal``, and
    *overflows* when it is finite but casts to ``inf``. To see what a low-precision
    backward pass would lose, pass the gradient computed in a wider type.

    Raises:
        ValueError: ``dtype`` is not a floating-point dtype.
    """
    _check_float(dtype)
    x = tensor.detach()
    cast = x.to(dtype)
    finite = torch.isfinite(x)
    nonzero = (x != 0) & ~torch.isnan(x)
    tiny = torch.finfo(dtype).smallest_normal
    counts = torch.stack([
        nonzero.sum(),
        (nonzero & finite & (cast == 0)).sum(),
        (nonzero & (cast != 0) & (cast.abs() < tiny)).sum(),
        (finite & torch.isinf(cast)).sum(),
    ]).tolist()  # the one host sync
    return CastReport(str(dtype).removeprefix("torch."), x.numel(), *counts)


def lost_update_fraction(weights: Tensor, updates: Tensor, dtype: torch.dtype) -> float:
    """Fraction of the nonzero ``updates`` that leave their weight unchanged when
    ``w + u`` is computed and stored in ``dtype`` (same shapes; 0.0 if all updates are 0).

    In float16 a weight of 1 has an ulp of ``2 ** -10``: an update smaller than about
    ``4.9e-4`` is rounded away, every step, however many steps there are.

    Raises:
        ValueError: the shapes differ, or ``dtype`` is not a floating-point dtype.
    """
    _check_float(dtype)
    if weights.shape != updates.shape:
        raise ValueError(
            f"weights {list(weights.shape)} and updates {list(updates.shape)} must have the same shape"
        )
    w = weights.detach().to(dtype)
    u = updates.detach().to(dtype)  # an update that underflows here is lost too
    moved = updates.detach() != 0
    lost = moved & ((w + u) == w)
    count = int(moved.sum())
    return lost.sum().item() / count if count else 0.0
