import math

import pytest
import torch
from conftest import load_benchmark
from torch import nn

from gradflow_lessons.models import MLP
from gradflow_lessons.monitor import GradientMonitor, count_hooks, to_matrix

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def hook_count(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Every forward/backward hook on every module, plus the optimizer's step hooks."""
    count = count_hooks(model)
    if optimizer is not None:
        count += len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)
    return count


def tiny_model(device: str = "cpu", activation: str = "relu") -> nn.Module:
    torch.manual_seed(0)
    return MLP(3, 2, depth=3, width=5, activation=activation).double().to(device)


def backward(model: nn.Module, batch: int = 7, device: str = "cpu") -> torch.Tensor:
    inputs = torch.randn(batch, 3, dtype=torch.float64, device=device)
    loss = model(inputs).pow(2).sum()
    loss.backward()
    return inputs


def test_hooks_are_removed_on_exit():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert hook_count(model, optimizer) == 0
    with GradientMonitor(model, optimizer) as monitor:
        assert hook_count(model, optimizer) > 0
        backward(model)
        monitor.record()
    assert hook_count(model, optimizer) == 0


def test_hooks_are_removed_when_the_body_raises():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyError):
        with GradientMonitor(model, optimizer):
            backward(model)
            raise KeyError("failure inside the with block")
    assert hook_count(model, optimizer) == 0


def test_close_removes_hooks_without_a_with_block():
    model = tiny_model()
    monitor = GradientMonitor(model).__enter__()
    monitor.close()
    monitor.close()  # idempotent
    assert hook_count(model) == 0


def test_entering_a_monitor_twice_raises_and_leaves_no_extra_hooks():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        hooks = hook_count(model)
        with pytest.raises(RuntimeError, match="entered twice"):
            monitor.__enter__()
        assert hook_count(model) == hooks
    assert hook_count(model) == 0


def test_a_monitor_can_be_attached_again_and_continues_its_history():
    model = tiny_model()
    monitor = GradientMonitor(model)
    for _ in range(2):
        with monitor:
            backward(model)
            monitor.record()
    assert monitor.steps == [0, 1] and hook_count(model) == 0


def test_record_before_backward_names_the_fix():
    model = tiny_model()
    with GradientMonitor(model) as monitor, pytest.raises(RuntimeError, match=r"loss\.backward\(\)"):
        monitor.record()


def test_record_outside_the_with_block_names_the_fix():
    model = tiny_model()
    backward(model)
    with pytest.raises(RuntimeError, match="with GradientMonitor"):
        GradientMonitor(model).record()


@pytest.mark.parametrize("make", [nn.ReLU, lambda: tiny_model().requires_grad_(False)])
def test_model_without_trainable_parameters_is_rejected_naming_the_fix(make):
    with pytest.raises(ValueError, match=r"requires_grad.*freeze"):
        GradientMonitor(make())


def test_a_non_module_is_rejected():
    with pytest.raises(ValueError, match="nn.Module"):
        GradientMonitor(lambda x: x)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_statistics_equal_brute_force_per_module(device):
    model = tiny_model(device)
    with torch.no_grad():
        model.hidden[0].linear.weight[0].zero_()  # a unit whose weight gradient has zeros
    with GradientMonitor(model) as monitor:
        backward(model, device=device)
        records = monitor.record()
    modules = dict(model.named_modules())
    assert [r.layer for r in records] == ["hidden.0.linear", "hidden.1.linear", "output"]
    for r in records:
        grads = torch.cat([p.grad.flatten() for p in modules[r.layer].parameters()])
        assert r.grad_norm == pytest.approx(torch.sqrt((grads**2).sum()).item(), rel=1e-12)
        assert r.grad_mean_abs == pytest.approx(grads.abs().mean().item(), rel=1e-12)
        assert r.grad_max_abs == pytest.approx(grads.abs().max().item(), rel=1e-12)
        assert r.zero_fraction == pytest.approx((grads == 0).double().mean().item())
        assert (r.nonfinite, r.numel, r.step) == (0, grads.numel(), 0)


