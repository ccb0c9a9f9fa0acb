"""Probes: how much gradient reaches each layer, or each time step, of a network.

One forward and one backward pass each, on a model built from a seed (the global random
state is left as it was). The lessons call them to make a point; the explorers in
``gradflow_lessons.widgets`` call them on every slider move.

- ``weight_gradient_norms``: ``||dL/dW_l||_F`` of chosen layers (the common core).
- ``mlp_gradient_norms``: the same for every linear layer of a seeded ``models.MLP`` (lesson 02).
- ``gradient_profile``: the same for a plain, residual or dense network (lesson 06).
- ``recurrence_gradient_norms``: ``||dL/dh_t||`` of ``h_t = phi(W h_{t-1})`` (lesson 03).
- ``input_gradient_norms``: ``||dL/dx_t||`` per time step of any sequence model: how the
  gradient decays from the last step to the first (vanishing *through time*, lesson 11).
- ``attention_entropy``: the entropy of every attention layer's softmax rows (saturation,
  lesson 11).

The last two take any model and leave it as they found it (parameters, ``.grad``, buffers,
train/eval flags, the global RNG), so ``diagnose`` and ``GradientMonitor`` can call them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .models import MLP
from .skips import DenseMLP, ResidualMLP, build_network


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with the global torch RNG seeded by ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def weight_gradient_norms(
    model: nn.Module, layers: Sequence[nn.Module], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[list[float], float]:
    """``||dL/dW||_F`` of each layer's ``weight`` for the cross-entropy loss on one batch.

    Args:
        model: a classifier, ``[N, ...] -> [N, C]``.
        layers: modules of ``model`` with a ``weight``, in the order wanted.
        inputs: ``[N, ...]``.
        targets: ``[N]`` class labels.

    Returns:
        The norms (floats, in the order of ``layers``) and the loss.

    Cost: one forward and one backward pass; ``.grad`` is left untouched (``autograd.grad``).
    """
    loss = nn.functional.cross_entropy(model(inputs), targets)
    grads = torch.autograd.grad(loss, [layer.weight for layer in layers])
    return torch.stack([g.norm() for g in grads]).cpu().tolist(), loss.item()


def _to_inputs(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    return model.to(inputs.device, inputs.dtype) if inputs.is_floating_point() else model.to(inputs.device)


def mlp_gradient_norms(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    depth: int,
    width: int = 64,
    activation: str = "relu",
    init: str = "kaiming",
    gain: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Frobenius norm of every linear layer's weight gradient, input layer first.

    Builds ``MLP(D, C, depth, width, activation, init, gain)`` with ``seed`` (the global
    random state is left as it was) and takes the cross-entropy loss on ``inputs`` [N, D]
    and class labels ``targets`` [N]: ``||dL/dW_l||_F`` for ``l = 1 .. depth``.
    Cost: one forward and one backward pass.
    """
    model = seeded(lambda: MLP(inputs.shape[1], int(targets.max()) + 1, depth, width, activation,
                               init, gain), seed)
    model = _to_inputs(model, inputs)
    return weight_gradient_norms(model, [m for _, m in model.linear_layers()], inputs, targets)[0]


def hidden_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every weight layer between the stem and the head of a
    ``skips`` network, input to output: the last layer of each residual branch, or each
    dense layer."""
    if isinstance(model, ResidualMLP):
        return [(f"blocks.{i}.branch.{name}", layer)
                for i, block in enumerate(model.blocks)
                for name, layer in [list(block.branch.named_children())[-1]]]
    if isinstance(model, DenseMLP):
        return [(f"dense.layers.{i}.{name}", layer)
                for i, seq in enumerate(model.dense.layers)
                for name, layer in [list(seq.named_children())[-1]]]
    raise ValueError(f"expected a ResidualMLP/ResidualCNN/DenseMLP/DenseCNN, got {type(model).__name__}")


@dataclass(frozen=True)
class GradientProfile:
    """Weight-gradient norms of one network, input to output.

    Attributes:
        connection: ``"plain"``, ``"residual"`` or ``"dense"``.
        depth: number of hidden layers (blocks).
        layers: names: ``"stem"``, the hidden layers, ``"head"``.
        grad_norms: ``||dL/dW||_F`` of each layer in ``layers``.
        loss: the loss the gradient was taken of.
    """

    connection: str
    depth: int
    layers: list[str]
    grad_norms: list[float]
    loss: float

    @property
    def first_layer(self) -> float:
        """The stem's gradient norm: what reaches the input end of the network."""
        return self.grad_norms[0]


