"""gradflow_lessons.per_sample: per-sample gradients and norms against one backward per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradflow_lessons import noise, per_sample
from gradflow_lessons.monitor import count_hooks

N = 5


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def problem():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, nn.CrossEntropyLoss(), torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 2, (N,))


def looped_sq_norms(model, loss_fn, x, y) -> dict[str, torch.Tensor]:
    """Per layer, |g_i|^2 [N] from one backward pass per sample: the definition."""
    rows: dict[str, list[torch.Tensor]] = {}
    for xi, yi in zip(x, y):
        model.zero_grad()
        loss_fn(model(xi[None]), yi[None]).backward()
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                sq = module.weight.grad.square().sum() + module.bias.grad.square().sum()
                rows.setdefault(name, []).append(sq)
    model.zero_grad(set_to_none=True)
    return {k: torch.stack(v) for k, v in rows.items()}


def test_hook_sq_norms_match_one_backward_per_sample():
    model, loss_fn, x, y = problem()
    fast = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    slow = looped_sq_norms(model, loss_fn, x, y)
    assert sorted(fast) == sorted(slow)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-12, atol=1e-14)
    assert count_hooks(model) == 0


def test_vmap_gradients_square_to_the_hook_norms():
    model, loss_fn, x, y = problem()
    grads = per_sample.per_sample_gradients(model, loss_fn, x, y)
    fast = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    for layer in fast:
        ref = sum(g.reshape(N, -1).square().sum(1) for k, g in grads.items() if k.startswith(layer + "."))
        torch.testing.assert_close(fast[layer], ref)


def test_the_moved_names_are_still_importable_from_noise():
    assert noise.per_sample_gradients is per_sample.per_sample_gradients
    assert noise.per_sample_grad_sq_norms is per_sample.per_sample_grad_sq_norms


# ------------------------------------------------------------------------- each contraction vs the definition


def looped_layer_sq_norms(model, loss_fn, x, y) -> dict[str, torch.Tensor]:
    """Per module with trainable parameters, |g_i|^2 [N] from one backward pass per sample."""
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    rows: dict[str, list[torch.Tensor]] = {}
    for xi, yi in zip(x, y):
        loss = loss_fn(model(xi[None]), yi[None])
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        sums: dict[str, torch.Tensor] = {}
        for (k, p), g in zip(named, grads):
            square = torch.zeros((), dtype=p.dtype) if g is None else g.square().sum()
            sums[k.rpartition(".")[0] or "model"] = sums.get(k.rpartition(".")[0] or "model", 0) + square
        for layer, value in sums.items():
            rows.setdefault(layer, []).append(value)
    return {k: torch.stack(v) for k, v in rows.items()}


# (layer, input shape without N, the contraction the cost rule picks); "patches" and "grouped" name
# how an explicit conv forms its per-sample gradients: im2col for < 8 input channels per group or a
# 1x1 kernel, else one convolution with the samples as groups
LAYERS = {
    "conv2d gram, stride 2, padding 1": (
        lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1), (16, 5, 5), "gram"),
    "conv2d gram, groups 2, no bias": (
        lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2, bias=False), (16, 5, 5), "gram"),
    "conv2d gram, replicate padding": (
        lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, padding_mode="replicate"), (16, 5, 5), "gram"),
    "conv2d gram, 'same' padding of an even kernel": (
        lambda: nn.Conv2d(16, 32, 2, padding="same"), (16, 2, 2), "gram"),
    "conv2d explicit patches, dilation 2": (
        lambda: nn.Conv2d(2, 3, 3, dilation=2, padding=2), (2, 6, 6), "explicit"),
    "conv2d explicit patches, circular padding": (
        lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5), "explicit"),
    "conv2d explicit patches, depthwise": (
        lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4), (4, 5, 5), "explicit"),
    "conv2d explicit patches, 1x1 kernel, no bias": (
        lambda: nn.Conv2d(8, 4, 1, bias=False), (8, 3, 3), "explicit"),
    "conv2d explicit grouped, stride 2, dilation 2": (
        lambda: nn.Conv2d(8, 4, 3, stride=2, dilation=2, padding=1), (8, 9, 9), "explicit"),
    "conv2d explicit grouped, groups 2, no bias": (
        lambda: nn.Conv2d(16, 4, 3, padding=1, groups=2, bias=False), (16, 5, 5), "explicit"),
    "conv2d explicit grouped, reflect padding": (
        lambda: nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"), (8, 5, 5), "explicit"),
    "conv2d explicit grouped, 'same' padding of an even kernel": (
        lambda: nn.Conv2d(8, 4, 4, padding="same"), (8, 6, 6), "explicit"),
    "conv1d explicit grouped, stride 2, dilation 2": (
        lambda: nn.Conv1d(8, 3, 3, stride=2, dilation=2, padding=1), (8, 11), "explicit"),
    "conv1d gram, stride 3": (lambda: nn.Conv1d(16, 32, 3, stride=3), (16, 9), "gram"),
    "conv3d explicit grouped": (lambda: nn.Conv3d(8, 2, 2, padding=1), (8, 3, 3, 3), "explicit"),
    "conv3d gram, no bias": (lambda: nn.Conv3d(8, 16, 2, stride=2, bias=False), (8, 4, 4, 4), "gram"),
    "linear on sequences, explicit": (lambda: nn.Linear(4, 5), (3, 4), "explicit"),
    "linear on sequences, gram, no bias": (lambda: nn.Linear(16, 16, bias=False), (2, 16), "gram"),
    "linear on [N, K], the Goodfellow product": (lambda: nn.Linear(3, 4), (3,), "gram"),
}


def layer_problem(case: str, dtype: torch.dtype = torch.float64):
    make, shape, contraction = LAYERS[case]
    torch.manual_seed(0)
    layer = make()
    features = layer(torch.zeros(1, *shape)).numel()
    model = nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.Linear(features, 3)).to(dtype)
    x, y = torch.randn(N, *shape, dtype=dtype), torch.randint(0, 3, (N,))
    return model, nn.CrossEntropyLoss(), x, y, contraction


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", LAYERS)
def test_hook_sq_norms_equal_one_backward_per_sample_in_float64_for_every_contraction(case):
    model, loss_fn, x, y, contraction = layer_problem(case)
    assert per_sample.gram_is_cheaper(model[0], model[0](x)) == (contraction == "gram")
    fast = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    slow = looped_layer_sq_norms(model, loss_fn, x, y)
    assert sorted(fast) == sorted(slow) == ["0", "3"]
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-10, atol=0)
    assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", LAYERS)
def test_hook_sq_norms_of_a_float32_model_agree_with_float64(case):
    model, loss_fn, x, y, _ = layer_problem(case)
    exact = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    fast = per_sample.per_sample_grad_sq_norms(model.float(), loss_fn, x.float(), y)
    for k in fast:
        assert fast[k].dtype == torch.float64
        torch.testing.assert_close(fast[k], exact[k], rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [1e-30, 1e25])
@pytest.mark.parametrize("case", [
    "conv2d gram, stride 2, padding 1", "conv2d explicit grouped, reflect padding",
    "conv2d explicit patches, dilation 2", "linear on [N, K], the Goodfellow product"])
def test_float32_norms_that_would_vanish_or_overflow_are_taken_in_float64(case, scale):
    # vanishing (1e-30) and exploding (1e25) gradients: float32 holds them, not their squares
    model, loss_fn, x, y, _ = layer_problem(case)
    scaled = lambda out, t: scale * loss_fn(out, t)  # noqa: E731
    exact = per_sample.per_sample_grad_sq_norms(model, scaled, x, y)
    fast = per_sample.per_sample_grad_sq_norms(model.float(), scaled, x.float(), y)
    for k in fast:
        assert bool((fast[k] > 0).all() and fast[k].isfinite().all())
        torch.testing.assert_close(fast[k], exact[k], rtol=1e-5, atol=0)


def test_an_in_place_activation_after_a_layer_leaves_its_norms_right():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).double()
    x, y, loss_fn = torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 2, (N,)), nn.CrossEntropyLoss()
    fast = per_sample.per_sample_grad_sq_norms(model, loss_fn, x, y)
    slow = looped_layer_sq_norms(model, loss_fn, x, y)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-10, atol=0)


class EditsItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(inputs)
        out = self.first(h)
        h.mul_(2)  # the first layer's input changes after the layer ran
        return self.second(out + h)


def test_a_layer_input_edited_in_place_afterwards_is_refused_and_hooks_are_removed():
    model, x, y = EditsItsInput(), torch.randn(N, 3), torch.randint(0, 2, (N,))
    with pytest.raises((ValueError, RuntimeError), match="in place"):
        per_sample.per_sample_grad_sq_norms(model, nn.CrossEntropyLoss(), x, y)
    assert count_hooks(model) == 0


class HalfFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fixed, self.trained = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # a layer the loss cannot differentiate
            h = self.fixed(inputs)
        return self.trained(torch.tanh(h))


def test_a_layer_run_under_no_grad_inside_the_model_has_zero_norms():
    model, x, y = HalfFrozen().double(), torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 2, (N,))
    fast = per_sample.per_sample_grad_sq_norms(model, nn.CrossEntropyLoss(), x, y)
    assert torch.equal(fast["fixed"], torch.zeros(N, dtype=torch.float64))
    slow = looped_layer_sq_norms(model, nn.CrossEntropyLoss(), x, y)
    torch.testing.assert_close(fast["trained"], slow["trained"])


class SideBranch(nn.Module):
    """A Linear whose output the loss never sees, beside two that it does, one of them in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.ignored = nn.Linear(3, 4), nn.Linear(3, 5)
        self.head = nn.Linear(4, 2).double()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.ignored(inputs)
        return self.head(torch.tanh(self.used(inputs)).double()).float()