def test_monitor_counts_nan_and_inf_gradients_instead_of_dropping_them():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        backward(model)
        grad = model.hidden[1].linear.weight.grad
        grad[0, :3] = float("nan")
        grad[1, 0] = float("inf")
        model.output.bias.grad[0] = -float("inf")
        records = {r.layer: r for r in monitor.record()}
    assert records["hidden.1.linear"].nonfinite == 4
    assert math.isnan(records["hidden.1.linear"].grad_norm)
    assert records["output"].nonfinite == 1 and records["output"].grad_norm == math.inf
    assert records["hidden.0.linear"].nonfinite == 0
    assert math.isfinite(records["hidden.0.linear"].grad_norm)


def test_frozen_parameters_are_left_out_and_counted():
    model = tiny_model()
    model.hidden[0].requires_grad_(False)
    model.output.bias.requires_grad_(False)
    with GradientMonitor(model) as monitor:
        backward(model)
        records = monitor.record()
    assert monitor.layers == ["hidden.1.linear", "output"]
    assert monitor.frozen_parameters == 3 * 5 + 5 + 2
    output = records[-1]
    assert output.numel == 10
    assert output.grad_norm == pytest.approx(model.output.weight.grad.norm().item(), rel=1e-12)


class SharedTwice(nn.Module):
    """The same linear layer applied twice, reachable under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = self.first
        self.act = nn.Tanh()

    def forward(self, x):
        return self.second(self.act(self.first(x)))


def test_a_shared_module_is_reported_once_with_its_calls_pooled():
    torch.manual_seed(0)
    model = SharedTwice().double()
    with GradientMonitor(model) as monitor:
        x = torch.randn(6, 4, dtype=torch.float64)
        model(x).sum().backward()
        (record,) = monitor.record()
    assert record.layer == "first" and monitor.aliases == {"first": ["first", "second"]}
    grads = torch.cat([model.first.weight.grad.flatten(), model.first.bias.grad.flatten()])
    assert record.grad_norm == pytest.approx(grads.norm().item(), rel=1e-12)
    linear = next(a for a in monitor.activations if a.layer == "first")
    with torch.no_grad():
        outputs = torch.cat([model.first(x), model.first(torch.tanh(model.first(x)))])
    assert linear.calls == 2 and linear.numel == outputs.numel()
    assert linear.mean == pytest.approx(outputs.mean().item(), rel=1e-12)
    assert linear.std == pytest.approx(outputs.std(unbiased=False).item(), rel=1e-9)


class WithOwnParameter(nn.Module):
    """A container that owns a parameter besides its children."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.body = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), nn.Linear(3, 1))

    def forward(self, x):
        return self.scale * self.body(x)


def test_containers_report_only_what_they_own():
    model = WithOwnParameter()
    with GradientMonitor(model) as monitor:
        model(torch.randn(5, 3)).sum().backward()
        records = {r.layer: r for r in monitor.record()}
    assert list(records) == ["", "body.0.0", "body.1"]  # "" is the model itself
    assert records[""].grad_norm == pytest.approx(model.scale.grad.abs().item())
    assert monitor.activation_layers == ["body.0.0", "body.0.1", "body.1"]


def test_layers_without_gradients_this_step_are_skipped():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        backward(model)
        model.output.weight.grad = None
        model.output.bias.grad = None
        records = monitor.record()
    assert [r.layer for r in records] == ["hidden.0.linear", "hidden.1.linear"]


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_activation_statistics_equal_brute_force(activation):
    torch.manual_seed(1)
    model = MLP(3, 2, depth=3, width=6, activation=activation, init="normal", gain=12.0, bias=-1.0)
    model = model.double()
    captured = {}
    handle = model.hidden[1].act.register_forward_hook(lambda m, i, o: captured.update(out=o.detach()))
    with GradientMonitor(model) as monitor:
        backward(model, batch=9)
        monitor.record()
    handle.remove()
    out = captured["out"]  # [N, units]
    record = next(a for a in monitor.activations if a.layer == "hidden.1.act")
    assert record.mean == pytest.approx(out.mean().item(), rel=1e-10)
    assert record.std == pytest.approx(out.std(unbiased=False).item(), rel=1e-9)
    if activation == "relu":
        assert record.dead_fraction == pytest.approx((out == 0).all(0).double().mean().item())
        assert record.saturated_fraction is None
    else:
        centred = out if activation == "tanh" else 2 * out - 1
        assert record.saturated_fraction == pytest.approx((centred.abs() >= 0.99).double().mean().item())
        assert record.saturated_fraction > 0 and record.dead_fraction is None


