"""ipywidgets explorers for live lessons.

Each explorer is one small class: it owns its controls (``ipywidgets``), a matplotlib
``Figure`` shown in an ``Output`` widget, and the data it last drew. (``SkipConnectionExplorer``
shows its figure as PNG bytes in an ``Image`` widget instead, see ``figure_png``: no
``display`` call, so the cell's only output is the widget, in a live kernel and under nbval.)
The computation lives in the topic's module (``skips.gradient_profile`` ...); the explorer only calls it and
draws. Every callback is a plain method, so a test can set a control's ``.value`` and
check the redrawn data without a browser.

    explorer = SkipConnectionExplorer(inputs, targets)
    explorer.widget          # display this in a notebook
    explorer.depth.value = 40  # redraws, as moving the slider does
"""

from __future__ import annotations

import io

import ipywidgets as widgets
import matplotlib as mpl
import torch
from matplotlib.figure import Figure

from .models import ACTIVATIONS, INITS
from .skips import CONNECTIONS, GradientProfile, gradient_profile

COLORS = {"plain": "tab:red", "residual": "tab:blue", "dense": "tab:green"}


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """``figure`` rendered as PNG bytes, the value of an ``ipywidgets.Image``.

    Unlike ``display(figure)`` inside an ``Output`` widget, setting an ``Image``'s value never
    writes to the cell's own outputs, so a kernel without a widget front end (nbval, a test)
    records exactly what a browser shows: the widget view.
    """
    buffer = io.BytesIO()
    # savefig restores a figure without a layout engine by asking rcParams again, so under the
    # course style (constrained layout) a fixed-layout figure would turn constrained after its
    # first render, and every later render would pay for the layout pass.
    with mpl.rc_context({"figure.constrained_layout.use": False, "figure.autolayout": False}):
        figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


class SkipConnectionExplorer:
    """Plain, residual and dense MLPs side by side as depth changes (lesson 06).

    For the chosen depth, activation and initialisation it builds the three networks with
    the same seed and plots the gradient norm of every layer's weights, stem to head, on a
    log scale: the plain network's input end fades geometrically with depth, the residual
    and dense ones keep it.

    Args:
        inputs: ``[N, D]`` batch the gradients are taken on.
        targets: ``[N]`` class labels.
        depth: initial number of hidden layers.
        width: units per layer.
        max_depth: the depth slider's maximum.
        activation: initial activation (a name in ``models.ACTIVATIONS``).
        init: initial initialisation (a name in ``models.INITS``).

    Attributes:
        depth, activation, init: the controls (``IntSlider``, ``Dropdown``, ``Dropdown``).
        profiles: the last ``GradientProfile`` of each connection, as drawn.
        lines: the matplotlib line of each connection.
        image: the ``Image`` widget showing the figure (``figure_png``).
        widget: the ``VBox`` to display.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        depth: int = 20,
        width: int = 32,
        max_depth: int = 60,
        activation: str = "relu",
        init: str = "default",
    ) -> None:
        self.inputs, self.targets, self.width = inputs, targets, width
        self.depth = widgets.IntSlider(value=depth, min=1, max=max_depth, description="depth",
                                       continuous_update=False)
        self.activation = widgets.Dropdown(options=sorted(ACTIVATIONS), value=activation,
                                           description="activation")
        self.init = widgets.Dropdown(options=list(INITS), value=init, description="init")
        self.image = widgets.Image(format="png")
        self.figure = Figure(figsize=(8, 3.6), layout="tight")
        self.axes = self.figure.subplots()
        self.lines = {c: self.axes.semilogy([], [], marker="o", ms=3, color=COLORS[c], label=c)[0]
                      for c in CONNECTIONS}
        self.axes.set(xlabel="layer (0 = stem, last = head)",
                      ylabel=r"$\|\partial L/\partial W\|_F$ (log scale)")
        self.axes.legend(loc="lower right")
        self.profiles: dict[str, GradientProfile] = {}
        for control in (self.depth, self.activation, self.init):
            control.observe(self.on_change, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.depth, self.activation, self.init]), self.image]
        )
        self.update()

    def on_change(self, change: dict | None = None) -> None:
        """The callback every control calls: recompute and redraw."""
        self.update()

    def compute(self) -> dict[str, GradientProfile]:
        """The three gradient profiles for the controls' current values."""
        return {
            c: gradient_profile(c, self.depth.value, self.inputs, self.targets, width=self.width,
                                activation=self.activation.value, init=self.init.value)
            for c in CONNECTIONS
        }

    def update(self) -> None:
        """Recompute the profiles, redraw the lines and title, and update the image."""
        self.profiles = self.compute()
        for connection, profile in self.profiles.items():
            self.lines[connection].set_data(range(len(profile.grad_norms)), profile.grad_norms)
        self.axes.relim()
        self.axes.autoscale_view()
        firsts = ", ".join(f"{c} {p.first_layer:.1e}" for c, p in self.profiles.items())
        self.axes.set_title(f"depth {self.depth.value}: gradient at the stem: {firsts}", fontsize=10)
        self.image.value = figure_png(self.figure)


