"""gradflow_lessons.hessian: every quantity against the exact float64 Hessian of a tiny model."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import load_benchmark
from torch import nn
from torch.func import functional_call

from gradflow_lessons import hessian
from gradflow_lessons.models import MLP
from gradflow_lessons.monitor import count_hooks


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def tiny_problem():
    """A 46-parameter tanh MLP on 8 samples with cross-entropy."""
    model = MLP(3, 2, depth=3, width=4, activation="tanh")
    return model, nn.CrossEntropyLoss(), torch.randn(8, 3), torch.randint(0, 2, (8,))


def brute_force_hessian(model, loss_fn, inputs, targets) -> torch.Tensor:
    """[P, P] by torch.autograd.functional.hessian of the loss as a function of the flat parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of(theta):
        chunks = theta.split([math.prod(s) for s in shapes])
        values = {n: c.reshape(s) for (n, _), c, s in zip(named, chunks, shapes)}
        return loss_fn(functional_call(model, values, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss_of, flat)


class Quadratic(nn.Module):
    """loss = theta^T A theta / 2, so the Hessian is exactly A (cheap products for statistical tests)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = matrix
        self.theta = nn.Parameter(torch.randn(matrix.shape[0]))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.theta

    @staticmethod
    def loss(theta: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * theta @ QUADRATIC_MATRIX @ theta


QUADRATIC_MATRIX = torch.randn(30, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
QUADRATIC_MATRIX = QUADRATIC_MATRIX + QUADRATIC_MATRIX.T + 5 * torch.eye(30, dtype=torch.float64)


def quadratic_problem():
    return Quadratic(QUADRATIC_MATRIX), Quadratic.loss, torch.zeros(1), torch.zeros(1)


def counting(matrix: torch.Tensor):
    calls = []

    def matvec(v):
        calls.append(1)
        return matrix @ v

    return matvec, calls


def matrix_with_spectrum(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g))
    return q @ torch.diag(torch.tensor(eigenvalues)) @ q.T


# --------------------------------------------------------------------------- products and the exact Hessian


def test_exact_hessian_matches_brute_force_autograd():
    problem = tiny_problem()
    exact = hessian.exact_hessian(*problem)
    torch.testing.assert_close(exact, brute_force_hessian(*problem), rtol=1e-10, atol=1e-12)


def test_hessian_vector_product_matches_the_exact_hessian_times_the_vector():
    problem = tiny_problem()
    exact = brute_force_hessian(*problem)
    v = torch.randn(exact.shape[0])
    torch.testing.assert_close(hessian.hessian_vector_product(*problem, v), exact @ v, rtol=1e-10, atol=1e-12)


def test_batched_products_equal_single_products_and_are_all_counted():
    op = hessian.HessianOperator(*tiny_problem())
    vectors = torch.randn(5, op.dim)
    batched = op.matmat(vectors)
    assert op.n_hvp == 5
    torch.testing.assert_close(batched, torch.stack([op.matvec(v) for v in vectors]), rtol=1e-12, atol=1e-12)
    assert op.n_hvp == 10


class _CubeGrad(torch.autograd.Function):
    """d(x^3)/dx * g, whose own backward makes a host sync (.item()) that vmap cannot batch."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.save_for_backward(x, g)
        return 3 * x.square() * g

    @staticmethod
    def backward(ctx, gg):
        x, g = ctx.saved_tensors
        assert gg.abs().max().item() >= 0
        return 6 * x * g * gg, 3 * x.square() * gg


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        return _CubeGrad.apply(ctx.saved_tensors[0], g)


class CubeNet(nn.Module):
    """A linear layer, a custom cube whose double backward vmap cannot batch, a scalar parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.temperature = nn.Parameter(torch.tensor(0.7))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _Cube.apply(self.linear(inputs)) * self.temperature


def test_batched_products_fall_back_to_one_at_a_time_where_vmap_cannot_batch():
    model, x, y = CubeNet(), torch.randn(5, 3), torch.randint(0, 2, (5,))
    op = hessian.HessianOperator(model, nn.CrossEntropyLoss(), x, y)
    vectors = torch.randn(4, op.dim)
    batched = op.matmat(vectors)
    assert not op._batchable  # vmap failed once: every later matmat goes one product at a time
    torch.testing.assert_close(batched, torch.stack([op.matvec(v) for v in vectors]), rtol=0, atol=0)
    assert op.n_hvp == 8 and op.matmat(vectors[:0]).shape == (0, op.dim)


def test_products_match_brute_force_with_a_scalar_parameter_one_at_a_time_and_batched():
    model, x, y = CubeNet(), torch.randn(5, 3), torch.randint(0, 2, (5,))
    exact = brute_force_hessian(model, nn.CrossEntropyLoss(), x, y)
    op = hessian.HessianOperator(model, nn.CrossEntropyLoss(), x, y)
    vectors = torch.randn(3, op.dim)
    torch.testing.assert_close(op.matmat(vectors), vectors @ exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(vectors[0]), exact @ vectors[0], rtol=1e-10, atol=1e-12)


class _OneSidedProduct(torch.autograd.Function):
    """a * b whose backward hides b from the second derivative: both gradients have a graph, but
    only through a (g_a = g b a / a with b and the divisor detached, g_b = g a)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b.detach() * a / a.detach(), g * a


class OneSided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(2.0))
        self.b = nn.Parameter(torch.tensor(3.0))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _OneSidedProduct.apply(self.a, self.b)