def gradient_profile(
    connection: str,
    depth: int,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    width: int = 64,
    seed: int = 0,
    **kwargs,
) -> GradientProfile:
    """Build a ``connection`` network of ``depth`` layers (seeded) and measure the Frobenius
    norm of each layer's weight gradient for the cross-entropy loss on one batch.

    Args:
        connection: ``"plain"``, ``"residual"`` or ``"dense"`` (see ``skips.build_network``).
        depth: hidden layers.
        inputs: ``[N, D]``.
        targets: ``[N]`` class labels.
        width: units per layer (the dense network's stem width).
        seed: seeds the initialisation: plain and residual share their weights.
        **kwargs: passed to the builder (``activation``, ``init``, ``norm``, ...).

    Cost: one forward and one backward pass.
    """
    model = seeded(lambda: build_network(connection, inputs.shape[1], int(targets.max()) + 1, depth,
                                         width, **kwargs), seed)
    model = _to_inputs(model, inputs)
    named = [("stem", model.stem), *hidden_layers(model), ("head", model.head.linear)]
    norms, loss = weight_gradient_norms(model, [layer for _, layer in named], inputs, targets)
    return GradientProfile(connection, depth, [n for n, _ in named], norms, loss)


def recurrence_gradient_norms(
    radius: float, steps: int, width: int = 32, nonlinearity: str = "linear", batch: int = 16,
    seed: int = 0,
) -> list[float]:
    """``||dL/dh_t||`` for ``t = 0 .. steps`` of ``h_t = phi(W h_{t-1})`` (mean over a batch).

    ``W`` is a Gaussian ``[width, width]`` matrix rescaled so that its spectral radius (largest
    |eigenvalue|) is ``radius``; ``phi`` is the identity, tanh or ReLU. The loss is
    ``L = sum(h_T * v)`` for a fixed random ``v``, so ``dL/dh_t = v (J_T ... J_{t+1})``: for the
    linear recurrence ``v W^(T-t)``, which grows or shrinks like ``radius^(T-t)``.
    Cost: ``steps`` matrix products forward and backward.
    """
    phis = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}
    if nonlinearity not in phis:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(phis)}")
    if steps < 1 or radius <= 0:
        raise ValueError(f"need steps >= 1 and radius > 0, got steps={steps}, radius={radius}")
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g, dtype=torch.float64)
    W = W * (radius / torch.linalg.eigvals(W).abs().max())
    states = [torch.randn(batch, width, generator=g, dtype=torch.float64).requires_grad_(True)]
    for _ in range(steps):
        states.append(phis[nonlinearity](states[-1] @ W.T))
    v = torch.randn(width, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((states[-1] * v).sum(), states, allow_unused=True)
    return [g.norm(dim=1).mean().item() if g is not None else 0.0 for g in grads]


# --------------------------------------------------------------------------- through time (lesson 11)


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s buffers (BatchNorm statistics) and the global RNG afterwards."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


@dataclass(frozen=True)
class TimeGradient:
    """How much gradient reaches each time step's input.

    Attributes:
        norms: ``||dL/dx_t||`` for ``t = 1 .. T`` (Frobenius norm over the batch and the
            features of step ``t``), first step first.
        loss: the loss the gradient was taken of.
    """

    norms: list[float]
    loss: float

    @property
    def first_to_last(self) -> float:
        """``||dL/dx_1|| / ||dL/dx_T||``: far below 1, the early steps get (almost) nothing."""
        return self.norms[0] / self.norms[-1] if self.norms[-1] > 0 else math.nan

    @property
    def decay_per_step(self) -> float:
        """The geometric mean factor per step, ``first_to_last ** (1 / (T - 1))``."""
        ratio = self.first_to_last
        if len(self.norms) < 2 or not ratio > 0:
            return math.nan
        return ratio ** (1.0 / (len(self.norms) - 1))


def input_gradient_norms(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    time_dim: int = 1,
) -> TimeGradient:
    """``||dL/dx_t||`` for every time step ``t`` of a batch of sequences.

    A recurrent model's weight gradients sum over time steps, so late steps can make every
    weight look healthy while nothing reaches the early ones. The gradient with respect to
    each step's *input* shows it: ``dL/dx_t = dL/dh_T (dh_T/dh_{T-1}) ... (dh_t/dx_t)``
    shrinks geometrically from the last step to the first when the recurrence forgets
    (Bengio et al., 1994; Pascanu et al., 2013).

    Args:
        model: ``model(inputs)`` is the output, e.g. an ``RNNClassifier``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inputs: ``[N, T, D]`` (or time on ``time_dim``), floating point.
        targets: what ``loss_fn`` compares with.
        time_dim: the time axis of ``inputs``.

    Returns:
        ``TimeGradient`` (norms accumulated in float32 or wider, whatever the dtype).

    Raises:
        ValueError: integer inputs (token ids: take the gradient at the embedding instead),
            or a loss that is not a scalar.

    Cost: one forward and one backward pass. Parameters' ``.grad``, buffers, the train/eval
    flag and the global RNG are left as they were.
    """
    if not inputs.is_floating_point():
        raise ValueError("input_gradient_norms needs floating-point inputs [N, T, D]; for token ids, "
                         "measure the gradient at the embedding's output instead")
    x = inputs.detach().clone().requires_grad_(True)
    with _untouched(model), torch.enable_grad():
        loss = loss_fn(model(x), targets)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {list(loss.shape)}: "
                             "reduce it (reduction='mean')")
        (grad,) = torch.autograd.grad(loss, x)
    other = [d for d in range(grad.dim()) if d != time_dim % grad.dim()]
    norms = torch.linalg.vector_norm(grad.detach().double(), dim=other)
    return TimeGradient(norms.cpu().tolist(), float(loss.detach()))


