"""Per-sample gradients ``g_i = d loss(model(x_i), y_i) / d theta`` and their squared norms.

Two ways to get them:

- ``per_sample_gradients``: ``torch.func`` (``vmap(grad(functional_call))``), any model,
  memory N x |theta|.
- ``per_sample_grad_sq_norms``: for ``nn.Linear``/``nn.Conv1d/2d/3d`` layers, hooks that use
  ``g_i = sum_l d_il a_il^T`` (output gradient times input, summed over the L positions of a
  sequence or an image) and never store more than one layer's per-sample gradients. Per
  layer, whichever is cheaper (per sample and group, K inputs and O outputs per position):

  - the Gram way, ``L^2 (K + O)`` multiply-adds: ``|g_i|^2 = <A_i^T A_i, D_i^T D_i>``, the
    inner product of the L x L Gram matrices of the inputs and of the output gradients
    (Rochette et al. 2019, "Efficient per-example gradient computations in convolutional
    neural networks"); for L = 1 it is ``|d_i|^2 |a_i|^2`` (Goodfellow 2015, "Efficient
    per-example gradient computations");
  - the explicit way, ``L K O``: each sample's weight gradient itself, whose sum over the
    batch replaces the weight gradient autograd would compute (so it costs little more than
    the backward pass it replaces).

  Gram wins when ``L (K + O) < K O``: Linear layers on [N, K] always, late conv layers (few
  positions, many channels); the explicit way wins for early conv layers and long sequences.

``loss_fn(outputs, targets)`` returns the *mean* of per-sample losses, and ``model(inputs)``
treats samples independently (no BatchNorm in training mode). ``noise`` builds the
gradient covariance and the noise scale on these.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.func import functional_call, grad, vmap

from ._params import HUGE, TINY, module_of, trainable_parameters
from ._state import checked_loss, inspecting, refuse_train_mode, usable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HOOK_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
        rest.update(model.named_buffers())
        slots = _slots(model)

        def sample_loss(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            tensors = {path: theta[k] if k in theta else rest[k] for path, k in slots.items()}
            out = functional_call(model, tensors, (x.unsqueeze(0),), tie_weights=False)
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


def _slots(model: nn.Module) -> dict[str, str]:
    """``{path: name}``: every module attribute that holds a parameter or buffer, once per module
    object, and the tensor's name in ``named_parameters``/``named_buffers``. A parameter tied
    across two modules fills two slots; a module shared under two names has its slots once
    (``functional_call``'s own tying restores such a module with plain tensors, not Parameters)."""
    names = {id(t): k for k, t in (*model.named_parameters(), *model.named_buffers())}
    return {f"{prefix}.{attr}" if prefix else attr: names[id(t)] for prefix, module in model.named_modules()
            for attr, t in (*module._parameters.items(), *module._buffers.items()) if t is not None}


def _looped_gradients(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                      chosen: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """``{name: [N, *shape]}`` with one backward pass per sample."""
    rows = []
    for x, y in zip(inputs, targets):
        loss = checked_loss(loss_fn(model(x.unsqueeze(0)), y.unsqueeze(0)), "per_sample_gradients")
        grads = torch.autograd.grad(loss, list(chosen.values()), allow_unused=True)
        rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(chosen.values(), grads)])
    return {name: torch.stack([row[j] for row in rows]).detach() for j, name in enumerate(chosen)}