def test_a_parameter_the_double_backward_does_not_reach_gets_a_zero_product():
    op = hessian.HessianOperator(OneSided(), lambda out, y: out, torch.zeros(1), torch.zeros(1))
    expected = torch.tensor([7.0 * 3 / 2 + 5, 0.0])  # (d(g . v)/da, d(g . v)/db) = (v_a b / a + v_b, 0)
    torch.testing.assert_close(op.matvec(torch.tensor([7.0, 5.0])), expected, rtol=0, atol=0)
    torch.testing.assert_close(op.matvec(torch.tensor([7.0, 5.0])), expected, rtol=0, atol=0)
    torch.testing.assert_close(op.matmat(torch.tensor([[7.0, 5.0]] * 2)), torch.stack([expected] * 2))


def test_a_vector_of_the_wrong_length_is_named():
    op = hessian.HessianOperator(*tiny_problem())
    with pytest.raises(ValueError, match="P=46 entries, got 45"):
        op.matvec(torch.ones(45))
    with pytest.raises(ValueError, match=r"shape \[B, 46\]"):
        op.matmat(torch.ones(2, 45))


def test_products_leave_the_model_its_gradients_and_no_hooks():
    model, loss_fn, x, y = tiny_problem()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_fn(model(x), y).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    op = hessian.HessianOperator(model, loss_fn, x, y)
    op.matvec(torch.randn(op.dim))
    op.matmat(torch.randn(3, op.dim))
    assert count_hooks(model) == 0
    assert all(p.grad is grads[n] and torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_operator_restricted_to_some_parameters_gives_that_block_of_the_hessian():
    model, loss_fn, x, y = tiny_problem()
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[:2])  # hidden.1.linear.weight and .bias follow hidden.0.linear
    block = hessian.exact_hessian(model, loss_fn, x, y, params=names[2:4])
    full = brute_force_hessian(model, loss_fn, x, y)
    stop = start + sizes[2] + sizes[3]
    torch.testing.assert_close(block, full[start:stop, start:stop], rtol=1e-10, atol=1e-12)


def test_unused_and_linear_parameters_have_zero_hessian_rows():
    model = nn.Sequential(nn.Linear(3, 1))
    model.register_parameter("unused", nn.Parameter(torch.ones(2)))
    exact = hessian.exact_hessian(model, lambda out, y: (out - y).sum(), torch.randn(4, 3), torch.zeros(4, 1))
    assert exact.shape == (6, 6) and not exact.any()


def test_float64_on_request_copies_a_float32_model_and_leaves_it_alone():
    model, loss_fn, x, y = tiny_problem()
    reference = brute_force_hessian(model, loss_fn, x, y)
    model32 = model.float()
    exact = hessian.exact_hessian(model32, loss_fn, x.float(), y, dtype=torch.float64)
    assert exact.dtype == torch.float64 and next(model32.parameters()).dtype == torch.float32
    torch.testing.assert_close(exact, reference, rtol=1e-5, atol=1e-6)  # float32 weights, float64 maths


