"""gradflow_lessons.krylov: the solvers on explicit symmetric matrices (no model involved)."""

from __future__ import annotations

import pytest
import torch

from gradflow_lessons import hessian, krylov


def symmetric(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """A dense symmetric matrix with the given spectrum and random eigenvectors, float64."""
    gen = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


SPECTRUM = [9.0, 4.0, 2.5, 1.0, 0.5, 0.1, -0.3, -2.0]


def test_lanczos_on_a_matrix_matches_eigh_with_unit_residual_eigenvectors():
    a = symmetric(SPECTRUM)
    result = krylov.lanczos_eigenvalues(lambda v: a @ v, a.shape[0], k=3, tol=1e-10)
    torch.testing.assert_close(result.eigenvalues, torch.tensor(SPECTRUM[:3], dtype=torch.float64))
    assert result.smallest_eigenvalue == pytest.approx(-2.0, rel=1e-8)
    for i in range(3):
        v = result.eigenvectors[:, i]
        assert (a @ v - result.eigenvalues[i] * v).norm() < 1e-6


def test_hutchinson_on_a_matrix_is_exact_once_deflation_spans_the_space():
    a = symmetric(SPECTRUM)
    result = krylov.hutchinson_trace(lambda v: a @ v, a.shape[0], deflate=len(SPECTRUM))
    assert result.estimate == pytest.approx(sum(SPECTRUM), rel=1e-10)
    assert result.stderr == 0.0 and result.n_hvp == len(SPECTRUM)


def test_hutchinson_without_deflation_covers_the_trace_within_three_standard_errors():
    a = symmetric(SPECTRUM)
    result = krylov.hutchinson_trace(lambda v: a @ v, a.shape[0], deflate=0, min_probes=200, max_probes=200)
    assert abs(result.estimate - sum(SPECTRUM)) < 3 * result.stderr
    assert result.n_hvp == 200 == len(result.samples)


def test_slq_with_a_full_krylov_space_puts_its_nodes_on_the_eigenvalues_with_weights_summing_to_one():
    a = symmetric(SPECTRUM)
    density = krylov.stochastic_lanczos_quadrature(lambda v: a @ v, a.shape[0], n_probes=4, n_iter=8)
    assert density.weights.sum().item() == pytest.approx(1.0)
    distance = (density.nodes[:, None] - torch.tensor(SPECTRUM, dtype=torch.float64)).abs().amin(1)
    assert distance.max().item() < 1e-8 and density.n_hvp == 4 * 8


def test_the_solvers_are_still_importable_from_hessian():
    assert hessian.lanczos_eigenvalues is krylov.lanczos_eigenvalues
    assert hessian.stochastic_lanczos_quadrature is krylov.stochastic_lanczos_quadrature
    assert hessian.EigenResult is krylov.EigenResult and hessian.TraceResult is krylov.TraceResult
