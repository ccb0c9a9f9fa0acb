"""The gradient noise: covariance of per-sample gradients and the gradient noise scale.

A mini-batch gradient is the mean of per-sample gradients ``g_i``. Their mean ``G`` is
the signal; their covariance ``Sigma`` is the noise. McCandlish et al. (2018), "An
Empirical Model of Large-Batch Training", show that the batch size beyond which larger
batches stop saving steps is about the *simple noise scale*

    B_simple = tr(Sigma) / |G|^2.

With N per-sample gradients and their mean ``gbar`` the unbiased estimates are

    tr(Sigma) ~ S   = sum_i |g_i - gbar|^2 / (N - 1)
    |G|^2     ~ G2  = |gbar|^2 - S / N          (E|gbar|^2 = |G|^2 + tr(Sigma) / N)

Without the ``- S / N`` bias correction, small batches look far less noisy than they are.

The per-sample terms come from ``per_sample`` (``per_sample_gradients`` through
``torch.func``, any model; ``per_sample_grad_sq_norms`` through hooks for Linear/Conv
layers, about one forward and backward pass, with the Gram-matrix trick where it is
cheaper); both names are importable from here too.

Every ``loss_fn(outputs, targets)`` must return the *mean* of per-sample losses, and
``model(inputs)`` must treat samples independently (no BatchNorm in training mode).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ._params import module_of, trainable_parameters
from .per_sample import (
    HOOK_LAYERS,
    LossFn,
    NotHookable,
    check_batch,
    hook_statistics,
    per_sample_grad_sq_norms,
    per_sample_gradients,
    sample_sq_norms,
)

__all__ = [  # per-sample gradients moved to per_sample.py; importable from here as before
    "HOOK_LAYERS", "GradientCovariance", "GradientNoiseScale", "LayerNoise", "NoiseScaleEMA",
    "TwoBatchEstimate", "all_reduce_gradients", "gradient_covariance", "gradient_noise_scale",
    "gradient_snr", "per_sample_grad_sq_norms", "per_sample_gradients", "two_batch_estimate",
]


def _nonfinite(where: str) -> ValueError:
    return ValueError(
        f"non-finite (NaN/Inf) gradient in {where}: the noise scale is undefined. Check the inputs "
        "and the loss for NaN/Inf, lower the learning rate, or clip gradients (lesson 04)."
    )


# --------------------------------------------------------------------------- noise scale


@dataclass(frozen=True)
class LayerNoise:
    """Unbiased ``|G|^2`` and ``tr(Sigma)`` of one layer's parameters; ``snr = |G|^2 / tr(Sigma)``."""

    grad_sq_norm: float
    trace_cov: float

    @property
    def snr(self) -> float:
        """Signal-to-noise ratio of one sample's gradient; a batch of B has B times this."""
        return self.grad_sq_norm / self.trace_cov if self.trace_cov > 0 else math.inf


@dataclass(frozen=True)
class GradientNoiseScale:
    """``b_simple = trace_cov / grad_sq_norm`` (McCandlish et al. 2018), per model and per layer.

    The estimate of ``|G|^2`` is unbiased but noisy: on a small batch it can be zero or
    negative. Then ``signal_below_noise`` is True and ``b_simple`` is ``math.inf``: the noise
    dominates the signal at this batch size, and the critical batch size is beyond what this
    batch can resolve. ``grad_sq_norm`` keeps the raw (negative) estimate, so that averages
    over steps (``NoiseScaleEMA``) stay unbiased; take a larger batch, or average.
    """

    b_simple: float
    grad_sq_norm: float
    trace_cov: float
    batch_size: int
    method: str
    layers: dict[str, LayerNoise]
    signal_below_noise: bool = False


def _unbiased(sum_sq: float, mean_sq: float, n: int) -> tuple[float, float]:
    """(|G|^2, tr Sigma) from sum_i |g_i|^2 and |gbar|^2: sum_i |g_i - gbar|^2 = sum_sq - n mean_sq."""
    trace = (sum_sq - n * mean_sq) / (n - 1)
    return mean_sq - trace / n, trace


