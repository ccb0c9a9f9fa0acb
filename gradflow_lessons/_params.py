"""Which parameters the toolkit inspects, and the one error when there are none.

Every tool (monitor, noise, hessian, diagnose, clipping) works on the *trainable*
parameters: ``requires_grad=True``, each tensor once (tied weights count once), in
``model.named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .distributed import is_sharded, sharded_total_norm


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
    meta = [n for n, p in named.items() if p.is_meta]
    if meta:
        raise ValueError(
            f"parameters {meta[:3]} are on the meta device (shapes only, no values); materialise the "
            "model first, e.g. model.to_empty(device='cpu') and then initialise or load_state_dict it"
        )
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
    """``parameters`` (one tensor or an iterable of them, e.g. ``model.parameters()``) as a list.

    Raises:
        ValueError: a model or ``named_parameters()`` instead of the parameters.
    """
    if isinstance(parameters, nn.Module):
        raise ValueError(f"{caller} takes the parameters, not the model: pass model.parameters()")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    wrong = next((p for p in params if not isinstance(p, torch.Tensor)), None)
    if wrong is not None:
        hint = (" (named_parameters() gives (name, tensor) pairs: pass model.parameters())"
                if isinstance(wrong, tuple) else "")
        raise ValueError(f"{caller} takes tensors (model.parameters()), got a {type(wrong).__name__}{hint}")
    return params


# --------------------------------------------------------------------------- norms that do not lie

TINY, HUGE = 1e-18, 1e18
"""A float32 sum of squares loses a norm below ``TINY`` (the squares underflow: ``(1e-26)**2``
is 0 in float32) or above ``HUGE`` (they overflow to inf); such norms are redone in float64."""


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a statistic of ``dtype`` values is accumulated in: float32 for float16 and
    bfloat16 (whose sums and squares overflow or lose every digit), else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


BLAS_DTYPES = (torch.float32, torch.float64)
BLAS_MIN = 1 << 14
"""A contiguous CPU tensor of a ``BLAS_DTYPES`` dtype with at least ``BLAS_MIN`` entries has its
sum of squares taken by BLAS (``torch.dot(g, g)``), which runs on every torch thread where the norm
kernel runs on one: with 2 threads the monitor's norms cost less than one ``torch._foreach_norm``
pass (benchmarks/monitor_overhead.py, the "floor" row)."""


def _blas(t: torch.Tensor) -> bool:
    return t.dtype in BLAS_DTYPES and t.numel() >= BLAS_MIN and t.device.type == "cpu" and (
        t.is_contiguous() and t.layout == torch.strided and not t.is_conj())


def norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``||t||_2`` of each tensor as a 0-d tensor on its device, accumulated in ``wide(t.dtype)``,
    one fused pass per dtype (large CPU tensors: one BLAS dot each, see ``BLAS_MIN``) and no host
    sync. Check the values with ``exact_norms`` once they are on the host: float32 cannot hold
    every norm."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[object, list[int]] = {}  # dtype, or "blas"
    for i, t in enumerate(tensors):
        groups.setdefault("blas" if _blas(t) else t.dtype, []).append(i)
    for key, index in groups.items():
        group = [tensors[i] for i in index]
        if key == "blas":
            result = [torch.dot(flat, flat).sqrt_() for flat in (t.view(-1) for t in group)]
        elif wide(key) == key:
            result = torch._foreach_norm(group)
        else:
            result = torch._foreach_norm(group, dtype=wide(key))
        for i, norm in zip(index, result):
            out[i] = norm
    return out


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``||(t_1, ..., t_k)||_2``, all tensors seen as one vector; 0-d on the first one's device.
    FSDP2's sharded tensors (``DTensor``) count whole: one ``all_reduce``, in float64."""
    if any(is_sharded(t) for t in tensors):
        return sharded_total_norm(tensors)
    each = norms(tensors)
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in each) else each[0].dtype
    return torch.linalg.vector_norm(torch.stack([n.to(tensors[0].device, dtype) for n in each]))


def lost_in_float32(value: float) -> bool:
    """Whether a norm ``value`` taken in float32 may be wrong (outside ``[TINY, HUGE]``; NaN is not)."""
    return not TINY <= value <= HUGE and value == value


def exact_norms(tensors: list[torch.Tensor], values: list[float]) -> list[float]:
    """``values``, the norms of each of ``tensors`` from ``norms``, with those float32 may have
    lost redone in float64: one more pass over those tensors and one host sync, only then."""
    redo = [k for k, (t, v) in enumerate(zip(tensors, values))
            if lost_in_float32(v) and t.dtype != torch.float64 and not is_sharded(t)]
    if not redo:
        return values
    again = torch.stack([torch.linalg.vector_norm(tensors[k].detach(), dtype=torch.float64).cpu()
                         for k in redo]).tolist()
    values = list(values)
    for k, value in zip(redo, again):
        values[k] = value
    return values


def exact_norm(tensors: list[torch.Tensor], value: float) -> float:
    """``value``, the norm of ``tensors`` from ``norms``/``total_norm``, redone in float64 when
    it is outside ``[TINY, HUGE]`` where float32 may have lost it (a second pass and a host
    sync, only then)."""
    if not lost_in_float32(value) or all(t.dtype == torch.float64 for t in tensors):
        return value
    if any(is_sharded(t) for t in tensors):  # total_norm took them in float64 already
        return value
    squares = [torch.linalg.vector_norm(t.detach(), dtype=torch.float64).cpu() ** 2 for t in tensors]
    return float(torch.stack(squares).sum().sqrt())
