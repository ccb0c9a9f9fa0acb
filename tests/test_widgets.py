import ipywidgets
import pytest
import torch

from gradflow_lessons.skips import gradient_profile
from gradflow_lessons.widgets import SkipConnectionExplorer, png_description


@pytest.fixture
def explorer():
    g = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(32, 2, generator=g), torch.arange(32) % 3
    return SkipConnectionExplorer(inputs, targets, depth=5, width=8, max_depth=20)


def drawn(explorer, connection):
    return list(explorer.lines[connection].get_ydata())


def test_skip_explorer_draws_one_point_per_layer_for_each_connection(explorer):
    for connection in ("plain", "residual", "dense"):
        assert len(drawn(explorer, connection)) == 5 + 2  # stem, 5 hidden layers, head
        assert drawn(explorer, connection) == explorer.profiles[connection].grad_norms
    assert isinstance(explorer.widget, ipywidgets.VBox)


def test_moving_the_depth_slider_redraws_the_profiles_of_the_new_depth(explorer):
    explorer.depth.value = 12
    expected = gradient_profile("residual", 12, explorer.inputs, explorer.targets, width=8)
    assert drawn(explorer, "residual") == pytest.approx(expected.grad_norms)
    assert len(drawn(explorer, "plain")) == 14
    assert explorer.axes.get_title().startswith("depth 12:")
    assert explorer.axes.get_xlim()[1] >= 13  # rescaled to the new number of layers


@pytest.mark.parametrize("control, value", [("init", "kaiming"), ("activation", "tanh")])
def test_changing_a_dropdown_rebuilds_the_networks_with_that_choice(explorer, control, value):
    getattr(explorer, control).value = value
    kwargs = {"init": explorer.init.value, "activation": explorer.activation.value}
    expected = gradient_profile("plain", 5, explorer.inputs, explorer.targets, width=8, **kwargs)
    assert drawn(explorer, "plain") == pytest.approx(expected.grad_norms)


def test_the_title_reports_the_stem_gradient_of_each_connection(explorer):
    title = explorer.axes.get_title()
    for connection, profile in explorer.profiles.items():
        assert f"{connection} {profile.first_layer:.1e}" in title


def test_deep_plain_networks_show_a_vanishing_stem_gradient(explorer):
    explorer.depth.value = 20
    assert explorer.profiles["plain"].first_layer < 1e-4 * explorer.profiles["residual"].first_layer


def test_the_figure_is_shown_as_png_bytes_that_change_with_the_slider(explorer):
    before = bytes(explorer.image.value)  # ipywidgets stores bytes as a memoryview
    assert before.startswith(b"\x89PNG") and explorer.image in explorer.widget.children
    explorer.depth.value = 9
    after = bytes(explorer.image.value)
    assert after.startswith(b"\x89PNG") and after != before


def test_rendering_keeps_a_fixed_layout_figure_fixed_under_the_course_style():
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from gradflow_lessons.widgets import figure_png

    with mpl.rc_context({"figure.constrained_layout.use": True}):
        figure = Figure(layout="none")
        figure.subplots().plot([1, 2])
        assert figure_png(figure)[:8] == b"\x89PNG\r\n\x1a\n"
        assert figure.get_layout_engine() is None  # savefig used to restore it from rcParams
        constrained = Figure(layout="constrained")
        constrained.subplots()
        figure_png(constrained)
        assert constrained.get_layout_engine() is not None


def test_the_figure_carries_alt_text_with_the_numbers(explorer):
    assert png_description(explorer.image.value) == explorer.alt
    assert "depth 5" in explorer.alt and f"{explorer.profiles['plain'].first_layer:.1e}" in explorer.alt
    explorer.depth.value = 7
    assert "depth 7" in png_description(explorer.image.value)


def test_the_image_widget_gets_no_tooltip_which_jupyterlab_cannot_draw(explorer):
    assert not explorer.image.tooltip


def test_png_description_reads_back_alt_text_beyond_latin_1():
    from matplotlib.figure import Figure

    from gradflow_lessons.widgets import figure_png

    assert png_description(figure_png(Figure(), alt="dL/dh_t ≤ σ")) == "dL/dh_t ≤ σ"
    assert png_description(figure_png(Figure())) is None


def test_connections_differ_by_marker_and_line_style_not_only_colour(explorer):
    lines = explorer.lines.values()
    assert len({line.get_marker() for line in lines}) == 3
    assert len({line.get_linestyle() for line in lines}) == 3
    assert "tab:red" not in {line.get_color() for line in lines}