def gradient_noise_scale(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    method: str = "auto",
    *,
    allow_train_mode: bool = False,
) -> GradientNoiseScale:
    """The simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` on one batch.

    Unbiased estimates from the N per-sample gradients (McCandlish et al. 2018, app. A):
    ``tr(Sigma) = sum_i |g_i - gbar|^2 / (N - 1)`` and ``|G|^2 = |gbar|^2 - tr(Sigma) / N``,
    accumulated in float64 whatever the model's dtype.

    Args:
        model, loss_fn, inputs [N, ...], targets [N, ...]: ``loss_fn`` returns the mean loss
            (or the sum: the hooks path detects it, the others do not depend on it).
        method: ``"hooks"`` (Linear/Conv1d/2d/3d layers only, each run once per forward; per
            layer the Gram or the explicit contraction, whichever the shapes make cheaper, see
            ``per_sample``; 1.0-1.3x a forward+backward), ``"vmap"`` (any model vmap can batch,
            memory N x |theta|), ``"loop"`` (any model, N backward passes), or ``"auto"``: hooks
            whenever every trainable parameter belongs to a Linear/Conv layer that runs once,
            else vmap: on a Conv layer the hooks form the per-sample weight gradients vmap forms,
            or the cheaper Gram matrices, on a Linear layer none, and they never hold more than
            one layer's; measured (``benchmarks/noise.py``) 10x faster than vmap on an MLP and
            as fast or faster on a CNN.
        allow_train_mode: measure a model with Dropout in training mode instead of refusing it.

    Returns:
        A ``GradientNoiseScale`` of Python floats. ``.grad``, buffers, train/eval flags and
        the global RNG are left as they were.

    Raises:
        ValueError: no trainable parameters, a batch of fewer than 2, NaN/Inf gradients,
            BatchNorm in training mode, Dropout in training mode (unless
            ``allow_train_mode``), or ``method="hooks"`` on a layer it cannot handle.

    Warns:
        RuntimeWarning: the estimate of ``|G|^2`` is not positive (``signal_below_noise``).
    """
    result = _estimate(model, loss_fn, inputs, targets, method, allow_train_mode)
    if result.signal_below_noise:
        warnings.warn(
            f"gradient_noise_scale: the unbiased estimate of |G|^2 is {result.grad_sq_norm:.3g} on this "
            f"batch of {result.batch_size}: the gradient noise (tr Sigma = {result.trace_cov:.3g}) "
            "dominates the signal at this batch size, so b_simple is inf (the critical batch size is "
            "beyond what this batch can resolve). Use a larger batch, or average grad_sq_norm and "
            "trace_cov over steps (NoiseScaleEMA) before taking their ratio.",
            RuntimeWarning, stacklevel=2,
        )
    return result


def _estimate(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
              method: str, allow_train_mode: bool) -> GradientNoiseScale:
    if method not in ("auto", "hooks", "vmap", "loop"):
        raise ValueError(f"unknown method {method!r}; choose 'auto', 'hooks', 'vmap' or 'loop'")
    n = check_batch(model, inputs, targets)
    values = None
    if method in ("auto", "hooks"):  # auto: hooks whenever the model allows them, never slower
        try:
            names, sq, mean_sq, _ = hook_statistics(model, loss_fn, inputs, targets,
                                                    allow_train_mode=allow_train_mode)
            values, method = torch.stack([sq.sum(1), mean_sq], 1), "hooks"
        except NotHookable:
            if method == "hooks":
                raise
            method = "vmap"
    if values is None:
        grads = per_sample_gradients(model, loss_fn, inputs, targets, method=method,
                                     allow_train_mode=allow_train_mode)
        sums, msqs = {}, {}
        for name, g in grads.items():  # sum_i |g_i - gbar|^2 directly: no cancellation
            g = g.reshape(n, -1)
            g = g.to(torch.promote_types(g.dtype, torch.float32))  # float16 squares overflow at 256
            mean = g.mean(0, keepdim=True)
            centred, msq = sample_sq_norms(g - mean, mean)  # float64, from float32 where it holds them
            k = module_of(name)
            sums[k] = sums.get(k, 0.0) + centred.sum() + n * msq[0]
            msqs[k] = msqs.get(k, 0.0) + msq[0]
        names = list(sums)
        values = torch.stack([torch.stack([torch.as_tensor(sums[k]), torch.as_tensor(msqs[k])])
                              for k in names])
    values = values.cpu().tolist()  # one host sync
    layers = {}
    for k, (sum_sq, msq) in zip(names, values):
        if not (math.isfinite(sum_sq) and math.isfinite(msq)):
            raise _nonfinite(f"layer {k}")
        layers[k] = LayerNoise(*_unbiased(sum_sq, msq, n))
    g2, trace = _unbiased(sum(v[0] for v in values), sum(v[1] for v in values), n)
    below = g2 <= 0
    return GradientNoiseScale(math.inf if below else trace / g2, g2, trace, n, method, layers, below)


