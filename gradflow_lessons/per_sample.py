"""Per-sample gradients ``g_i = d loss(model(x_i), y_i) / d theta`` and their squared norms.

Two ways to get them:

- ``per_sample_gradients``: ``torch.func`` (``vmap(grad(functional_call))``), any model,
  memory N x |theta|.
- ``per_sample_grad_sq_norms``: for ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` layers, hooks
  that use ``g_i = delta_i a_i^T`` (output gradient times input activation), so
  ``|g_i|^2 = |delta_i|^2 |a_i|^2`` costs about one forward and backward pass and no
  per-sample gradient is stored (Goodfellow 2015, "Efficient per-example gradient
  computations").

``loss_fn(outputs, targets)`` returns the *mean* of per-sample losses, and ``model(inputs)``
treats samples independently (no BatchNorm in training mode). ``noise`` builds the
gradient covariance and the noise scale on these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ._params import module_of, trainable_parameters
from ._state import checked_loss, inspecting, refuse_train_mode, usable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HOOK_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def check_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, least: int = 2) -> int:
    """The batch size N; refuses a batch of fewer than ``least`` and samples that interact."""
    n = inputs.shape[0] if inputs.dim() else 0
    if n != (targets.shape[0] if targets.dim() else 0):
        raise ValueError(f"inputs and targets disagree on the batch size: {n} vs {targets.shape[0]}")
    if n < least:
        raise ValueError(
            f"a batch of {n} sample(s) cannot give an unbiased noise estimate: tr(Sigma) divides by "
            "N - 1. Pass at least 2 samples (tens to hundreds for a useful estimate), or average "
            "batch-size-1 gradients across steps with two_batch_estimate and NoiseScaleEMA."
        ) if least > 1 else ValueError("the batch is empty (0 samples): pass at least one example")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(
                f"{name or 'model'} is BatchNorm in training mode: samples interact, so per-sample "
                "gradients are undefined. Call model.eval(), or use LayerNorm/GroupNorm."
            )
    return n


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
    *,
    method: str = "vmap",
    allow_train_mode: bool = False,
) -> dict[str, torch.Tensor]:
    """Gradient of each sample's loss, for every trainable parameter (or ``params``).

    ``g_i = d loss_fn(model(x_i), y_i) / d theta``, vectorised with
    ``vmap(grad(functional_call))``: one batched backward pass, memory N x |theta|; or with
    ``method="loop"`` one backward pass per sample (N times slower; for models vmap cannot
    batch, such as ``nn.GRU``). A parameter the loss does not use gets zero gradients.

    Args:
        model, loss_fn, inputs [N, ...], targets [N, ...]: as everywhere in the course.
        params: parameter names to differentiate (default: all trainable ones).
        chunk_size: samples per vmap chunk, to bound memory.
        method: ``"vmap"`` or ``"loop"``.
        allow_train_mode: measure a model with Dropout in training mode (each sample draws
            its own mask) instead of refusing it.

    Returns:
        ``{name: [N, *param.shape]}``, detached, on the parameters' device. The model's
        ``.grad``, buffers, flags and the global RNG are left as they were.

    Raises:
        ValueError: no trainable parameters, unknown names, BatchNorm in training mode,
            Dropout in training mode (unless ``allow_train_mode``), a model vmap cannot batch.
    """
    if method not in ("vmap", "loop"):
        raise ValueError(f"unknown method {method!r}; choose 'vmap' or 'loop'")
    tool = "per_sample_gradients"
    chosen = trainable_parameters(model, params)
    refuse_train_mode(model, allow_train_mode, tool)
    check_batch(model, inputs, targets, least=1)
    with inspecting(model):
        inputs, targets = usable(inputs), usable(targets)
        if method == "loop":
            return _looped_gradients(model, loss_fn, inputs, targets, chosen)
        fixed = {k: p.detach() for k, p in chosen.items()}
        rest = {k: p.detach() for k, p in model.named_parameters() if k not in chosen}
        buffers = dict(model.named_buffers())

        def sample_loss(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, (theta, rest, buffers), (x.unsqueeze(0),))
            loss = loss_fn(out, y.unsqueeze(0))
            if not isinstance(loss, torch.Tensor):
                checked_loss(loss, tool)  # raises, naming the fix
            return loss

        batched = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size,
                       randomness="different" if allow_train_mode else "error")
        try:
            return batched(fixed, inputs, targets)
        except RuntimeError as error:
            raise ValueError(
                f"{tool}: torch.func.vmap cannot batch this model or loss ({type(model).__name__}; "
                f"torch says: {str(error).splitlines()[0][:200]}). Use method='loop' (one backward "
                "per sample), and check that loss_fn calls no .item() and has no data-dependent `if`"
            ) from error


def _looped_gradients(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                      chosen: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """``{name: [N, *shape]}`` with one backward pass per sample."""
    rows = []
    for x, y in zip(inputs, targets):
        loss = checked_loss(loss_fn(model(x.unsqueeze(0)), y.unsqueeze(0)), "per_sample_gradients")
        grads = torch.autograd.grad(loss, list(chosen.values()), allow_unused=True)
        rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(chosen.values(), grads)])
    return {name: torch.stack([row[j] for row in rows]).detach() for j, name in enumerate(chosen)}


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
    """Per-sample |dW_i|^2 + |db_i|^2 [N], float64, of one layer from its input a and output gradient d."""
    n, a, d = a.shape[0], a.double(), d.double()  # float64: float16 squares overflow at 256
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


def hookable_layers(model: nn.Module, chosen: dict[str, nn.Parameter]) -> dict[str, nn.Module] | None:
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
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, *,
    allow_train_mode: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-sample squared gradient norms ``|g_i|^2`` of every Linear/Conv layer, from hooks.

    For a layer ``z = W a + b`` and a mean loss over N samples, the gradient w.r.t. the
    output is ``delta_i / N``, so ``g_i = N delta_i a_i^T`` and ``|g_i|^2 = N^2 |delta_i|^2 |a_i|^2``
    (sums over positions for sequences and convolutions); for a summed loss the factor N
    is 1 (detected by comparing the loss of the batch with that of the batch twice). Cost:
    one forward and backward pass; no per-sample gradient is stored. ``.grad``, buffers,
    flags and the global RNG are left as they were.

    Returns:
        ``{layer name: [N]}`` (weight and bias together), float64, on the inputs' device.

    Raises:
        ValueError: a trainable parameter outside Linear/Conv layers (use
        ``per_sample_gradients``), a layer called twice, a batch of fewer than 2, Dropout or
        BatchNorm in training mode (see ``allow_train_mode`` of ``per_sample_gradients``), a
        loss that is neither the mean nor the sum of per-sample losses.
    """
    return hook_statistics(model, loss_fn, inputs, targets, allow_train_mode=allow_train_mode)[0]


