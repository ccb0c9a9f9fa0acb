import copy
import math
import random

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from torch import nn

from gradflow_lessons.diagnose import (
    ATTENTION_SATURATED_FRACTION,
    KINDS,
    LOSS_GROWTH_MAX,
    TIME_RATIO_MIN,
    UPDATE_RATIO_MAX,
    Diagnosis,
    diagnose,
)
from gradflow_lessons.models import MLP, RNNClassifier, TransformerClassifier
from gradflow_lessons.monitor import count_hooks
from gradflow_lessons.skips import ResidualCNN, ResidualMLP

mse = nn.functional.mse_loss
cross_entropy = nn.functional.cross_entropy


hook_count = count_hooks


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    return (torch.randn(128, 16, generator=g, dtype=torch.float64),
            torch.randn(128, 1, generator=g, dtype=torch.float64))


def mlp(seed: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    kwargs.setdefault("width", 32)
    return MLP(16, 1, **kwargs).double()


def image_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    images = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    return images, torch.randint(0, 10, (16,), generator=g)


def small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).double()


SICK = {
    "deep sigmoid": (dict(depth=10, activation="sigmoid"), "vanishing"),
    "30-layer ReLU with Xavier init": (dict(depth=30, activation="relu", init="xavier"), "vanishing"),
    "too large an init gain": (dict(depth=10, init="kaiming", gain=2.0), "exploding"),
    "biases that kill ReLUs": (dict(depth=6, bias=-3.0), "dead_relu"),
    "saturated tanh": (dict(depth=6, activation="tanh", init="xavier", gain=4.0), "saturation"),
}
HEALTHY_MLPS = {
    "deep ReLU with Kaiming init": dict(depth=30, activation="relu", init="kaiming"),
    "tanh with Xavier init": dict(depth=10, activation="tanh", init="xavier"),
    "GELU with Kaiming init": dict(depth=10, activation="gelu", init="kaiming"),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(SICK))
def test_diagnose_finds_the_classic_pathology_and_only_it(case, seed):
    kwargs, kind = SICK[case]
    diagnosis = diagnose(mlp(seed, **kwargs), mse, *batch(seed))
    assert diagnosis.kinds == [kind] and kind in KINDS
    finding = diagnosis.findings[0]
    assert finding.layers and finding.fix and finding.evidence
    assert all(isinstance(v, float) for v in finding.evidence.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(HEALTHY_MLPS))
def test_diagnose_is_silent_on_healthy_mlps(case, seed):
    diagnosis = diagnose(mlp(seed, **HEALTHY_MLPS[case]), mse, *batch(seed))
    assert diagnosis.findings == [], diagnosis.report()
    assert diagnosis.healthy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagnose_is_silent_on_a_pre_layernorm_residual_network(seed):
    torch.manual_seed(seed)
    model = ResidualMLP(16, 1, depth=16, width=32, norm="layer", placement="pre").double()
    assert diagnose(model, mse, *batch(seed)).healthy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagnose_is_silent_on_small_cnns(seed):
    torch.manual_seed(seed)
    residual = ResidualCNN(3, 10, depth=4, width=8, norm="layer").double()
    assert diagnose(residual, cross_entropy, *image_batch(seed)).healthy
    assert diagnose(small_cnn(seed), cross_entropy, *image_batch(seed)).healthy


def test_diagnose_reports_nan_inputs_as_nonfinite_with_the_data_fix():
    inputs, targets = batch()
    inputs[3, 5] = math.nan
    diagnosis = diagnose(mlp(0, depth=4, init="kaiming"), mse, inputs, targets)
    assert diagnosis.kinds == ["nonfinite"]
    assert diagnosis.findings[0].evidence["nonfinite_inputs"] == 1.0
    assert "data" in diagnosis.findings[0].fix


def test_diagnose_reports_nan_targets_as_nonfinite_data():
    inputs, targets = batch()
    targets[0, 0] = math.inf
    diagnosis = diagnose(mlp(0, depth=4, init="kaiming"), mse, inputs, targets)
    assert diagnosis.kinds == ["nonfinite"]
    assert diagnosis.findings[0].evidence["nonfinite_targets"] == 1.0
    assert diagnosis.findings[0].evidence["nonfinite_inputs"] == 0.0