def test_parameter_free_layers_get_activation_statistics():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        backward(model)
        monitor.record()
    assert "hidden.0.act" in monitor.activation_layers
    assert "hidden.0.norm" not in monitor.activation_layers  # nn.Identity repeats its input
    assert "hidden.0.act" not in monitor.layers
    assert {a.kind for a in monitor.activations} == {"Linear", "ReLU"}


def test_a_dead_relu_layer_reports_every_unit_dead():
    model = MLP(3, 2, depth=3, width=6, init="kaiming", bias=-100.0)
    with GradientMonitor(model) as monitor:
        model(torch.randn(8, 3)).sum().backward()
        records = {r.layer: r for r in monitor.record()}
    dead = {a.layer: a.dead_fraction for a in monitor.activations if a.dead_fraction is not None}
    assert dead == {"hidden.0.act": 1.0, "hidden.1.act": 1.0}
    assert records["hidden.0.linear"].zero_fraction == 1.0


def test_forwards_without_grad_are_not_counted():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        with torch.no_grad():
            model(torch.randn(50, 3, dtype=torch.float64))
        backward(model, batch=7)
        monitor.record()
    assert {a.numel for a in monitor.activations if a.layer == "hidden.0.act"} == {7 * 5}


def test_activations_can_be_switched_off():
    model = tiny_model()
    with GradientMonitor(model, activations=False) as monitor:
        assert hook_count(model) == 0
        backward(model)
        monitor.record()
    assert monitor.activations == [] and monitor.activation_layers == []


def test_update_ratio_is_the_relative_weight_change_of_the_next_step():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with GradientMonitor(model, optimizer, detail_every=1) as monitor:
        for _ in range(3):
            optimizer.zero_grad()
            backward(model)
            records = monitor.record()
            assert records[0].update_ratio is None  # the step has not run yet
            before = [p.detach().clone() for p in model.output.parameters()]
            optimizer.step()
    after = list(model.output.parameters())
    delta = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before)))
    weight = torch.sqrt(sum((a**2).sum() for a in after))
    last = monitor.history[-1]
    assert last.layer == "output" and last.step == 2
    assert last.update_ratio == pytest.approx((delta / weight).item(), rel=1e-10)
    assert all(r.update_ratio is not None for r in monitor.history)


def test_by_default_the_update_ratio_is_taken_after_the_detail_records_only():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with GradientMonitor(model, optimizer, detail_every=2) as monitor:
        for _ in range(4):
            optimizer.zero_grad()
            backward(model)
            monitor.record()
            optimizer.step()
    assert {r.step for r in monitor.history if r.update_ratio is not None} == {0, 2}


def test_steps_not_followed_by_an_optimizer_step_have_no_update_ratio():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer) as monitor:
        backward(model)
        monitor.record()
    assert all(r.update_ratio is None for r in monitor.history)


def test_history_is_bounded_to_the_last_max_steps():
    model = tiny_model()
    with GradientMonitor(model, max_steps=4, histogram_every=1, detail_every=1) as monitor:
        for _ in range(10):
            backward(model)
            monitor.record()
    assert monitor.steps == [6, 7, 8, 9] and monitor.dropped_steps == 6
    assert {r.step for r in monitor.history} == {6, 7, 8, 9}
    assert {h.step for h in monitor.histograms} == {6, 7, 8, 9}
    assert len(monitor.activations) == 4 * len(monitor.activation_layers)


def test_explicit_step_numbers_are_kept_and_later_ones_continue_from_them():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        backward(model)
        monitor.record(step=100)
        backward(model)
        monitor.record()
    assert monitor.steps == [100, 101]


def test_histograms_are_recorded_on_the_chosen_interval_and_count_every_finite_entry():
    model = tiny_model()
    with GradientMonitor(model, histogram_every=3, bins=12) as monitor:
        for _ in range(7):
            backward(model, batch=4)
            monitor.record()
    assert sorted({h.step for h in monitor.histograms}) == [0, 3, 6]
    gradient = next(h for h in monitor.histograms if h.kind == "gradient" and h.layer == "output")
    grads = torch.cat([p.grad.flatten() for p in model.output.parameters()])
    assert gradient.counts.shape == (12,) and gradient.edges.shape == (13,)
    assert gradient.counts.sum().item() == (grads != 0).sum().item()
    activation = next(h for h in monitor.histograms if h.kind == "activation" and h.layer == "output")
    assert activation.counts.sum().item() == 4 * 2


