"""Per-sample gradients, their covariance, and the gradient noise scale.

A mini-batch gradient is the mean of per-sample gradients ``g_i``. Their mean ``G`` is
the signal; their covariance ``Sigma`` is the noise. McCandlish et al. (2018), "An
Empirical Model of Large-Batch Training", show that the batch size beyond which larger
batches stop saving steps is about the *simple noise scale*

    B_simple = tr(Sigma) / |G|^2.

With N per-sample gradients and their mean ``gbar`` the unbiased estimates are

    tr(Sigma) ~ S   = sum_i |g_i - gbar|^2 / (N - 1)
    |G|^2     ~ G2  = |gbar|^2 - S / N          (E|gbar|^2 = |G|^2 + tr(Sigma) / N)

Without the ``- S / N`` bias correction, small batches look far less noisy than they are.

Two ways to get the per-sample terms: ``torch.func`` (``vmap(grad(functional_call))``,
any model), and for ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` layers, hooks that use
``g_i = delta_i a_i^T`` (output gradient times input activation), so
``|g_i|^2 = |delta_i|^2 |a_i|^2`` costs about one forward and backward pass
(Goodfellow 2015, "Efficient per-example gradient computations").

Every ``loss_fn(outputs, targets)`` must return the *mean* of per-sample losses, and
``model(inputs)`` must treat samples independently (no BatchNorm in training mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HOOK_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


# --------------------------------------------------------------------------- plumbing


def _trainable(model: nn.Module, params: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise ValueError("model has no parameters with requires_grad=True; did you freeze it?")
    if params is None:
        return named
    wanted = list(params)
    unknown = [n for n in wanted if n not in named]
    if unknown or not wanted:
        raise ValueError(f"unknown or frozen parameter names {unknown}; choose from {sorted(named)}")
    return {n: named[n] for n in wanted}


def _check_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, least: int = 2) -> int:
    n = inputs.shape[0] if inputs.dim() else 0
    if n != (targets.shape[0] if targets.dim() else 0):
        raise ValueError(f"inputs and targets disagree on the batch size: {n} vs {targets.shape[0]}")
    if n < least:
        raise ValueError(
            f"a batch of {n} sample(s) cannot give an unbiased noise estimate: tr(Sigma) divides by "
            "N - 1. Pass at least 2 samples (tens to hundreds for a useful estimate), or average "
            "batch-size-1 gradients across steps with two_batch_estimate and NoiseScaleEMA."
        )
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(
                f"{name or 'model'} is BatchNorm in training mode: samples interact, so per-sample "
                "gradients are undefined. Call model.eval(), or use LayerNorm/GroupNorm."
            )
    return n


def _group(name: str) -> str:
    """The module a parameter belongs to: 'hidden.0.linear.weight' -> 'hidden.0.linear'."""
    return name.rpartition(".")[0] or "model"


def _nonfinite(where: str) -> ValueError:
    return ValueError(
        f"non-finite (NaN/Inf) gradient in {where}: the noise scale is undefined. Check the inputs "
        "and the loss for NaN/Inf, lower the learning rate, or clip gradients (lesson 04)."
    )


# --------------------------------------------------------------------------- per-sample gradients


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Gradient of each sample's loss, for every trainable parameter (or ``params``).

    ``g_i = d loss_fn(model(x_i), y_i) / d theta``, vectorised with
    ``vmap(grad(functional_call))``: one batched backward pass, memory N x |theta|.

    Args:
        model, loss_fn, inputs [N, ...], targets [N, ...]: as everywhere in the course.
        params: parameter names to differentiate (default: all trainable ones).
        chunk_size: samples per vmap chunk, to bound memory.

    Returns:
        ``{name: [N, *param.shape]}``, detached, on the parameters' device.

    Raises:
        ValueError: no trainable parameters, unknown names, BatchNorm in training mode.
    """
    chosen = {k: p.detach() for k, p in _trainable(model, params).items()}
    _check_batch(model, inputs, targets, least=1)
    rest = {k: p.detach() for k, p in model.named_parameters() if k not in chosen}
    buffers = dict(model.named_buffers())

    def sample_loss(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (theta, rest, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(chosen, inputs, targets)


def _unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A conv layer's input as patches [N, C_in * k, L], so the layer is a matrix product."""
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ValueError(
            f"{type(module).__name__} with groups={module.groups}, padding={module.padding!r}, "
            f"padding_mode={module.padding_mode!r} has no hook fast path; use method='vmap'"
        )
    if isinstance(module, nn.Conv1d):  # a 1-D conv is a 2-D conv of height 1
        x, k, d, p, s = x.unsqueeze(2), (1, *module.kernel_size), (1, *module.dilation), (
            0, *module.padding), (1, *module.stride)
        return F.unfold(x, k, dilation=d, padding=p, stride=s)
    return F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)


def _layer_sq_norms(module: nn.Module, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-sample |dW_i|^2 + |db_i|^2 [N] of one layer from its input a and output gradient d."""
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        a, d = a.reshape(n, -1, a.shape[-1]), d.reshape(n, -1, d.shape[-1])  # [N, L, K], [N, L, O]
    else:
        a, d = _unfold(module, a).transpose(1, 2), d.reshape(n, d.shape[1], -1).transpose(1, 2)
    length, k, o = a.shape[1], a.shape[2], d.shape[2]
    if length == 1:  # |d a^T|^2 = |d|^2 |a|^2: the Goodfellow identity
        sq = a.square().sum((1, 2)) * d.square().sum((1, 2))
    elif length * length <= k * o:  # sum_{t,s} (a_t . a_s)(d_t . d_s), via two L x L Gram matrices
        sq = (a @ a.transpose(1, 2) * (d @ d.transpose(1, 2))).sum((1, 2))
    else:  # form each [O, K] gradient
        sq = torch.einsum("nlo,nlk->nok", d, a).square().sum((1, 2))
    if module.bias is not None and module.bias.requires_grad:
        sq = sq + d.sum(1).square().sum(1)
    return sq


class _SampleNormHooks:
    """Forward hooks on hookable layers that catch each input and output gradient; use with ``with``."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers, self.inputs, self.grads, self.handles = layers, {}, {}, []

    def __enter__(self) -> _SampleNormHooks:
        for name, module in self.layers.items():
            self.handles.append(module.register_forward_hook(self._forward(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _forward(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if name in self.inputs:
                raise ValueError(f"layer {name} runs twice in one forward pass; use method='vmap'")
            self.inputs[name] = args[0].detach()
            output.register_hook(lambda g: self.grads.__setitem__(name, g.detach()))  # freed with the graph

        return hook


def _hookable_layers(model: nn.Module, chosen: dict[str, nn.Parameter]) -> dict[str, nn.Module] | None:
    """The layers that own every chosen parameter, if all are Linear/Conv weights or biases."""
    layers = {}
    for name, module in model.named_modules():
        own = [f"{name}.{k}" if name else k for k, _ in module.named_parameters(recurse=False)]
        if any(k in chosen for k in own):
            if not isinstance(module, HOOK_LAYERS) or not all(k in chosen for k in own):
                return None
            layers[name or "model"] = module
    return layers


def per_sample_grad_sq_norms(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample squared gradient norms ``|g_i|^2`` of every Linear/Conv layer, from hooks.

    For a layer ``z = W a + b`` and a mean loss over N samples, the gradient w.r.t. the
    output is ``delta_i / N``, so ``g_i = N delta_i a_i^T`` and ``|g_i|^2 = N^2 |delta_i|^2 |a_i|^2``
    (sums over positions for sequences and convolutions). Cost: one forward and backward
    pass; no per-sample gradient is stored. ``.grad`` is left untouched.

    Returns:
        ``{layer name: [N]}`` (weight and bias together), float64, on the inputs' device.

    Raises:
        ValueError: a trainable parameter outside Linear/Conv layers (use
        ``per_sample_gradients``), a layer called twice, a batch of fewer than 2.
    """
    return _hook_stats(model, loss_fn, inputs, targets)[0]


def _hook_stats(model, loss_fn, inputs, targets):
    n = _check_batch(model, inputs, targets)
    chosen = _trainable(model)
    layers = _hookable_layers(model, chosen)
    if layers is None:
        others = sorted(_group(k) for k in chosen)
        raise ValueError(
            f"the hook fast path handles only Linear/Conv1d/Conv2d layers, the model trains {others}; "
            "use per_sample_gradients or gradient_noise_scale(method='vmap')"
        )
    with _SampleNormHooks(layers) as hooks:
        loss = loss_fn(model(inputs), targets)
        mean_grads = torch.autograd.grad(loss, list(chosen.values()))
    sq = {k: n * n * _layer_sq_norms(m, hooks.inputs[k], hooks.grads[k]).double() for k, m in layers.items()}
    mean_sq = dict.fromkeys(layers, 0.0)
    for name, g in zip(chosen, mean_grads):
        mean_sq[_group(name)] = mean_sq[_group(name)] + g.double().square().sum()
    return sq, mean_sq, n


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

    The estimate of ``|G|^2`` is unbiased but noisy: it can be negative on a small batch
    (then ``b_simple`` is negative too). Average across steps (``NoiseScaleEMA``) or take a larger batch.
    """

    b_simple: float
    grad_sq_norm: float
    trace_cov: float
    batch_size: int
    method: str
    layers: dict[str, LayerNoise]


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
) -> GradientNoiseScale:
    """The simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` on one batch.

    Unbiased estimates from the N per-sample gradients (McCandlish et al. 2018, app. A):
    ``tr(Sigma) = sum_i |g_i - gbar|^2 / (N - 1)`` and ``|G|^2 = |gbar|^2 - tr(Sigma) / N``.

    Args:
        model, loss_fn, inputs [N, ...], targets [N, ...]: ``loss_fn`` returns the mean loss.
        method: ``"hooks"`` (Linear/Conv only, ~1 forward+backward), ``"vmap"`` (any model,
            memory N x |theta|), or ``"auto"`` (hooks when every trainable layer allows it).

    Returns:
        A ``GradientNoiseScale`` of Python floats. ``.grad`` is left untouched.

    Raises:
        ValueError: no trainable parameters, a batch of fewer than 2, NaN/Inf gradients,
            BatchNorm in training mode, or ``method="hooks"`` on a layer it cannot handle.
    """
    if method not in ("auto", "hooks", "vmap"):
        raise ValueError(f"unknown method {method!r}; choose 'auto', 'hooks' or 'vmap'")
    n = _check_batch(model, inputs, targets)
    if method == "auto":
        method = "hooks" if _hookable_layers(model, _trainable(model)) is not None else "vmap"
    if method == "hooks":
        sq, mean_sq, _ = _hook_stats(model, loss_fn, inputs, targets)
        sums = {k: v.sum() for k, v in sq.items()}
    else:
        grads = per_sample_gradients(model, loss_fn, inputs, targets)
        sums, mean_sq = {}, {}
        for name, g in grads.items():  # sum_i |g_i - gbar|^2 directly: no cancellation
            g = g.reshape(n, -1)
            mean = g.mean(0)
            msq, k = mean.double().square().sum(), _group(name)
            sums[k] = sums.get(k, 0.0) + (g - mean).square().sum().double() + n * msq
            mean_sq[k] = mean_sq.get(k, 0.0) + msq
    values = torch.stack([torch.stack([torch.as_tensor(sums[k]), torch.as_tensor(mean_sq[k])]) for k in sums])
    values = values.cpu().tolist()  # one host sync
    layers = {}
    for k, (sum_sq, msq) in zip(sums, values):
        if not (math.isfinite(sum_sq) and math.isfinite(msq)):
            raise _nonfinite(f"layer {k}")
        layers[k] = LayerNoise(*_unbiased(sum_sq, msq, n))
    g2, trace = _unbiased(sum(v[0] for v in values), sum(v[1] for v in values), n)
    b_simple = trace / g2 if g2 != 0 else math.inf
    return GradientNoiseScale(b_simple, g2, trace, n, method, layers)


def gradient_snr(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, method: str = "auto"
) -> dict[str, float]:
    """Per-layer gradient signal-to-noise ratio ``|G_l|^2 / tr(Sigma_l)`` of one sample's gradient.

    A layer with SNR s needs batches of about 1/s samples before its mean gradient
    points where the full-data gradient does. Same estimates and costs as ``gradient_noise_scale``.
    """
    result = gradient_noise_scale(model, loss_fn, inputs, targets, method)
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
) -> GradientCovariance:
    """Covariance of per-sample gradients ``Sigma = sum_i (g_i - gbar)(g_i - gbar)^T / (N - 1)``.

    Args:
        params: parameter names (default: all trainable); their gradients are flattened and
            concatenated in this order. Cost: N x P memory for the gradients, P x P for Sigma.
        max_dim: refuse P larger than this (a P x P matrix); pick a subset with ``params``.

    Returns:
        A ``GradientCovariance`` of float64 CPU tensors.
    """
    n = _check_batch(model, inputs, targets)
    grads = per_sample_gradients(model, loss_fn, inputs, targets, params)
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
    grads = [p.grad for p in _trainable(model).values() if p.grad is not None]
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