def test_exact_hessian_refuses_a_model_too_big_to_form():
    with pytest.raises(ValueError, match="max_params"):
        hessian.exact_hessian(*tiny_problem(), max_params=10)


# --------------------------------------------------------------------------- errors


def test_a_frozen_model_is_an_error_that_names_the_fix():
    model, loss_fn, x, y = tiny_problem()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        hessian.top_eigenvalues(model, loss_fn, x, y)


def test_a_non_finite_loss_is_an_error():
    model, loss_fn, x, y = tiny_problem()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="loss is NaN/Inf"):
        hessian.hessian_trace(model, loss_fn, x, y)


def test_a_non_finite_hessian_vector_product_is_an_error():
    model = nn.Linear(2, 1)
    x = torch.randn(4, 2)
    targets = model(x).detach()  # |out - y|^1.5 at 0: gradient 0, second derivative infinite

    def loss_fn(out, y):
        return (out - y).abs().pow(1.5).sum()

    op = hessian.HessianOperator(model, loss_fn, x, targets)
    with pytest.raises(ValueError, match="Hessian-vector product has NaN/Inf"):
        op.matvec(torch.ones(op.dim))


def test_a_non_scalar_loss_is_an_error():
    model, _, x, y = tiny_problem()
    with pytest.raises(ValueError, match="scalar"):
        hessian.HessianOperator(model, nn.CrossEntropyLoss(reduction="none"), x, y)


@pytest.mark.parametrize("k", [0, 47])
def test_k_outside_one_to_the_parameter_count_is_an_error(k):
    with pytest.raises(ValueError, match="number of parameters P=46"):
        hessian.top_eigenvalues(*tiny_problem(), k=k)


# --------------------------------------------------------------------------- eigenvalues


def test_top_eigenvalues_match_the_exact_spectrum_with_eigenvectors():
    problem = tiny_problem()
    exact = brute_force_hessian(*problem)
    eigenvalues = torch.linalg.eigvalsh(exact)
    result = hessian.top_eigenvalues(*problem, k=3, tol=1e-10)
    assert result.converged
    torch.testing.assert_close(result.eigenvalues, eigenvalues[-3:].flip(0), rtol=1e-9, atol=1e-12)
    residual = exact @ result.eigenvectors - result.eigenvectors * result.eigenvalues
    assert residual.norm(dim=0).max() < 1e-8
    torch.testing.assert_close(result.eigenvectors.T @ result.eigenvectors, torch.eye(3), atol=1e-10, rtol=0)
    assert result.smallest_eigenvalue == pytest.approx(eigenvalues[0].item(), abs=1e-9)
    assert result.smallest_eigenvalue < 0  # a cross-entropy Hessian away from a minimum is indefinite


def test_eigenvalue_error_is_within_the_reported_residual():
    problem = tiny_problem()
    eigenvalues = torch.linalg.eigvalsh(brute_force_hessian(*problem))
    result = hessian.top_eigenvalues(*problem, k=2, tol=1e-2)
    errors = (result.eigenvalues - eigenvalues[-2:].flip(0)).abs()
    assert (errors <= result.residuals + 1e-12).all()
    assert abs(result.smallest_eigenvalue - eigenvalues[0]) <= result.smallest_residual + 1e-12


def test_n_hvp_counts_every_product_lanczos_makes():
    matrix = matrix_with_spectrum([float(i) for i in range(40)])
    matvec, calls = counting(matrix)
    result = hessian.lanczos_eigenvalues(matvec, 40, k=2, tol=1e-6)
    assert result.n_hvp == len(calls) and 2 <= len(calls) <= 40


def test_lanczos_continues_past_an_invariant_subspace_with_exact_eigenvalues():
    matrix = matrix_with_spectrum([5.0, 5.0, 5.0] + [1.0] * 7 + [-2.0])  # 3 distinct: breakdown after 3
    result = hessian.lanczos_eigenvalues(lambda v: matrix @ v, 11, k=4, tol=1e-10)
    assert result.converged and result.n_hvp > 3
    distance = (result.eigenvalues[:, None] - torch.tensor([5.0, 1.0, -2.0])).abs().min(1).values
    assert distance.max() < 1e-9 and result.eigenvalues[0] == pytest.approx(5.0, abs=1e-9)
    assert result.smallest_eigenvalue == pytest.approx(-2.0, abs=1e-9)


