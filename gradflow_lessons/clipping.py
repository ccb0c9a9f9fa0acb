"""Gradient clipping that says what it did: by norm, by value, by percentile, and AGC.

Every function clips the ``.grad`` of the given parameters in place and returns a
``ClipStats``: the gradient norm before and after, whether it clipped, which fraction of
its units it changed, and the cosine between the gradient before and after (how much
the *direction* changed).

- ``clip_by_norm_``: ``g <- g * min(1, max_norm / (||g|| + 1e-6))``, done by torch's own
  ``clip_grads_with_norm_``: the direction is kept, only the length shrinks.
- ``clip_by_value_``: ``g_i <- clamp(g_i, -c, c)``, done by torch's ``clip_grad_value_``:
  every entry is clamped on its own, so the direction changes.
- ``PercentileClipper``: clip by norm at a percentile of the recent gradient norms
  (AutoClip, Seetharaman et al. 2020), over a bounded window.
- ``agc_``: unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets).

The statistics are computed from the gradient *before* it is changed (the norm after
follows from the scale applied), so a NaN/Inf entry can still be counted, or refused
with ``error_if_nonfinite=True``. Cost: a few passes over the gradients and one
host sync per call (to return the statistics as Python numbers), never one per
parameter. ``PercentileClipper`` can skip the statistics and run without any host sync.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._params import parameter_list

Parameters = Tensor | Iterable[Tensor]


@dataclass(frozen=True)
class ClipStats:
    """What one clipping call did (plain Python numbers, detached from the graph).

    Attributes:
        norm_before: L2 norm of all gradients, seen as one vector, before clipping.
        norm_after: the same after clipping.
        threshold: the threshold used (``max_norm``, ``clip_value``, the percentile
            threshold, or AGC's ``clipping`` ratio).
        clipped: whether any gradient was scaled down or clamped.
        fraction_clipped: the fraction of the method's units that were changed: entries
            (by value), the whole gradient (by norm: 0 or 1), output units (AGC).
        cosine: cos(g_before, g_after); 1.0 means the direction is unchanged (also for
            an all-zero gradient), NaN when a gradient is not finite.
        nonfinite: number of NaN/Inf gradient entries before clipping.
    """

    norm_before: float
    norm_after: float
    threshold: float
    clipped: bool
    fraction_clipped: float
    cosine: float
    nonfinite: int


def _gradients(parameters: Parameters, caller: str, **positive: float) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters that have a ``.grad``, and those gradients; warns when there are none.
    ``positive``: the thresholds, each checked to be > 0."""
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    params = parameter_list(parameters, caller)
    if not params:
        warnings.warn(
            f"{caller}: the parameter list is empty, nothing was clipped; pass "
            "model.parameters() (a generator can only be used once)",
            stacklevel=3,
        )
        return [], []
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        warnings.warn(
            f"{caller}: no parameter has a gradient, nothing was clipped; call "
            "loss.backward() before clipping",
            stacklevel=3,
        )
    return params, grads


def _total_norm(grads: list[Tensor]) -> Tensor:
    """||g||_2 over all tensors, as a 0-d tensor on the first gradient's device."""
    return torch.nn.utils.get_total_norm(grads, 2.0)


def _count_nonfinite(grads: list[Tensor]) -> int:
    return int(sum(int((~torch.isfinite(g)).sum()) for g in grads))


def _nonfinite_error(grads: list[Tensor], caller: str) -> RuntimeError:
    count = _count_nonfinite(grads)
    what = f"{count} gradient entries are NaN or Inf" if count else "the gradient norm overflows"
    return RuntimeError(
        f"{caller}: {what}, so the gradient cannot be clipped. Skip this step "
        "(optimizer.zero_grad()), lower the learning rate or look for log(0) / division by "
        "zero in the loss; or pass error_if_nonfinite=False to get the count in the stats."
    )


def _stats(
    grads: list[Tensor],
    norm_before: Tensor,
    norm_after: Tensor,
    dot: Tensor,
    threshold: Tensor | float,
    changed: Tensor | bool,
    units: int,
    error_if_nonfinite: bool,
    caller: str,
) -> ClipStats:
    """Gather the statistics with one host sync, *before* the gradients are changed (so a
    NaN/Inf can still be counted, or refused with ``error_if_nonfinite``)."""
    device = norm_before.device
    cosine = dot / (norm_before * norm_after)
    values = torch.stack([
        torch.as_tensor(t, device=device).detach().to(torch.float64)
        for t in (norm_before, norm_after, threshold, changed, cosine)
    ]).tolist()  # the one host sync
    before, after, thr, changed_count, cos = values
    finite = math.isfinite(before)
    if not finite and error_if_nonfinite:
        raise _nonfinite_error(grads, caller)
    if finite and before == 0.0:
        cos = 1.0  # nothing to point anywhere: the direction did not change
    return ClipStats(
        norm_before=before,
        norm_after=after,
        threshold=thr,
        clipped=changed_count > 0,
        fraction_clipped=changed_count / units if units else 0.0,
        cosine=cos if finite else math.nan,
        nonfinite=0 if finite else _count_nonfinite(grads),
    )


def _empty_stats(threshold: float) -> ClipStats:
    return ClipStats(0.0, 0.0, float(threshold), False, 0.0, 1.0, 0)


def clip_by_norm_(
    parameters: Parameters,
    max_norm: float,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> ClipStats:
    """Rescale all gradients together so their joint L2 norm is at most ``max_norm``.

    ``g <- g * min(1, max_norm / (||g||_2 + 1e-6))`` with ``||g||_2`` over every gradient
    entry of every parameter. The gradients are changed by torch's own
    ``clip_grads_with_norm_`` (so they are bit for bit what ``clip_grad_norm_`` gives).
    A positive rescaling keeps the direction: ``cosine`` is 1.

    Args:
        parameters: tensors whose ``.grad`` is clipped (``model.parameters()``).
        max_norm: the largest allowed norm, > 0.
        error_if_nonfinite: raise ``RuntimeError`` on a NaN/Inf gradient instead of
            reporting it in ``ClipStats.nonfinite`` (torch would then scale every
            gradient by NaN: skip that step).
        foreach: passed to torch (None: the fast ``_foreach`` path where supported).

    Returns:
        ``ClipStats``; ``fraction_clipped`` is 1.0 when the gradient was rescaled.

    Cost: one norm pass and one scaling pass over the gradients; one host sync.
    """
    params, grads = _gradients(parameters, "clip_by_norm_", max_norm=max_norm)
    if not grads:
        return _empty_stats(max_norm)
    with torch.no_grad():
        norm_before = _total_norm(grads)
        norm_after = norm_before * torch.clamp(max_norm / (norm_before + 1e-6), max=1.0)  # torch's coef
        dot = norm_before * norm_after  # g_after = coef * g_before with coef > 0
        stats = _stats(grads, norm_before, norm_after, dot, max_norm, norm_before > max_norm, 1,
                       error_if_nonfinite, "clip_by_norm_")
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm_before, foreach=foreach)
    return stats


def clip_by_value_(
    parameters: Parameters,
    clip_value: float,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> ClipStats:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``.

    ``g_i <- clamp(g_i, -c, c)``, done by torch's ``clip_grad_value_``. Each entry is
    clamped on its own, so large entries lose more than small ones and the gradient
    turns: ``cosine < 1`` whenever an entry is clamped. The statistics are computed before
    the gradient changes, one tensor at a time (no copy of the whole gradient is kept).
    They cost about four passes over the gradient; where speed matters more than the
    statistics, call ``torch.nn.utils.clip_grad_value_`` directly.

    Note that an infinite entry becomes ``+-c``: value clipping hides an Inf (it is still
    counted in ``nonfinite``); a NaN stays NaN.

    Args:
        parameters: tensors whose ``.grad`` is clipped.
        clip_value: the largest allowed magnitude of an entry, > 0.
        error_if_nonfinite: raise ``RuntimeError`` on a NaN/Inf gradient entry.
        foreach: passed to torch.

    Returns:
        ``ClipStats``; ``fraction_clipped`` is the fraction of entries that were clamped.

    Cost: a norm pass and about four statistics passes before clamping, one clamping
    pass; one host sync.
    """
    params, grads = _gradients(parameters, "clip_by_value_", clip_value=clip_value)
    if not grads:
        return _empty_stats(clip_value)
    with torch.no_grad():
        norm_before = _total_norm(grads)
        device = norm_before.device
        dots, after_sq, over = [], [], []
        for g in grads:  # one temporary at a time, freed before the next tensor
            flat = g.flatten()
            kept = flat.clamp(-clip_value, clip_value)
            dots.append(torch.dot(flat, kept).to(device))
            after_sq.append(torch.dot(kept, kept).to(device))
            over.append(torch.count_nonzero(flat != kept).to(device))
        norm_after = torch.stack(after_sq).sum().sqrt()
        dot = torch.stack(dots).sum()
        units = sum(g.numel() for g in grads)
        stats = _stats(grads, norm_before, norm_after, dot, clip_value, torch.stack(over).sum(), units,
                       error_if_nonfinite, "clip_by_value_")
        torch.nn.utils.clip_grad_value_(params, clip_value, foreach=foreach)
    return stats


class PercentileClipper:
    """Clip by norm at a percentile of the recent gradient norms (AutoClip).

    Seetharaman et al. (2020), "AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks": at step t, record ``n_t = ||g_t||``, then clip by norm with
    ``threshold_t = percentile_p(n_{t-w+1}, ..., n_t)``. The paper keeps every norm since
    the start; here the history is a ring buffer of the last ``window`` norms on the
    gradients' device, so each step costs O(window log window) whatever the step count,
    memory is bounded, and old norms (from the first, noisy steps) are forgotten.

    The percentile is the choice: AutoClip used p = 10 (about nine steps in ten are
    clipped, so clipping acts as a normaliser and an extra learning-rate schedule);
    p = 90 to 99 clips only the outliers (a seatbelt). ``fraction_clipped`` tells which
    regime a run is in. Non-finite norms are left out of the history.

    Args:
        percentile: p in [0, 100].
        window: how many recent norms the percentile is taken over, >= 1.
        error_if_nonfinite: raise ``RuntimeError`` on a NaN/Inf gradient.

    Example::

        clipper = PercentileClipper(percentile=90, window=1000)
        for inputs, targets in loader:
            loss_fn(model(inputs), targets).backward()
            clipper.clip_(model.parameters())
            optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, percentile: float, window: int = 1000, error_if_nonfinite: bool = False) -> None:
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        if not 1 <= window <= 2**24:
            raise ValueError(f"window must be between 1 and 2**24 (torch.nanquantile's limit), got {window}")
        self.percentile = float(percentile)
        self.window = int(window)
        self.error_if_nonfinite = error_if_nonfinite
        self.steps = 0
        self._norms: Tensor | None = None  # [window] ring buffer, NaN = empty or non-finite
        self._clipped_steps: Tensor | None = None  # 0-d count, kept on the device
        self._threshold: Tensor | None = None

    def clip_(self, parameters: Parameters, stats: bool = True) -> ClipStats | None:
        """Record this step's gradient norm, then clip by norm at the percentile.

        Args:
            parameters: tensors whose ``.grad`` is clipped.
            stats: return a ``ClipStats`` (one host sync); with False, nothing waits for
                the device and None is returned.
        """
        _, grads = _gradients(parameters, "PercentileClipper.clip_")
        if not grads:
            return _empty_stats(math.nan) if stats else None
        with torch.no_grad():
            norm = _total_norm(grads)
            if self.error_if_nonfinite and not bool(torch.isfinite(norm)):
                raise _nonfinite_error(grads, "PercentileClipper.clip_")
            if self._norms is None:
                self._norms = torch.full((self.window,), math.nan, dtype=norm.dtype, device=norm.device)
                self._clipped_steps = torch.zeros((), dtype=torch.int64, device=norm.device)
            finite = torch.isfinite(norm)
            self._norms[self.steps % self.window] = torch.where(finite, norm, math.nan)
            self.steps += 1
            threshold = torch.nanquantile(self._norms, self.percentile / 100)
            self._threshold = threshold
            # torch's formula, with a tensor threshold (no float() of it, so no host sync)
            coef = torch.clamp(threshold / (norm + 1e-6), max=1.0)
            clipped = norm > threshold
            self._clipped_steps += clipped
            result = None
            if stats:
                norm_after = norm * coef
                result = _stats(grads, norm, norm_after, norm * norm_after, threshold, clipped, 1,
                                False, "PercentileClipper.clip_")
            for device in {g.device for g in grads}:
                torch._foreach_mul_([g for g in grads if g.device == device], coef.to(device))
        return result

    @property
    def history(self) -> Tensor:
        """The recorded norms in the window, oldest first, as a CPU tensor [<= window]."""
        if self._norms is None:
            return torch.empty(0)
        norms = self._norms.detach().cpu()
        start = self.steps % self.window if self.steps >= self.window else 0
        ordered = torch.cat([norms[start:], norms[:start]])[: min(self.steps, self.window)]
        return ordered

    @property
    def threshold(self) -> float:
        """The threshold used at the last step (NaN before the first)."""
        return math.nan if self._threshold is None else float(self._threshold)

    @property
    def fraction_clipped(self) -> float:
        """The fraction of all steps so far whose gradient was scaled down."""
        if self._clipped_steps is None or self.steps == 0:
            return 0.0
        return int(self._clipped_steps) / self.steps


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit: over every dim but the first for a [out, ...] weight, kept
    as [out, 1, ...]; the whole tensor's norm for a bias or a scalar (NFNets' rule)."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


