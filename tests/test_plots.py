import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow_lessons import plots
from gradflow_lessons.models import MLP
from gradflow_lessons.monitor import GradientMonitor


def monitored_run(activation: str = "relu", steps: int = 6, detail_every: int = 1) -> GradientMonitor:
    torch.manual_seed(0)
    model = MLP(2, 3, depth=4, width=8, activation=activation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, targets = torch.randn(32, 2), torch.randint(0, 3, (32,))
    with GradientMonitor(model, optimizer, histogram_every=2, detail_every=detail_every) as monitor:
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            monitor.record()
            optimizer.step()
    return monitor


@pytest.fixture(scope="module")
def relu_run() -> GradientMonitor:
    return monitored_run("relu")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def assert_labelled(ax: Axes) -> None:
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_use_course_style_sets_a_small_dpi_and_readable_fonts():
    with mpl.rc_context():
        plots.use_course_style()
        assert mpl.rcParams["figure.dpi"] == 90
        assert mpl.rcParams["font.size"] >= 10


def test_gradient_flow_bars_are_the_recorded_norms_on_a_log_scale(relu_run):
    ax = plots.plot_gradient_flow(relu_run, step=3)
    heights = [bar.get_height() for bar in ax.patches]
    expected = [r.grad_norm for r in relu_run.history if r.step == 3]
    assert heights == pytest.approx(expected)
    assert ax.get_yscale() == "log" and "step 3" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == relu_run.layers
    assert_labelled(ax)


def test_gradient_flow_marks_layers_with_nan_gradients():
    torch.manual_seed(0)
    model = MLP(2, 3, depth=3, width=4)
    with GradientMonitor(model) as monitor:
        model(torch.randn(5, 2)).sum().backward()
        model.hidden[1].linear.weight.grad[0, 0] = float("nan")
        monitor.record()
    ax = plots.plot_gradient_flow(monitor.history)
    assert any("NaN/Inf" in t.get_text() for t in ax.texts)


def test_gradient_flow_rejects_a_step_that_was_not_recorded(relu_run):
    with pytest.raises(ValueError, match="no record of grad_norm at step 99"):
        plots.plot_gradient_flow(relu_run, step=99)


def test_heatmap_is_layer_by_step_with_zeros_below_the_scale():
    torch.manual_seed(0)
    model = MLP(2, 3, depth=3, width=4)
    with GradientMonitor(model) as monitor:
        for step in range(3):
            model.zero_grad()
            model(torch.randn(5, 2)).sum().backward()
            if step == 1:
                model.hidden[0].linear.weight.grad.zero_()
                model.hidden[0].linear.bias.grad.zero_()
            monitor.record()
    ax = plots.plot_gradient_heatmap(monitor)
    mesh = ax.collections[0]
    values = mesh.get_array().reshape(3, 3)  # [layers, steps]
    assert values[0, 1] < mesh.norm.vmin  # drawn in the "under" colour (white)
    layer_1_step_2 = next(r for r in monitor.history if r.layer == monitor.layers[1] and r.step == 2)
    assert values[1, 2] == pytest.approx(layer_1_step_2.grad_norm)
    assert mesh.norm.__class__.__name__ == "LogNorm"
    assert_labelled(ax)


def test_norms_over_time_draws_one_line_per_layer(relu_run):
    ax = plots.plot_norms_over_time(relu_run)
    assert len(ax.lines) == len(relu_run.layers) and ax.get_yscale() == "log"
    assert_labelled(ax)


def test_histograms_show_one_layer_over_time(relu_run):
    ax = plots.plot_histograms(relu_run, "output")
    assert ax.collections[0].get_array().shape == (40, 3)  # bins x recorded histogram steps
    assert "log10" in ax.get_ylabel()
    assert_labelled(ax)
    ax = plots.plot_histograms(relu_run, "hidden.0.act", kind="activation")
    assert ax.get_ylabel() == "activation value"


def test_histograms_without_histogram_every_name_the_fix(relu_run):
    with pytest.raises(ValueError, match="histogram_every"):
        plots.plot_histograms(relu_run, "no.such.layer")


def test_update_ratio_draws_the_rule_of_thumb_line(relu_run):
    ax = plots.plot_update_ratio(relu_run)
    rule = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(rule) == 1 and rule[0].get_ydata()[0] == pytest.approx(1e-3)
    assert len(ax.lines) == len(relu_run.layers) + 1 and ax.get_yscale() == "log"
    assert_labelled(ax)


def test_update_ratio_without_an_optimizer_names_the_fix():
    torch.manual_seed(0)
    model = MLP(2, 3, depth=2, width=4)
    with GradientMonitor(model) as monitor:
        model(torch.randn(5, 2)).sum().backward()
        monitor.record()
    with pytest.raises(ValueError, match=r"GradientMonitor\(model, optimizer\)"):
        plots.plot_update_ratio(monitor)


def test_activation_panels_show_dead_units_and_say_when_there_is_no_tanh(relu_run):
    fig = plots.plot_activation_health(relu_run)
    dead, saturated = fig.axes[:2]
    assert len(dead.lines) == 3  # three ReLU layers
    assert any("no tanh or sigmoid layers" in t.get_text() for t in saturated.texts)
    for ax in (dead, saturated):
        assert_labelled(ax)


def test_saturation_panel_plots_tanh_layers():
    ax = plots.plot_activation_fraction(monitored_run("tanh"), "saturated_fraction")
    assert len(ax.lines) == 3
    with pytest.raises(ValueError, match="field must be one of"):
        plots.plot_activation_fraction(monitored_run("tanh", steps=1), "mean")


def test_dashboard_has_four_titled_panels(relu_run):
    fig = plots.plot_dashboard(relu_run, title="run")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert isinstance(fig, Figure) and len(panels) == 4


@pytest.mark.parametrize("draw", [plots.plot_gradient_flow, plots.plot_gradient_heatmap,
                                  plots.plot_norms_over_time, plots.plot_update_ratio])
def test_plots_of_no_records_name_the_fix(draw):
    with pytest.raises(ValueError, match=r"monitor\.record\(\)"):
        draw([])


def test_layer_colors_run_from_input_to_output():
    colors = plots.layer_colors(["a", "b", "c"])
    assert list(colors) == ["a", "b", "c"] and len(set(colors.values())) == 3
    assert np.allclose(colors["a"], mpl.colormaps["viridis"](0.0))


def rc_snapshot() -> dict:
    return {key: repr(value) for key, value in mpl.rcParams.items()}


def test_importing_plots_changes_no_matplotlib_setting():
    import subprocess
    import sys

    code = ("import matplotlib as mpl; before = {k: repr(v) for k, v in mpl.rcParams.items()}; "
            "import gradflow_lessons.plots, gradflow_lessons.widgets; "
            "after = {k: repr(v) for k, v in mpl.rcParams.items()}; "
            "print(sorted(k for k in before if before[k] != after[k]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert result.stdout.strip() == "[]"


ALL_PLOTS = [
    lambda run: plots.plot_gradient_flow(run),
    lambda run: plots.plot_gradient_heatmap(run),
    lambda run: plots.plot_norms_over_time(run),
    lambda run: plots.plot_histograms(run, "hidden.0.linear"),
    lambda run: plots.plot_update_ratio(run),
    lambda run: plots.plot_activation_fraction(run),
    lambda run: plots.plot_activation_health(run),
    lambda run: plots.plot_dashboard(run),
    lambda run: plots.explorer_figure(),
]


@pytest.mark.parametrize("draw", ALL_PLOTS)
def test_a_plot_call_leaves_every_matplotlib_setting_as_it_was(relu_run, draw):
    before = rc_snapshot()
    draw(relu_run)
    assert rc_snapshot() == before


def test_plots_draw_under_the_course_style_without_it_being_global(relu_run):
    with mpl.rc_context({"figure.dpi": 100, "axes.grid": False}):
        ax = plots.plot_gradient_flow(relu_run)
        assert ax.figure.dpi == 90  # the style file's
        assert all(line.get_visible() for line in ax.yaxis.get_gridlines())
        assert mpl.rcParams["figure.dpi"] == 100


def test_use_course_style_reads_the_style_file():
    assert plots.STYLE.is_file()
    with mpl.rc_context():
        plots.use_course_style()
        assert mpl.rcParams["figure.constrained_layout.use"] and not mpl.rcParams["axes.spines.top"]


def test_dashboard_of_a_history_list_names_the_fix(relu_run):
    with pytest.raises(TypeError, match=r"pass `monitor`, not `monitor.history`"):
        plots.plot_dashboard(relu_run.history)


@pytest.mark.parametrize("draw", [
    lambda run: plots.plot_dashboard(type("Empty", (), {"history": [], "activations": []})()),
    lambda run: plots.plot_gradient_flow(run, step=999),
    lambda run: plots.plot_histograms(run, "no.such.layer"),
    lambda run: plots.plot_activation_fraction(run, field="nope"),
])
def test_a_plot_that_raises_leaves_no_figure_open(relu_run, draw):
    plt.close("all")
    with pytest.raises((ValueError, TypeError)):
        draw(relu_run)
    assert plt.get_fignums() == []


def test_a_failure_inside_the_dashboard_closes_its_figure(relu_run, monkeypatch):
    plt.close("all")

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "plot_gradient_heatmap", broken)
    with pytest.raises(RuntimeError):
        plots.plot_dashboard(relu_run)
    assert plt.get_fignums() == []


def test_categories_differ_by_more_than_colour():
    styles = plots.CATEGORY_STYLES
    assert len({s["marker"] for s in styles}) == len(styles)
    assert all(s["color"] in plots.OKABE_ITO.values() for s in styles)


def test_nonfinite_bars_are_hatched_as_well_as_coloured():
    torch.manual_seed(0)
    model = MLP(2, 3, depth=3, width=4)
    with GradientMonitor(model) as monitor:
        F.cross_entropy(model(torch.randn(8, 2)), torch.randint(0, 3, (8,))).backward()
        model.hidden[0].linear.weight.grad[0, 0] = float("nan")
        monitor.record()
    ax = plots.plot_gradient_flow(monitor)
    assert any(bar.get_hatch() for bar in ax.patches)


def test_detail_fields_are_drawn_from_the_detail_records_only_and_a_gap_is_not_nan():
    monitor = monitored_run(steps=12, detail_every=10)  # detail records at steps 0 and 10
    ax = plots.plot_gradient_flow(monitor, field="grad_max_abs")
    assert "step 10" in ax.get_title()  # the last step that has the statistic, not step 11
    ax = plots.plot_gradient_heatmap(monitor, field="zero_fraction")
    assert ax.collections[0].get_array().shape[1] == 2 and not any(
        isinstance(c, mpl.collections.PathCollection) for c in ax.collections)  # no NaN crosses
    with pytest.raises(ValueError, match="no record of grad_mean_abs at step 11"):
        plots.plot_gradient_flow(monitor, step=11, field="grad_mean_abs")


def test_a_detail_field_nobody_recorded_says_how_to_record_it():
    monitor = monitored_run(steps=3, detail_every=10)
    records = [r for r in monitor.history if r.step > 0]  # no detail record among them
    with pytest.raises(ValueError, match="detail_every=1"):
        plots.plot_norms_over_time(records, field="grad_mean_abs")