def test_histograms_of_large_layers_use_a_fixed_sample():
    model = tiny_model()
    with GradientMonitor(model, histogram_every=1, histogram_samples=8) as monitor:
        for _ in range(2):
            backward(model, batch=4)
            monitor.record()
    assert len(monitor.histograms) == 2 * (len(monitor.layers) + len(monitor.activation_layers))
    assert all(0 < h.counts.sum().item() <= 8 for h in monitor.histograms)  # layers have >= 10 entries


def test_by_default_every_fiftieth_record_is_a_detail_record_with_activations_pooled_since_the_last():
    model = tiny_model()
    with GradientMonitor(model, histogram_every=20) as monitor:
        for step in range(101):
            inputs = backward(model)
            monitor.record()
            if step == 100:  # the forward of step 100 is what the detail record of step 100 pools
                with torch.no_grad():
                    expected = model.hidden[0].linear(inputs)
    assert monitor.detail_every == 50
    detail = sorted({r.step for r in monitor.history if r.grad_max_abs is not None})
    assert detail == [0, 50, 100] and {a.step for a in monitor.activations} == {0, 50, 100}
    assert len(monitor.history) == 101 * 3  # norms on every record
    assert {h.step for h in monitor.histograms if h.kind == "activation"} == {0, 20, 40, 60, 80, 100}
    first = next(a for a in monitor.activations if a.step == 100 and a.layer == "hidden.0.linear")
    assert first.calls == 1 and first.mean == pytest.approx(expected.mean().item(), rel=1e-12)


def test_detail_every_zero_records_no_activation_statistics_but_still_their_histograms():
    model = tiny_model()
    with GradientMonitor(model, detail_every=0, histogram_every=1) as monitor:
        for _ in range(2):
            backward(model)
            monitor.record()
    assert monitor.activations == [] and all(r.grad_mean_abs is None for r in monitor.history)
    assert {h.step for h in monitor.histograms if h.kind == "activation"} == {0, 1}


def test_detail_statistics_can_be_thinned_out():
    model = tiny_model()
    with GradientMonitor(model, detail_every=2) as monitor:
        for _ in range(3):
            backward(model)
            monitor.record()
    details = {(r.step, r.zero_fraction is None, r.grad_mean_abs is None, r.grad_max_abs is None)
               for r in monitor.history}
    assert details == {(0, False, False, False), (1, True, True, True), (2, False, False, False)}
    assert all(r.grad_norm > 0 for r in monitor.history)  # norms on every step


def test_to_matrix_is_layer_by_step_with_nan_for_missing_values():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        backward(model)
        monitor.record()
        model.output.weight.grad = model.output.bias.grad = None
        monitor.record(step=5)
    layers, steps, values = to_matrix(monitor.history, "grad_norm")
    assert layers == monitor.layers and steps == [0, 5] and values.shape == (3, 2)
    assert math.isnan(values[2, 1]) and not math.isnan(values[2, 0])


def test_recurrent_layers_with_tuple_outputs_are_monitored():
    from gradflow_lessons.models import RNNClassifier

    model = RNNClassifier(3, 8, 2)
    with GradientMonitor(model) as monitor:
        model(torch.randn(4, 6, 3)).sum().backward()
        monitor.record()
    assert monitor.layers == ["rnn", "output"]
    rnn = next(a for a in monitor.activations if a.layer == "rnn")
    assert rnn.numel == 4 * 6 * 8


def test_overhead_benchmark_runs_on_a_tiny_model(capsys):
    benchmark = load_benchmark("monitor_overhead")
    ratios = benchmark.main(
        ["--width", "16", "--depth", "3", "--batch", "8", "--rounds", "2", "--steps", "1"]
    )
    assert ratios["bare training step"] == 1.0
    assert "naive per-parameter .item() loop" in capsys.readouterr().out