def agc_(
    parameters: Parameters,
    clipping: float = 0.01,
    eps: float = 1e-3,
    skip: Iterable[Tensor] = (),
    error_if_nonfinite: bool = False,
) -> ClipStats:
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, "High-Performance
    Large-Scale Image Recognition Without Normalization", NFNets).

    For each unit i (a row ``W_i`` of a weight [out, ...] and its gradient ``G_i``; a bias
    is one unit), with ``lambda = clipping``::

        G_i <- G_i * lambda * max(||W_i||, eps) / ||G_i||   if ||G_i|| / max(||W_i||, eps) > lambda
        G_i <- G_i                                           otherwise

    so no step moves a unit by more than a fraction lambda of its size. ``eps`` keeps
    zero-initialised weights (biases) from being frozen. The paper leaves the final
    classifier layer unclipped: pass its parameters as ``skip``.

    Args:
        parameters: tensors whose ``.grad`` is clipped.
        clipping: lambda > 0, the largest allowed ratio ||G_i|| / max(||W_i||, eps).
        eps: floor on a unit's weight norm.
        skip: parameters left unclipped, e.g. ``model.output.parameters()``.
        error_if_nonfinite: raise ``RuntimeError`` on a NaN/Inf gradient.

    Returns:
        ``ClipStats`` over every parameter given (skipped ones included in the norms);
        ``fraction_clipped`` is the fraction of units (of clipped parameters) scaled down.

    Cost: one pass over weights and gradients per parameter, no host sync but the one
    for the statistics.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    params, grads = _gradients(parameters, "agc_", clipping=clipping)
    if not grads:
        return _empty_stats(clipping)
    with torch.no_grad():
        skipped = {id(p) for p in skip}
        norm_before = _total_norm(grads)
        device = norm_before.device
        scales: list[Tensor | None] = []
        dots, after_sq, changed, units = [], [], [], 0
        for p, g in zip(params, grads):
            if id(p) in skipped:
                scales.append(None)
                dots.append(g.double().pow(2).sum().to(device))
                after_sq.append(dots[-1])
                continue
            max_norm = unitwise_norm(p.detach()).clamp(min=eps) * clipping  # [out, 1, ...] or []
            grad_norm = unitwise_norm(g)
            scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-6), 1.0)
            scales.append(scale)
            grad_sq = grad_norm.double() ** 2
            dots.append((scale * grad_sq).sum().to(device))  # <G_i, s_i G_i> = s_i ||G_i||^2
            after_sq.append((scale**2 * grad_sq).sum().to(device))
            changed.append((scale < 1).sum().to(device))
            units += scale.numel()
        norm_after = torch.stack(after_sq).sum().sqrt()
        count = torch.stack(changed).sum() if changed else torch.zeros((), device=device)
        stats = _stats(grads, norm_before, norm_after, torch.stack(dots).sum(), clipping, count, units,
                       error_if_nonfinite, "agc_")
        for g, scale in zip(grads, scales):
            if scale is not None:
                g.mul_(scale.to(g.dtype))
    return stats
