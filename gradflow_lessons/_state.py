"""What every inspecting tool promises about the model it looks at, written once.

``diagnose``, the Hessian tools and the noise tools run inside ``inspecting(model)``:

- afterwards the parameters' ``.grad``, every buffer (BatchNorm's running statistics),
  every module's train/eval flag and the global RNG (torch CPU and CUDA, numpy, random)
  are as they were, also when the tool raises;
- gradients are on inside, also when the caller is under ``torch.no_grad()`` or
  ``torch.inference_mode()``;
- forwards run inside are invisible to a ``GradientMonitor`` entered outside (tools
  compose: ``inspection_depth`` tells a monitor whether a forward is its own).

``refuse_train_mode`` is the one rule for models whose result would be random or would
change buffers in training mode (Dropout, BatchNorm, ...).
"""

from __future__ import annotations

import contextvars
import ctypes
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

_DEPTH = contextvars.ContextVar("gradflow_inspection_depth", default=0)


def inspection_depth() -> int:
    """How many ``inspecting`` blocks enclose the running code (0: the user's own code)."""
    return _DEPTH.get()


class _Snapshot:
    """The model's ``.grad`` references, buffer values and train/eval flags, and the RNGs.

    Taken on every tool call, often between two training steps, so it walks the model once
    and puts numpy's state back only if a draw changed it (``_numpy_raw``): read or written,
    that state costs more than the rest of the snapshot together."""

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.modules())
        self.flags = [(m, m.training) for m in modules]
        self.grads = list({id(p): (p, p.grad) for m in modules  # a shared parameter once
                           for p in m._parameters.values() if p is not None}.values())
        self.buffers = [(m, name, b, b.detach().clone()) for m in modules
                        for name, b in m._buffers.items() if b is not None]
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.numpy_rng = np.random.get_state(legacy=False)  # any bit generator, no warning
        self.numpy_raw = _numpy_raw()
        self.python_rng = random.getstate()

    def restore(self) -> None:
        with torch.no_grad():
            for p, grad in self.grads:
                p.grad = grad
            for module, name, buffer, value in self.buffers:
                module._buffers[name] = buffer  # the same tensor object, with its old values;
                buffer.data.copy_(value)  # through .data: a graph kept by the tool (HessianOperator)
                # saved this tensor, and a version bump would break its backward passes
        for module, training in self.flags:
            module.training = training
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        # a cached Gaussian can be used up without touching the raw state
        if self.numpy_raw is None or self.numpy_rng["has_gauss"] or _numpy_raw() != self.numpy_raw:
            np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)


def _numpy_raw() -> bytes | None:
    """The bytes of numpy's global MT19937 state (624 key words and the position), read in
    place: any draw changes them. None where this numpy lays its state out otherwise."""
    generator = np.random.get_bit_generator() if _NUMPY_RAW_SIZE else None
    if type(generator) is not np.random.MT19937:  # also np.random.set_bit_generator(PCG64())
        return None
    return ctypes.string_at(generator.ctypes.state_address, _NUMPY_RAW_SIZE)


def _numpy_raw_size() -> int | None:
    """2,500 if the global generator's raw state is laid out as ``_numpy_raw`` reads it (checked
    against numpy's own ``state`` once, at import), else None."""
    try:
        generator = np.random.get_bit_generator()
        state = generator.state["state"]
        expected = np.asarray(state["key"], "<u4").tobytes() + np.int32(state["pos"]).astype("<i4").tobytes()
        raw = ctypes.string_at(generator.ctypes.state_address, len(expected))
    except (AttributeError, KeyError, TypeError, ValueError):  # another numpy or bit generator
        return None
    return len(expected) if raw == expected and type(generator) is np.random.MT19937 else None


_NUMPY_RAW_SIZE = _numpy_raw_size()


@contextmanager
def inspecting(model: nn.Module) -> Iterator[None]:
    """Run a tool on ``model``: gradients on, ``.grad`` cleared inside, and on exit (also on an
    error) ``.grad``, buffers, train/eval flags and the RNGs restored. Parameters are not
    copied: the tools never write them."""
    snapshot = _Snapshot(model)
    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        for p, _ in snapshot.grads:
            p.grad = None
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        _DEPTH.reset(token)
        snapshot.restore()