def test_k_equal_to_the_parameter_count_returns_the_whole_spectrum():
    problem = tiny_problem()
    eigenvalues = torch.linalg.eigvalsh(brute_force_hessian(*problem))
    result = hessian.top_eigenvalues(*problem, k=46, tol=1e-8)
    torch.testing.assert_close(result.eigenvalues, eigenvalues.flip(0), rtol=0, atol=1e-9)


def test_a_warm_start_at_the_top_eigenvector_converges_in_one_product():
    problem = tiny_problem()
    _, vectors = torch.linalg.eigh(brute_force_hessian(*problem))
    result = hessian.top_eigenvalues(*problem, k=1, tol=1e-6, negative=False, start=vectors[:, -1])
    assert result.n_hvp == 1


def test_stopping_before_the_tolerance_warns():
    with pytest.warns(UserWarning, match="max_iter=3"):
        result = hessian.top_eigenvalues(*tiny_problem(), k=2, tol=1e-12, max_hvp=3)
    assert not result.converged and result.n_hvp == 3


def test_block_eigenvalues_match_each_layers_diagonal_block():
    problem = tiny_problem()
    exact = brute_force_hessian(*problem)
    result = hessian.block_eigenvalues(*problem, k=2, tol=1e-10)
    assert list(result) == ["hidden.0.linear", "hidden.1.linear", "output"]
    start = 0
    for block, size in zip(result.values(), [16, 20, 10]):
        eigenvalues = torch.linalg.eigvalsh(exact[start:start + size, start:start + size])
        torch.testing.assert_close(block.eigenvalues, eigenvalues[-2:].flip(0), rtol=1e-9, atol=1e-12)
        assert block.smallest_eigenvalue == pytest.approx(eigenvalues[0].item(), abs=1e-9)
        start += size


# --------------------------------------------------------------------------- trace


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    model = nn.Linear(5, 1, bias=False)  # loss sum_n (w . x_n)^2 / 2 with orthogonal x: H = diag
    x = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    result = hessian.hessian_trace(model, lambda out, y: 0.5 * out.square().sum(), x, torch.zeros(5, 1),
                                   deflate=0)
    assert result.estimate == pytest.approx(55.0, rel=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12) and result.n_hvp == 10


def test_the_quadratic_test_model_has_the_intended_hessian():
    torch.testing.assert_close(hessian.exact_hessian(*quadratic_problem()), QUADRATIC_MATRIX)


def test_plain_hutchinson_is_unbiased_within_its_standard_error():
    trace = torch.trace(QUADRATIC_MATRIX).item()
    result = hessian.hessian_trace(*quadratic_problem(), deflate=0, min_probes=500, max_probes=500)
    assert result.n_hvp == 500
    assert abs(result.estimate - trace) < 4 * result.stderr


def test_deflated_hutchinson_stops_on_the_standard_error_and_covers_the_truth():
    trace = torch.trace(QUADRATIC_MATRIX).item()
    result = hessian.hessian_trace(*quadratic_problem(), rtol=0.02, deflate=10)
    assert result.n_hvp == 10 + len(result.samples) and len(result.samples) < 1000
    assert result.stderr <= 0.02 * abs(result.estimate)
    assert abs(result.estimate - trace) < 4 * result.stderr


def test_the_standard_error_covers_the_truth_about_two_thirds_of_the_time():
    trace = torch.trace(QUADRATIC_MATRIX).item()
    covered = [abs(r.estimate - trace) <= r.stderr for r in (
        hessian.hessian_trace(*quadratic_problem(), deflate=0, min_probes=20, max_probes=20, seed=s)
        for s in range(100))]
    assert 0.55 <= sum(covered) / 100 <= 0.82  # nominal 0.68


def test_deflating_the_whole_space_gives_the_exact_trace():
    problem = tiny_problem()
    trace = torch.trace(brute_force_hessian(*problem)).item()
    result = hessian.hessian_trace(*problem, deflate=100)
    assert result.estimate == pytest.approx(trace, rel=1e-10) and result.stderr == 0 and result.n_hvp == 46