def test_diagnose_reports_nonfinite_parameters():
    model = mlp(0, depth=4, init="kaiming")
    with torch.no_grad():
        model.hidden[1].linear.weight[0, 0] = math.inf
    diagnosis = diagnose(model, mse, *batch())
    assert diagnosis.kinds == ["nonfinite"]
    assert diagnosis.findings[0].evidence["nonfinite_parameters"] == 1.0


def test_grad_rms_matches_brute_force_autograd():
    model = mlp(0, depth=4, width=5)
    inputs, targets = batch()
    diagnosis = diagnose(model, mse, inputs, targets)
    names = [name for name, _ in model.linear_layers()]
    grads = torch.autograd.grad(mse(model(inputs), targets), [m.weight for _, m in model.linear_layers()]
                                + [m.bias for _, m in model.linear_layers()])
    half = len(names)
    for i, name in enumerate(names):
        expected = math.sqrt((grads[i].pow(2).sum() + grads[half + i].pow(2).sum()).item()
                             / (grads[i].numel() + grads[half + i].numel()))
        assert diagnosis.grad_rms[name] == pytest.approx(expected, rel=1e-12)
    assert list(diagnosis.grad_rms) == names


def test_diagnose_leaves_no_hooks_and_keeps_existing_gradients():
    model = mlp(0, depth=4, width=5)
    inputs, targets = batch()
    mse(model(inputs), targets).backward()
    before = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    diagnose(model, mse, inputs * 2, targets)
    assert hook_count(model) == 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_diagnose_removes_hooks_when_the_loss_raises():
    model = mlp(0, depth=3, width=5)

    def broken_loss(outputs, targets):
        raise KeyError("broken loss")

    with pytest.raises(KeyError):
        diagnose(model, broken_loss, *batch())
    assert hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_a_model_without_trainable_parameters_raises_a_value_error_naming_the_fix():
    model = mlp(0, depth=3, width=5).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        diagnose(model, mse, *batch())
    with pytest.raises(ValueError, match="freeze"):
        diagnose(nn.ReLU(), mse, *batch())


def test_the_report_is_readable_text():
    sick = diagnose(mlp(0, depth=10, activation="sigmoid"), mse, *batch())
    text = sick.report()
    assert isinstance(sick, Diagnosis) and str(sick) == text
    assert "vanishing" in text and "fix:" in text and "hidden.0.linear" in text
    healthy = diagnose(mlp(0, depth=4, init="kaiming"), mse, *batch())
    assert healthy.report().startswith("healthy")



# Watching a few training steps (optimizer=..., steps=...) to catch a too-high learning rate.

HEALTHY_FOR_WATCHING = {
    "tanh with Xavier init": dict(depth=10, activation="tanh", init="xavier"),
    "GELU with Kaiming init": dict(depth=10, activation="gelu", init="kaiming"),
    "deep ReLU with Kaiming init": dict(depth=30, activation="relu", init="kaiming"),
}


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


def same_state(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(HEALTHY_FOR_WATCHING))
def test_watching_catches_a_too_high_sgd_learning_rate_that_one_pass_misses(case, seed):
    model = mlp(seed, **HEALTHY_FOR_WATCHING[case])
    assert diagnose(model, mse, *batch(seed)).healthy
    diagnosis = diagnose(model, mse, *batch(seed), optimizer=torch.optim.SGD(model.parameters(), lr=5.0),
                         steps=10)
    assert diagnosis.kinds == ["exploding"]
    finding = diagnosis.findings[0]
    assert finding.evidence["learning_rate"] == 5.0
    assert "learning rate" in finding.fix and "0.5" in finding.fix and "clip" in finding.fix
    assert all(isinstance(v, float) for v in finding.evidence.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(HEALTHY_FOR_WATCHING))
def test_watching_catches_a_too_high_adam_learning_rate(case, seed):
    model = mlp(seed, **HEALTHY_FOR_WATCHING[case])
    diagnosis = diagnose(model, mse, *batch(seed), optimizer=torch.optim.Adam(model.parameters(), lr=1.0),
                         steps=10)
    assert diagnosis.kinds == ["exploding"]
    evidence = diagnosis.findings[0].evidence
    assert evidence["max_update_ratio"] > UPDATE_RATIO_MAX or evidence["loss_growth"] > LOSS_GROWTH_MAX
    assert "to about 0.1" in diagnosis.findings[0].fix


