import math

import pytest
import torch
from torch import nn

from gradflow_lessons.diagnose import KINDS, Diagnosis, diagnose
from gradflow_lessons.models import MLP
from gradflow_lessons.skips import ResidualCNN, ResidualMLP

mse = nn.functional.mse_loss
cross_entropy = nn.functional.cross_entropy


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


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