# --------------------------------------------------------------------------- lessons 02 and 03
# Per-layer gradient norms of a plain MLP (depth, width, activation, init, gain), and the
# backward signal of a recurrence h_t = phi(W h_{t-1}) whose W has a chosen spectral radius.


def _fast_log_figure() -> tuple[Figure, object]:
    """A figure with one log-y axes (plot on it with ``plot``: ``semilogy`` would reset the
    tick formatter) that renders in well under 100 ms: a fixed layout (no tight-layout
    pass, which draws the figure twice) and plain-text tick labels ("1e-05": no mathtext to parse
    on every draw)."""
    from matplotlib.ticker import LogFormatter, MaxNLocator, NullFormatter

    figure = Figure(figsize=(8, 3.6), layout="none")  # not the course style's constrained layout
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.14, top=0.9)
    axes = figure.subplots()
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers and time steps
    return figure, axes


def mlp_gradient_norms(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    depth: int,
    width: int = 64,
    activation: str = "relu",
    init: str = "kaiming",
    gain: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Frobenius norm of every linear layer's weight gradient, input layer first.

    Builds ``MLP(D, C, depth, width, activation, init, gain)`` with ``seed`` (the global
    random state is left as it was) and takes the cross-entropy loss on ``inputs`` [N, D]
    and class labels ``targets`` [N]: ``||dL/dW_l||_F`` for ``l = 1 .. depth``.
    Cost: one forward and one backward pass.
    """
    from .models import MLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(inputs.shape[1], int(targets.max()) + 1, depth, width, activation, init, gain)
    model = model.to(inputs.device, inputs.dtype)
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    grads = torch.autograd.grad(loss, [layer.weight for _, layer in model.linear_layers()])
    return torch.stack([g.norm() for g in grads]).cpu().tolist()


def recurrence_gradient_norms(
    radius: float, steps: int, width: int = 32, nonlinearity: str = "linear", batch: int = 16,
    seed: int = 0,
) -> list[float]:
    """``||dL/dh_t||`` for ``t = 0 .. steps`` of ``h_t = phi(W h_{t-1})`` (mean over a batch).

    ``W`` is a Gaussian ``[width, width]`` matrix rescaled so that its spectral radius (largest
    |eigenvalue|) is ``radius``; ``phi`` is the identity, tanh or ReLU. The loss is
    ``L = sum(h_T * v)`` for a fixed random ``v``, so ``dL/dh_t = v (J_T ... J_{t+1})``: for the
    linear recurrence ``v W^(T-t)``, which grows or shrinks like ``radius^(T-t)``.
    Cost: ``steps`` matrix products forward and backward.
    """
    phis = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}
    if nonlinearity not in phis:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(phis)}")
    if steps < 1 or radius <= 0:
        raise ValueError(f"need steps >= 1 and radius > 0, got steps={steps}, radius={radius}")
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g, dtype=torch.float64)
    W = W * (radius / torch.linalg.eigvals(W).abs().max())
    states = [torch.randn(batch, width, generator=g, dtype=torch.float64).requires_grad_(True)]
    for _ in range(steps):
        states.append(phis[nonlinearity](states[-1] @ W.T))
    v = torch.randn(width, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((states[-1] * v).sum(), states, allow_unused=True)
    return [g.norm(dim=1).mean().item() if g is not None else 0.0 for g in grads]


class GradientFlowExplorer:
    """Per-layer gradient norms of one MLP as depth, width, activation, init and gain change
    (lesson 02).

    Draws ``||dL/dW_l||_F`` for every linear layer, input to output, on a log scale, and puts
    the ratio first / last layer in the title: a sigmoid network's curve falls by about a
    factor 4 or more per layer; ReLU with Kaiming init stays level.

    Args:
        inputs: ``[N, D]`` batch the gradients are taken on.
        targets: ``[N]`` class labels.
        depth, width, activation, init, gain: the initial values of the controls.
        max_depth: the depth slider's maximum.

    Attributes:
        depth, width, activation, init, gain: the controls.
        norms: the gradient norms last drawn, input layer first.
        line: the matplotlib line; ``image``: the ``Image`` showing the figure (``figure_png``);
        ``widget``: the ``VBox`` to display.
    """

    WIDTHS = (16, 32, 64, 128)  # 256 at depth 60 costs ~300 ms per update on 2 cores

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        depth: int = 20,
        width: int = 64,
        activation: str = "sigmoid",
        init: str = "xavier",
        gain: float = 1.0,
        max_depth: int = 60,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.depth = widgets.IntSlider(value=depth, min=2, max=max_depth, description="depth",
                                       continuous_update=False)
        self.width = widgets.Dropdown(options=sorted({*self.WIDTHS, width}), value=width,
                                      description="width")
        self.activation = widgets.Dropdown(options=sorted(ACTIVATIONS), value=activation,
                                           description="activation")
        self.init = widgets.Dropdown(options=list(INITS), value=init, description="init")
        self.gain = widgets.FloatSlider(value=gain, min=0.25, max=3.0, step=0.05, description="gain",
                                        continuous_update=False)
        self.image = widgets.Image(format="png")
        self.figure, self.axes = _fast_log_figure()
        (self.line,) = self.axes.plot([], [], marker="o", ms=3, color="tab:blue")
        self.axes.set(xlabel="linear layer l (1 = input layer)",
                      ylabel=r"$\|\partial L/\partial W_l\|_F$ (log scale)")
        self.norms: list[float] = []
        controls = (self.depth, self.width, self.activation, self.init, self.gain)
        for control in controls:
            control.observe(self.on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox(controls[:3]), widgets.HBox(controls[3:]), self.image])
        self.update()

    def on_change(self, change: dict | None = None) -> None:
        """The callback every control calls: recompute and redraw."""
        self.update()

    def update(self) -> None:
        """Measure the gradient norms for the current controls and redraw them."""
        self.norms = mlp_gradient_norms(
            self.inputs, self.targets, self.depth.value, self.width.value,
            self.activation.value, self.init.value, self.gain.value,
        )
        self.line.set_data(range(1, len(self.norms) + 1), self.norms)
        self.axes.relim()
        self.axes.autoscale_view()
        ratio = self.norms[0] / self.norms[-1] if self.norms[-1] > 0 else float("nan")
        self.axes.set_title(
            f"{self.activation.value}, {self.init.value} init (gain {self.gain.value:g}), depth "
            f"{self.depth.value}, width {self.width.value}: first / last layer = {ratio:.1e}",
            fontsize=10,
        )
        self.image.value = figure_png(self.figure)


class RecurrenceExplorer:
    """The backward signal of ``h_t = phi(W h_{t-1})`` as the spectral radius of ``W`` changes
    (lesson 03).

    Draws ``||dL/dh_t||`` against the time step ``t`` on a log scale, with the prediction
    ``radius^(T-t)`` (scaled to match at ``t = T``) dashed: below radius 1 the gradient from
    the end never reaches the start, above 1 it explodes.

    Args:
        radius, steps, nonlinearity: the initial values of the controls.
        width: size of ``h_t``.

    Attributes:
        radius, steps, nonlinearity: the controls.
        norms: ``||dL/dh_t||`` last drawn, ``t = 0 .. T``.
        line, prediction: the matplotlib lines; ``image``: the ``Image`` showing the figure;
        ``widget``: the ``VBox`` to display.
    """

    def __init__(self, radius: float = 1.1, steps: int = 50, nonlinearity: str = "linear",
                 width: int = 32) -> None:
        self.hidden_size = width
        self.radius = widgets.FloatSlider(value=radius, min=0.5, max=1.5, step=0.05,
                                          description="spectral radius", continuous_update=False,
                                          style={"description_width": "initial"})
        self.steps = widgets.IntSlider(value=steps, min=5, max=200, description="steps T",
                                       continuous_update=False)
        self.nonlinearity = widgets.Dropdown(options=["linear", "tanh", "relu"], value=nonlinearity,
                                             description="phi")
        self.image = widgets.Image(format="png")
        self.figure, self.axes = _fast_log_figure()
        (self.line,) = self.axes.plot([], [], color="tab:red", label="measured")
        (self.prediction,) = self.axes.plot([], [], "k--", lw=1, label="radius^(T - t)")
        self.axes.set(xlabel="time step t", ylabel=r"$\|\partial L/\partial h_t\|$ (log scale)")
        self.axes.legend(loc="best")
        self.norms: list[float] = []
        controls = (self.radius, self.steps, self.nonlinearity)
        for control in controls:
            control.observe(self.on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox(controls), self.image])
        self.update()

    def on_change(self, change: dict | None = None) -> None:
        """The callback every control calls: recompute and redraw."""
        self.update()

    def update(self) -> None:
        """Measure the backward signal for the current controls and redraw it."""
        radius, steps = self.radius.value, self.steps.value
        self.norms = recurrence_gradient_norms(radius, steps, self.hidden_size, self.nonlinearity.value)
        self.line.set_data(range(steps + 1), self.norms)
        self.prediction.set_data(
            range(steps + 1), [self.norms[-1] * radius ** (steps - t) for t in range(steps + 1)]
        )
        self.axes.relim()
        self.axes.autoscale_view()
        self.axes.set_title(
            f"{self.nonlinearity.value} recurrence, spectral radius {radius:.2f}, T = {steps}: "
            f"||dL/dh_0|| / ||dL/dh_T|| = {self.norms[0] / self.norms[-1]:.1e}",
            fontsize=10,
        )
        self.image.value = figure_png(self.figure)
