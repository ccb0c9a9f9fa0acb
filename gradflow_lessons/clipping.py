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

Under mixed precision, pass the ``GradScaler`` (``scaler=``): clipping gradients that are
still multiplied by the loss scale would apply the threshold to the wrong numbers, so every
clipper then raises until ``scaler.unscale_(optimizer)`` has run this step.

The statistics are computed from the gradient *before* it is changed (the norm after
follows from the scale applied), so a NaN/Inf entry can still be counted, or refused
with ``error_if_nonfinite=True``. Cost: a few passes over the gradients and one
host sync per call (to return the statistics as Python numbers), never one per
parameter. ``PercentileClipper`` can skip the statistics and run without any host sync.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._params import exact_norm, parameter_list, total_norm, wide
from ._state import require_unscaled
from .distributed import is_sharded, local, shard_group, sum_across

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


def _gradients(parameters: Parameters, caller: str, scaler: torch.amp.GradScaler | None = None,
               **positive: float) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters that have a ``.grad``, and those gradients; warns when there are none.
    ``positive``: the thresholds, each checked to be > 0; with a ``scaler``, refuses gradients
    that are still scaled."""
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    require_unscaled(scaler, caller)
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


def _count_nonfinite(grads: list[Tensor]) -> int:
    """NaN/Inf entries of ``grads``; FSDP2's sharded ones counted whole (one ``all_reduce``)."""
    counts = torch.stack([(~torch.isfinite(local(g))).sum().cpu() for g in grads])
    split = torch.tensor([is_sharded(g) for g in grads])
    if split.any():
        return int(sum_across(counts[split].sum(), shard_group(grads)) + counts[~split].sum())
    return int(counts.sum())


def _nonfinite_error(grads: list[Tensor], caller: str) -> RuntimeError:
    count = _count_nonfinite(grads)
    what = f"{count} gradient entries are NaN or Inf" if count else "the gradient norm overflows"
    return RuntimeError(
        f"{caller}: {what}, so the gradient cannot be clipped. Skip this step "
        "(optimizer.zero_grad()), lower the learning rate or look for log(0) / division by "
        "zero in the loss; or pass error_if_nonfinite=False to get the count in the stats."
    )


Terms = Callable[[Tensor, "torch.dtype | None"], tuple[Tensor, Tensor, Tensor]]
"""``(norm_before, dtype) -> (norm_after, dot(g_before, g_after), units changed)``, on the device;
``dtype`` None: each gradient's ``wide`` dtype, else e.g. float64."""


def _stats(
    grads: list[Tensor],
    terms: Terms,
    threshold: Tensor | float,
    units: int,
    error_if_nonfinite: bool,
    caller: str,
) -> tuple[ClipStats, Tensor]:
    """Gather the statistics with one host sync, *before* the gradients are changed (so a
    NaN/Inf can still be counted, or refused with ``error_if_nonfinite``).

    The norm is accumulated in float32 or wider; when float32 cannot hold it (a gradient
    with entries near 1e-26 or 1e25), it and the terms are redone in float64 (a second
    sync, only then). Returns the stats and the norm to clip with (0-d, on the device).
    """
    norm_before = total_norm(grads)
    before, after, thr, changed_count, cos = _gather(norm_before, terms(norm_before, None), threshold)
    exact, raw = exact_norm(grads, before), before
    if exact != before and math.isfinite(exact):  # float32 lost the norm: redo everything in float64
        norm_before = torch.tensor(exact, dtype=torch.float64, device=norm_before.device)
        before, after, thr, changed_count, cos = _gather(norm_before, terms(norm_before, torch.float64),
                                                         threshold)
    narrowest = min((torch.finfo(g.dtype).max for g in grads), default=math.inf)
    if before < math.inf and (raw == math.inf or before > narrowest):  # torch's norm would be inf
        warnings.warn(
            f"{caller}: the gradient norm {before:.3g} overflows the gradients' own dtype, where "
            "torch.nn.utils.clip_grad_norm_ takes it: torch would see inf and scale every gradient by 0. "
            f"{caller} takes norms in float32 or wider and clipped with the true norm.",
            RuntimeWarning, stacklevel=3,
        )
    finite = math.isfinite(before)
    if not finite and error_if_nonfinite:
        raise _nonfinite_error(grads, caller)
    if finite and before == 0.0:
        cos = 1.0  # nothing to point anywhere: the direction did not change
    stats = ClipStats(
        norm_before=before,
        norm_after=after,
        threshold=thr,
        clipped=changed_count > 0,
        fraction_clipped=changed_count / units if units else 0.0,
        cosine=cos if finite else math.nan,
        nonfinite=0 if finite else _count_nonfinite(grads),
    )
    return stats, norm_before


def _gather(norm_before: Tensor, terms: tuple[Tensor, Tensor, Tensor],
            threshold: Tensor | float) -> list[float]:
    """``[before, after, threshold, changed, cosine]`` as Python floats: one host sync."""
    norm_after, dot, changed = terms
    device = norm_before.device
    cosine = dot / (norm_before * norm_after)
    return torch.stack([
        torch.as_tensor(t, device=device).detach().to(torch.float64)
        for t in (norm_before, norm_after, threshold, changed, cosine)
    ]).tolist()


def _empty_stats(threshold: float) -> ClipStats:
    return ClipStats(0.0, 0.0, float(threshold), False, 0.0, 1.0, 0)