def _patches(module: nn.Module, x: torch.Tensor, ones: bool = False) -> torch.Tensor:
    """A conv layer's input as patches [N, G, C_in / G * prod(kernel), L] (G groups, L output
    positions), so that group g of the output is ``W_g @ patches[:, g]``; with ``ones`` a last row
    of ones per group, whose product with the output gradient is the bias gradient. One strided
    copy of the padded input; ``F.unfold`` costs 3-5x more on CPU and knows neither 1-D/3-D nor
    groups."""
    pad = module._reversed_padding_repeated_twice  # per dim (left, right), last dim first; also "same"
    if any(pad):
        x = F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    n, c, *space = x.shape
    kernel, dilation, stride, groups = module.kernel_size, module.dilation, module.stride, module.groups
    out = [(s - d * (k - 1) - 1) // st + 1 for s, k, d, st in zip(space, kernel, dilation, stride)]
    sn, sc, *ss = x.stride()
    view = x.as_strided((n, c, *kernel, *out), (sn, sc, *(s * d for s, d in zip(ss, dilation)),
                                                 *(s * st for s, st in zip(ss, stride))))
    rows, length = c // groups * math.prod(kernel), math.prod(out)
    if not ones:
        return view.reshape(n, groups, rows, length)
    patches = x.new_empty(n, groups, rows + 1, length)
    shape = (n, groups, c // groups, *kernel, *out)
    patches[:, :, :rows].view(shape).copy_(view.view(shape))
    patches[:, :, rows].fill_(1)
    return patches


def _matrices(module: nn.Module, a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's input A [N, G, K, L] and output gradient D [N, G, O, L] per sample and group:
    ``g_i = sum_l D_il A_il^T`` over the L positions (1 for a Linear on [N, K])."""
    n = a.shape[0]
    if isinstance(module, nn.Linear):  # [N, ..., K]: a sequence's positions are L
        return (a.reshape(n, -1, a.shape[-1]).transpose(1, 2).unsqueeze(1),
                d.reshape(n, -1, d.shape[-1]).transpose(1, 2).unsqueeze(1))
    groups = module.groups
    return _patches(module, a), d.reshape(n, groups, d.shape[1] // groups, -1)


def gram_is_cheaper(module: nn.Module, output: torch.Tensor) -> bool:
    """Whether a layer's per-sample squared norms cost less through Gram matrices than through
    per-sample gradients: per sample and group, ``L^2 (K + O)`` against ``L K O``
    multiply-adds, i.e. ``L (K + O) < K O`` (always for L = 1, the Goodfellow identity)."""
    if isinstance(module, nn.Linear):
        k, o = module.in_features, module.out_features
        length = output.numel() // (output.shape[0] * o) if output.dim() > 2 else 1
    else:
        groups = module.groups
        k = module.in_channels // groups * math.prod(module.kernel_size)
        o, length = module.out_channels // groups, math.prod(output.shape[2:])
    return length * (k + o) < k * o


def sample_sq_norms(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``|t_i|^2`` of each sample (dim 0) of each tensor, [N] float64 each: one float32 pass each
    where float32 holds every norm (see ``_norms``), else float64."""
    norms, lost = _norms(tensors, wide=False)
    if bool(lost):
        norms, _ = _norms(tensors, wide=True)
    return [norm.double().square() for norm in norms]


def _norms(tensors: Iterable[torch.Tensor], wide: bool) -> tuple[list[torch.Tensor], bool | torch.Tensor]:
    """The norm of each row (dim 0) of each tensor, in the tensors' dtype (float32 or float64) or in
    float64 if ``wide``; and whether float32 may have lost one: a norm outside [TINY, HUGE],
    where squares vanish or overflow (vanishing and exploding networks), unless its row is all
    zeros (a dead unit, told from an underflow by the row's largest and smallest entries). On
    the CPU a bool, looked at at once; elsewhere a 0-d tensor, so that backward never waits for
    a host sync (the caller syncs once for all layers). NaN is reported later, not here."""
    rows = [t if t.dim() == 2 else t.reshape(t.shape[0], -1) for t in tensors]
    if wide or rows[0].dtype == torch.float64:
        return [torch.linalg.vector_norm(r, dim=1, dtype=torch.float64) for r in rows], False
    norms = [torch.linalg.vector_norm(r, dim=1) for r in rows]
    flat = torch.cat(norms) if len(norms) > 1 else norms[0]
    cpu = _syncs_for_free(flat.device)
    if cpu:
        low, high = torch.aminmax(flat)
        if TINY <= float(low) and float(high) <= HUGE:
            return norms, False
    nonzero = torch.cat([(r.amax(1) > 0) | (r.amin(1) < 0) for r in rows])  # vector_norm's inf: 10x slower
    lost = ((flat < TINY) & nonzero | (flat > HUGE)).any()
    return norms, bool(lost) if cpu else lost


def _syncs_for_free(device: torch.device) -> bool:
    """Whether reading a value back costs nothing (the CPU) or waits for the device (a GPU)."""
    return device.type == "cpu"


def _conv_sample_grads(module: nn.Module, a: torch.Tensor, d: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's weight and bias gradients of a conv layer, flattened: [N, ...] each.

    With few input channels per group (< 8) or a 1x1 kernel, from the patches with a row of
    ones for the bias (one strided copy and one batched matrix product); else as the weight and
    bias gradients of one convolution with the samples as groups (no patches in memory; about
    as cheap as the batch's own weight gradient there, 1.4-2x dearer than the patches below).
    """
    n, c, o, groups, bias = a.shape[0], a.shape[1], d.shape[1], module.groups, module.bias is not None
    if math.prod(module.kernel_size) == 1 or c // groups < 8:
        patches = _patches(module, a, ones=bias)  # [N, G, K (+1), L]
        return [(patches @ d.reshape(n, groups, o // groups, -1).transpose(-1, -2)).reshape(n, -1)]
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":  # "same" may pad unevenly
        padding = [0] * (a.dim() - 2)
        a = F.pad(a, module._reversed_padding_repeated_twice,
                  mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    weight = d.new_empty(1).expand(n * o, c // groups, *module.kernel_size)  # only its shape is read
    _, w, b = torch.ops.aten.convolution_backward(
        d.reshape(1, n * o, *d.shape[2:]), a.reshape(1, n * c, *a.shape[2:]), weight,
        [n * o] if bias else None, module.stride, padding, module.dilation, False, [0] * (a.dim() - 2),
        n * groups, [False, True, bias])
    return [w.reshape(n, -1)] + ([b.reshape(n, o)] if bias else [])


def _layer_terms(module: nn.Module, a: torch.Tensor, d: torch.Tensor, gram: bool,
                 wide: bool) -> tuple[str, list[torch.Tensor], bool | torch.Tensor, torch.Tensor | None]:
    """What one layer's ``|g_i|^2``, ``g_i = sum_l d_il a_il^T``, is made of (a Linear on [N, K], the
    product kind, is taken by ``_SampleNormHooks.finish``): a kind, the norms and
    the flag of ``_norms`` (squared and redone in float64 by the caller if a flag is set) and, for
    Gram, the contraction [N] in float64:

    - ``"gram"``: ``|A_i|, |D_i|`` (checked only), ``|b_i|`` with a bias;
      ``|g_i|^2 = <A_i^T A_i, D_i^T D_i> + |b_i|^2`` (Rochette et al. 2019);
    - ``"explicit"``: the norms of each part of the per-sample gradients (weight, bias) and of
      its sum over the batch; ``|g_i|^2 = |W_i|^2 + |b_i|^2``, and the batch gradient for free.

    Products run in the layer's dtype widened to float32 (float16 squares overflow at 256), or
    in float64 if ``wide``; the Gram contraction, whose terms may cancel, sums in float64.
    """
    work = torch.float64 if wide else torch.promote_types(a.dtype, torch.float32)
    n, bias = a.shape[0], module.bias is not None
    a, d = a.to(work), d.to(work)
    if gram:
        b = [d.reshape(n, -1, d.shape[-1]).sum(1) if isinstance(module, nn.Linear) else d.flatten(2).sum(2)
             ] if bias else []  # the bias gradient of sample i: b_i = sum_l d_il [N, O]
        A, D = _matrices(module, a, d)  # [N, G, K, L], [N, G, O, L]
        aa = (A.transpose(-1, -2) @ A).reshape(n, -1).double()  # [N, G * L * L]
        dd = (D.transpose(-1, -2) @ D).reshape(n, -1).double()
        return "gram", *_norms((A, D, *b), wide), torch.linalg.vecdot(aa, dd)
    if isinstance(module, nn.Linear):
        A, D = _matrices(module, a, d)
        parts = [(A @ D.transpose(-1, -2)).reshape(n, -1)] + ([D.sum(-1).reshape(n, -1)] if bias else [])
    else:
        parts = _conv_sample_grads(module, a, d)
    return "explicit", *_norms(parts + [part.sum(0, keepdim=True) for part in parts], wide), None


def _combine(kind: str, squares: torch.Tensor, gram: torch.Tensor | None, n: int,
             bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's ``|g_i|^2`` [N] and, for the explicit kind, ``|sum_i g_i|^2`` (0-d) from its squared
    norms in ``_layer_terms``' order."""
    if kind == "gram":
        return gram + squares[2 * n:] if bias else gram, None
    parts = len(squares) // (n + 1)  # [N] per part of the gradient, then [1] per part of its sum
    return squares[: parts * n].view(parts, n).sum(0), squares[parts * n:].sum()


class _SampleNormHooks:
    """Forward hooks on the chosen layers; use with ``with``. Each layer's per-sample terms are
    computed in a hook on its output's gradient, as soon as backward reaches the layer, and its
    input is dropped there. Autograd computes the batch gradient only of the Gram layers: the
    explicit ones sum their per-sample gradients instead. A Linear on [N, K] (the product kind)
    needs only ``|a_i|`` and ``|d_i|``: its output's gradient edge joins the backward's inputs
    (``deferred``), and ``finish`` takes its terms from the returned gradient, with no Python hook
    inside backward (its input is kept anyway, saved by the layer for its weight gradient)."""

    def __init__(self, layers: dict[str, nn.Module], wide: bool) -> None:
        self.layers, self.wide, self.handles = layers, wide, []
        self.inputs: dict[str, tuple[torch.Tensor, int]] = {}  # until backward reaches the layer
        self.gram: dict[str, bool] = {}  # the layers that ran, and how each is contracted
        self.terms: dict[str, tuple] = {}  # from _layer_terms, in the output gradient's scale
        self.edges: list = []  # the explicit layers' outputs, which backward must reach
        self.deferred: list[tuple[str, nn.Module, object]] = []  # product layers: name, layer, output edge
        self.products: list[tuple[str, bool]] = []  # and after finish, their terms (see there)
        self.product_norms, self.product_lost = None, False

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
            if name in self.gram:
                raise NotHookable(f"layer {name} runs twice in one forward pass; use method='vmap'")
            self.gram[name] = gram = gram_is_cheaper(module, output)
            if not output.requires_grad:  # run under no_grad inside the model: a zero gradient
                return
            a = args[0].detach()
            self.inputs[name] = (a, a._version)
            if gram and a.dim() == 2:  # the product kind: its terms once backward has returned
                self.deferred.append((name, module, get_gradient_edge(output)))  # before any in-place op
                return
            if not gram:
                self.edges.append(get_gradient_edge(output))
            output.register_hook(partial(self._backward, name, module))  # freed with the graph

        return hook

    def _backward(self, name: str, module: nn.Module, d: torch.Tensor) -> None:
        if self.edited(name):
            raise edited_input(name)
        a, _ = self.inputs.pop(name)
        self.terms[name] = _layer_terms(module, a, d.detach(), self.gram[name], self.wide)

    def edited(self, name: str) -> bool:
        """Whether layer ``name``'s input was modified in place after the layer ran."""
        a, version = self.inputs[name]
        return a._version != version

    def finish(self, gradients: Iterable[torch.Tensor | None]) -> None:
        """The terms of the deferred (product) layers, from their outputs' gradients (None: unused):
        ``|a_i|`` and ``|d_i|`` of all of them in one ``_norms`` call, stacked in ``product_norms``
        [2 layers, N] (a layer's ``|a_i|`` row, then its ``|d_i|`` row), with ``products`` (name,
        has a bias) and ``product_lost`` (``_norms``' flag)."""
        ready = [(name, module, d.detach()) for (name, module, _), d in zip(self.deferred, gradients)
                 if d is not None]
        for name, _, _ in ready:
            if self.edited(name):
                raise edited_input(name)
        pairs = [t.to(torch.float64 if self.wide else torch.promote_types(t.dtype, torch.float32))
                 for name, _, d in ready for t in (self.inputs.pop(name)[0], d)]
        if len({t.dtype for t in pairs}) > 1:  # layers of different dtypes: all in float64 (exact)
            pairs = [t.double() for t in pairs]
        norms, self.product_lost = _norms(pairs, self.wide) if pairs else ([], False)
        self.products = [(name, module.bias is not None) for name, module, _ in ready]
        self.product_norms = torch.stack(norms) if norms else None


def edited_input(name: str) -> ValueError:
    """The error for a layer whose input was modified in place after it ran."""
    return ValueError(f"the input of layer {name} was modified in place after the layer ran; "
                      "use method='vmap'")


class NotHookable(ValueError):
    """The model trains a parameter outside Linear/Conv layers, or runs such a layer twice in one
    forward pass: its per-sample gradient is not one product of an input and an output gradient."""


def hookable_layers(model: nn.Module, chosen: dict[str, nn.Parameter]) -> dict[str, nn.Module] | None:
    """The layers that own every chosen parameter, if all are Linear/Conv weights or biases."""
    layers = {}
    for name, module in model.named_modules():
        own = [f"{name}.{k}" if name else k for k, p in module._parameters.items() if p is not None]
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
    output is ``delta_i / N``, so ``g_i = N sum_l delta_il a_il^T`` (L positions of a sequence or
    an image; 1 for a Linear on [N, K]); for a summed loss the factor N is 1 (detected by
    comparing the loss of a few samples with that of the same samples twice). Each layer takes
    the Gram way (``L (K + O) < K O``, with K inputs and O outputs per position and group:
    ``|g_i|^2 = <A_i^T A_i, D_i^T D_i>``, for L = 1 ``N^2 |delta_i|^2 |a_i|^2``) or the explicit
    way (each sample's weight gradient, whose sum replaces the one autograd would compute); see
    the module docstring. Cost: about one forward and backward pass (measured in
    ``benchmarks/noise.py``). Products run in float32 for float16/bfloat16/float32 models and
    are summed in float64; if a float32 norm falls outside [1e-18, 1e18], where its squares
    vanish or overflow, the call is redone in float64. ``.grad``, buffers, flags and the global
    RNG are left as they were, and no hook stays registered.

    Returns:
        ``{layer name: [N]}`` (weight and bias together), float64, on the inputs' device.

    Raises:
        ValueError: a trainable parameter outside Linear/Conv layers (use
        ``per_sample_gradients``), a layer called twice, a layer's input changed in place
        after the layer ran, a batch of fewer than 2, Dropout or BatchNorm in training mode
        (see ``allow_train_mode`` of ``per_sample_gradients``), a loss that is neither the mean
        nor the sum of per-sample losses.
    """
    names, sq, _, _ = hook_statistics(model, loss_fn, inputs, targets, allow_train_mode=allow_train_mode)
    return dict(zip(names, sq.unbind()))


def hook_statistics(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, *,
    allow_train_mode: bool = False, wide: bool = False,
) -> tuple[list[str], torch.Tensor, torch.Tensor, int]:
    """The layers' names, their per-sample ``|g_i|^2`` [layers, N] and ``|gbar|^2`` [layers], float64
    (``gbar`` the gradient of the mean loss), and N. Products
    in float32 (for float16/bfloat16/float32 models) unless a norm falls outside what float32
    holds: then once more with everything in float64 (``wide``)."""
    tool = "per_sample_grad_sq_norms"
    chosen = trainable_parameters(model)
    refuse_train_mode(model, allow_train_mode, tool)
    n = check_batch(model, inputs, targets)
    layers = hookable_layers(model, chosen)
    if layers is None:
        others = sorted(module_of(k) for k in chosen)
        raise NotHookable(
            f"the hook fast path handles only Linear/Conv1d/Conv2d/Conv3d layers, the model trains {others}; "
            "use per_sample_gradients or gradient_noise_scale(method='vmap')"
        )
    with inspecting(model), _SampleNormHooks(layers, wide) as hooks:
        inputs, targets = usable(inputs), usable(targets)
        outputs = model(inputs)
        loss = checked_loss(loss_fn(outputs, targets), tool)
        per_sample_scale = n if _is_mean(loss_fn, outputs, targets, loss) else 1
        del outputs
        gram = [k for k in chosen if hooks.gram.get(module_of(k))]  # layers whose sum autograd takes
        wanted = [chosen[k] for k in gram] + hooks.edges + [edge for *_, edge in hooks.deferred]
        try:
            grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else ()
        except RuntimeError as error:  # autograd's own check of saved tensors: say which layer and what to do
            edited = [name for name, *_ in hooks.deferred if hooks.edited(name)]
            if edited:
                raise edited_input(edited[0]) from error
            raise
        hooks.finish(grads[len(gram) + len(hooks.edges):])
        grads = grads[: len(gram)]
    work = torch.float64 if wide else functools.reduce(  # a model with float64 layers: float64
        torch.promote_types, (p.dtype for p in chosen.values()), torch.float32)
    summed = [(module_of(k), g) for k, g in zip(gram, grads) if g is not None]
    batch = torch.stack(torch._foreach_norm([g for _, g in summed], dtype=work)) if summed else None
    lost = [t for _, _, t, _ in hooks.terms.values()] + [hooks.product_lost]
    lost = [t for t in lost if not isinstance(t, bool) or t]
    if batch is not None and work != torch.float64:  # 0 is taken as exact: underflow shows per sample
        if _syncs_for_free(batch.device):
            lost.append(any(0 < v < TINY or v > HUGE for v in batch.tolist()))
        else:
            lost.append(((batch > 0) & (batch < TINY) | (batch > HUGE)).any())
    flags = [t for t in lost if isinstance(t, torch.Tensor)]  # on the device: one sync for all
    if any(t is True for t in lost) or (flags and bool(torch.stack(flags).any())):
        return hook_statistics(model, loss_fn, inputs, targets, allow_train_mode=allow_train_mode, wide=True)
    names = list(layers)
    where = {k: i for i, k in enumerate(names)}
    parts = [t for _, t, _, _ in hooks.terms.values()] + ([[batch]] if summed else [])
    flat = [t for part in parts for t in part]
    squares = (torch.cat(flat) if len(flat) > 1 else flat[0]).double().square().split(
        [sum(len(t) for t in part) for part in parts]) if flat else ()
    products = _product_rows(hooks.product_norms, [bias for _, bias in hooks.products])
    totals, owners = [], []
    if [name for name, _ in hooks.products] == names:  # an MLP: every layer a Linear on [N, K]
        rows = products
    else:
        rows = [None] * len(names)
        for (name, _), row in zip(hooks.products, products if products is not None else ()):
            rows[where[name]] = row
        for (k, (kind, _, _, contraction)), square in zip(hooks.terms.items(), squares):
            rows[where[k]], total = _combine(kind, square, contraction, n, layers[k].bias is not None)
            if total is not None:
                totals.append(total.reshape(1))
                owners.append(where[k])
        zeros = torch.zeros(n, dtype=torch.float64, device=inputs.device)
        rows = torch.stack([zeros if row is None else row for row in rows])
    if summed:
        totals.append(squares[-1])
        owners += [where[k] for k, _ in summed]
    mean_sq = rows.new_zeros(len(names))
    if totals:
        mean_sq.index_add_(0, torch.tensor(owners, device=mean_sq.device),
                           torch.cat(totals) if len(totals) > 1 else totals[0])
    return names, rows * per_sample_scale**2, mean_sq * (per_sample_scale / n) ** 2, n


def _product_rows(norms: torch.Tensor | None, biased: list[bool]) -> torch.Tensor | None:
    """``|g_i|^2 = |d_i|^2 (|a_i|^2 + 1)`` [layers, N], float64, of the product layers (the 1 for the
    bias; Goodfellow 2015) from their norms stacked as ``_SampleNormHooks.finish`` leaves them."""
    if norms is None:
        return None
    squares = norms.double().square()
    aa, dd = squares[0::2], squares[1::2]
    if all(biased):
        return dd.addcmul(aa, dd)
    if not any(biased):
        return aa * dd
    return dd * (aa + aa.new_tensor(biased).unsqueeze(1))


def _is_mean(loss_fn: LossFn, outputs: object, targets: object, loss: torch.Tensor) -> bool:
    """Whether ``loss`` is the mean of per-sample losses (True) or their sum (False): the mean
    of a batch twice over is that of the batch, the sum doubles. Tried on the first few samples
    (a loss over 2N samples would cost more than the loss itself), on the batch if theirs is 0."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return True
    if isinstance(loss_fn, nn.modules.loss._Loss) and loss_fn.reduction in ("mean", "sum"):
        return loss_fn.reduction == "mean"  # torch's losses say so (the test below agrees with them)
    with torch.no_grad():
        for few in (min(len(outputs), 4), len(outputs)):
            once = loss if few == len(outputs) else loss_fn(outputs[:few], targets[:few])
            twice = loss_fn(torch.cat([outputs[:few]] * 2), torch.cat([targets[:few]] * 2))
            value = float(once)
            if value != 0 or few == len(outputs):
                break
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