def test_a_layer_whose_output_the_loss_ignores_has_zero_norms_and_mixed_dtypes_are_each_right():
    model, x, y = SideBranch(), torch.randn(N, 3), torch.randint(0, 2, (N,))
    fast = per_sample.per_sample_grad_sq_norms(model, nn.CrossEntropyLoss(), x, y)
    assert torch.equal(fast["ignored"], torch.zeros(N, dtype=torch.float64))
    slow = looped_layer_sq_norms(model, nn.CrossEntropyLoss(), x, y)
    for layer in ("used", "head"):
        torch.testing.assert_close(fast[layer], slow[layer].double(), rtol=1e-5, atol=0)


class TiedLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3)
        self.b.weight = self.a.weight  # one parameter, two modules

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(inputs)))


@pytest.mark.parametrize("shared", ["one module twice", "one parameter in two modules"])
def test_vmap_gradients_of_shared_weights_match_the_loop_and_leave_them_parameters(shared):
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.Tanh(), layer) if shared == "one module twice" else TiedLayers()
    model = model.double()
    x, y = torch.randn(N, 3, dtype=torch.float64), torch.randn(N, 3, dtype=torch.float64)
    before = {k: (type(p), p) for k, p in model.named_parameters(remove_duplicate=False)}
    fast = per_sample.per_sample_gradients(model, nn.MSELoss(), x, y)
    slow = per_sample.per_sample_gradients(model, nn.MSELoss(), x, y, method="loop")
    for k in slow:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-12, atol=1e-14)
    after = {k: (type(p), p) for k, p in model.named_parameters(remove_duplicate=False)}
    assert all(after[k][0] is nn.Parameter and after[k][1] is p for k, (_, p) in before.items())