def gradient_snr(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, method: str = "auto",
    *, allow_train_mode: bool = False,
) -> dict[str, float]:
    """Per-layer gradient signal-to-noise ratio ``|G_l|^2 / tr(Sigma_l)`` of one sample's gradient.

    A layer with SNR s needs batches of about 1/s samples before its mean gradient
    points where the full-data gradient does (a negative SNR: the layer's signal is below
    its noise at this batch size). Same estimates and costs as ``gradient_noise_scale``.
    """
    result = _estimate(model, loss_fn, inputs, targets, method, allow_train_mode)
    return {name: layer.snr for name, layer in result.layers.items()}


@dataclass(frozen=True)
class GradientCovariance:
    """Mean [P] and unbiased covariance [P, P] of the flattened per-sample gradients."""

    names: list[str]
    mean: torch.Tensor
    covariance: torch.Tensor
    batch_size: int

    @property
    def trace(self) -> float:
        """``tr(Sigma)``, the total gradient noise of one sample."""
        return self.covariance.diagonal().sum().item()


def gradient_covariance(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Iterable[str] | None = None,
    max_dim: int = 4096,
    *,
    allow_train_mode: bool = False,
) -> GradientCovariance:
    """Covariance of per-sample gradients ``Sigma = sum_i (g_i - gbar)(g_i - gbar)^T / (N - 1)``.

    Args:
        params: parameter names (default: all trainable); their gradients are flattened and
            concatenated in this order. Cost: N x P memory for the gradients, P x P for Sigma.
        max_dim: refuse P larger than this (a P x P matrix); pick a subset with ``params``.

    Returns:
        A ``GradientCovariance`` of float64 CPU tensors.
    """
    n = check_batch(model, inputs, targets)
    grads = per_sample_gradients(model, loss_fn, inputs, targets, params, allow_train_mode=allow_train_mode)
    flat = torch.cat([g.reshape(n, -1) for g in grads.values()], 1).double().cpu()  # [N, P]
    if flat.shape[1] > max_dim:
        raise ValueError(
            f"the covariance would be {flat.shape[1]} x {flat.shape[1]}; pass params=[...] with fewer "
            "parameters (one layer's bias, say) or raise max_dim; gradient_noise_scale gives its trace"
        )
    if not torch.isfinite(flat).all():
        raise _nonfinite(f"parameters {list(grads)}")
    centred = flat - flat.mean(0)
    return GradientCovariance(list(grads), flat.mean(0), centred.T @ centred / (n - 1), n)


# --------------------------------------------------------------------------- two-batch and data-parallel


@dataclass(frozen=True)
class TwoBatchEstimate:
    """Unbiased ``|G|^2`` and ``tr(Sigma)`` from the gradient norms of a small and a big batch."""

    grad_sq_norm: float
    trace_cov: float
    small_batch: int
    big_batch: int

    @property
    def b_simple(self) -> float:
        return self.trace_cov / self.grad_sq_norm if self.grad_sq_norm != 0 else math.inf


def two_batch_estimate(
    small_sq_norm: float | torch.Tensor, big_sq_norm: float | torch.Tensor, small_batch: int, big_batch: int
) -> TwoBatchEstimate:
    """McCandlish et al. (2018), appendix A.1: from ``E|G_B|^2 = |G|^2 + tr(Sigma)/B`` at two sizes,

        |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
        tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

    Both gradients must be taken at the same parameters. Each estimate is noisy: average
    them over steps with ``NoiseScaleEMA`` before taking their ratio.
    """
    if not 1 <= small_batch < big_batch:
        raise ValueError(f"need 1 <= small_batch < big_batch, got {small_batch} and {big_batch}")
    small, big = float(small_sq_norm), float(big_sq_norm)
    if not (math.isfinite(small) and math.isfinite(big)):
        raise _nonfinite("the batch gradients")
    g2 = (big_batch * big - small_batch * small) / (big_batch - small_batch)
    trace = (small - big) / (1 / small_batch - 1 / big_batch)
    return TwoBatchEstimate(g2, trace, small_batch, big_batch)


