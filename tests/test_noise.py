"""gradflow_lessons.noise: every quantity against brute-force autograd in float64."""

from __future__ import annotations

import itertools
import math
import os
import socket
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import free_port, load_benchmark
from torch import nn

from gradflow_lessons import noise
from gradflow_lessons.models import MLP
from gradflow_lessons.monitor import GradientMonitor, count_hooks

N = 6


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def mlp_problem(n: int = N):
    model = MLP(3, 4, depth=3, width=5, activation="tanh")
    return model, nn.CrossEntropyLoss(), torch.randn(n, 3), torch.randint(0, 4, (n,))


def looped_gradients(model, loss_fn, inputs, targets) -> torch.Tensor:
    """[N, P]: one backward pass per sample, the definition of a per-sample gradient."""
    rows = []
    for x, y in zip(inputs, targets):
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss_fn(model(x[None]), y[None]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def brute_force_noise(per_sample: torch.Tensor) -> tuple[float, float]:
    """(|G|^2, tr Sigma) by the textbook formulas, from an [N, P] matrix."""
    n = per_sample.shape[0]
    trace = torch.cov(per_sample.T).trace().item() if per_sample.shape[1] > 1 else per_sample.var().item()
    return per_sample.mean(0).square().sum().item() - trace / n, trace


# --------------------------------------------------------------------------- per-sample gradients


def test_per_sample_gradients_match_one_backward_per_sample():
    model, loss_fn, x, y = mlp_problem()
    grads = noise.per_sample_gradients(model, loss_fn, x, y)
    flat = torch.cat([g.reshape(N, -1) for g in grads.values()], 1)
    assert list(grads) == [n for n, _ in model.named_parameters()]
    torch.testing.assert_close(flat, looped_gradients(model, loss_fn, x, y), rtol=1e-12, atol=1e-12)


def test_per_sample_gradients_of_a_parameter_subset_only_return_that_subset():
    model, loss_fn, x, y = mlp_problem()
    grads = noise.per_sample_gradients(model, loss_fn, x, y, params=["output.bias"])
    full = noise.per_sample_gradients(model, loss_fn, x, y)
    assert list(grads) == ["output.bias"]
    torch.testing.assert_close(grads["output.bias"], full["output.bias"])


def conv2d_model():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3))


def conv1d_model():
    return nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=1), nn.Flatten(), nn.Linear(15, 3))


def sequence_model():  # a Linear applied at every position: [N, T, D]
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 3, bias=False))


CASES = {
    "mlp": (lambda: MLP(3, 3, depth=3, width=5), (N, 3)),
    "conv2d": (conv2d_model, (N, 2, 5, 5)),
    "conv1d": (conv1d_model, (N, 2, 11)),
    "sequence": (sequence_model, (N, 3, 4)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_hook_sq_norms_match_vmap(case, dtype):
    make, shape = CASES[case]
    model = make().to(dtype)
    x, y, loss_fn = torch.randn(shape, dtype=dtype), torch.randint(0, 3, (N,)), nn.CrossEntropyLoss()
    fast = noise.per_sample_grad_sq_norms(model, loss_fn, x, y)
    grads = noise.per_sample_gradients(model, loss_fn, x, y)
    for layer, sq in fast.items():
        ref = sum(g.double().reshape(N, -1).square().sum(1) for k, g in grads.items()
                  if k.rpartition(".")[0] == layer)
        assert ((sq - ref).abs().max() / ref.max()).item() < (1e-12 if dtype == torch.float64 else 1e-6)
    assert sorted(fast) == sorted({k.rpartition(".")[0] for k in grads})


def test_hooks_are_removed_after_the_fast_path_also_on_error():
    model, loss_fn, x, y = mlp_problem()
    noise.per_sample_grad_sq_norms(model, loss_fn, x, y)
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError):
        noise.per_sample_grad_sq_norms(model, loss_fn, x[:, :2], y)  # wrong input width
    assert count_hooks(model) == 0


def test_fast_path_refuses_a_layer_called_twice():
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    with pytest.raises(ValueError, match="twice"):
        noise.per_sample_grad_sq_norms(model, nn.MSELoss(), torch.randn(N, 3), torch.randn(N, 3))
    assert count_hooks(layer) == 0


def test_fast_path_refuses_unsupported_layers_and_auto_falls_back_to_vmap():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    x, y = torch.randn(N, 3), torch.randn(N, 2)
    with pytest.raises(ValueError, match="per_sample_gradients"):
        noise.per_sample_grad_sq_norms(model, nn.MSELoss(), x, y)
    assert noise.gradient_noise_scale(model, nn.MSELoss(), x, y).method == "vmap"


def small_cnn():  # an explicit conv (few channels), a Gram conv (few positions), a Linear
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(64, 3))


