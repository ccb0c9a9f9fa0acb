"""Curvature of the loss: Hessian-vector products, top eigenvalues, trace, spectral density.

The Hessian ``H = d^2 L / d theta^2`` is ``[P, P]``: far too big to form for a real network,
but a product ``H v`` costs about as much as a gradient (Pearlmutter 1994, "Fast exact
multiplication by the Hessian"). Differentiate ``g(theta)^T v`` once more:

    H v = d/d theta ( g(theta)^T v ),      g = dL/d theta built with create_graph=True.

``HessianOperator`` runs the forward pass and the gradient (with its graph) **once**, keeps
that graph, and answers each ``H v`` with one backward pass through it ("double backward").
Cost, with one thread on a 2-core CPU (``benchmarks/hessian.py``, part 3): building the
operator is about 1.5-2x one forward + backward (the backward records its own graph); each
product is then one backward through the graph of forward + backward, 1.6-2.1x a plain
forward + backward: the backward PyHessian (Yao et al. 2020) runs on its lists of
per-parameter tensors, plus one copy into the flat ``[P]`` result and one finiteness check
(1-8% more than PyHessian's product, side by side). ``torch.autograd.functional.hvp`` and
``torch.func.jvp(grad(...))`` (forward-over-reverse) cost 4-6x, since they redo the forward
and backward every time; ``torch.func.linearize(grad(...))`` traces them once and still
costs 1.5-2x. Memory: that graph, held until the operator is dropped.

Everything else is built on ``H v``:

- ``top_eigenvalues``: Lanczos (1950) with full reorthogonalisation, stopped as soon as the
  wanted Ritz pairs have small residuals; it finds the algebraically largest eigenvalues and
  the most negative one (negative curvature) from the same Krylov space. PyHessian (Yao et
  al. 2020) uses power iteration with deflation instead; ``benchmarks/hessian.py`` compares.
- ``hessian_trace``: Hutchinson (1989), ``tr H = E[z^T H z]`` for Rademacher ``z``.
- ``spectral_density``: stochastic Lanczos quadrature (Lin, Saad & Yang 2016; Ghorbani,
  Krishnan & Xiao 2019), a smoothed histogram of all ``P`` eigenvalues from a few probes.
- ``exact_hessian`` (small models, for checking) and ``block_eigenvalues`` (per layer).

The solvers work on any ``v -> A v`` and live in ``krylov`` (re-exported here).

Every function takes ``dtype=torch.float64`` to work on a float64 copy of the model (the
model passed in is left untouched). Results are detached CPU values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._params import module_of, trainable_parameters
from ._state import batch_size, checked_loss, inspecting, refuse_train_mode, usable
from .krylov import (
    EigenResult,
    MatVec,
    SpectralDensity,
    TraceResult,
    hutchinson_trace,
    lanczos_eigenvalues,
    stochastic_lanczos_quadrature,
)

__all__ = [  # the Krylov solvers moved to krylov.py; importable from here as before
    "EigenResult", "HessianOperator", "MatVec", "SpectralDensity", "TraceResult", "block_eigenvalues",
    "exact_hessian", "hessian_trace", "hessian_vector_product", "hutchinson_trace", "lanczos_eigenvalues",
    "spectral_density", "stochastic_lanczos_quadrature", "top_eigenvalues",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cast(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x.to(dtype) if dtype is not None and torch.is_floating_point(x) else x


class HessianOperator:
    """``v -> H v`` for ``L = loss_fn(model(inputs), targets)`` at the current parameters.

    Args:
        model, loss_fn, inputs [N, ...], targets [N, ...]: as everywhere in the course;
            ``loss_fn`` returns a scalar (usually the batch mean).
        params: names of the parameters to differentiate (default: every trainable one);
            the Hessian is then the block for those parameters, the others held fixed.
        dtype: e.g. ``torch.float64`` to work on a float64 copy of the model.
        allow_train_mode: measure a model with Dropout/BatchNorm in training mode (one
            dropout mask, batch statistics) instead of refusing it.

    Vectors are flat ``[P]`` in the order of ``names`` (``unflatten`` splits one up).
    Building the operator runs the forward pass once; the model's ``.grad``, buffers,
    train/eval flags and the global RNG are left as they were. Works under
    ``torch.no_grad()`` too. Cost: see the module docstring; ``n_hvp`` counts the products.

    Raises:
        ValueError: no trainable parameters, an empty batch, Dropout/BatchNorm in training
            mode (unless ``allow_train_mode``), a loss that is not a scalar tensor with a
            graph, a non-finite loss or gradient, and (from ``matvec``) a non-finite
            Hessian-vector product.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Iterable[str] | None = None,
        dtype: torch.dtype | None = None,
        *,
        allow_train_mode: bool = False,
    ) -> None:
        trainable_parameters(model, params)  # the errors, before any work
        refuse_train_mode(model, allow_train_mode, "the Hessian tools")
        batch_size(inputs, "the Hessian tools")
        with inspecting(model):
            inputs, targets = usable(_cast(inputs, dtype)), usable(_cast(targets, dtype))
            if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
                model = copy.deepcopy(model).to(dtype)
            named = trainable_parameters(model, params)
            self.names = list(named)
            self.shapes = [p.shape for p in named.values()]
            self._params = list(named.values())
            self._sizes = [p.numel() for p in self._params]
            self.dim = sum(self._sizes)
            self.dtype, self.device = self._params[0].dtype, self._params[0].device
            with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
                loss = checked_loss(loss_fn(model(inputs), targets), "the Hessian tools")
            if not torch.isfinite(loss):
                raise ValueError("the loss is NaN/Inf: the Hessian is undefined. Check inputs and targets "
                                 "for NaN/Inf, or lower the learning rate that brought the model here.")
            grads = torch.autograd.grad(loss, self._params, create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
            # g [P], flattened once with its graph: a product's cotangent is then the flat vector itself,
            # split by the engine, with no per-product bookkeeping in Python (issue 17)
            self._flat_gradient = torch.cat([g.reshape(-1) for g in grads])
        self.loss = loss.item()
        self.gradient = self._flat_gradient.detach().clone()  # [P]
        if not torch.isfinite(self.gradient).all():
            raise ValueError("the gradient has NaN/Inf entries: the Hessian is undefined. Check the loss "
                             "for non-differentiable points (sqrt(0), log(0)) and the inputs for NaN/Inf.")
        self._curved = [g.requires_grad for g in grads]  # False: the gradient is constant, its H rows are 0
        self._inputs = [p for p, curved in zip(self._params, self._curved) if curved]
        self._dense = all(self._curved)  # the usual case: matvec's short path (every parameter has an H v)
        self._shape = torch.Size([self.dim])
        self._batchable = True  # until vmap fails on one of the model's operations
        self.n_hvp = 0

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``[P]`` vector into ``{name: tensor of the parameter's shape}``."""
        chunks = vector.split(self._sizes)
        return {n: c.reshape(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def _products(self, cotangents: torch.Tensor, batched: bool) -> torch.Tensor:
        """``H v`` [P] for a flat ``v`` [P], or ``[B, P]`` for ``[B, P]`` with ``batched``: one double
        backward, ``d (g . v) / d theta``, through the kept graph of ``g``; zeros where a
        parameter's gradient is constant or unused."""
        if not self._inputs:  # every gradient is constant (a linear loss): H = 0
            return torch.zeros_like(cotangents)
        hv = iter(torch.autograd.grad(self._flat_gradient, self._inputs, cotangents, retain_graph=True,
                                      allow_unused=True, is_grads_batched=batched))
        lead = cotangents.shape[:-1]  # () or (B,)
        chunks = [next(hv) if curved else None for curved in self._curved]  # None: that H row is 0
        return torch.cat([cotangents.new_zeros(*lead, size) if h is None else h.reshape(*lead, size)
                          for h, size in zip(chunks, self._sizes)], dim=-1)

    def _finite(self, products: torch.Tensor) -> torch.Tensor:
        # one reduction and one host sync: NaN and Inf propagate into the sum, so a finite sum means
        # finite entries; only a non-finite sum (or an overflowing one) is looked at entry by entry
        if not math.isfinite(products.sum().item()) and not torch.isfinite(products).all():
            raise ValueError("a Hessian-vector product has NaN/Inf entries: the loss has no finite second "
                             "derivative here (e.g. |x|^1.5 or sqrt at 0), or the curvature overflows in "
                             "this dtype; check the loss, or retry with dtype=torch.float64.")
        return products

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` [P] for a flat ``[P]`` vector: one Hessian-vector product."""
        vector = vector.to(self.device, self.dtype)
        if vector.shape != self._shape:
            vector = vector.reshape(-1)
            if vector.shape != self._shape:
                raise ValueError(f"expected a vector of P={self.dim} entries, got {vector.shape[0]}")
        self.n_hvp += 1
        if self._dense:  # the short path: nothing between two products but one copy and one check
            try:
                hv = torch.autograd.grad(self._flat_gradient, self._params, vector, retain_graph=True)
                return self._finite(torch.cat(list(map(torch.flatten, hv))))
            except RuntimeError:  # a parameter the double backward does not reach (or a real error,
                self._dense = False  # which the long path raises again): the long path from now on
        return self._finite(self._products(vector, batched=False))

    __matmul__ = matvec

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V^T`` for ``vectors`` ``[B, P]``, returned as ``[B, P]``; counts ``B`` products.

        Batched with ``is_grads_batched`` (vmap) when the model's operations allow it, else
        one product at a time.
        """
        vectors = vectors.to(self.device, self.dtype)
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [B, {self.dim}], got {list(vectors.shape)}")
        out = None
        if vectors.shape[0] > 1 and self._batchable:
            try:
                out = self._products(vectors, batched=True)
            except RuntimeError:  # an operation vmap cannot batch: one product at a time from now on
                self._batchable = False
        if out is None and len(vectors):
            out = torch.stack([self._products(v, batched=False) for v in vectors])
        elif out is None:  # no vectors: [0, P]
            out = vectors.clone()
        self.n_hvp += vectors.shape[0]
        return self._finite(out)


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                           vector: torch.Tensor, dtype: torch.dtype | None = None,
                           *, allow_train_mode: bool = False) -> torch.Tensor:
    """``H v`` [P] once; for many products build a ``HessianOperator`` and keep it."""
    op = HessianOperator(model, loss_fn, inputs, targets, dtype=dtype, allow_train_mode=allow_train_mode)
    return op.matvec(vector).detach().cpu()


def exact_hessian(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  params: Iterable[str] | None = None, dtype: torch.dtype | None = None,
                  max_params: int = 10_000, *, allow_train_mode: bool = False) -> torch.Tensor:
    """The full Hessian ``[P, P]`` from ``P`` Hessian-vector products with the unit vectors.

    Cost: ``P`` products, memory ``P^2``; for checking on small models only.

    Raises:
        ValueError: ``P > max_params`` (raise ``max_params`` if you mean it).
    """
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype, allow_train_mode=allow_train_mode)
    if op.dim > max_params:
        raise ValueError(f"the model has {op.dim} parameters: a {op.dim}^2 Hessian is too big to form. Use "
                         f"top_eigenvalues / hessian_trace, or pass max_params={op.dim} if you mean it.")
    eye = torch.eye(op.dim, device=op.device, dtype=op.dtype)
    return torch.cat([op.matmat(rows) for rows in eye.split(256)]).detach().cpu()


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                    k: int = 1, tol: float = 1e-4, negative: bool = True, max_hvp: int | None = None,
                    params: Iterable[str] | None = None, dtype: torch.dtype | None = None, seed: int = 0,
                    start: torch.Tensor | None = None, *, allow_train_mode: bool = False) -> EigenResult:
    """The k algebraically largest Hessian eigenvalues and their eigenvectors, by Lanczos.

    ``lambda_1 >= ... >= lambda_k`` of ``H = d^2 loss / d theta^2`` (``lambda_1`` is the
    "sharpness"), and with ``negative`` the most negative one, from one Krylov space.
    Gradient descent with learning rate ``lr`` is stable only if ``lr * lambda_1 < 2``.

    Args:
        model, loss_fn, inputs, targets, params, dtype, allow_train_mode: as for
            ``HessianOperator``.
        k: number of eigenvalues, at most the number of parameters P.
        tol: stop when each wanted residual ``||H v - lambda v|| <= tol * |lambda_1|``.
        negative: also converge the smallest (most negative) eigenvalue.
        max_hvp: at most this many products (default min(P, max(300, 20 k))).
        seed: seed of the random start; ``start`` [P]: start from this vector instead (for
            example the previous step's top eigenvector when tracking sharpness).

    Returns:
        ``EigenResult``: ``eigenvalues`` [k] descending, ``eigenvectors`` [P, k],
        ``smallest_eigenvalue``, ``n_hvp`` (one product per Lanczos step).

    Raises:
        ValueError: k outside 1..P, and everything ``HessianOperator`` raises.
    """
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype, allow_train_mode=allow_train_mode)
    return lanczos_eigenvalues(op.matvec, op.dim, k, tol, negative, max_hvp, seed, start, op.device, op.dtype)


def block_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                      k: int = 1, tol: float = 1e-4, blocks: dict[str, list[str]] | None = None,
                      dtype: torch.dtype | None = None, seed: int = 0,
                      *, allow_train_mode: bool = False) -> dict[str, EigenResult]:
    """Top eigenvalues of each diagonal block ``H_bb`` (one layer's parameters, others fixed).

    Args:
        blocks: ``{block name: [parameter names]}``; default one block per module that owns
            trainable parameters ("hidden.0.linear": its weight and bias). ``k`` is capped at
            each block's size.

    Returns:
        ``{block name: EigenResult}`` (``smallest_eigenvalue`` included).
    """
    if blocks is None:
        blocks = {}
        for name in trainable_parameters(model):
            blocks.setdefault(module_of(name), []).append(name)
    out = {}
    for block, names in blocks.items():
        op = HessianOperator(model, loss_fn, inputs, targets, names, dtype, allow_train_mode=allow_train_mode)
        out[block] = lanczos_eigenvalues(op.matvec, op.dim, min(k, op.dim), tol, True, None, seed,
                                         None, op.device, op.dtype)
    return out


# --------------------------------------------------------------------------- trace and density


def hessian_trace(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  rtol: float = 0.01, atol: float = 0.0, deflate: int = 10, min_probes: int = 10,
                  max_probes: int = 1000, params: Iterable[str] | None = None,
                  dtype: torch.dtype | None = None, seed: int = 0,
                  *, allow_train_mode: bool = False) -> TraceResult:
    """``tr H`` by Hutchinson's estimator with Rademacher probes (Hutchinson 1989).

    ``tr H = E[z^T H z]``; the first ``deflate`` Lanczos steps take the outlier eigenvalues'
    share of the trace exactly (``tr H = tr(Q H Q^T) + E[y^T H y]``, ``y = (I - Q^T Q) z``),
    and probes are drawn until ``stderr <= max(atol, rtol * |estimate|)`` (after
    ``min_probes``) or ``max_probes``; ``krylov.hutchinson_trace`` has the details.
    Cost: ``deflate`` products, then one per probe.

    Returns:
        ``TraceResult``: ``estimate``, ``stderr`` (of the sampled part; the deflated part is
        exact), ``n_hvp`` (all products), ``samples`` (the ``y^T H y``).

    Raises:
        ValueError: ``min_probes < 2`` (no standard error from one sample), and everything
            ``HessianOperator`` raises.
    """
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype, allow_train_mode=allow_train_mode)
    return hutchinson_trace(op.matvec, op.dim, rtol, atol, deflate, min_probes, max_probes, seed,
                            op.device, op.dtype)


def spectral_density(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                     n_probes: int = 10, n_iter: int = 60, params: Iterable[str] | None = None,
                     dtype: torch.dtype | None = None, seed: int = 0,
                     *, allow_train_mode: bool = False) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Outliers appear as isolated nodes, the bulk as a mass near 0. Cost: ``n_probes *
    n_iter`` products; see ``stochastic_lanczos_quadrature``.
    """
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype, allow_train_mode=allow_train_mode)
    return stochastic_lanczos_quadrature(op.matvec, op.dim, n_probes, n_iter, seed, op.device, op.dtype)