def test_fewer_than_two_probes_is_an_error():
    with pytest.raises(ValueError, match="min_probes"):
        hessian.hessian_trace(*tiny_problem(), min_probes=1)


# --------------------------------------------------------------------------- spectral density


def test_slq_recovers_a_known_spectrum_with_weights_summing_to_one():
    spectrum = {-1.0: 10, 0.0: 50, 2.0: 30, 10.0: 10}  # eigenvalue: multiplicity, P = 100
    matrix = matrix_with_spectrum([v for v, m in spectrum.items() for _ in range(m)])
    density = hessian.stochastic_lanczos_quadrature(lambda v: matrix @ v, 100, n_probes=200, n_iter=20)
    assert density.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert density.n_hvp == 200 * 4  # 4 distinct eigenvalues: each Krylov space is exhausted in 4 steps
    for value, multiplicity in spectrum.items():
        near = (density.nodes - value).abs() < 1e-8
        assert density.weights[near].sum().item() == pytest.approx(multiplicity / 100, abs=0.02)
    assert density.weights[(density.nodes[:, None] - torch.tensor(list(spectrum))).abs().min(1).values
                           > 1e-8].sum() < 1e-12


def test_slq_density_of_a_model_integrates_to_one_within_the_spectrum():
    problem = tiny_problem()
    eigenvalues = torch.linalg.eigvalsh(brute_force_hessian(*problem))
    density = hessian.spectral_density(*problem, n_probes=3, n_iter=10)
    assert density.weights.sum().item() == pytest.approx(1.0, abs=1e-12) and density.n_hvp == 30
    assert eigenvalues[0] - 1e-9 <= density.nodes.min() and density.nodes.max() <= eigenvalues[-1] + 1e-9
    grid = torch.linspace(-1, 2, 3001)
    assert torch.trapezoid(density.density(grid, sigma=0.01), grid).item() == pytest.approx(1.0, abs=1e-3)


def test_slq_mean_is_hutchinsons_normalised_trace_when_the_krylov_space_is_exhausted():
    matrix = QUADRATIC_MATRIX
    density = hessian.stochastic_lanczos_quadrature(lambda v: matrix @ v, 30, n_probes=300, n_iter=30)
    off_diagonal = matrix - torch.diag(matrix.diag())
    stderr = math.sqrt(2 * off_diagonal.square().sum().item() / 300)  # of P * q^T A q, |q| = 1
    mean = (density.weights * density.nodes).sum().item()
    assert abs(30 * mean - torch.trace(matrix).item()) < 4 * stderr


def test_top_eigenvalues_leaves_the_models_gradients_untouched():
    model, loss_fn, x, y = tiny_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessian.top_eigenvalues(model, loss_fn, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert count_hooks(model) == 0


# ------------------------------------------------------------ issue 16: train mode, state, composition


def dropout_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).double()
    return model, nn.CrossEntropyLoss(), torch.randn(16, 3), torch.randint(0, 2, (16,))


@pytest.mark.parametrize("tool", [hessian.top_eigenvalues, hessian.hessian_trace, hessian.spectral_density])
def test_hessian_tools_refuse_dropout_in_training_mode_naming_the_module_and_the_fix(tool):
    fix = r"2 \(Dropout\) is in training mode.*model\.eval\(\).*allow_train_mode=True"
    with pytest.raises(ValueError, match=fix):
        tool(*dropout_problem())


def test_with_allow_train_mode_the_result_repeats_and_the_rng_is_restored():
    model, loss_fn, x, y = dropout_problem()
    rng = torch.get_rng_state()
    first = hessian.top_eigenvalues(model, loss_fn, x, y, allow_train_mode=True).eigenvalues
    assert torch.equal(torch.get_rng_state(), rng)
    second = hessian.top_eigenvalues(model, loss_fn, x, y, allow_train_mode=True).eigenvalues
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.eval()
    assert model.training is False and hessian.top_eigenvalues(model, loss_fn, x, y).converged


