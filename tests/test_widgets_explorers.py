"""The lesson 02/03 explorers: every callback is tested by setting a control's .value."""

import ipywidgets
import pytest
import torch

from gradflow_lessons.models import MLP
from gradflow_lessons.widgets import (
    GradientFlowExplorer,
    RecurrenceExplorer,
    mlp_gradient_norms,
    png_description,
    recurrence_gradient_norms,
)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 2, generator=g, dtype=torch.float64), torch.arange(24) % 3


@pytest.fixture
def explorer(batch):
    return GradientFlowExplorer(*batch, depth=4, width=16, activation="tanh", init="xavier")


def drawn(line):
    return [float(v) for v in line.get_ydata()]


def test_mlp_gradient_norms_equal_brute_force_autograd_in_float64(batch):
    inputs, targets = batch
    norms = mlp_gradient_norms(inputs, targets, depth=3, width=5, activation="sigmoid",
                               init="xavier", gain=1.5, seed=7)
    torch.manual_seed(7)
    model = MLP(2, 3, 3, 5, "sigmoid", "xavier", 1.5).double()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    expected = [model.hidden[0].linear.weight, model.hidden[1].linear.weight, model.output.weight]
    assert norms == pytest.approx([w.grad.norm().item() for w in expected], rel=1e-12)


def test_mlp_gradient_norms_leave_the_global_random_state_alone(batch):
    before = torch.random.get_rng_state()
    mlp_gradient_norms(*batch, depth=3, width=4)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_gradient_flow_explorer_draws_one_point_per_linear_layer(explorer):
    assert drawn(explorer.line) == explorer.norms
    assert len(explorer.norms) == 4
    assert list(explorer.line.get_xdata()) == [1, 2, 3, 4]
    assert isinstance(explorer.widget, ipywidgets.VBox)
    assert bytes(explorer.image.value).startswith(b"\x89PNG")


def test_every_update_renders_a_new_image(explorer):
    before = explorer.image.value
    explorer.depth.value = 7
    assert bytes(explorer.image.value).startswith(b"\x89PNG") and bytes(explorer.image.value) != bytes(before)


def test_moving_the_depth_slider_redraws_the_norms_of_the_new_depth(explorer, batch):
    explorer.depth.value = 9
    expected = mlp_gradient_norms(*batch, depth=9, width=16, activation="tanh", init="xavier")
    assert drawn(explorer.line) == pytest.approx(expected)
    assert explorer.axes.get_xlim()[1] >= 9  # rescaled to the new number of layers
    assert "depth 9" in explorer.axes.get_title()


@pytest.mark.parametrize(
    "control, value", [("width", 64), ("activation", "relu"), ("init", "kaiming"), ("gain", 2.0)]
)
def test_each_control_rebuilds_the_network_with_its_new_value(explorer, batch, control, value):
    getattr(explorer, control).value = value
    kwargs = {"depth": 4, "width": 16, "activation": "tanh", "init": "xavier", "gain": 1.0}
    kwargs[control] = value
    assert drawn(explorer.line) == pytest.approx(mlp_gradient_norms(*batch, **kwargs))


def test_the_title_reports_the_first_to_last_layer_ratio(explorer):
    ratio = explorer.norms[0] / explorer.norms[-1]
    assert f"first / last layer = {ratio:.1e}" in explorer.axes.get_title()


def test_a_deep_sigmoid_network_vanishes_where_relu_with_kaiming_does_not(explorer):
    explorer.depth.value = 20
    explorer.activation.value = "sigmoid"
    sigmoid = explorer.norms[0] / explorer.norms[-1]
    explorer.activation.value = "relu"
    explorer.init.value = "kaiming"
    relu = explorer.norms[0] / explorer.norms[-1]
    assert sigmoid < 1e-6 < 1e-2 < relu


def test_linear_recurrence_gradient_is_v_times_a_power_of_w():
    radius, steps, width = 1.2, 6, 5
    norms = recurrence_gradient_norms(radius, steps, width=width, batch=3, seed=1)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(width, width, generator=g, dtype=torch.float64)
    W = W * (radius / torch.linalg.eigvals(W).abs().max())
    torch.randn(3, width, generator=g, dtype=torch.float64)  # h_0, drawn next
    v = torch.randn(width, generator=g, dtype=torch.float64)
    expected = [(v @ torch.linalg.matrix_power(W, steps - t)).norm().item() for t in range(steps + 1)]
    assert norms == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("radius", [0.7, 1.3])
def test_linear_recurrence_grows_at_the_spectral_radius_per_step(radius):
    norms = recurrence_gradient_norms(radius, steps=200, width=16)
    rate = (norms[0] / norms[100]) ** (1 / 100)  # the 100 earliest steps: past the transient
    assert rate == pytest.approx(radius, rel=0.03)


def test_unknown_nonlinearity_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        recurrence_gradient_norms(1.0, 5, nonlinearity="sigmoid")


@pytest.fixture
def recurrence():
    return RecurrenceExplorer(radius=0.9, steps=20, width=8)


def test_moving_the_radius_slider_redraws_the_measured_and_predicted_lines(recurrence):
    recurrence.radius.value = 1.3
    expected = recurrence_gradient_norms(1.3, 20, width=8)
    assert drawn(recurrence.line) == pytest.approx(expected)
    predicted = drawn(recurrence.prediction)
    assert predicted[-1] == pytest.approx(expected[-1])
    assert predicted[0] == pytest.approx(expected[-1] * 1.3**20)
    assert "spectral radius 1.30" in recurrence.axes.get_title()
    assert bytes(recurrence.image.value).startswith(b"\x89PNG")


def test_the_steps_slider_and_the_nonlinearity_dropdown_redraw(recurrence):
    recurrence.steps.value = 40
    assert len(drawn(recurrence.line)) == 41
    recurrence.nonlinearity.value = "tanh"
    assert drawn(recurrence.line) == pytest.approx(
        recurrence_gradient_norms(0.9, 40, width=8, nonlinearity="tanh"))
    assert recurrence.axes.get_title().startswith("tanh recurrence")


def test_explorer_figures_keep_their_fixed_layout_under_the_course_style(batch):
    import warnings

    import matplotlib as mpl

    from gradflow_lessons.plots import use_course_style

    with mpl.rc_context(), warnings.catch_warnings():
        use_course_style()  # constrained layout by default: the explorers must not inherit it
        warnings.simplefilter("error")
        explorers = [GradientFlowExplorer(*batch, depth=3, width=16), RecurrenceExplorer(steps=5)]
        explorers[0].depth.value = 4
        explorers[1].steps.value = 6
    assert [e.figure.get_layout_engine() for e in explorers] == [None, None]


def test_explorers_carry_alt_text_that_follows_the_controls(explorer):
    assert png_description(explorer.image.value) == explorer.alt and "depth 4" in explorer.alt
    recurrence = RecurrenceExplorer(radius=0.9, steps=10, width=8)
    recurrence.steps.value = 12
    assert "T = 12" in png_description(recurrence.image.value)