def hook_statistics(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, *,
    allow_train_mode: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Per layer, the per-sample ``|g_i|^2`` [N] and ``|gbar|^2`` (0-d), float64; and N."""
    tool = "per_sample_grad_sq_norms"
    chosen = trainable_parameters(model)
    refuse_train_mode(model, allow_train_mode, tool)
    n = check_batch(model, inputs, targets)
    layers = hookable_layers(model, chosen)
    if layers is None:
        others = sorted(module_of(k) for k in chosen)
        raise ValueError(
            f"the hook fast path handles only Linear/Conv1d/Conv2d layers, the model trains {others}; "
            "use per_sample_gradients or gradient_noise_scale(method='vmap')"
        )
    with inspecting(model), _SampleNormHooks(layers) as hooks:
        inputs, targets = usable(inputs), usable(targets)
        outputs = model(inputs)
        loss = checked_loss(loss_fn(outputs, targets), tool)
        grads = torch.autograd.grad(loss, list(chosen.values()), allow_unused=True)  # unused: None
        per_sample_scale = n if _is_mean(loss_fn, outputs, targets, loss) else 1
    sq = {k: (per_sample_scale**2 * _layer_sq_norms(m, hooks.inputs[k], hooks.grads[k])
              if k in hooks.grads else torch.zeros(n, dtype=torch.float64, device=inputs.device))
          for k, m in layers.items()}
    mean_sq = dict.fromkeys(layers, 0.0)
    for name, g in zip(chosen, grads):
        if g is not None:  # gbar, the gradient of the mean loss
            gbar = g.double() * (per_sample_scale / n)
            mean_sq[module_of(name)] = mean_sq[module_of(name)] + gbar.square().sum()
    return sq, mean_sq, n


def _is_mean(loss_fn: LossFn, outputs: object, targets: object, loss: torch.Tensor) -> bool:
    """Whether ``loss`` is the mean of per-sample losses (True) or their sum (False): the
    mean of the batch twice over is the same, the sum doubles."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return True
    with torch.no_grad():
        twice = loss_fn(torch.cat([outputs, outputs]), torch.cat([targets, targets]))
        value = float(loss)
        ratio = float(twice) / value if value != 0 and math.isfinite(value) else 1.0  # NaN: reported later
    if abs(ratio - 1) < 1e-2:
        return True
    if abs(ratio - 2) < 2e-2:
        return False
    raise ValueError(
        f"loss_fn must return the mean (or the sum) of per-sample losses: the loss of the batch "
        f"twice over is {ratio:.3g}x the loss of the batch (mean: 1x, sum: 2x); use a mean "
        "reduction, e.g. nn.CrossEntropyLoss() or F.mse_loss(..., reduction='mean')"
    )
