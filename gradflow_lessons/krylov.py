"""Krylov linear algebra on a symmetric operator given only as ``v -> A v``.

No model in here: every function takes a ``matvec`` callable on flat ``[P]`` vectors
(``hessian.HessianOperator.matvec`` for a loss Hessian, or any symmetric matrix).

- ``lanczos_eigenvalues``: Lanczos (1950) with full reorthogonalisation, stopped as soon
  as the wanted Ritz pairs have small residuals; the algebraically largest eigenvalues and
  the most negative one from the same Krylov space.
- ``hutchinson_trace``: Hutchinson (1989), ``tr A = E[z^T A z]`` for Rademacher ``z``,
  with the outlier eigenvalues' share taken exactly by a few Lanczos steps first.
- ``stochastic_lanczos_quadrature``: the spectral density (Lin, Saad & Yang 2016).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _random_unit(dim: int, generator: torch.Generator, like: torch.Tensor, rademacher: bool = False):
    z = torch.randint(0, 2, (dim,), generator=generator) * 2.0 - 1 if rademacher else torch.randn(
        dim, generator=generator, dtype=torch.float64)
    z = z.to(like.device, like.dtype)
    return z / z.norm()


def _start_vector(start: torch.Tensor, dim: int, device: torch.device | str,
                  dtype: torch.dtype) -> torch.Tensor:
    q0 = torch.as_tensor(start).to(device, dtype).reshape(-1)
    if q0.numel() != dim:
        raise ValueError(f"the start vector has {q0.numel()} entries; it needs P={dim} (one per parameter)")
    if not (torch.isfinite(q0).all() and q0.abs().max() > 0):
        raise ValueError("the start vector is zero or has NaN/Inf entries: a Krylov space needs a finite, "
                         "non-zero start; pass start=None for a random one")
    return q0


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
    if max_iter is not None and max_iter < 1:
        raise ValueError(f"max_iter (max_hvp of top_eigenvalues) is {max_iter}; pass at least 1 product, "
                         "or None for the default min(P, max(300, 20 k))")
    if not tol > 0:
        raise ValueError(f"tol must be positive (a residual relative to the largest eigenvalue), got {tol}")
    max_iter = min(dim, max_iter if max_iter is not None else max(300, 20 * k))
    gen = torch.Generator().manual_seed(seed)
    like = torch.empty(0, device=device, dtype=dtype)
    q0 = _random_unit(dim, gen, like) if start is None else _start_vector(start, dim, device, dtype)

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


@dataclass
class TraceResult:
    """Hutchinson's estimate of a trace (``tr H`` for a Hessian).

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


def hutchinson_trace(matvec: MatVec, dim: int, rtol: float = 0.01, atol: float = 0.0, deflate: int = 10,
                     min_probes: int = 10, max_probes: int = 1000, seed: int = 0,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> TraceResult:
    """``tr A`` of a symmetric operator by Hutchinson's estimator with Rademacher probes.

    ``E[z^T A z] = tr A`` for ``z`` with independent +-1 entries, and
    ``Var[z^T A z] = 2 sum_{i != j} A_ij^2``. A few large outlier eigenvalues dominate that
    variance, so first ``deflate`` Lanczos steps build an orthonormal ``Q`` [m, P] around
    them, whose part of the trace is exact, ``tr(Q A Q^T) = sum(alphas)``, and only the rest
    is sampled with projected probes ``y = (I - Q^T Q) z``:

        tr A = tr(Q A Q^T) + E[y^T A y]

    (unbiased for any ``Q``; the idea of Hutch++, Meyer et al. 2021). ``deflate=0`` is
    plain Hutchinson. Probes are drawn until the standard error ``std / sqrt(n) <=
    max(atol, rtol * |estimate|)`` (after ``min_probes``) or ``max_probes`` is reached.
    Cost: ``deflate`` products, then one per probe; memory ``deflate`` vectors.

    Raises:
        ValueError: ``min_probes < 2`` (no standard error from one sample) or ``> max_probes``.
    """
    if not 2 <= min_probes <= max_probes:
        raise ValueError(f"need 2 <= min_probes <= max_probes, got {min_probes} and {max_probes}")
    if deflate < 0:
        raise ValueError(f"deflate={deflate} is negative; pass 0 for plain Hutchinson, or e.g. 10")
    gen = torch.Generator().manual_seed(seed)
    exact, Q, n_hvp = 0.0, None, 0
    if deflate > 0:
        like = torch.empty(0, device=device, dtype=dtype)
        alphas, _, Q, _ = _lanczos(matvec, _random_unit(dim, gen, like), deflate, gen)
        exact, n_hvp = float(alphas.sum()), len(alphas)
        if len(alphas) == dim:  # the whole space: the trace is exact
            return TraceResult(exact, 0.0, n_hvp, torch.zeros(0, dtype=torch.float64))
    samples: list[float] = []
    while True:
        z = (torch.randint(0, 2, (dim,), generator=gen) * 2.0 - 1).to(device, dtype)
        if Q is not None:
            z = z - Q.T @ (Q @ z)
        samples.append(torch.dot(z, matvec(z)).item())
        n = len(samples)
        if n >= min_probes:
            mean, stderr = exact + float(np.mean(samples)), float(np.std(samples, ddof=1) / math.sqrt(n))
            if stderr <= max(atol, rtol * abs(mean)) or n >= max_probes:
                return TraceResult(mean, stderr, n_hvp + n, torch.tensor(samples, dtype=torch.float64))


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
    if n_probes < 1 or n_iter < 1:
        raise ValueError(f"need n_probes >= 1 and n_iter >= 1 (Lanczos steps per probe), got "
                         f"n_probes={n_probes} and n_iter={n_iter}; 10 probes of 60 steps are common")
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