def test_a_baseline_checkout_loads_beside_this_one_and_a_wrong_folder_says_how_to_make_one(tmp_path):
    from pathlib import Path

    from gradflow_lessons.tooling.baseline import baseline_module

    with pytest.raises(SystemExit, match="git worktree add"):
        baseline_module(str(tmp_path), "monitor")
    here = Path(__file__).resolve().parent.parent
    older = baseline_module(str(here), "monitor")
    assert older.__name__ == "gradflow_baseline.monitor" and older.GradientMonitor is not GradientMonitor


# ------------------------------------------------------------ issue 16: one record per backward


def test_recording_twice_after_one_backward_raises_instead_of_making_a_phantom_step():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer) as monitor:
        backward(model)
        monitor.record()
        with pytest.raises(ValueError, match=r"twice after one backward.*once per loss\.backward"):
            monitor.record()
        optimizer.step()
    assert monitor.steps == [0] and monitor.history[0].update_ratio is not None


def test_recording_after_each_backward_with_grads_kept_or_zeroed_in_place_is_fine():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        for _ in range(3):
            model.zero_grad(set_to_none=False)  # the same .grad tensors, written again
            backward(model)
            monitor.record()
    assert monitor.steps == [0, 1, 2]


def test_recording_the_same_step_number_twice_raises_naming_it():
    model = tiny_model()
    with GradientMonitor(model) as monitor:
        backward(model)
        monitor.record(step=5)
        backward(model)
        with pytest.raises(ValueError, match="step 5 is already recorded"):
            monitor.record(step=5)
    assert monitor.steps == [5]


# ------------------------------------------------------------ issue 16: float16, bfloat16, extremes


def reference_norms(model: nn.Module) -> dict[str, float]:
    """Per module, the float64 norm of its own parameters' gradients."""
    out = {}
    for name, module in model.named_modules():
        grads = [p.grad.double() for p in module.parameters(recurse=False) if p.grad is not None]
        if grads:
            out[name] = math.sqrt(sum(g.square().sum().item() for g in grads))
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_statistics_are_accumulated_in_float32(dtype):
    # 256 x 256 = 65,536 outputs of std ~1: their sum of squares overflows float16 (max
    # 65,504) and stalls in bfloat16 (8 bits of mantissa). A gradient of 65,536 entries of
    # 300 has the norm 76,800, beyond float16 too, while every entry is finite.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 256)).to(dtype)
    inputs = torch.randn(256, 16).to(dtype)
    with GradientMonitor(model) as monitor:
        model(inputs).float().mean().backward()
        model[2].weight.grad.fill_(300.0)
        monitor.record()
    records = {r.layer: r for r in monitor.history}
    for name, norm in reference_norms(model).items():
        assert records[name].nonfinite == 0
        assert records[name].grad_norm == pytest.approx(norm, rel=1e-3)
        assert math.isfinite(records[name].grad_mean_abs)
    with torch.no_grad():
        hidden = model[0](inputs).double()
    record = next(a for a in monitor.activations if a.layer == "0")
    assert record.std == pytest.approx(hidden.std(unbiased=False).item(), rel=1e-3)
    assert record.mean == pytest.approx(hidden.mean().item(), abs=1e-3)


@pytest.mark.parametrize("scale", [1e-26, 1e25])
def test_float32_gradients_far_below_or_above_float32_squares_keep_their_norm(scale):
    layer = nn.Linear(4, 3)
    with GradientMonitor(layer) as monitor:
        layer.weight.grad = torch.full((3, 4), scale)
        layer.bias.grad = torch.full((3,), scale)
        monitor.record()
    record = monitor.history[0]
    assert record.grad_norm == pytest.approx(scale * math.sqrt(15), rel=1e-6)  # not 0, not inf
    assert record.nonfinite == 0


# ------------------------------------------------------------ issue 16: tools compose