def test_an_all_zero_sample_is_exact_in_float32_and_needs_no_float64_redo(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(N, 3), torch.randint(0, 2, (N,))
    x[0] = 0  # its input, first activation and first-layer gradient are exactly 0: no underflow
    calls, real = [], per_sample.hook_statistics
    monkeypatch.setattr(per_sample, "hook_statistics",
                        lambda *args, **kw: calls.append(kw.get("wide")) or real(*args, **kw))
    fast = per_sample.per_sample_grad_sq_norms(model, nn.CrossEntropyLoss(), x, y)
    assert calls == [None]  # no second, float64 pass
    exact = per_sample.per_sample_grad_sq_norms(model.double(), nn.CrossEntropyLoss(), x.double(), y)
    assert fast["0"][0] == 0
    for k in fast:
        torch.testing.assert_close(fast[k], exact[k], rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [1.0, 1e-30])
def test_the_deferred_float32_check_of_a_gpu_gives_the_same_norms(monkeypatch, scale):
    # off the CPU the check is one 0-d tensor per layer and one host sync per call
    monkeypatch.setattr(per_sample, "_syncs_for_free", lambda device: False)
    model, loss_fn, x, y, _ = layer_problem("conv2d explicit grouped, reflect padding")
    x[0] = 0
    scaled = lambda out, t: scale * loss_fn(out, t)  # noqa: E731
    exact = per_sample.per_sample_grad_sq_norms(model, scaled, x, y)
    fast = per_sample.per_sample_grad_sq_norms(model.float(), scaled, x.float(), y)
    for k in fast:
        torch.testing.assert_close(fast[k], exact[k], rtol=1e-5, atol=0)
