"""gradflow_lessons.seeds: N seeds as one batched computation equal N separate runs."""

import math

import pytest
import torch
from torch import nn

from gradflow_lessons.models import MLP, RNNClassifier
from gradflow_lessons.seeds import (
    Clipping,
    SeedRuns,
    agc_clipping,
    clipping_over_seeds,
    norm_clipping,
    train_over_seeds,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (64,), generator=g)
    return inputs, targets


def small_mlp(seed: int) -> nn.Module:
    return MLP(6, 3, depth=3, width=8, activation="tanh", init="xavier").double()


def both(make_model, inputs, targets, seeds, **kwargs):
    kwargs = {"steps": 25, "lr": 0.2, "batch_size": 16} | kwargs
    return (train_over_seeds(make_model, inputs, targets, seeds, method="vmap", **kwargs),
            train_over_seeds(make_model, inputs, targets, seeds, method="loop", **kwargs))


def assert_same_runs(a: SeedRuns, b: SeedRuns, rtol: float = 1e-9):
    for name in ("loss", "grad_norm", "eval_loss", "final_loss"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-12, msg=name)
    assert a.parameters.keys() == b.parameters.keys()
    for name in a.parameters:
        torch.testing.assert_close(a.parameters[name], b.parameters[name], rtol=rtol, atol=1e-12, msg=name)
    assert torch.equal(a.clipped, b.clipped)


@pytest.mark.parametrize("clipping", [None, norm_clipping([0.3, 1.0, 0.05]), agc_clipping(0.02),
                                      Clipping(max_norm=[0.5, math.inf, 0.2], agc=[math.inf, 0.05, 0.05])],
                         ids=["unclipped", "norm per seed", "agc", "mixed"])
def test_vmap_equals_separate_runs_with_torch_sgd_and_library_clipping(data, clipping):
    vmapped, looped = both(small_mlp, *data, [0, 1, 2], clipping=clipping, eval_every=5)
    assert (vmapped.method, looped.method) == ("vmap", "loop")
    assert vmapped.loss.shape == (3, 25) and vmapped.eval_loss.shape == (3, 5)
    assert_same_runs(vmapped, looped)
    if clipping is not None:
        assert vmapped.clipped.any()  # the thresholds were low enough to act


@pytest.mark.parametrize("clipping", [None, norm_clipping(0.5)], ids=["unclipped", "clipped"])
def test_vmap_adam_full_batch_equals_torch_adam(data, clipping):
    vmapped, looped = both(small_mlp, *data, [0, 1], optimizer="adam", lr=0.01, batch_size=None,
                           clipping=clipping)
    assert_same_runs(vmapped, looped)


def test_full_batch_uses_every_example(data):
    inputs, targets = data
    runs = train_over_seeds(small_mlp, inputs, targets, [3], steps=1, lr=0.1, batch_size=None)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected = nn.functional.cross_entropy(small_mlp(3)(inputs), targets)  # at init, on all 64
    torch.testing.assert_close(runs.loss[0, 0], expected.detach())


def test_vmap_equals_separate_runs_for_an_rnn_before_chaos_sets_in():
    # gain-2 RNNs at lr 0.3 amplify a rounding difference ~10x per step: compare 5 steps
    g = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(40, 7, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (40,))
    vmapped, looped = both(lambda s: RNNClassifier(4, 8, 2, recurrent_gain=2.0).double(), inputs, targets,
                           [3, 4], steps=5, lr=0.3, clipping=norm_clipping(0.5))
    assert_same_runs(vmapped, looped, rtol=1e-7)


def test_trained_parameters_load_into_the_model(data):
    inputs, targets = data
    runs = train_over_seeds(small_mlp, inputs, targets, [0, 1], steps=3, lr=0.1, batch_size=None)
    model = small_mlp(1)
    model.load_state_dict(runs.state_dict(1))
    final = nn.functional.cross_entropy(model(inputs), targets)
    torch.testing.assert_close(final.detach(), runs.final_loss[1])


def test_seed_sets_weights_and_batch_order(data):
    runs = train_over_seeds(small_mlp, *data, [5, 5, 6], steps=5, lr=0.1, batch_size=8)
    torch.testing.assert_close(runs.loss[0], runs.loss[1], rtol=0, atol=0)
    assert not torch.allclose(runs.loss[0], runs.loss[2])


