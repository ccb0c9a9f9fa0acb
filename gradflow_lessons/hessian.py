"""Curvature of the loss: Hessian-vector products, top eigenvalues, trace, spectral density.

The Hessian ``H = d^2 L / d theta^2`` is ``[P, P]``: far too big to form for a real network,
but a product ``H v`` costs about as much as a gradient (Pearlmutter 1994, "Fast exact
multiplication by the Hessian"). Differentiate ``g(theta)^T v`` once more:

    H v = d/d theta ( g(theta)^T v ),      g = dL/d theta built with create_graph=True.

``HessianOperator`` runs the forward pass and the gradient (with its graph) **once**, keeps
that graph, and answers each ``H v`` with one backward pass through it ("double backward").
Cost: building the operator is about one forward + backward (1.1-1.4x: the backward records
its own graph); each product is then one backward through the graph of forward + backward,
1.0-1.8x a plain forward + backward on a 2-core CPU (up to 3x with two busy threads;
``benchmarks/hessian.py``), against 3.5-6x for ``torch.func.jvp(grad(...))``, which
recomputes everything each time. Memory: that graph, held until the operator is dropped.

Everything else is built on ``H v``:

- ``top_eigenvalues``: Lanczos (1950) with full reorthogonalisation, stopped as soon as the
  wanted Ritz pairs have small residuals; it finds the algebraically largest eigenvalues and
  the most negative one (negative curvature) from the same Krylov space. PyHessian (Yao et
  al. 2020) uses power iteration with deflation instead; ``benchmarks/hessian.py`` compares.
- ``hessian_trace``: Hutchinson (1989), ``tr H = E[z^T H z]`` for Rademacher ``z``.
- ``spectral_density``: stochastic Lanczos quadrature (Lin, Saad & Yang 2016; Ghorbani,
  Krishnan & Xiao 2019), a smoothed histogram of all ``P`` eigenvalues from a few probes.
- ``exact_hessian`` (small models, for checking) and ``block_eigenvalues`` (per layer).

Every function takes ``dtype=torch.float64`` to work on a float64 copy of the model (the
model passed in is left untouched). Results are detached CPU values.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]


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

    Vectors are flat ``[P]`` in the order of ``names`` (``unflatten`` splits one up).
    Cost: see the module docstring; ``n_hvp`` counts the products made.

    Raises:
        ValueError: no trainable parameters, a non-scalar or non-finite loss, a non-finite
            gradient, and (from ``matvec``) a non-finite Hessian-vector product.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Iterable[str] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        inputs, targets = _cast(inputs, dtype), _cast(targets, dtype)
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not named:
            raise ValueError("model has no parameters with requires_grad=True; did you freeze it?")
        if params is not None:
            wanted = list(params)
            unknown = [n for n in wanted if n not in named]
            if unknown or not wanted:
                raise ValueError(f"unknown or frozen parameter names {unknown}; choose from {sorted(named)}")
            named = {n: named[n] for n in wanted}
        self.names = list(named)
        self.shapes = [p.shape for p in named.values()]
        self._params = list(named.values())
        self.dim = sum(p.numel() for p in self._params)
        self.dtype, self.device = self._params[0].dtype, self._params[0].device
        loss = loss_fn(model(inputs), targets)
        if loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar (e.g. the batch mean), got {list(loss.shape)}")
        if not torch.isfinite(loss):
            raise ValueError("the loss is NaN/Inf: the Hessian is undefined. Check inputs and targets for "
                             "NaN/Inf, or lower the learning rate that brought the model here.")
        grads = torch.autograd.grad(loss.reshape(()), self._params, create_graph=True, allow_unused=True)
        self._grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
        self.loss = loss.item()
        self.gradient = torch.cat([g.detach().reshape(-1) for g in self._grads])  # [P]
        if not torch.isfinite(self.gradient).all():
            raise ValueError("the gradient has NaN/Inf entries: the Hessian is undefined. Check the loss "
                             "for non-differentiable points (sqrt(0), log(0)) and the inputs for NaN/Inf.")
        self._live = [i for i, g in enumerate(self._grads) if g.requires_grad]  # the rest: H rows are 0
        self.n_hvp = 0

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``[P]`` vector into ``{name: tensor of the parameter's shape}``."""
        chunks = vector.split([math.prod(s) for s in self.shapes])
        return {n: c.reshape(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V^T`` for ``vectors`` ``[B, P]``, returned as ``[B, P]``; counts ``B`` products.

        Batched with ``is_grads_batched`` (vmap) when the model's operations allow it.
        """
        vectors = vectors.to(self.device, self.dtype)
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [B, {self.dim}], got {list(vectors.shape)}")
        out = torch.zeros_like(vectors)
        if self._live:
            live = [self._params[i] for i in self._live]
            parts = vectors.split([math.prod(s) for s in self.shapes], dim=1)
            cotangents = [parts[i].reshape(-1, *self.shapes[i]) for i in self._live]
            outputs = [self._grads[i] for i in self._live]
            try:
                hv = torch.autograd.grad(outputs, live, cotangents, retain_graph=True,
                                         allow_unused=True, is_grads_batched=vectors.shape[0] > 1)
            except RuntimeError:  # an operation vmap cannot batch: one product at a time
                rows = [torch.autograd.grad(outputs, live, [c[b] for c in cotangents], retain_graph=True,
                                            allow_unused=True) for b in range(vectors.shape[0])]
                hv = [torch.stack([r[j] if r[j] is not None else torch.zeros_like(live[j]) for r in rows])
                      for j in range(len(live))]
            full = [vectors.new_zeros(vectors.shape[0], *s) for s in self.shapes]
            for j, i in enumerate(self._live):
                if hv[j] is not None:
                    full[i] = hv[j].reshape(vectors.shape[0], *self.shapes[i])
            out = torch.cat([f.reshape(vectors.shape[0], -1) for f in full], dim=1)
        self.n_hvp += vectors.shape[0]
        if not torch.isfinite(out).all():
            raise ValueError("a Hessian-vector product has NaN/Inf entries: the loss has no finite second "
                             "derivative here (e.g. |x|^1.5 or sqrt at 0), or the curvature overflows in "
                             "this dtype; check the loss, or retry with dtype=torch.float64.")
        return out

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``[P]`` vector: one Hessian-vector product."""
        return self.matmat(vector.reshape(1, -1))[0]

    __matmul__ = matvec


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                           vector: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``H v`` [P] once; for many products build a ``HessianOperator`` and keep it."""
    return HessianOperator(model, loss_fn, inputs, targets, dtype=dtype).matvec(vector).detach().cpu()


def exact_hessian(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  params: Iterable[str] | None = None, dtype: torch.dtype | None = None,
                  max_params: int = 10_000) -> torch.Tensor:
    """The full Hessian ``[P, P]`` from ``P`` Hessian-vector products with the unit vectors.

    Cost: ``P`` products, memory ``P^2``; for checking on small models only.

    Raises:
        ValueError: ``P > max_params`` (raise ``max_params`` if you mean it).
    """
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype)
    if op.dim > max_params:
        raise ValueError(f"the model has {op.dim} parameters: a {op.dim}^2 Hessian is too big to form. Use "
                         f"top_eigenvalues / hessian_trace, or pass max_params={op.dim} if you mean it.")
    eye = torch.eye(op.dim, device=op.device, dtype=op.dtype)
    return torch.cat([op.matmat(rows) for rows in eye.split(256)]).detach().cpu()


# --------------------------------------------------------------------------- Lanczos


def _random_unit(dim: int, generator: torch.Generator, like: torch.Tensor, rademacher: bool = False):
    z = torch.randint(0, 2, (dim,), generator=generator) * 2.0 - 1 if rademacher else torch.randn(
        dim, generator=generator, dtype=torch.float64)
    z = z.to(like.device, like.dtype)
    return z / z.norm()


def _lanczos(matvec: MatVec, start: torch.Tensor, max_iter: int, generator: torch.Generator,
             done: Callable[[np.ndarray, np.ndarray, float], bool] | None = None, restart: bool = True):
    """Lanczos with full reorthogonalisation (twice, "twice is enough").

    Builds an orthonormal basis Q [m, P] of the Krylov space {q, Hq, H^2 q, ...} and the
    tridiagonal T = Q H Q^T (diagonal ``alphas`` [m], off-diagonal ``betas`` [m-1]).
    ``done(alphas, betas, beta_next)`` is asked after every product. On breakdown (an
    invariant subspace: beta = 0) it continues from a fresh random vector if ``restart``,
    so repeated eigenvalues are found too; otherwise it stops.

    Returns ``alphas``, ``betas`` (numpy float64), ``Q`` [m, P] and ``beta_next``.
    """
    dim = start.numel()
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    while True:
        q = basis[-1]
        w = matvec(q)
        alpha = torch.dot(w, q).item()
        Q = torch.stack(basis)  # [m, P]
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        beta = w.norm().item()
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        a, b = np.array(alphas), np.array(betas)
        if len(basis) >= min(dim, max_iter) or (done is not None and done(a, b, beta)):
            return a, b, Q, beta
        if beta <= 1e-10 * max(scale, 1e-30):  # invariant subspace: T's eigenvalues are exact
            if not restart:
                return a, b, Q, 0.0
            w, beta = _random_unit(dim, generator, q), 0.0
            for _ in range(2):
                w = w - Q.T @ (Q @ w)
            basis.append(w / w.norm())
        else:
            basis.append(w / beta)
        betas.append(beta)


def _ritz(alphas: np.ndarray, betas: np.ndarray, beta_next: float):
    """Ritz values (ascending), the eigenvectors S of T, and residuals |beta_next S[-1, i]|."""
    if len(alphas) == 1:
        return alphas.copy(), np.ones((1, 1)), np.array([abs(beta_next)])
    theta, S = eigh_tridiagonal(alphas, betas)
    return theta, S, np.abs(beta_next * S[-1])


@dataclass
class EigenResult:
    """Extreme eigenpairs of a Hessian (or any symmetric operator).

    Attributes:
        eigenvalues: [k] the k algebraically largest, descending (float64).
        eigenvectors: [P, k] unit eigenvectors, column i for eigenvalue i.
        residuals: [k] ``||H v_i - lambda_i v_i||``; each eigenvalue is within its residual of a
            true one (and usually within residual^2 / gap).
        smallest_eigenvalue: the algebraically smallest eigenvalue (negative = negative
            curvature), or None if not asked for.
        smallest_eigenvector: [P] its eigenvector, or None.
        smallest_residual: its residual, or None.
        n_hvp: Hessian-vector products used.
        converged: every wanted residual is within tolerance.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    smallest_eigenvalue: float | None
    smallest_eigenvector: torch.Tensor | None
    smallest_residual: float | None
    n_hvp: int
    converged: bool


def lanczos_eigenvalues(matvec: MatVec, dim: int, k: int = 1, tol: float = 1e-4, negative: bool = True,
                        max_iter: int | None = None, seed: int = 0, start: torch.Tensor | None = None,
                        device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float64) -> EigenResult:
    """The k largest (and the smallest) eigenpairs of a symmetric operator ``[P] -> [P]``.

    Stops after the first product at which every wanted Ritz pair has residual
    ``beta_m |s_mi| <= tol * max_j |theta_j|`` (relative to the operator's norm, so the
    most negative eigenvalue of a Hessian whose spectrum is mostly near 0 converges too).
    Cost: m products and m vectors of memory, m usually a few tens.

    Args:
        matvec: ``v -> A v`` for a symmetric A, vectors ``[dim]`` on ``device`` in ``dtype``.
        dim: P.
        k: how many of the largest eigenvalues, 1 <= k <= P.
        tol: residual tolerance relative to the largest |eigenvalue|.
        negative: also converge the smallest eigenvalue.
        max_iter: at most this many products (default min(P, max(300, 20 k))); a warning
            says when the tolerance was not reached.
        seed: seed of the random start vector; ``start``: a start vector instead (warm start).
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k={k} must be between 1 and the number of parameters P={dim}; ask for fewer "
                         "eigenvalues, or use exact_hessian for all of them on a small model.")
    max_iter = min(dim, max_iter or max(300, 20 * k))
    gen = torch.Generator().manual_seed(seed)
    like = torch.empty(0, device=device, dtype=dtype)
    q0 = _random_unit(dim, gen, like) if start is None else start.to(device, dtype).reshape(-1)

    def done(a, b, beta_next):
        if len(a) < min(dim, k + negative):
            return False
        theta, _, res = _ritz(a, b, beta_next)
        limit = tol * max(abs(theta).max(), 1e-30)
        return bool((res[-k:] <= limit).all() and (not negative or res[0] <= limit))

    a, b, Q, beta_next = _lanczos(matvec, q0, max_iter, gen, done)
    theta, S, res = _ritz(a, b, beta_next)
    vectors = (Q.T @ torch.as_tensor(S, device=Q.device, dtype=Q.dtype)).detach().cpu()  # [P, m]
    limit = tol * max(abs(theta).max(), 1e-30)
    converged = bool((res[-k:] <= limit).all() and (not negative or res[0] <= limit))
    if not converged:
        warnings.warn(f"Lanczos stopped at max_iter={max_iter} products before reaching tol={tol:g} "
                      f"(largest residual {res[-k:].max():.2g}); raise max_iter or tol.", stacklevel=3)
    order = np.argsort(theta)[::-1][:k].copy()
    return EigenResult(
        eigenvalues=torch.as_tensor(theta[order]), eigenvectors=vectors[:, order].to(torch.float64),
        residuals=torch.as_tensor(res[order]), smallest_eigenvalue=float(theta[0]) if negative else None,
        smallest_eigenvector=vectors[:, 0].to(torch.float64) if negative else None,
        smallest_residual=float(res[0]) if negative else None,
        n_hvp=len(a), converged=converged)


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                    k: int = 1, tol: float = 1e-4, negative: bool = True, max_hvp: int | None = None,
                    params: Iterable[str] | None = None, dtype: torch.dtype | None = None, seed: int = 0,
                    start: torch.Tensor | None = None) -> EigenResult:
    """The k algebraically largest Hessian eigenvalues and their eigenvectors, by Lanczos.

    ``lambda_1 >= ... >= lambda_k`` of ``H = d^2 loss / d theta^2`` (``lambda_1`` is the
    "sharpness"), and with ``negative`` the most negative one, from one Krylov space.
    Gradient descent with learning rate ``lr`` is stable only if ``lr * lambda_1 < 2``.

    Args:
        model, loss_fn, inputs, targets, params, dtype: as for ``HessianOperator``.
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
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype)
    return lanczos_eigenvalues(op.matvec, op.dim, k, tol, negative, max_hvp, seed, start, op.device, op.dtype)


def block_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                      k: int = 1, tol: float = 1e-4, blocks: dict[str, list[str]] | None = None,
                      dtype: torch.dtype | None = None, seed: int = 0) -> dict[str, EigenResult]:
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
        for name, p in model.named_parameters():
            if p.requires_grad:
                blocks.setdefault(name.rpartition(".")[0] or "model", []).append(name)
    if not blocks:
        raise ValueError("model has no parameters with requires_grad=True; did you freeze it?")
    out = {}
    for block, names in blocks.items():
        op = HessianOperator(model, loss_fn, inputs, targets, names, dtype)
        out[block] = lanczos_eigenvalues(op.matvec, op.dim, min(k, op.dim), tol, True, None, seed,
                                         None, op.device, op.dtype)
    return out


