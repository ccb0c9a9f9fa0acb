"""gradflow_lessons.clipping against torch's own clipping and brute-force float64 formulas."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradflow_lessons.clipping import (
    ClipStats,
    PercentileClipper,
    agc_,
    clip_by_norm_,
    clip_by_value_,
    unitwise_norm,
)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def with_gradients(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model.zero_grad()
    inputs = torch.randn(8, 4, generator=g, dtype=torch.float64)
    (scale * model(inputs).pow(2).sum()).backward()
    return model


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def twin_gradients(seed: int = 0, scale: float = 1.0) -> tuple[nn.Module, nn.Module]:
    a = with_gradients(tiny_model(), seed, scale)
    b = with_gradients(tiny_model(), seed, scale)
    return a, b


# ------------------------------------------------------------------ by norm


def test_clip_by_norm_gives_exactly_torchs_clip_grad_norm():
    ours, theirs = twin_gradients()
    before = flat_grad(ours).clone()
    stats = clip_by_norm_(ours.parameters(), max_norm=0.5)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=0.5)
    assert torch.equal(flat_grad(ours), flat_grad(theirs))
    assert stats.norm_before == pytest.approx(before.norm().item(), rel=1e-12)
    assert stats.norm_before == pytest.approx(torch_norm.item(), rel=1e-12)
    assert stats.norm_after == pytest.approx(flat_grad(ours).norm().item(), rel=1e-12)
    assert stats.norm_after == pytest.approx(0.5, rel=1e-5)
    assert stats.clipped and stats.fraction_clipped == 1.0 and stats.threshold == 0.5


def test_clip_by_norm_keeps_the_direction():
    model = with_gradients(tiny_model())
    before = flat_grad(model).clone()
    stats = clip_by_norm_(model.parameters(), max_norm=0.1)
    assert cosine(before, flat_grad(model)) == pytest.approx(1.0, abs=1e-12)
    assert stats.cosine == pytest.approx(1.0, abs=1e-12)


def test_clip_by_norm_leaves_a_small_gradient_unchanged_and_says_so():
    model = with_gradients(tiny_model())
    before = flat_grad(model).clone()
    stats = clip_by_norm_(model.parameters(), max_norm=1e6)
    assert torch.equal(flat_grad(model), before)
    assert not stats.clipped and stats.fraction_clipped == 0.0
    assert stats.norm_after == pytest.approx(stats.norm_before, rel=1e-12)


def test_clip_stats_hold_plain_python_values():
    stats = clip_by_norm_(with_gradients(tiny_model()).parameters(), max_norm=0.5)
    assert isinstance(stats, ClipStats)
    for name in ("norm_before", "norm_after", "threshold", "fraction_clipped", "cosine"):
        assert type(getattr(stats, name)) is float, name
    assert type(stats.clipped) is bool and type(stats.nonfinite) is int


# ------------------------------------------------------------------ by value


def test_clip_by_value_gives_exactly_torchs_clip_grad_value():
    ours, theirs = twin_gradients()
    clip_by_value_(ours.parameters(), clip_value=0.3)
    torch.nn.utils.clip_grad_value_(theirs.parameters(), clip_value=0.3)
    assert torch.equal(flat_grad(ours), flat_grad(theirs))


def test_clip_by_value_reports_the_brute_force_cosine_norms_and_fraction():
    model = with_gradients(tiny_model())
    before = flat_grad(model).clone()
    stats = clip_by_value_(model.parameters(), clip_value=0.3)
    after = before.clamp(-0.3, 0.3)
    assert stats.cosine == pytest.approx(cosine(before, after), rel=1e-10)
    assert stats.cosine < 0.999  # value clipping turns the gradient
    assert stats.norm_before == pytest.approx(before.norm().item(), rel=1e-12)
    assert stats.norm_after == pytest.approx(after.norm().item(), rel=1e-12)
    expected_fraction = (before.abs() > 0.3).double().mean().item()
    assert 0 < expected_fraction < 1
    assert stats.fraction_clipped == pytest.approx(expected_fraction, rel=1e-12)
    assert stats.clipped


def test_clip_by_value_with_a_large_threshold_changes_nothing():
    model = with_gradients(tiny_model())
    before = flat_grad(model).clone()
    stats = clip_by_value_(model.parameters(), clip_value=1e6)
    assert torch.equal(flat_grad(model), before)
    assert not stats.clipped and stats.cosine == pytest.approx(1.0, abs=1e-12)


def test_a_single_tensor_is_accepted_like_torch_accepts_it():
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    w.grad = torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)
    stats = clip_by_norm_(w, max_norm=1.0)
    assert stats.norm_before == pytest.approx(5.0)
    assert torch.allclose(w.grad, torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64), atol=1e-6)


# ------------------------------------------------------------------ percentile


def test_percentile_clipper_clips_at_the_percentile_of_the_last_window_norms():
    window, percentile = 5, 75
    clipper = PercentileClipper(percentile, window=window)
    ours, theirs = tiny_model(), tiny_model()
    recorded = []
    for step in range(12):
        scale = 1.0 + 3.0 * (step % 4 == 0)  # an outlier every fourth step
        with_gradients(ours, seed=step, scale=scale)
        with_gradients(theirs, seed=step, scale=scale)
        recorded.append(flat_grad(theirs).norm().item())
        threshold = float(np.percentile(recorded[-window:], percentile))
        stats = clipper.clip_(ours.parameters())
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=threshold)
        assert stats.threshold == pytest.approx(threshold, rel=1e-12)
        assert stats.clipped == (recorded[-1] > threshold)
        assert torch.allclose(flat_grad(ours), flat_grad(theirs), rtol=1e-12, atol=0)
    assert clipper.steps == 12
    assert clipper.threshold == pytest.approx(threshold, rel=1e-12)


def test_percentile_clipper_history_is_bounded_and_oldest_first():
    clipper = PercentileClipper(50, window=4)
    model, recorded = tiny_model(), []
    for step in range(10):
        with_gradients(model, seed=step)
        recorded.append(flat_grad(model).norm().item())
        clipper.clip_(model.parameters())
        expected = recorded[-4:]
        assert clipper.history.tolist() == pytest.approx(expected, rel=1e-12)
    assert clipper._norms.numel() == 4  # memory does not grow with the steps


def test_percentile_clipper_counts_the_fraction_of_clipped_steps():
    clipper = PercentileClipper(50, window=100)
    model, clipped = tiny_model(), 0
    for step in range(9):
        with_gradients(model, seed=step)
        clipped += clipper.clip_(model.parameters()).clipped
    assert 0 < clipped < 9
    assert clipper.fraction_clipped == pytest.approx(clipped / 9)


def test_percentile_clipper_without_stats_never_waits_for_the_device(monkeypatch):
    clipper = PercentileClipper(10, window=8)
    model = tiny_model()
    with_gradients(model, seed=0)
    clipper.clip_(model.parameters())

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the clipping step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    with_gradients(model, seed=1, scale=10.0)
    assert clipper.clip_(model.parameters(), stats=False) is None
    monkeypatch.undo()
    assert clipper.steps == 2 and clipper.fraction_clipped == 0.5


def test_clip_statistics_cost_one_host_sync_whatever_the_number_of_parameters(monkeypatch):
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(20)]).double()
    model(torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    calls = {"tolist": 0, "item": 0}
    tolist, item = torch.Tensor.tolist, torch.Tensor.item

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return method(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(torch.Tensor, "tolist", counting("tolist", tolist))
    monkeypatch.setattr(torch.Tensor, "item", counting("item", item))
    PercentileClipper(90).clip_(model.parameters())
    agc_(model.parameters())
    clip_by_value_(model.parameters(), 0.1)
    assert calls == {"tolist": 3, "item": 0}


def test_percentile_clipper_leaves_nonfinite_norms_out_of_the_history():
    clipper = PercentileClipper(50, window=10)
    model = tiny_model()
    for step in range(3):
        with_gradients(model, seed=step)
        clipper.clip_(model.parameters())
    with_gradients(model, seed=3)
    model[0].weight.grad[0, 0] = math.nan
    stats = clipper.clip_(model.parameters())
    assert stats.nonfinite == 1 and math.isnan(stats.cosine)
    history = clipper.history
    assert history.shape == (4,) and torch.isnan(history[-1]) and torch.isfinite(history[:3]).all()
    assert math.isfinite(clipper.threshold)


@pytest.mark.parametrize("bad", [{"percentile": -1}, {"percentile": 101}, {"percentile": 50, "window": 0}])
def test_percentile_clipper_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="percentile|window"):
        PercentileClipper(**bad)


# ------------------------------------------------------------------ AGC


def agc_by_hand(weight: torch.Tensor, grad: torch.Tensor, clipping: float, eps: float) -> torch.Tensor:
    """The NFNets rule, one unit (row, or the whole bias) at a time, in float64."""
    rows = [(weight, grad)] if weight.dim() <= 1 else list(zip(weight, grad))
    out = []
    for w, g in rows:
        max_norm = clipping * max(w.norm().item(), eps)
        g_norm = g.norm().item()
        out.append(g * (max_norm / g_norm) if g_norm > max_norm else g.clone())
    return out[0] if weight.dim() <= 1 else torch.stack(out)


def test_agc_matches_the_unit_wise_formula_for_linear_conv_and_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4)).double()
    model(torch.randn(5, 2, 4, 4, dtype=torch.float64)).pow(2).sum().backward()
    expected = [agc_by_hand(p.detach(), p.grad, 0.02, 1e-3) for p in model.parameters()]
    clipped_units = sum(
        int((e != p.grad).flatten(1).any(1).sum()) if p.dim() > 1 else int(not torch.equal(e, p.grad))
        for e, p in zip(expected, model.parameters())
    )
    before = flat_grad(model).clone()
    stats = agc_(model.parameters(), clipping=0.02)
    for e, p in zip(expected, model.parameters()):
        assert torch.allclose(p.grad, e, rtol=1e-12, atol=0)
    after = torch.cat([e.flatten() for e in expected])
    assert stats.cosine == pytest.approx(cosine(before, after), rel=1e-10)
    assert stats.norm_after == pytest.approx(after.norm().item(), rel=1e-12)
    units = 3 + 1 + 4 + 1  # conv rows, conv bias, linear rows, linear bias
    assert 0 < clipped_units and stats.fraction_clipped == pytest.approx(clipped_units / units)


def test_agc_floors_zero_weights_at_eps():
    layer = nn.Linear(3, 2).double()
    nn.init.zeros_(layer.weight)
    layer.weight.grad = torch.ones(2, 3, dtype=torch.float64)
    agc_([layer.weight], clipping=0.01, eps=1e-3)
    assert torch.allclose(layer.weight.grad.norm(dim=1), torch.full((2,), 1e-5, dtype=torch.float64))


def test_agc_can_leave_the_final_layer_unclipped():
    model = with_gradients(tiny_model(), scale=100.0)
    final = [p.grad.clone() for p in model[2].parameters()]
    first = model[0].weight.grad.clone()
    agc_(model.parameters(), clipping=0.01, skip=model[2].parameters())
    assert all(torch.equal(p.grad, f) for p, f in zip(model[2].parameters(), final))
    assert not torch.equal(model[0].weight.grad, first)


def test_unitwise_norm_is_per_row_for_weights_and_whole_for_biases():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert unitwise_norm(w).tolist() == [[5.0], [1.0]]
    assert unitwise_norm(torch.tensor([3.0, 4.0])).item() == 5.0


# ------------------------------------------------------------------ shared behaviour

CLIPPERS = {
    "by norm": lambda params, **kw: clip_by_norm_(params, 0.5, **kw),
    "by value": lambda params, **kw: clip_by_value_(params, 0.1, **kw),
    "agc": lambda params, **kw: agc_(params, **kw),
    "percentile": lambda params, **kw: PercentileClipper(50, **kw).clip_(params),
}


@pytest.mark.parametrize("name", CLIPPERS)
def test_nonfinite_gradients_are_counted_in_the_stats(name):
    model = with_gradients(tiny_model())
    model[0].weight.grad[0, 0] = math.inf
    model[2].bias.grad[1] = math.nan
    stats = CLIPPERS[name](model.parameters())
    assert stats.nonfinite == 2 and math.isnan(stats.cosine)


@pytest.mark.parametrize("name", CLIPPERS)
def test_error_if_nonfinite_raises_before_touching_the_gradients(name):
    model = with_gradients(tiny_model())
    model[0].weight.grad[0, 0] = math.nan
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="1 gradient entries are NaN or Inf.*error_if_nonfinite=False"):
        CLIPPERS[name](model.parameters(), error_if_nonfinite=True)
    for p, b in zip(model.parameters(), before):
        assert torch.allclose(p.grad, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", CLIPPERS)
def test_an_empty_parameter_list_warns_at_the_callers_line(name):
    with pytest.warns(UserWarning, match="parameter list is empty") as record:
        stats = CLIPPERS[name]([])
    assert record[0].filename == __file__
    assert not stats.clipped and stats.norm_before == 0.0


@pytest.mark.parametrize("name", CLIPPERS)
def test_parameters_without_gradients_warn_to_call_backward_first(name):
    with pytest.warns(UserWarning, match="call loss.backward"):
        CLIPPERS[name](tiny_model().parameters())


@pytest.mark.parametrize("call", [
    lambda p: clip_by_norm_(p, 0.0), lambda p: clip_by_value_(p, -1.0), lambda p: agc_(p, clipping=0.0),
])
def test_non_positive_thresholds_are_rejected(call):
    with pytest.raises(ValueError, match="must be positive"):
        call(with_gradients(tiny_model()).parameters())


@pytest.mark.parametrize("name", CLIPPERS)
def test_an_all_zero_gradient_keeps_its_direction(name):
    model = tiny_model()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    stats = CLIPPERS[name](model.parameters())
    assert stats.norm_before == 0.0 and stats.cosine == 1.0 and not stats.clipped


# ------------------------------------------------------------ issue 16: float16, bfloat16, extremes, misuse


def low_precision_params(dtype: torch.dtype, value: float, seed: int = 0) -> list[nn.Parameter]:
    """Two parameters of ``dtype`` whose gradients have entries of about ``value``, every one finite."""
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(shape, generator=g).to(dtype)) for shape in [(64, 32), (64,)]]
    for p in params:
        p.grad = (value * (0.5 + torch.rand(p.shape, generator=g))).to(dtype)
    return params


def reference(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for p in params])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_value_clipping_statistics_of_low_precision_gradients_are_taken_in_float32(dtype):
    params = low_precision_params(dtype, 100.0)  # squares of 100 overflow float16 sums quickly
    before = reference(params)
    stats = clip_by_value_(params, 120.0)
    after = reference(params)
    assert stats.norm_before == pytest.approx(before.norm().item(), rel=1e-3)
    assert stats.norm_after == pytest.approx(after.norm().item(), rel=1e-3)
    assert stats.cosine == pytest.approx(cosine(before, after), abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_agc_cosines_of_low_precision_gradients_stay_within_one(dtype):
    params = low_precision_params(dtype, 300.0)
    before = reference(params)
    stats = agc_(params, clipping=0.01)
    after = reference(params)
    assert stats.clipped and stats.cosine <= 1.0
    assert stats.cosine == pytest.approx(cosine(before, after), abs=2e-3)
    assert stats.norm_after == pytest.approx(after.norm().item(), rel=1e-2)


def test_norm_clipping_a_float16_gradient_whose_norm_overflows_float16_clips_instead_of_zeroing():
    params = low_precision_params(torch.float16, 2000.0)  # entries finite, norm ~1e5 > 65,504
    before = reference(params)
    torch_copy = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(torch_copy, params):
        p.grad = q.grad.clone()
    torch.nn.utils.clip_grad_norm_(torch_copy, 1.0)
    assert reference(torch_copy).abs().max() == 0  # what torch itself does: every gradient zeroed
    with pytest.warns(RuntimeWarning, match="overflows the gradients' own dtype.*scale every gradient by 0"):
        stats = clip_by_norm_(params, 1.0)
    assert stats.norm_before == pytest.approx(before.norm().item(), rel=1e-3) and stats.nonfinite == 0
    assert reference(params).norm().item() == pytest.approx(1.0, rel=1e-2)
    assert cosine(before, reference(params)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("scale", [1e-26, 1e25])
def test_float32_gradients_beyond_float32_squares_keep_their_norm_and_are_not_zeroed(scale):
    p = nn.Parameter(torch.zeros(10))
    p.grad = torch.full((10,), scale)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = clip_by_norm_([p], max_norm=1.0)
    assert len(caught) == (scale > 1)  # torch's own float32 norm would be inf: zeroed
    assert stats.norm_before == pytest.approx(scale * math.sqrt(10), rel=1e-6) and stats.nonfinite == 0
    expected = min(1.0, scale * math.sqrt(10))
    assert torch.linalg.vector_norm(p.grad.double()).item() == pytest.approx(expected, rel=1e-5)
    assert stats.norm_after == pytest.approx(expected, rel=1e-5) and stats.cosine == pytest.approx(1.0)


@pytest.mark.parametrize("clip", [clip_by_norm_, clip_by_value_, agc_])
def test_passing_the_model_or_named_parameters_names_the_fix(clip):
    model = with_gradients(tiny_model())
    with pytest.raises(ValueError, match=r"not the model: pass model\.parameters\(\)"):
        clip(model, 1.0)
    with pytest.raises(ValueError, match=r"named_parameters\(\) gives \(name, tensor\) pairs"):
        clip(model.named_parameters(), 1.0)


# ------------------------------------------------------------ issue 24: mixed precision (GradScaler)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("clip", [lambda p, s: clip_by_norm_(p, 1.0, scaler=s),
                                  lambda p, s: clip_by_value_(p, 0.1, scaler=s),
                                  lambda p, s: agc_(p, scaler=s),
                                  lambda p, s: PercentileClipper(50).clip_(p, scaler=s)])
def test_clipping_refuses_gradients_still_scaled_and_clips_after_unscale(dtype, clip):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=dtype):
        loss = model(torch.randn(8, 4)).float().pow(2).mean()
    scaler.scale(loss).backward()
    fix = r"still multiplied by the loss scale.*scaler\.unscale_\(optimizer\) before"
    with pytest.raises(ValueError, match=fix):
        clip(model.parameters(), scaler)
    scaler.unscale_(optimizer)
    true = flat_grad(model).double().norm().item()
    stats = clip(model.parameters(), scaler)
    assert stats.norm_before == pytest.approx(true, rel=1e-5)
    scaler.step(optimizer)
    scaler.update()