# --------------------------------------------------------------------------- attention (lesson 11)


@dataclass(frozen=True)
class AttentionEntropy:
    """How peaked every attention layer's softmax is.

    Attributes:
        layers: qualified names of the ``nn.MultiheadAttention`` modules, input to output.
        entropy: mean entropy (nats) of their attention rows ``-sum_j p_ij ln p_ij``, over
            the batch, the heads and the queries.
        max_entropy: ``ln(number of keys)``, the entropy of uniform attention.
        saturated_fraction: fraction of rows whose largest weight exceeds 0.99: the softmax
            is saturated there, and its Jacobian ``diag(p) - p p^T`` is nearly zero.
    """

    layers: list[str]
    entropy: list[float]
    max_entropy: list[float]
    saturated_fraction: list[float]

    @property
    def normalized(self) -> list[float]:
        """``entropy / max_entropy`` per layer: 1 is uniform attention, 0 one key per query."""
        return [e / m if m > 0 else math.nan for e, m in zip(self.entropy, self.max_entropy)]


SATURATED_WEIGHT = 0.99


def attention_entropy(model: nn.Module, inputs: torch.Tensor) -> AttentionEntropy:
    """Entropy of the attention distributions of every ``nn.MultiheadAttention`` in ``model``.

    Runs ``model(inputs)`` once; a forward hook on each attention module calls it again on the
    same query, key, value and masks with ``need_weights=True`` (per head) to read the
    softmax ``p = softmax(q k^T / sqrt(d))``. Entropy near ``ln(T)`` is uniform attention
    (an averaging layer); near 0 the softmax is saturated on one key and passes almost no
    gradient to the scores (Zhai et al., 2023, "Stabilizing Transformer training by
    preventing attention entropy collapse").

    Args:
        model: any module containing ``nn.MultiheadAttention`` (e.g. ``nn.TransformerEncoderLayer``).
        inputs: what ``model`` is called with.

    Returns:
        ``AttentionEntropy`` (accumulated in float32 or wider).

    Raises:
        ValueError: the model has no ``nn.MultiheadAttention``.

    Cost: one forward pass plus one extra attention computation per layer, without
    gradients. PyTorch's fused fast path (which skips the attention module) is switched off
    for the call and restored; nothing else about the model changes.
    """
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no nn.MultiheadAttention layer to measure")
    found: dict[str, tuple[float, float, float]] = {}
    busy = []

    def hook(name):
        def read(module, args, kwargs, output):
            if busy:
                return
            busy.append(name)
            query, key, value = (list(args) + [kwargs.get(k) for k in ("query", "key", "value")])[:3]
            training = module.training
            try:
                module.train(False)  # no dropout on the weights we read
                _, p = module(query, key, value, key_padding_mask=kwargs.get("key_padding_mask"),
                              attn_mask=kwargs.get("attn_mask"), need_weights=True,
                              average_attn_weights=False, is_causal=kwargs.get("is_causal", False))
            finally:
                module.train(training)
                busy.pop()
            p = p.detach().double()  # [N, heads, T_query, T_key]
            rows = torch.special.entr(p).sum(-1)
            found[name] = (rows.mean().item(), math.log(p.shape[-1]),
                           (p.amax(-1) > SATURATED_WEIGHT).double().mean().item())
        return read

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in modules]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with _untouched(model), torch.no_grad():
            model(inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()
    names = [n for n, _ in modules if n in found]
    return AttentionEntropy(names, [found[n][0] for n in names], [found[n][1] for n in names],
                            [found[n][2] for n in names])