class NoiseScaleEMA:
    """Exponential averages of ``|G|^2`` and ``tr(Sigma)``, then their ratio (the paper's recipe).

    Averaging numerator and denominator separately keeps the ratio finite and far less
    noisy than averaging per-step ratios. Averages are bias-corrected like Adam's.
    """

    def __init__(self, beta: float = 0.95) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta, self.steps, self._g2, self._trace = beta, 0, 0.0, 0.0

    def update(self, estimate: TwoBatchEstimate | GradientNoiseScale) -> float:
        """Fold in one step's estimate; returns the current ``b_simple``."""
        self.steps += 1
        self._g2 = self.beta * self._g2 + (1 - self.beta) * estimate.grad_sq_norm
        self._trace = self.beta * self._trace + (1 - self.beta) * estimate.trace_cov
        return self.b_simple

    @property
    def grad_sq_norm(self) -> float:
        return self._g2 / (1 - self.beta**self.steps) if self.steps else math.nan

    @property
    def trace_cov(self) -> float:
        return self._trace / (1 - self.beta**self.steps) if self.steps else math.nan

    @property
    def b_simple(self) -> float:
        if not self.steps:
            raise RuntimeError("no estimate yet: call update() after a step first")
        return self.trace_cov / self.grad_sq_norm if self.grad_sq_norm != 0 else math.inf


def all_reduce_gradients(model: nn.Module, batch_size: int, group: object = None) -> TwoBatchEstimate:
    """Average ``.grad`` across ``torch.distributed`` workers and estimate the noise scale for free.

    Call after ``loss.backward()`` on each worker's local batch (all the same ``batch_size``),
    instead of the usual gradient all-reduce. Each local gradient is a small batch (B) and the
    average is a big one (B x world size), both at the same parameters: ``two_batch_estimate``
    with ``|G_small|^2`` averaged over workers. One all-reduce, no extra backward pass.
    Under ``DistributedDataParallel`` run the backward inside ``with model.no_sync():``.

    Returns:
        The same ``TwoBatchEstimate`` on every worker; ``.grad`` now holds the global average.

    Raises:
        RuntimeError: torch.distributed is not initialised, or DDP already averaged the gradients.
        ValueError: fewer than 2 workers, workers with different batch sizes, no gradients, NaN/Inf.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: call dist.init_process_group first")
    if getattr(model, "require_backward_grad_sync", False):
        raise RuntimeError(
            "DistributedDataParallel already averaged the gradients: run backward in model.no_sync()"
        )
    world = dist.get_world_size(group)
    if world < 2:
        raise ValueError("the data-parallel estimate needs at least 2 workers; use gradient_noise_scale")
    grads = [p.grad for p in trainable_parameters(model).values() if p.grad is not None]
    if not grads:
        raise ValueError("no parameter has a .grad: call loss.backward() before all_reduce_gradients")
    local_sq = torch.stack([g.double().square().sum() for g in grads]).sum()
    extra = torch.stack([local_sq, torch.tensor(float(batch_size), dtype=torch.float64,
                                                device=local_sq.device)])
    flat = torch.cat([g.reshape(-1).double() for g in grads] + [extra, extra[1:] ** 2])
    dist.all_reduce(flat, group=group)  # sums; one collective
    flat /= world
    sizes, sizes_sq = flat[-2].item(), flat[-1].item()
    if abs(sizes_sq - sizes**2) > 1e-6 * sizes_sq:  # mean(b^2) = mean(b)^2 iff all equal
        raise ValueError("workers used different batch sizes; give every worker the same batch_size")
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    big_sq = flat[:offset].square().sum()
    return two_batch_estimate(flat[offset], big_sq, batch_size, batch_size * world)