def test_auto_takes_the_hooks_on_a_cnn_and_matches_brute_force():
    model, loss_fn = small_cnn(), nn.CrossEntropyLoss()
    x, y = torch.randn(N, 2, 6, 6), torch.randint(0, 3, (N,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = noise.gradient_noise_scale(model, loss_fn, x, y)
    g2, trace = brute_force_noise(looped_gradients(model, loss_fn, x, y))
    assert result.method == "hooks"
    assert result.grad_sq_norm == pytest.approx(g2, rel=1e-10)
    assert result.trace_cov == pytest.approx(trace, rel=1e-10)
    assert count_hooks(model) == 0


def test_auto_falls_back_to_vmap_for_a_layer_called_twice_and_hooks_refuse_it():
    layer = nn.Linear(3, 3)
    model, x, y = nn.Sequential(layer, nn.Tanh(), layer), torch.randn(16, 3), torch.randn(16, 3)
    result = noise.gradient_noise_scale(model, nn.MSELoss(), x, y)
    g2, trace = brute_force_noise(looped_gradients(model, nn.MSELoss(), x, y))
    assert result.method == "vmap" and result.trace_cov == pytest.approx(trace, rel=1e-10)
    with pytest.raises(ValueError, match="twice"):
        noise.gradient_noise_scale(model, nn.MSELoss(), x, y, method="hooks")
    assert count_hooks(model) == 0


# --------------------------------------------------------------------------- noise scale


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_noise_scale_matches_brute_force_from_looped_gradients(method):
    model, loss_fn, x, y = mlp_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # this batch's |G|^2 estimate is negative
        result = noise.gradient_noise_scale(model, loss_fn, x, y, method=method)
    g2, trace = brute_force_noise(looped_gradients(model, loss_fn, x, y))
    assert result.method == method and result.batch_size == N
    assert result.grad_sq_norm == pytest.approx(g2, rel=1e-10)
    assert result.trace_cov == pytest.approx(trace, rel=1e-10)
    assert result.signal_below_noise == (g2 <= 0)
    assert result.b_simple == (math.inf if g2 <= 0 else pytest.approx(trace / g2, rel=1e-10))


def test_layer_estimates_add_up_to_the_model_estimate_and_give_the_snr():
    model, loss_fn, x, y = mlp_problem()
    with pytest.warns(RuntimeWarning, match="unbiased estimate of"):  # a batch of 6: noise dominates
        result = noise.gradient_noise_scale(model, loss_fn, x, y)
    assert sorted(result.layers) == ["hidden.0.linear", "hidden.1.linear", "output"]
    assert sum(v.trace_cov for v in result.layers.values()) == pytest.approx(result.trace_cov)
    assert sum(v.grad_sq_norm for v in result.layers.values()) == pytest.approx(result.grad_sq_norm)
    snr = noise.gradient_snr(model, loss_fn, x, y)
    grads = noise.per_sample_gradients(model, loss_fn, x, y, params=["output.weight", "output.bias"])
    g2, trace = brute_force_noise(torch.cat([g.reshape(N, -1) for g in grads.values()], 1))
    assert snr["output"] == pytest.approx(g2 / trace, rel=1e-10)


def test_noise_scale_estimates_are_unbiased_over_every_batch_of_a_population():
    # A linear "model" whose per-sample gradient is its input: g_i = x_i. Over every batch
    # of 2 drawn with replacement from 3 points, the estimates average to the population's
    # exact |G|^2 and tr(Sigma); without the bias correction |G|^2 would be tr(Sigma)/2 too high.
    population = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    model = nn.Linear(2, 1, bias=False)

    def loss_fn(outputs, _targets):
        return outputs.mean()

    mean = population.mean(0)
    exact_g2, exact_trace = mean.square().sum().item(), (population - mean).square().sum(1).mean().item()
    results = [noise.gradient_noise_scale(model, loss_fn, population[list(i)], torch.zeros(2))
               for i in itertools.product(range(3), repeat=2)]
    assert sum(r.grad_sq_norm for r in results) / 9 == pytest.approx(exact_g2, rel=1e-12)
    assert sum(r.trace_cov for r in results) / 9 == pytest.approx(exact_trace, rel=1e-12)


def test_noise_scale_leaves_grad_untouched():
    model, loss_fn, x, y = mlp_problem()
    with pytest.warns(RuntimeWarning, match="unbiased estimate of"):  # a batch of 6: noise dominates
        noise.gradient_noise_scale(model, loss_fn, x, y, method="hooks")
        noise.gradient_noise_scale(model, loss_fn, x, y, method="vmap")
    assert all(p.grad is None for p in model.parameters())


def test_noise_scale_refuses_a_model_without_trainable_parameters():
    model, loss_fn, x, y = mlp_problem()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        noise.gradient_noise_scale(model, loss_fn, x, y)


def test_noise_scale_refuses_a_batch_of_one_and_says_what_to_do():
    model, loss_fn, x, y = mlp_problem()
    with pytest.raises(ValueError, match="N - 1.*at least 2 samples.*two_batch_estimate"):
        noise.gradient_noise_scale(model, loss_fn, x[:1], y[:1])


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_noise_scale_refuses_nan_gradients(method):
    model, loss_fn, x, y = mlp_problem()
    x[2, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        noise.gradient_noise_scale(model, loss_fn, x, y, method=method)


def test_per_sample_gradients_refuse_batchnorm_in_training_mode():
    model = MLP(3, 2, depth=3, width=4, norm="batch")
    x, y = torch.randn(N, 3), torch.randn(N, 2)
    with pytest.raises(ValueError, match="BatchNorm.*model.eval"):
        noise.gradient_noise_scale(model, nn.MSELoss(), x, y)
    model.eval()
    assert noise.gradient_noise_scale(model, nn.MSELoss(), x, y).method == "vmap"


def test_noise_scale_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="'auto', 'hooks', 'vmap' or 'loop'"):
        noise.gradient_noise_scale(*mlp_problem(), method="fast")


# --------------------------------------------------------------------------- covariance


def test_covariance_matches_torch_cov_on_a_parameter_subset():
    model, loss_fn, x, y = mlp_problem()
    cov = noise.gradient_covariance(model, loss_fn, x, y, params=["output.bias", "hidden.1.linear.bias"])
    rows = noise.per_sample_gradients(model, loss_fn, x, y)
    flat = torch.cat([rows["output.bias"], rows["hidden.1.linear.bias"]], 1)
    assert cov.names == ["output.bias", "hidden.1.linear.bias"] and cov.batch_size == N
    torch.testing.assert_close(cov.covariance, torch.cov(flat.T))
    torch.testing.assert_close(cov.mean, flat.mean(0))
    assert cov.trace == pytest.approx(torch.cov(flat.T).trace().item())


def test_covariance_refuses_a_matrix_too_large_and_names_the_fix():
    with pytest.raises(ValueError, match="params="):
        noise.gradient_covariance(*mlp_problem(), max_dim=10)


# --------------------------------------------------------------------------- two batches, EMA


def test_two_batch_estimate_recovers_signal_and_noise_from_expected_norms():
    g2, trace = 2.0, 30.0
    est = noise.two_batch_estimate(g2 + trace / 4, g2 + trace / 64, 4, 64)
    assert est.grad_sq_norm == pytest.approx(g2) and est.trace_cov == pytest.approx(trace)
    assert est.b_simple == pytest.approx(15.0)


def test_two_batch_estimate_from_single_samples_equals_the_per_sample_estimate():
    model, loss_fn, x, y = mlp_problem()
    rows = looped_gradients(model, loss_fn, x, y)
    small = rows.square().sum(1).mean()  # |G_small|^2 averaged over N batches of 1
    est = noise.two_batch_estimate(small, rows.mean(0).square().sum(), 1, N)
    g2, trace = brute_force_noise(rows)
    assert est.grad_sq_norm == pytest.approx(g2, rel=1e-10)
    assert est.trace_cov == pytest.approx(trace, rel=1e-10)


def test_two_batch_estimate_refuses_a_big_batch_not_bigger():
    with pytest.raises(ValueError, match="small_batch < big_batch"):
        noise.two_batch_estimate(1.0, 0.5, 8, 8)


def test_ema_averages_numerator_and_denominator_with_bias_correction():
    ema = noise.NoiseScaleEMA(beta=0.9)
    with pytest.raises(RuntimeError, match="update"):
        _ = ema.b_simple
    assert ema.update(noise.TwoBatchEstimate(2.0, 10.0, 1, 2)) == pytest.approx(5.0)  # no bias to 0
    ema.update(noise.TwoBatchEstimate(-1.0, 10.0, 1, 2))  # a negative |G|^2 on a noisy step
    assert ema.grad_sq_norm == pytest.approx((0.1 * 0.9 * 2 - 0.1) / (1 - 0.81))
    assert ema.b_simple == pytest.approx(10.0 / ema.grad_sq_norm)


# --------------------------------------------------------------------------- data-parallel


def test_all_reduce_gradients_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        noise.all_reduce_gradients(mlp_problem()[0], batch_size=4)


WORLD, LOCAL = 2, 5


def dp_problem():
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(1)
    model = MLP(3, 4, depth=3, width=5, activation="tanh")
    return model, nn.CrossEntropyLoss(), torch.randn(WORLD * LOCAL, 3), torch.randint(0, 4, (WORLD * LOCAL,))


def dp_worker(rank: int, port: int, out: str) -> None:
    """One data-parallel worker: backward on its shard, then the noise-aware all-reduce."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model, loss_fn, x, y = dp_problem()
        shard = slice(rank * LOCAL, (rank + 1) * LOCAL)
        loss_fn(model(x[shard]), y[shard]).backward()
        est = noise.all_reduce_gradients(model, batch_size=LOCAL)
        torch.save({"estimate": est, "grads": [p.grad for p in model.parameters()]}, out)
    finally:
        dist.destroy_process_group()


def launch_workers(tmp_path: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(noise.__file__).parents[1]))
    loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    if loopback:
        env.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
    for _attempt in range(2):  # a second try if another process took the free port meanwhile
        port = free_port()
        outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
        procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), str(outs[r])], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(WORLD)]
        logs = []
        try:
            for proc in procs:
                logs.append(proc.communicate(timeout=120)[0])
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        if all(p.returncode == 0 for p in procs):
            return [torch.load(o, weights_only=False) for o in outs]
        if not any("address already in use" in log.lower() for log in logs):
            break
    pytest.fail("data-parallel workers failed:\n" + "\n".join(logs))


@pytest.mark.slow
def test_data_parallel_estimate_on_two_gloo_workers_matches_the_single_process_one(tmp_path):
    results = launch_workers(tmp_path)
    model, loss_fn, x, y = dp_problem()
    params = list(model.parameters())
    shards = [torch.autograd.grad(loss_fn(model(x[s]), y[s]), params)
              for s in (slice(0, LOCAL), slice(LOCAL, 2 * LOCAL))]
    big = torch.autograd.grad(loss_fn(model(x), y), params)
    small_sq = sum(sum(g.square().sum() for g in shard) for shard in shards) / WORLD
    expected = noise.two_batch_estimate(small_sq, sum(g.square().sum() for g in big), LOCAL, WORLD * LOCAL)
    for result in results:
        est = result["estimate"]
        assert (est.small_batch, est.big_batch) == (LOCAL, WORLD * LOCAL)
        assert est.grad_sq_norm == pytest.approx(expected.grad_sq_norm, rel=1e-9)
        assert est.trace_cov == pytest.approx(expected.trace_cov, rel=1e-9)
        for got, want in zip(result["grads"], big):  # .grad now holds the global-batch gradient
            torch.testing.assert_close(got, want)


if __name__ == "__main__":  # a data-parallel worker, started by launch_workers
    dp_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])


# ------------------------------------------------------------ issue 16: the model's state, composition


def dropout_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 4))


def test_the_vmap_path_inside_an_active_monitor_leaves_the_next_forward_working():
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 4))
    x, y = torch.randn(N, 3), torch.randint(0, 4, (N,))
    with GradientMonitor(model) as monitor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y).method == "vmap"
        nn.CrossEntropyLoss()(model(x), y).backward()  # raised "tensor may have escaped" before
        monitor.record()
    assert all(a.calls == 1 for a in monitor.activations)


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_dropout_in_training_mode_is_refused_naming_the_module_and_the_fix(method):
    x, y = torch.randn(N, 3), torch.randint(0, 4, (N,))
    with pytest.raises(ValueError, match=r"2 \(Dropout\).*model\.eval\(\).*allow_train_mode=True"):
        noise.gradient_noise_scale(dropout_mlp(), nn.CrossEntropyLoss(), x, y, method=method)


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_with_allow_train_mode_dropout_is_measured_and_the_rng_and_flags_are_restored(method):
    model = dropout_mlp()
    x, y = torch.randn(16, 3), torch.randint(0, 4, (16,))
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first = noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y, method, allow_train_mode=True)
        again = noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y, method, allow_train_mode=True)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert first.trace_cov == again.trace_cov and math.isfinite(first.trace_cov)  # same masks: same RNG


def test_noise_tools_leave_buffers_and_grads_of_an_eval_batchnorm_model_as_they_were():
    model = MLP(3, 2, depth=3, width=4, norm="batch").eval()
    model(torch.randn(32, 3))  # (eval: no update)
    x, y = torch.randn(N, 3), torch.randn(N, 2)
    nn.MSELoss()(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        noise.gradient_noise_scale(model, nn.MSELoss(), x, y)
        noise.gradient_covariance(model, nn.MSELoss(), x, y, params=["output.bias"])
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())


def test_noise_tools_work_under_no_grad():
    model, loss_fn, x, y = mlp_problem(16)
    expected = noise.gradient_snr(model, loss_fn, x, y)
    with torch.no_grad():
        assert noise.gradient_snr(model, loss_fn, x, y) == pytest.approx(expected)
        assert noise.gradient_snr(model, loss_fn, x, y, method="vmap") == pytest.approx(expected)


# ------------------------------------------------------------ issue 16: honest numbers


def test_a_negative_signal_estimate_gives_an_infinite_noise_scale_a_flag_and_a_warning():
    model, loss_fn, x, y = mlp_problem()  # 6 samples: the unbiased |G|^2 estimate is negative here
    with pytest.warns(RuntimeWarning, match=r"noise .* dominates the signal.*b_simple is inf.*larger batch"):
        result = noise.gradient_noise_scale(model, loss_fn, x, y)
    g2, _ = brute_force_noise(looped_gradients(model, loss_fn, x, y))
    assert g2 < 0 and result.grad_sq_norm == pytest.approx(g2)  # the raw estimate is kept
    assert result.signal_below_noise and result.b_simple == math.inf


def test_a_positive_signal_estimate_is_not_flagged():
    model, loss_fn, x, _ = mlp_problem(64)
    y = torch.zeros(64, dtype=torch.long)  # every sample pulls the same way: a strong signal
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = noise.gradient_noise_scale(model, loss_fn, x, y)
    assert result.grad_sq_norm > 0 and not result.signal_below_noise
    assert result.b_simple == pytest.approx(result.trace_cov / result.grad_sq_norm)


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_a_summed_loss_gives_the_same_estimates_as_a_mean_loss(method):
    model, _, x, y = mlp_problem(16)
    mean = noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y, method)
    total = noise.gradient_noise_scale(model, nn.CrossEntropyLoss(reduction="sum"), x, y, method)
    assert total.grad_sq_norm == pytest.approx(mean.grad_sq_norm, rel=1e-10)
    assert total.trace_cov == pytest.approx(mean.trace_cov, rel=1e-10)


def test_a_loss_neither_mean_nor_sum_is_refused_by_the_hook_path():
    model, loss_fn, x, y = mlp_problem(16)
    with pytest.raises(ValueError, match="mean \\(or the sum\\) of per-sample losses"):
        scaled = lambda out, t: loss_fn(out, t) * len(out) ** 0.5  # noqa: E731
        noise.gradient_noise_scale(model, scaled, x, y, method="hooks")


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(3, 4), nn.Linear(3, 4)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.used(inputs)


def test_a_parameter_the_loss_does_not_use_counts_as_zero_gradient_on_every_path():
    torch.manual_seed(0)
    model, x, y = TwoHeads(), torch.randn(16, 3), torch.randint(0, 4, (16,))
    methods = ("hooks", "vmap", "loop")
    results = [noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y, m) for m in methods]
    for result in results:
        assert result.layers["unused"] == noise.LayerNoise(0.0, 0.0)
        assert result.trace_cov == pytest.approx(results[0].trace_cov, rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models_give_finite_estimates_close_to_float64(dtype):
    # the per-sample squared norms of a float16 gradient with entries ~300 overflow in float16
    model, loss_fn, x, y = mlp_problem(16)
    reference = noise.gradient_noise_scale(model, loss_fn, x, y)
    low = noise.gradient_noise_scale(model.to(dtype), lambda out, t: 1000 * loss_fn(out.double(), t),
                                     x.to(dtype), y)
    assert math.isfinite(low.trace_cov)
    assert low.trace_cov / 1000**2 == pytest.approx(reference.trace_cov, rel=0.1)


# ------------------------------------------------------------ issue 16: errors that name the fix


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.out = nn.GRU(3, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(inputs)[0][:, -1])


def test_a_model_vmap_cannot_batch_is_named_with_the_loop_fix_which_works():
    torch.manual_seed(0)
    model, x, y = GRUClassifier(), torch.randn(8, 5, 3), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="vmap cannot batch.*method='loop'"):
        noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        looped = noise.gradient_noise_scale(model, nn.CrossEntropyLoss(), x, y, method="loop")
    g2, trace = brute_force_noise(looped_gradients(model, nn.CrossEntropyLoss(), x, y))
    assert looped.trace_cov == pytest.approx(trace, rel=1e-10) and looped.grad_sq_norm == pytest.approx(g2)


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_a_loss_returned_as_a_python_float_is_named(method):
    model, loss_fn, x, y = mlp_problem()
    with pytest.raises(ValueError, match=r"\.item\(\)"):
        noise.gradient_noise_scale(model, lambda out, t: loss_fn(out, t).item(), x, y, method)


def test_a_meta_device_model_is_named():
    with pytest.raises(ValueError, match="meta device"):
        noise.gradient_noise_scale(nn.Linear(3, 4, device="meta"), nn.CrossEntropyLoss(), *mlp_problem()[2:])


@pytest.mark.filterwarnings("ignore:.*signal:RuntimeWarning")  # 5 samples: noise beats signal, as said
def test_cost_benchmark_runs_every_row_on_tiny_models_and_its_floor_is_the_same_quantity(capsys):
    import argparse

    benchmark = load_benchmark("noise")
    args = argparse.Namespace(rounds=2, clock="cpu", baseline=None)
    torch.manual_seed(0)
    mlp, x, y = MLP(6, 3, depth=2, width=8).eval(), torch.randn(5, 6), torch.randint(0, 3, (5,))
    benchmark.cost("tiny MLP", mlp, x, y, args)
    out = capsys.readouterr().out
    assert "floor: hooks, one grad, row norms, no checks" in out and "inside the tools' snapshot" in out
    assert "(Linear layers with bias only)" not in out and "forward+backward" in out
    rows, _ = benchmark.floor(mlp, nn.CrossEntropyLoss(), x, y)()  # checked against the tool inside
    layers = sum(isinstance(m, nn.Linear) for m in mlp.modules())
    assert rows.shape == (layers, 5) and rows.dtype == torch.float64
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    images, labels = torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))
    assert benchmark.floor(cnn, nn.CrossEntropyLoss(), images, labels) is None