# --------------------------------------------------------------------------- trace and density


@dataclass
class TraceResult:
    """Hutchinson's estimate of ``tr H``.

    Attributes:
        estimate: ``tr(Q H Q^T)`` (deflated part) plus the mean of the probe samples.
        stderr: its standard error, ``std(samples) / sqrt(n)``.
        n_hvp: probes used (one product each).
        samples: [n] the individual ``z^T H z``.
    """

    estimate: float
    stderr: float
    n_hvp: int
    samples: torch.Tensor


def hessian_trace(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  rtol: float = 0.01, atol: float = 0.0, deflate: int = 10, min_probes: int = 10,
                  max_probes: int = 1000, params: Iterable[str] | None = None,
                  dtype: torch.dtype | None = None, seed: int = 0) -> TraceResult:
    """``tr H`` by Hutchinson's estimator with Rademacher probes (Hutchinson 1989).

    ``E[z^T H z] = tr H`` for ``z`` with independent +-1 entries, and
    ``Var[z^T H z] = 2 sum_{i != j} H_ij^2``. A network's Hessian has a few large outlier
    eigenvalues that dominate that variance, so first ``deflate`` Lanczos steps build an
    orthonormal ``Q`` [m, P] around them, whose part of the trace is exact,
    ``tr(Q H Q^T) = sum(alphas)``, and only the rest is sampled with projected probes
    ``y = (I - Q^T Q) z``:

        tr H = tr(Q H Q^T) + E[y^T H y]

    (unbiased for any ``Q``; the idea of Hutch++, Meyer et al. 2021). ``deflate=0`` is
    plain Hutchinson. Probes are drawn until the standard error ``std / sqrt(n) <=
    max(atol, rtol * |estimate|)`` (after ``min_probes``) or ``max_probes`` is reached.
    Cost: ``deflate`` products, then one per probe; memory ``deflate`` vectors.

    Returns:
        ``TraceResult``: ``estimate``, ``stderr`` (of the sampled part; the deflated part is
        exact), ``n_hvp`` (all products), ``samples`` (the ``y^T H y``).

    Raises:
        ValueError: ``min_probes < 2`` (no standard error from one sample), and everything
            ``HessianOperator`` raises.
    """
    if not 2 <= min_probes <= max_probes:
        raise ValueError(f"need 2 <= min_probes <= max_probes, got {min_probes} and {max_probes}")
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype)
    gen = torch.Generator().manual_seed(seed)
    exact, Q = 0.0, None
    if deflate > 0:
        like = torch.empty(0, device=op.device, dtype=op.dtype)
        alphas, _, Q, _ = _lanczos(op.matvec, _random_unit(op.dim, gen, like), deflate, gen)
        exact = float(alphas.sum())
        if len(alphas) == op.dim:  # the whole space: the trace is exact
            return TraceResult(exact, 0.0, op.n_hvp, torch.zeros(0, dtype=torch.float64))
    samples: list[float] = []
    while True:
        z = (torch.randint(0, 2, (op.dim,), generator=gen) * 2.0 - 1).to(op.device, op.dtype)
        if Q is not None:
            z = z - Q.T @ (Q @ z)
        samples.append(torch.dot(z, op.matvec(z)).item())
        n = len(samples)
        if n >= min_probes:
            mean, stderr = exact + float(np.mean(samples)), float(np.std(samples, ddof=1) / math.sqrt(n))
            if stderr <= max(atol, rtol * abs(mean)) or n >= max_probes:
                return TraceResult(mean, stderr, op.n_hvp, torch.tensor(samples, dtype=torch.float64))