def clip_by_norm_(
    parameters: Parameters,
    max_norm: float,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
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
    params, grads = _gradients(parameters, "clip_by_norm_", scaler, max_norm=max_norm)
    if not grads:
        return _empty_stats(max_norm)
    def terms(before: Tensor, dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
        after = before * torch.clamp(max_norm / (before + 1e-6), max=1.0)  # torch's coefficient
        return after, before * after, before > max_norm  # g_after = coef * g_before, coef > 0

    with torch.no_grad():
        stats, norm = _stats(grads, terms, max_norm, 1, error_if_nonfinite, "clip_by_norm_")
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=foreach)
    return stats


def clip_by_value_(
    parameters: Parameters,
    clip_value: float,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
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
    params, grads = _gradients(parameters, "clip_by_value_", scaler, clip_value=clip_value)
    if not grads:
        return _empty_stats(clip_value)
    def terms(before: Tensor, dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
        device = before.device
        sums = []  # per gradient: ||clamped||^2, <g, clamped>, entries changed
        for g in grads:  # one temporary at a time, freed before the next tensor
            flat = local(g).flatten().to(dtype or wide(g.dtype))  # float16 dot products overflow
            kept = flat.clamp(-clip_value, clip_value)
            sums.append(torch.stack([torch.dot(kept, kept).to(device, before.dtype),
                                     torch.dot(flat, kept).to(device, before.dtype),
                                     torch.count_nonzero(flat != kept).to(device, before.dtype)]))
        table = torch.stack(sums)  # [P, 3]
        split = torch.tensor([is_sharded(g) for g in grads], device=device)
        total = table[~split].sum(0)
        if split.any():  # FSDP2: the shards' sums over every rank, one all_reduce
            total = total + sum_across(table[split].sum(0), shard_group(grads))
        return total[0].sqrt(), total[1], total[2]

    with torch.no_grad():
        units = sum(g.numel() for g in grads)
        stats, _ = _stats(grads, terms, clip_value, units, error_if_nonfinite, "clip_by_value_")
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

    def clip_(self, parameters: Parameters, stats: bool = True, *,
              scaler: torch.amp.GradScaler | None = None) -> ClipStats | None:
        """Record this step's gradient norm, then clip by norm at the percentile.

        Args:
            parameters: tensors whose ``.grad`` is clipped.
            stats: return a ``ClipStats`` (one host sync); with False, nothing waits for
                the device and None is returned.
        """
        _, grads = _gradients(parameters, "PercentileClipper.clip_", scaler)
        if not grads:
            return _empty_stats(math.nan) if stats else None
        with torch.no_grad():
            norm = total_norm(grads)
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
                def terms(before: Tensor, dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
                    after = before * torch.clamp(threshold / (before + 1e-6), max=1.0)
                    return after, before * after, before > threshold

                result, _ = _stats(grads, terms, threshold, 1, False, "PercentileClipper.clip_")
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


def unitwise_norm(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Norm per output unit: over every dim but the first for a [out, ...] weight, kept
    as [out, 1, ...]; the whole tensor's norm for a bias or a scalar (NFNets' rule).
    Accumulated in ``dtype`` (default: float32 for float16/bfloat16, else ``x``'s dtype)."""
    dtype = dtype or wide(x.dtype)
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x, dtype=dtype)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True, dtype=dtype)


def agc_(
    parameters: Parameters,
    clipping: float = 0.01,
    eps: float = 1e-3,
    skip: Iterable[Tensor] = (),
    error_if_nonfinite: bool = False,
    *,
    scaler: torch.amp.GradScaler | None = None,
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
    params, grads = _gradients(parameters, "agc_", scaler, clipping=clipping)
    if not grads:
        return _empty_stats(clipping)
    if any(is_sharded(g) for g in grads):
        raise NotImplementedError(
            "agc_ does not take FSDP2's sharded gradients (DTensor) yet; clip by norm instead "
            "(clip_by_norm_ or torch.nn.utils.clip_grad_norm_ take the whole norm), or run AGC on "
            "an unsharded model (DDP)")
    skipped = {id(p) for p in skip}
    scales: list[Tensor | None] = []

    def terms(before: Tensor, dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
        device = before.device
        scales.clear()
        dots, after_sq, changed = [], [], []
        for p, g in zip(params, grads):
            grad_norm = unitwise_norm(g, dtype)
            grad_sq = grad_norm.double() ** 2
            if id(p) in skipped:
                scales.append(None)
                dots.append(grad_sq.sum().to(device))
                after_sq.append(dots[-1])
                continue
            max_norm = unitwise_norm(p.detach(), dtype).clamp(min=eps) * clipping  # [out, 1, ...] or []
            scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-6), 1.0)
            scales.append(scale)
            dots.append((scale * grad_sq).sum().to(device))  # <G_i, s_i G_i> = s_i ||G_i||^2
            after_sq.append((scale**2 * grad_sq).sum().to(device))
            changed.append((scale < 1).sum().to(device))
        count = torch.stack(changed).sum() if changed else torch.zeros((), device=device)
        return torch.stack(after_sq).sum().sqrt(), torch.stack(dots).sum(), count

    with torch.no_grad():
        units = sum(g.shape[0] if g.dim() > 1 else 1 for p, g in zip(params, grads) if id(p) not in skipped)
        stats, _ = _stats(grads, terms, clipping, units, error_if_nonfinite, "agc_")
        for g, scale in zip(grads, scales):
            if scale is not None:
                g.mul_(scale.to(g.dtype))
    return stats