def test_a_loss_that_becomes_nan_while_watching_is_reported_with_its_step():
    model = mlp(0, depth=30, activation="relu", init="kaiming")
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    diagnosis = diagnose(model, mse, *batch(0), optimizer=optimizer, steps=10)
    evidence = diagnosis.findings[0].evidence
    assert not math.isfinite(diagnosis.watched_losses[-1])
    assert evidence["first_nonfinite_step"] == len(diagnosis.watched_losses) - 1 <= 10


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(HEALTHY_FOR_WATCHING))
def test_watching_is_silent_at_a_good_learning_rate(case, seed):
    model = mlp(seed, **HEALTHY_FOR_WATCHING[case])
    good_sgd = 0.01 if "ReLU" in case else 0.1  # SGD 0.1 diverges on the 30-layer ReLU net
    for optimizer in (torch.optim.SGD(model.parameters(), lr=good_sgd),
                      torch.optim.SGD(model.parameters(), lr=good_sgd / 10, momentum=0.9),
                      torch.optim.Adam(model.parameters(), lr=1e-3)):
        diagnosis = diagnose(model, mse, *batch(seed), optimizer=optimizer, steps=10)
        assert diagnosis.healthy, diagnosis.report()
        assert len(diagnosis.watched_losses) == 11
        assert diagnosis.watched_losses[-1] < diagnosis.watched_losses[0]


def test_watched_losses_and_update_ratios_match_a_manual_run_that_keeps_the_momentum():
    model = mlp(0, depth=3, width=5)
    inputs, targets = batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):  # build up a momentum buffer that the watched steps must continue from
        optimizer.zero_grad()
        mse(model(inputs), targets).backward()
        optimizer.step()
    diagnosis = diagnose(model, mse, inputs, targets, optimizer=optimizer, steps=3)

    manual = copy.deepcopy(model)
    manual_optimizer = torch.optim.SGD(manual.parameters(), lr=0.05, momentum=0.9)
    manual_optimizer.load_state_dict(optimizer_state(optimizer))
    losses, ratios = [], {name: [] for name, _ in manual.linear_layers()}
    for _ in range(3):
        manual_optimizer.zero_grad()
        loss = mse(manual(inputs), targets)
        loss.backward()
        before = {name: [p.detach().clone() for p in m.parameters()] for name, m in manual.linear_layers()}
        manual_optimizer.step()
        losses.append(loss.item())
        for name, module in manual.linear_layers():
            after = list(module.parameters())
            step = sum((a - b).pow(2).sum() for a, b in zip(after, before[name])).sqrt()
            ratios[name].append((step / sum(a.pow(2).sum() for a in after).sqrt()).item())
    losses.append(mse(manual(inputs), targets).item())
    assert diagnosis.watched_losses == pytest.approx(losses, rel=1e-12)
    assert list(diagnosis.update_ratio) == list(ratios)
    for name, expected in ratios.items():
        assert diagnosis.update_ratio[name] == pytest.approx(expected, rel=1e-10)


def test_watching_leaves_the_model_its_gradients_and_the_optimizer_state_untouched():
    model = mlp(0, depth=4, width=8)
    inputs, targets = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    for _ in range(2):
        optimizer.zero_grad()
        mse(model(inputs), targets).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    mse(model(inputs), targets).backward()  # a .grad the user has not stepped yet
    grads = [p.grad.clone() for p in model.parameters()]
    weights = copy.deepcopy(model.state_dict())
    state = optimizer_state(optimizer)
    groups = [list(g["params"]) for g in optimizer.param_groups]

    diagnosis = diagnose(model, mse, inputs, targets, optimizer=optimizer, steps=5)
    assert diagnosis.kinds == ["exploding"]  # the copy really trained, at a crazy learning rate
    assert same_state(dict(model.state_dict()), weights)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert same_state(optimizer.state_dict(), state)
    assert all(a is b for g, saved in zip(optimizer.param_groups, groups) for a, b in zip(g["params"], saved))