@dataclass
class SpectralDensity:
    """A spectral density as Gauss quadrature nodes and weights (stochastic Lanczos quadrature).

    Attributes:
        nodes: [n] Ritz values of every probe (eigenvalue locations).
        weights: [n] their weights, summing to 1: the fraction of the P eigenvalues near each node.
        n_hvp: products used.
        dim: P (``dim * sum(weights * nodes)`` estimates the trace).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    n_hvp: int
    dim: int

    def density(self, grid: torch.Tensor, sigma: float) -> torch.Tensor:
        """The density on ``grid`` [G], each node smoothed by a Gaussian of width ``sigma``;
        it integrates to 1 (when the grid covers the nodes)."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        kernel = torch.exp(-0.5 * ((grid[:, None] - self.nodes[None]) / sigma) ** 2)  # [G, n]
        return kernel @ self.weights / (sigma * math.sqrt(2 * math.pi))


def stochastic_lanczos_quadrature(matvec: MatVec, dim: int, n_probes: int = 10, n_iter: int = 60,
                                  seed: int = 0, device: torch.device | str = "cpu",
                                  dtype: torch.dtype = torch.float64) -> SpectralDensity:
    """Spectral density of a symmetric operator (Lin, Saad & Yang 2016).

    For a unit probe ``q``, ``q^T f(A) q = sum_i (q^T u_i)^2 f(lambda_i)``: a spectral
    measure. ``m`` Lanczos steps from ``q`` give its Gauss quadrature, nodes ``theta_j``
    (eigenvalues of T) and weights ``tau_j^2`` (squared first components of T's
    eigenvectors), exact for polynomials ``f`` of degree < 2m. Averaged over Rademacher
    probes, this estimates ``(1/P) sum_i delta(x - lambda_i)``. Cost: ``n_probes * n_iter``
    products.
    """
    gen = torch.Generator().manual_seed(seed)
    like = torch.empty(0, device=device, dtype=dtype)
    nodes, weights, n_hvp = [], [], 0
    for _ in range(n_probes):
        probe = _random_unit(dim, gen, like, rademacher=True)
        a, b, _, _ = _lanczos(matvec, probe, n_iter, gen, restart=False)
        theta, S, _ = _ritz(a, b, 0.0)
        nodes.append(theta)
        weights.append(S[0] ** 2 / n_probes)
        n_hvp += len(a)
    return SpectralDensity(torch.as_tensor(np.concatenate(nodes)), torch.as_tensor(np.concatenate(weights)),
                           n_hvp, dim)


def spectral_density(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                     n_probes: int = 10, n_iter: int = 60, params: Iterable[str] | None = None,
                     dtype: torch.dtype | None = None, seed: int = 0) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Outliers appear as isolated nodes, the bulk as a mass near 0. Cost: ``n_probes *
    n_iter`` products; see ``stochastic_lanczos_quadrature``.
    """
    op = HessianOperator(model, loss_fn, inputs, targets, params, dtype)
    return stochastic_lanczos_quadrature(op.matvec, op.dim, n_probes, n_iter, seed, op.device, op.dtype)