def test_a_forward_inside_torch_func_is_not_recorded_and_nothing_escapes():
    model = tiny_model()
    inputs = torch.randn(4, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    with GradientMonitor(model) as monitor:
        torch.func.vmap(lambda x: torch.func.functional_call(model, params, (x[None],)))(inputs)
        model(inputs).sum().backward()  # would raise if a vmapped tensor had escaped into the monitor
        monitor.record()
    assert all(a.calls == 1 for a in monitor.activations)


# ------------------------------------------------------------ issue 24: mixed precision (GradScaler)


def amp_step(dtype: torch.dtype):
    """One autocast forward on the CPU and a scaled backward: (model, optimizer, scaler)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=dtype):
        loss = nn.functional.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 3, (32,)))
    scaler.scale(loss).backward()
    return model, optimizer, scaler


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("unscale_first", [False, True])
def test_with_a_scaler_the_monitor_reports_the_true_gradients_before_and_after_unscale(dtype, unscale_first):
    model, optimizer, scaler = amp_step(dtype)
    true = {k: v / 2.0**10 for k, v in reference_norms(model).items()}
    logs = torch.cat([p.grad.flatten() for p in model[0].parameters()]).abs().log10() - 10 * math.log10(2)
    with GradientMonitor(model, optimizer, histogram_every=1) as monitor:
        if unscale_first:
            scaler.unscale_(optimizer)
        norms = {r.layer: r.grad_norm for r in monitor.record(scaler=scaler)}
        scaler.step(optimizer)
        scaler.update()
    for layer, norm in true.items():
        assert norms[layer] == pytest.approx(norm, rel=1e-6)
    hist = next(h for h in monitor.histograms if h.kind == "gradient" and h.layer == "0")
    centre = (hist.edges[:-1] + hist.edges[1:]) / 2
    mean_log = ((hist.counts * centre).sum() / hist.counts.sum()).item()
    assert mean_log == pytest.approx(logs[torch.isfinite(logs)].mean().item(), abs=0.3)  # log10 |true g|


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_fine_statistics_count_negative_zeros_as_zeros_and_take_the_largest_magnitude(dtype):
    layer = nn.Linear(4, 2).to(dtype)
    with GradientMonitor(layer, activations=False, detail_every=1) as monitor:
        layer.weight.grad = torch.tensor([[-0.0, 0.0, -3.0, 1.0], [0.0, -0.0, 2.0, -0.5]], dtype=dtype)
        layer.bias.grad = torch.tensor([-0.0, 0.25], dtype=dtype)
        (record,) = monitor.record()
    assert record.zero_fraction == pytest.approx(5 / 10)  # -0.0 is a zero gradient too
    assert record.grad_max_abs == 3.0  # the largest magnitude, of a negative entry
    assert record.grad_mean_abs == pytest.approx(6.75 / 10)
    with GradientMonitor(layer, activations=False, detail_every=1) as monitor:
        layer.weight.grad = torch.tensor([[math.nan, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 9.0]], dtype=dtype)
        (record,) = monitor.record()
    assert math.isnan(record.grad_max_abs) and record.nonfinite == 1


def test_fine_statistics_of_a_gradient_larger_than_the_scratch_buffer_are_taken_in_pieces(monkeypatch):
    import gradflow_lessons.monitor as monitor_module

    monkeypatch.setattr(monitor_module, "_CHUNK", 7)  # the 5x4 weight in three pieces, the bias in one
    model = tiny_model()
    with GradientMonitor(model, activations=False, detail_every=1) as monitor:
        backward(model)
        model.hidden[0].linear.weight.grad[0, :3] = 0.0
        model.hidden[0].linear.weight.grad[1, 0] = -0.0
        records = {r.layer: r for r in monitor.record()}
    for name, record in records.items():
        grads = torch.cat([p.grad.flatten() for p in model.get_submodule(name).parameters()])
        assert record.grad_mean_abs == pytest.approx(grads.abs().mean().item(), rel=1e-12)
        assert record.grad_max_abs == grads.abs().max().item()
        assert record.zero_fraction == pytest.approx((grads == 0).double().mean().item())
    assert records["hidden.0.linear"].zero_fraction >= 4 / 20  # the zeros set above, -0.0 included


def test_forward_hooks_are_attached_only_for_the_forwards_a_detail_record_pools():
    model = tiny_model()
    counts = []
    with GradientMonitor(model, detail_every=3) as monitor:
        for _ in range(4):
            counts.append(count_hooks(model))
            backward(model)
            monitor.record()
    hooked = len(monitor.activation_layers)
    assert counts == [hooked, 0, 0, hooked] and count_hooks(model) == 0
    assert {a.step for a in monitor.activations} == {0, 3}
