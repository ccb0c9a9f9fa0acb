"""Networks whose gradient flow the course studies.

``MLP`` takes depth, width, activation, initialisation, normalisation and residual
connections as plain arguments, so a lesson can change one of them and watch what the
gradient does. ``RNNClassifier`` is a vanilla recurrent network for long sequences.
Residual blocks (pre-/post-norm, branch scaling, zero-init) and dense blocks, for MLPs
and small CNNs, are in ``gradflow_lessons.skips``.

Layer names are stable and readable (``hidden.0.linear`` ... ``output``): they are the
names ``GradientMonitor`` and the figures show.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}
INITS = ("default", "xavier", "kaiming", "orthogonal", "normal")
NORMS = (None, "batch", "layer")


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def make_norm(norm: str | None, features: int, conv: bool = False) -> nn.Module:
    """The normalisation layer called ``norm`` (one of ``NORMS``) for ``features`` units.

    - ``None``: ``nn.Identity()``.
    - ``"batch"``: ``BatchNorm1d`` (``BatchNorm2d`` for images, ``conv=True``): each unit
      normalised over the batch (Ioffe & Szegedy, 2015).
    - ``"layer"``: ``LayerNorm`` over a sample's features (Ba et al., 2016); for images
      ``GroupNorm(1, C)``, which normalises over every channel and position of a sample.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    if norm == "batch":
        return nn.BatchNorm2d(features) if conv else nn.BatchNorm1d(features)
    if norm == "layer":
        return nn.GroupNorm(1, features) if conv else nn.LayerNorm(features)
    return nn.Identity()


def init_layer_(
    layer: nn.Linear | nn.Conv2d, init: str = "default", gain: float = 1.0, bias: float | None = None
) -> nn.Module:
    """Initialise a linear (or convolutional) ``layer`` in place; returns it.

    With ``W`` of shape ``[fan_out, fan_in]`` (for a convolution ``[out, in, kh, kw]``,
    ``fan_in = in * kh * kw`` and ``fan_out = out * kh * kw``):

    - ``default``: PyTorch's own (uniform, std = 1/sqrt(3 fan_in)), ``gain`` ignored.
    - ``xavier``: Glorot & Bengio (2010), normal with std = gain * sqrt(2 / (fan_in + fan_out)).
      Keeps the variance of a *linear* (or tanh near 0) layer's output and gradient.
    - ``kaiming``: He et al. (2015), normal with std = gain * sqrt(2 / fan_in). The 2
      makes up for ReLU zeroing half of its inputs.
    - ``orthogonal``: Saxe et al. (2014), a (semi-)orthogonal matrix times ``gain``: every
      singular value equals ``gain``.
    - ``normal``: normal with std = gain / sqrt(fan_in) (``gain`` sets the scale directly).

    Biases become zero for every init but ``default``, or ``bias`` when given.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
    weight = layer.weight
    fan_in = weight[0].numel()
    fan_out = weight.shape[0] * fan_in // weight.shape[1]
    with torch.no_grad():
        if init == "xavier":
            nn.init.normal_(weight, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
        elif init == "kaiming":
            nn.init.normal_(weight, 0.0, gain * math.sqrt(2.0 / fan_in))
        elif init == "orthogonal":
            nn.init.orthogonal_(weight, gain=gain)
        elif init == "normal":
            nn.init.normal_(weight, 0.0, gain / math.sqrt(fan_in))
        if layer.bias is not None:
            if bias is not None:
                layer.bias.fill_(bias)
            elif init != "default":
                layer.bias.zero_()
    return layer


init_linear_ = init_layer_  # the name lessons 01-05 and users' scripts know


class HiddenLayer(nn.Module):
    """``activation(norm(linear(x)))``: one plain hidden layer, ``[N, in] -> [N, out]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = make_norm(norm, out_features)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        return self.act(self.norm(self.linear(x)))