def usable(value: object) -> object:
    """``value`` with tensors made in ``torch.inference_mode()`` cloned into normal ones
    (autograd cannot save inference tensors); call inside ``inspecting``."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (list, tuple)):
        return type(value)(usable(v) for v in value)
    if isinstance(value, dict):
        return {k: usable(v) for k, v in value.items()}
    return value


def _random_or_stateful(module: nn.Module) -> bool:
    """Whether ``module`` in training mode is random or updates its buffers."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.track_running_stats or isinstance(module, nn.modules.batchnorm._BatchNorm)
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    return isinstance(module, nn.RReLU)


def train_mode_modules(model: nn.Module) -> list[str]:
    """Names (with their class) of the modules in training mode that are random or update buffers."""
    return [f"{name or 'model'} ({type(m).__name__})" for name, m in model.named_modules()
            if m.training and _random_or_stateful(m)]


def refuse_train_mode(model: nn.Module, allow_train_mode: bool, tool: str) -> None:
    """Raise unless the model's result is deterministic and leaves its buffers alone, or the
    caller opted in to the training-mode loss."""
    names = [] if allow_train_mode else train_mode_modules(model)
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise ValueError(
            f"{tool}: {shown} {'is' if len(names) == 1 else 'are'} in training mode, where Dropout "
            "is random and BatchNorm uses (and updates) batch statistics, so the result would change "
            "from call to call; call model.eval() first, or pass allow_train_mode=True to measure "
            "the training-mode loss (buffers and RNG are restored either way)"
        )


def batch_size(inputs: object, tool: str) -> int:
    """The batch size (first dimension of the first input tensor); refuses an empty batch."""
    first = next(iter(_tensors(inputs)), None)
    n = first.shape[0] if first is not None and first.dim() else 1
    if n == 0:
        raise ValueError(f"{tool}: the batch is empty (inputs has 0 samples along dim 0); pass at least "
                         "one example (a representative batch: tens to hundreds)")
    return n


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def checked_loss(loss: object, tool: str) -> torch.Tensor:
    """``loss`` as a 0-d tensor with a graph, or an error that says what ``loss_fn`` did wrong."""
    if not isinstance(loss, torch.Tensor):
        raise ValueError(
            f"{tool}: loss_fn returned a {type(loss).__name__}, not a tensor; return the loss tensor "
            "itself (no .item() or float()) so it can be differentiated"
        )
    if loss.numel() != 1:
        raise ValueError(f"{tool}: loss_fn must return a scalar (e.g. the batch mean), got shape "
                         f"{list(loss.shape)}; reduce it with .mean()")
    if not loss.requires_grad:
        raise ValueError(
            f"{tool}: the loss does not depend on any trainable parameter (requires_grad=False); "
            "does loss_fn or the model call .detach(), or run under torch.no_grad()?"
        )
    return loss.reshape(())


# --------------------------------------------------------------------------- mixed precision (GradScaler)


def grads_unscaled(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer | None = None) -> bool:
    """Whether ``scaler.unscale_`` has run this step (for ``optimizer``, or for any optimizer),
    read from the scaler's per-optimizer state, which ``scaler.update()`` resets."""
    from torch.amp.grad_scaler import OptState

    states = getattr(scaler, "_per_optimizer_states", {})
    if optimizer is not None:
        return id(optimizer) in states and states[id(optimizer)].get("stage") is OptState.UNSCALED
    return any(state.get("stage") is OptState.UNSCALED for state in states.values())


def unscale_factor(scaler: torch.amp.GradScaler | None,
                   optimizer: torch.optim.Optimizer | None = None) -> float:
    """What the ``.grad`` values must be multiplied by to be the true gradients: ``1 / scale``
    while a ``GradScaler``'s gradients are still scaled, else 1 (no scaler, a disabled one, or
    ``scaler.unscale_`` already called this step)."""
    if scaler is None or not scaler.is_enabled() or grads_unscaled(scaler, optimizer):
        return 1.0
    return 1.0 / scaler.get_scale()


def require_unscaled(scaler: torch.amp.GradScaler | None, caller: str) -> None:
    """Refuse to clip gradients that are still multiplied by the loss scale."""
    if scaler is not None and scaler.is_enabled() and not grads_unscaled(scaler):
        raise ValueError(
            f"{caller}: the gradients are still multiplied by the loss scale ({scaler.get_scale():g}); "
            "call scaler.unscale_(optimizer) before clipping, so the threshold applies to the true "
            "gradients (then scaler.step(optimizer) knows not to unscale them twice)"
        )