def test_callers_random_state_is_untouched(data):
    before = torch.random.get_rng_state()
    train_over_seeds(lambda s: (torch.manual_seed(99), small_mlp(s))[1], *data, [0, 1], steps=2, lr=0.1,
                     batch_size=8)
    assert torch.equal(before, torch.random.get_rng_state())


def test_no_seed_is_a_clear_error(data):
    with pytest.raises(ValueError, match="at least one seed"):
        train_over_seeds(small_mlp, *data, [], steps=2, lr=0.1, batch_size=8)


def test_bad_arguments_are_clear_errors(data):
    with pytest.raises(ValueError, match="method"):
        train_over_seeds(small_mlp, *data, [0], steps=2, lr=0.1, batch_size=8, method="fast")
    with pytest.raises(ValueError, match="optimizer"):
        train_over_seeds(small_mlp, *data, [0], steps=2, lr=0.1, batch_size=8, optimizer="lbfgs")
    with pytest.raises(ValueError, match="2 values for 3 runs"):
        train_over_seeds(small_mlp, *data, [0, 1, 2], steps=2, lr=0.1, batch_size=8,
                         clipping=norm_clipping([1.0, 2.0]))
    with pytest.raises(ValueError, match="positive"):
        train_over_seeds(small_mlp, *data, [0], steps=2, lr=0.1, batch_size=8, clipping=norm_clipping(0.0))


class SignGate(nn.Module):
    """Branches in Python on a tensor's value: vmap cannot batch that."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if out.mean() > 0 else -out


def sign_gate(seed: int) -> nn.Module:
    return SignGate().double()


def test_a_model_vmap_cannot_run_is_refused_with_the_fix(data):
    with pytest.raises(ValueError, match="method='loop'"):
        train_over_seeds(sign_gate, *data, [0, 1], steps=2, lr=0.1, batch_size=8, method="vmap")


def test_auto_falls_back_to_the_loop_with_a_warning(data):
    with pytest.warns(UserWarning, match="one by one"):
        runs = train_over_seeds(sign_gate, *data, [0, 1], steps=2, lr=0.1, batch_size=8)
    looped = train_over_seeds(sign_gate, *data, [0, 1], steps=2, lr=0.1, batch_size=8, method="loop")
    assert runs.method == "loop"
    assert_same_runs(runs, looped, rtol=0)


def test_batchnorm_in_training_mode_runs_batched_and_matches(data):
    vmapped, looped = both(lambda s: MLP(6, 3, depth=3, width=8, norm="batch").double(), *data, [0, 1],
                           steps=4)
    assert_same_runs(vmapped, looped)


def test_models_of_different_shapes_are_refused(data):
    with pytest.raises(ValueError, match="different shapes"):
        train_over_seeds(lambda s: MLP(6, 3, width=4 + s).double(), *data, [0, 1], steps=2, lr=0.1,
                         batch_size=8, method="vmap")


def test_median_band_and_success_rate_are_over_seeds():
    final = torch.tensor([0.01, 0.02, 0.5, 0.7, float("nan")], dtype=torch.float64)
    runs = SeedRuns((0, 1, 2, 3, 4), torch.zeros(5, 2), torch.zeros(5, 2), torch.tensor([[True, False]] * 5),
                    torch.zeros(5, 0), final, "loop")
    assert runs.success_rate(below=0.1) == pytest.approx(0.4)  # NaN is a failure
    finite = runs.rows(0, 4)
    assert finite.median().item() == pytest.approx(0.26)
    low, high = finite.band(lower=0.0, upper=1.0)
    assert (low.item(), high.item()) == (0.01, 0.7)
    assert runs.fraction_clipped().tolist() == [0.5] * 5
    with pytest.raises(ValueError):
        runs.band(lower=0.9, upper=0.1)


def test_clipping_experiment_thresholds_are_each_seeds_own_percentiles():
    exp = clipping_over_seeds(seeds=[0, 1], percentiles=(50, 90), steps=4)
    assert list(exp.runs) == ["no clipping", "p50", "p90", "AGC 0.05"]
    history = exp.runs["no clipping"].grad_norm
    torch.testing.assert_close(exp.thresholds["p90"], history.quantile(0.9, dim=1))
    for label in ("p50", "p90", "AGC 0.05"):
        assert exp.runs[label].seeds == (0, 1)
        # every clipped run starts where the unclipped one did: same weights, same first batch
        torch.testing.assert_close(exp.runs[label].grad_norm[:, 0], history[:, 0])
    assert set(exp.success_rates()) == set(exp.runs)