def test_watching_leaves_no_hooks_on_the_model_or_the_optimizer():
    model = mlp(0, depth=4, width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    diagnose(model, mse, *batch(), optimizer=optimizer, steps=3)
    assert hook_count(model) == 0
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_watching_steps_without_an_optimizer_raises_a_value_error_naming_the_fix():
    with pytest.raises(ValueError, match="optimizer="):
        diagnose(mlp(0, depth=3, width=5), mse, *batch(), steps=5)


def test_negative_steps_raise_a_value_error():
    model = mlp(0, depth=3, width=5)
    with pytest.raises(ValueError, match="steps=0"):
        diagnose(model, mse, *batch(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), steps=-1)


def test_an_optimizer_over_other_tensors_raises_a_value_error():
    model = mlp(0, depth=3, width=5)
    stranger = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch.optim.SGD([*model.parameters(), stranger], lr=0.1)
    with pytest.raises(ValueError, match="model.parameters"):
        diagnose(model, mse, *batch(), optimizer=optimizer, steps=2)


def test_an_optimizer_with_zero_steps_warns_that_it_is_ignored():
    model = mlp(0, depth=3, width=5)
    with pytest.warns(UserWarning, match="steps=10"):
        diagnosis = diagnose(model, mse, *batch(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert diagnosis.watched_losses == [] and diagnosis.update_ratio == {}


def test_the_default_of_zero_steps_is_the_one_pass_diagnosis():
    for kwargs in (dict(depth=4, init="kaiming"), dict(depth=10, activation="sigmoid")):
        default = diagnose(mlp(0, **kwargs), mse, *batch())
        explicit = diagnose(mlp(0, **kwargs), mse, *batch(), steps=0)
        assert default == explicit
        assert default.watched_losses == [] and default.update_ratio == {}
        assert "watched" not in default.report()


def test_a_too_high_learning_rate_on_an_exploding_init_stays_one_finding():
    model = mlp(0, depth=10, init="kaiming", gain=2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    diagnosis = diagnose(model, mse, *batch(), optimizer=optimizer, steps=5)
    assert diagnosis.kinds == ["exploding"]
    assert "kaiming_gain" in diagnosis.findings[0].evidence
    assert diagnosis.findings[0].evidence["learning_rate"] == 1.0


def test_the_report_shows_the_watched_losses():
    model = mlp(0, depth=4, init="kaiming")
    text = diagnose(model, mse, *batch(), optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                    steps=4).report()
    assert text.startswith("healthy") and "watched 4 steps: loss" in text


def test_the_threshold_sweep_flags_no_good_learning_rate_and_catches_every_too_high_one(capsys):
    benchmark = load_benchmark("diagnose_thresholds")
    threads = torch.get_num_threads()
    totals = benchmark.main(["--quick"])
    assert totals[False] == [0, 20]  # SGD 0.01 and Adam 1e-3: 5 networks x 2 seeds each
    assert totals[True] == [40, 40]
    assert torch.get_num_threads() == threads
    assert "good learning rates flagged: 0/20" in capsys.readouterr().out


# ------------------------------------------------------------ issue 16: the model is as it was


def state_of(model: nn.Module) -> dict:
    """Everything diagnose promises to leave alone, as plain copies."""
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": {k: b.clone() for k, b in model.named_buffers()},
        "flags": [m.training for m in model.modules()],
        "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    for a, b in zip(before["params"] + before["grads"], after["params"] + after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["buffers"].keys() == after["buffers"].keys()
    for k in before["buffers"]:
        assert torch.equal(before["buffers"][k], after["buffers"][k]), k
    assert before["flags"] == after["flags"]
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert (before["numpy_rng"] == after["numpy_rng"]).all() and before["python_rng"] == after["python_rng"]


def test_diagnose_on_a_nan_batch_leaves_batchnorm_statistics_so_eval_still_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    bad = x.clone()
    bad[0, 0] = float("nan")
    before = state_of(model)
    assert diagnose(model, cross_entropy, bad, y).kinds == ["nonfinite"]
    assert_same_state(before, state_of(model))
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_diagnose_with_dropout_and_watched_steps_leaves_every_rng_and_buffer_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 1))
    model.double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = batch()
    loss_fn = mse
    loss_fn(model(x), y).backward()  # the user's own gradients, kept
    before = state_of(model)
    diagnose(model, loss_fn, x, y, optimizer=optimizer, steps=3)
    assert_same_state(before, state_of(model))


def test_diagnose_works_under_inference_mode_and_on_inference_tensors():
    model = mlp(0, depth=3)
    with torch.inference_mode():
        x, y = batch()
        x, y = x.clone(), y.clone()  # inference tensors
        inside = diagnose(model, mse, x, y)
    outside = diagnose(model, mse, x, y)
    assert inside.loss == outside.loss and inside.kinds == outside.kinds == []


def test_diagnose_inside_a_monitor_does_not_add_to_the_monitors_activations():
    from gradflow_lessons.monitor import GradientMonitor

    model = mlp(0, depth=3)
    x, y = batch()
    with GradientMonitor(model) as monitor:
        mse(model(x), y).backward()
        diagnose(model, mse, x, y)
        monitor.record()
    assert all(a.calls == 1 for a in monitor.activations)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_healthy_low_precision_model_has_no_nonfinite_finding(dtype):
    # 256 examples x width 256: activation sums of squares overflow float16 when taken in it
    torch.manual_seed(0)
    model = MLP(16, 1, depth=3, width=256, activation="tanh", init="xavier").to(dtype)
    x, y = torch.randn(256, 16).to(dtype), torch.randn(256, 1).to(dtype)
    diagnosis = diagnose(model, lambda out, t: mse(out.float(), t.float()), x, y)
    assert "nonfinite" not in diagnosis.kinds
    assert all(math.isfinite(v) for v in diagnosis.output_std.values())


# ------------------------------------------------------------ issue 16: errors that name the fix


def test_an_empty_batch_is_named_not_blamed_on_nan():
    with pytest.raises(ValueError, match="batch is empty"):
        diagnose(mlp(0, depth=2), mse, torch.randn(0, 16, dtype=torch.float64), torch.randn(0, 1))


def test_a_loss_returned_as_a_python_float_is_named():
    x, y = batch()
    with pytest.raises(ValueError, match=r"returned a float.*no \.item\(\)"):
        diagnose(mlp(0, depth=2), lambda out, t: mse(out, t).item(), x, y)


def test_a_meta_device_model_is_named():
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        diagnose(nn.Linear(16, 1, device="meta"), mse, *batch())


def test_watching_with_lbfgs_names_the_closure_and_what_to_do():
    model = mlp(0, depth=2)
    with pytest.raises(ValueError, match="LBFGS.step.*needs a closure.*steps=0"):
        diagnose(model, mse, *batch(), optimizer=torch.optim.LBFGS(model.parameters()), steps=3)


class PositionalSGD(torch.optim.SGD):
    def __init__(self, params, lr, momentum):  # no defaults: type(opt)(groups) cannot rebuild it
        super().__init__(params, lr=lr, momentum=momentum)


def test_watching_works_with_an_optimizer_whose_constructor_needs_positional_arguments():
    model = mlp(0, depth=2)
    optimizer = PositionalSGD(model.parameters(), 0.01, 0.9)
    diagnosis = diagnose(model, mse, *batch(), optimizer=optimizer, steps=3)
    assert len(diagnosis.watched_losses) == 4 and not optimizer.state  # the original is not stepped


# ------------------------------------------------------------ issue 24: mixed precision (GradScaler)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_with_a_scaler_diagnose_reports_unscaled_numbers_and_leaves_the_scaler_alone(dtype):
    model = mlp(0, depth=4).float()
    x, y = (t.float() for t in batch())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with torch.autocast("cpu", dtype=dtype):
        plain = diagnose(model, mse, x, y)
        scaled = diagnose(model, mse, x, y, scaler=scaler)
    assert scaled.kinds == plain.kinds == []
    for layer, rms in plain.grad_rms.items():
        assert scaled.grad_rms[layer] == pytest.approx(rms, rel=1e-2)
    assert scaler.get_scale() == 2.0**12 and not scaler._per_optimizer_states


def test_an_exploding_finding_under_a_scaler_names_the_loss_scale():
    model = mlp(0, depth=10, init="kaiming", gain=2.0).float()
    x, y = (t.float() for t in batch())
    diagnosis = diagnose(model, mse, x, y, scaler=torch.amp.GradScaler("cpu", init_scale=8.0))
    finding = next(f for f in diagnosis.findings if f.kind == "exploding")
    assert finding.evidence["loss_scale"] == 8.0 and "scaler.unscale_(optimizer)" in finding.fix


def test_a_scaled_float16_overflow_is_reported_as_nonfinite_naming_the_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)).half()
    x, y = torch.randn(64, 16).half(), torch.randn(64, 1).half()
    diagnosis = diagnose(model, lambda out, t: 100 * mse(out.float(), t.float()), x, y,
                         scaler=torch.amp.GradScaler("cpu", init_scale=2.0**24))
    assert diagnosis.kinds == ["nonfinite"]
    assert "GradScaler's scale" in diagnosis.findings[0].fix and diagnosis.findings[0].evidence["loss_scale"]