class MLP(nn.Module):
    """A multilayer perceptron with ``depth`` linear layers.

    ``depth - 1`` hidden layers of ``width`` units (``hidden.0`` ... ``hidden.{depth-2}``),
    then a linear ``output`` layer. With ``residual=True`` every hidden layer after the
    first is a ``skips.ResidualBlock``, ``h + W act(norm(h))`` (the pre-activation block of
    He et al., 2016, "Identity Mappings in Deep Residual Networks"; its linear layer is
    ``hidden.{i}.branch.linear1``); the first changes the width, so it stays plain. The
    weights are the same as with ``residual=False`` for the same seed: only the ``h +``
    and the order inside the layer (norm and activation before the linear) differ.

    Args:
        in_features: input size D.
        out_features: output size (classes, or regression targets).
        depth: number of linear layers, at least 1.
        width: units per hidden layer.
        activation: a name in ``ACTIVATIONS``.
        init: a name in ``INITS`` (see ``init_layer_``), applied to every layer.
        gain: the init's gain.
        bias: constant for every hidden bias (for example -3.0 to kill ReLUs), or None.
        norm: None, ``"batch"`` or ``"layer"`` (see ``make_norm``), placed before each
            activation.
        residual: hidden layers 1..depth-2 become residual blocks.

    Shapes: ``[N, in_features] -> [N, out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int = 4,
        width: int = 64,
        activation: str = "relu",
        init: str = "default",
        gain: float = 1.0,
        bias: float | None = None,
        norm: str | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1 (the output layer), got {depth}")
        if width < 1 or in_features < 1 or out_features < 1:
            raise ValueError("in_features, out_features and width must be positive")
        make_activation(activation)  # fail early on a misspelt name
        make_norm(norm, 1)
        from .skips import ResidualBlock  # skips builds on this module's init and norm

        sizes = [in_features] + [width] * (depth - 1)
        # Each layer is built (PyTorch's default init draws from the global RNG), then every
        # layer is initialised in order: residual or not, the same seed gives the same weights.
        self.hidden = nn.ModuleList(
            ResidualBlock(width, activation, norm) if residual and i > 0
            else HiddenLayer(sizes[i], sizes[i + 1], activation, norm)
            for i in range(depth - 1)
        )
        self.output = nn.Linear(sizes[-1], out_features)
        for _, layer in self.linear_layers()[:-1]:
            init_layer_(layer, init, gain, bias)
        init_layer_(self.output, init, 1.0 if init == "kaiming" else gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = layer(x)
        return self.output(x)

    def linear_layers(self) -> list[tuple[str, nn.Linear]]:
        """``(name, layer)`` for every linear layer, input to output."""
        named = [(f"hidden.{i}.linear", h.linear) if isinstance(h, HiddenLayer)
                 else (f"hidden.{i}.branch.linear1", h.branch.linear1)
                 for i, h in enumerate(self.hidden)]
        return named + [("output", self.output)]


class RNNClassifier(nn.Module):
    """A vanilla recurrent network read out from its last hidden state.

    ``h_t = nonlinearity(W_ih x_t + W_hh h_{t-1} + b)``, then ``output(h_T)``.

    Args:
        input_size: features per time step.
        hidden_size: size of ``h_t``.
        out_features: output size.
        nonlinearity: ``"tanh"`` or ``"relu"`` (``nn.RNN``'s choices).
        recurrent_gain: if given, ``W_hh`` becomes an orthogonal matrix times this gain, so
            its spectral radius is exactly ``recurrent_gain`` (above 1: gradients explode).

    Shapes: ``[N, T, input_size] -> [N, out_features]``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        out_features: int,
        nonlinearity: str = "tanh",
        recurrent_gain: float | None = None,
    ) -> None:
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True)
        self.output = nn.Linear(hidden_size, out_features)
        if recurrent_gain is not None:
            with torch.no_grad():
                nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=recurrent_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"RNNClassifier expects inputs of shape [N, T, input_size], got {list(x.shape)}"
            )
        states, _ = self.rnn(x)  # [N, T, H]
        return self.output(states[:, -1])