def test_batchnorm_in_training_mode_is_refused_and_with_the_opt_in_its_buffers_are_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).double()
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    with pytest.raises(ValueError, match=r"1 \(BatchNorm1d\)"):
        hessian.hessian_trace(model, nn.CrossEntropyLoss(), x, y)
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    hessian.hessian_trace(model, nn.CrossEntropyLoss(), x, y, allow_train_mode=True, max_probes=20)
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k]), k
    assert all(m.training for m in model.modules())


def test_hessian_tools_work_under_no_grad():
    model, loss_fn, x, y = tiny_problem()
    expected = hessian.top_eigenvalues(model, loss_fn, x, y).eigenvalues
    with torch.no_grad():
        torch.testing.assert_close(hessian.top_eigenvalues(model, loss_fn, x, y).eigenvalues, expected)


class Encoder(nn.Module):
    """One TransformerEncoderLayer and a classifier on the first position."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(inputs)[:, 0])


def test_a_transformer_encoder_layer_has_a_hessian():
    # the CPU flash-attention kernel has no double backward; the math kernel does
    torch.manual_seed(0)
    model = Encoder().double().eval()
    x, y = torch.randn(4, 5, 8, dtype=torch.float64), torch.randint(0, 2, (4,))
    result = hessian.top_eigenvalues(model, nn.CrossEntropyLoss(), x, y)
    assert result.converged and math.isfinite(result.eigenvalues[0].item())


def test_hessian_tools_inside_a_monitor_leave_its_activations_alone():
    from gradflow_lessons.monitor import GradientMonitor

    model, loss_fn, x, y = tiny_problem()
    with GradientMonitor(model) as monitor:
        loss_fn(model(x), y).backward()
        hessian.top_eigenvalues(model, loss_fn, x, y)
        monitor.record()
    assert all(a.calls == 1 for a in monitor.activations)


# ------------------------------------------------------------ issue 16: errors that name the fix


def test_an_empty_batch_is_named_not_blamed_on_nan():
    model, loss_fn, _, _ = tiny_problem()
    with pytest.raises(ValueError, match="batch is empty"):
        hessian.top_eigenvalues(model, loss_fn, torch.randn(0, 3), torch.randint(0, 2, (0,)))


def test_a_loss_returned_as_a_python_float_is_named():
    model, loss_fn, x, y = tiny_problem()
    with pytest.raises(ValueError, match=r"returned a float.*no \.item\(\)"):
        hessian.top_eigenvalues(model, lambda out, t: loss_fn(out, t).item(), x, y)


def test_a_meta_device_model_is_named():
    with pytest.raises(ValueError, match="meta device"):
        hessian.top_eigenvalues(nn.Linear(3, 2, device="meta"), nn.CrossEntropyLoss(), *tiny_problem()[2:])


@pytest.mark.parametrize("kwargs", [dict(n_iter=0), dict(n_probes=0), dict(n_iter=-3)])
def test_spectral_density_refuses_no_steps_or_no_probes(kwargs):
    with pytest.raises(ValueError, match="n_probes >= 1 and n_iter >= 1"):
        hessian.spectral_density(*tiny_problem(), **kwargs)


def test_max_hvp_zero_is_an_error_not_the_default():
    with pytest.raises(ValueError, match="max_hvp of top_eigenvalues.*is 0"):
        hessian.top_eigenvalues(*tiny_problem(), max_hvp=0)


@pytest.mark.parametrize("start", [torch.zeros(46), torch.full((46,), math.nan)])
def test_a_zero_or_nan_start_vector_is_named(start):
    with pytest.raises(ValueError, match="start vector is zero or has NaN"):
        hessian.top_eigenvalues(*tiny_problem(), start=start)


def test_a_negative_deflation_is_an_error():
    with pytest.raises(ValueError, match="deflate=-1"):
        hessian.hessian_trace(*tiny_problem(), deflate=-1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func's own
def test_cost_benchmark_runs_every_column_on_a_tiny_model(capsys):
    benchmark = load_benchmark("hessian")
    torch.manual_seed(0)
    model = MLP(4, 3, depth=2, width=6, activation="tanh").double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    benchmark.cost_ratios("tiny", model, x, y, rounds=2)
    out = capsys.readouterr().out
    assert "tiny," in out and "round by round: median" in out
    assert count_hooks(model) == 0