# --------------------------------------------------------------------------- through time, attention


def sequences(seed: int, steps: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(batch, steps, 4, generator=g), torch.randint(0, 2, (batch,), generator=g)


def lstm(seed: int, forget_bias: float | None) -> nn.Module:
    torch.manual_seed(seed)
    return RNNClassifier(4, 16, 2, cell="lstm", forget_bias=forget_bias)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("forget_bias", [None, 1.0])
def test_a_healthy_short_sequence_lstm_has_no_findings(seed, forget_bias):
    inputs, targets = sequences(seed, 10)
    found = diagnose(lstm(seed, forget_bias), cross_entropy, inputs, targets)
    assert found.healthy, found.report()
    norms = found.time_gradient
    assert len(norms) == 10 and norms[0] / norms[-1] > TIME_RATIO_MIN


@pytest.mark.parametrize("seed", range(3))
def test_diagnose_finds_vanishing_through_time_behind_a_closed_forget_gate(seed):
    inputs, targets = sequences(seed, 10)
    found = diagnose(lstm(seed, -5.0), cross_entropy, inputs, targets)
    assert found.kinds == ["vanishing"]
    finding = found.findings[0]
    assert finding.layers == ["rnn"]
    assert finding.evidence["first_to_last"] < TIME_RATIO_MIN and finding.evidence["time_steps"] == 10
    assert finding.evidence["forget_bias"] == pytest.approx(-5.0)
    assert finding.evidence["decay_per_step"] == pytest.approx(finding.evidence["first_to_last"] ** (1 / 9))
    assert "forget-gate bias" in finding.fix and "truncate" in finding.fix and "attention" in finding.fix


def test_a_recurrent_model_no_gradient_reaches_is_vanishing_through_time():
    model = lstm(0, None)
    with torch.no_grad():
        model.rnn.weight_ih_l0.zero_()  # the inputs reach nothing: dL/dx_t = 0 at every step
    inputs, targets = sequences(0, 10)
    found = diagnose(model, cross_entropy, inputs, targets)
    assert "vanishing" in found.kinds
    assert math.isnan(next(f for f in found.findings if f.kind == "vanishing").evidence["first_to_last"])


def transformer(seed: int, norm_first: bool, query_key_scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = TransformerClassifier(4, 2, depth=2, norm_first=norm_first)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.in_proj_weight[:64] *= query_key_scale  # the query and key rows
    return model.eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_a_healthy_transformer_has_no_findings(norm_first):
    inputs, targets = sequences(0, 16, batch=32)
    found = diagnose(transformer(0, norm_first), cross_entropy, inputs, targets)
    assert found.healthy, found.report()
    assert sorted(found.attention_saturated_fraction) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert max(found.attention_saturated_fraction.values()) < ATTENTION_SATURATED_FRACTION


@pytest.mark.parametrize("norm_first", [False, True])
def test_diagnose_finds_saturated_attention_with_the_entropy_evidence(norm_first):
    inputs, targets = sequences(0, 16, batch=32)
    found = diagnose(transformer(0, norm_first, query_key_scale=10.0), cross_entropy, inputs, targets)
    finding = next(f for f in found.findings if f.kind == "saturation")
    assert set(finding.layers) <= {"layers.0.self_attn", "layers.1.self_attn"} and finding.layers
    assert finding.evidence["max_attention_saturated_fraction"] > ATTENTION_SATURATED_FRACTION
    assert 0 <= finding.evidence["min_attention_entropy_normalized"] < 0.5
    assert "QK-LayerNorm" in finding.fix
