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
from collections import OrderedDict

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


CELLS = ("rnn", "lstm", "gru")


class RNNClassifier(nn.Module):
    """A recurrent network read out from its last hidden state: vanilla, LSTM or GRU.

    - ``cell="rnn"``: ``h_t = nonlinearity(W_ih x_t + W_hh h_{t-1} + b)``.
    - ``cell="lstm"`` (Hochreiter & Schmidhuber, 1997): a cell state updated additively,
      ``c_t = f_t * c_{t-1} + i_t * g_t``, ``h_t = o_t * tanh(c_t)``; the forget gate
      ``f_t = sigmoid(W_f [x_t, h_{t-1}] + b_f)`` decides how much of ``c_{t-1}`` (and of the
      gradient flowing back through it) survives a step: the recurrent analogue of a skip.
    - ``cell="gru"`` (Cho et al., 2014): ``h_t = (1 - z_t) * n_t + z_t * h_{t-1}``; the update
      gate ``z_t`` plays the forget gate's part.

    Then ``output(h_T)``.

    Args:
        input_size: features per time step.
        hidden_size: size of ``h_t``.
        out_features: output size.
        nonlinearity: ``"tanh"`` or ``"relu"`` (vanilla RNN only, ``nn.RNN``'s choices).
        recurrent_gain: vanilla RNN only: ``W_hh`` becomes an orthogonal matrix times this
            gain, so its spectral radius is exactly ``recurrent_gain`` (above 1: gradients explode).
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        forget_bias: LSTM/GRU only: the total bias of the forget gate (LSTM) or update gate
            (GRU), ``sigmoid(forget_bias)`` being the fraction kept per step at init. 1.0 is
            the usual "remember by default" choice (Gers et al., 2000; Jozefowicz et al., 2015);
            a large negative value closes the gate. None keeps PyTorch's init (about 0).

    Shapes: ``[N, T, input_size] -> [N, out_features]``. Parameter names are PyTorch's
    (``rnn.weight_ih_l0``, ...); ``gate_slices()`` says which rows belong to which gate.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        out_features: int,
        nonlinearity: str = "tanh",
        recurrent_gain: float | None = None,
        cell: str = "rnn",
        forget_bias: float | None = None,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {list(CELLS)}")
        if cell == "rnn" and forget_bias is not None:
            raise ValueError("forget_bias needs a gated cell: pass cell='lstm' or cell='gru'")
        if cell != "rnn" and recurrent_gain is not None:
            raise ValueError("recurrent_gain sets a vanilla RNN's W_hh: pass cell='rnn', or "
                             "forget_bias to control what a gated cell keeps")
        if cell == "rnn":
            self.rnn = nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True)
        else:
            self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(input_size, hidden_size, batch_first=True)
        self.cell = cell
        self.output = nn.Linear(hidden_size, out_features)
        if recurrent_gain is not None:
            with torch.no_grad():
                nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=recurrent_gain)
        if forget_bias is not None:
            rows = self.gate_slices()["forget" if cell == "lstm" else "update"]
            with torch.no_grad():
                self.rnn.bias_ih_l0[rows] = forget_bias
                self.rnn.bias_hh_l0[rows] = 0.0

    def gate_slices(self) -> dict[str, slice]:
        """Rows of ``rnn.weight_ih_l0``/``weight_hh_l0``/biases per gate, in PyTorch's order:
        LSTM ``input, forget, cell, output``; GRU ``reset, update, new``; RNN ``hidden``."""
        names = {"rnn": ("hidden",), "lstm": ("input", "forget", "cell", "output"),
                 "gru": ("reset", "update", "new")}[self.cell]
        size = self.rnn.hidden_size
        return {name: slice(i * size, (i + 1) * size) for i, name in enumerate(names)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"RNNClassifier expects inputs of shape [N, T, input_size], got {list(x.shape)}"
            )
        states, _ = self.rnn(x)  # [N, T, H]
        return self.output(states[:, -1])


class TransformerClassifier(nn.Module):
    """A small Transformer encoder read out from the mean over time steps.

    ``h_0 = embed(x_t) + p_t`` (a learned position vector per step), then ``depth``
    ``nn.TransformerEncoderLayer``s (``layers.0`` ... ), each
    ``h + attention(h)`` and ``h + feed_forward(h)`` with a LayerNorm either after each sum
    (``norm_first=False``, post-norm, the original Transformer) or at the start of each
    branch (``norm_first=True``, pre-norm, GPT-2 and most models since; then a final
    LayerNorm ``norm`` before the head, as there). Xiong et al. (2020), "On layer
    normalization in the Transformer architecture", show that post-norm's gradients at init
    are largest near the output, which is why it needs learning-rate warm-up.

    Args:
        input_size: features per time step.
        out_features: classes.
        d_model, nhead, dim_feedforward: sizes (``d_model`` divisible by ``nhead``).
        depth: encoder layers.
        norm_first: pre-norm (True) or post-norm (False).
        max_len: longest sequence (positions learned).
        dropout: dropout inside each layer (0 keeps lessons deterministic).

    Shapes: ``[N, T, input_size] -> [N, out_features]``.
    """

    def __init__(
        self,
        input_size: int,
        out_features: int,
        d_model: int = 32,
        nhead: int = 4,
        depth: int = 6,
        dim_feedforward: int = 64,
        norm_first: bool = False,
        max_len: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or d_model % nhead:
            raise ValueError(f"need depth >= 1 and d_model divisible by nhead, got depth={depth}, "
                             f"d_model={d_model}, nhead={nhead}")
        self.embed = nn.Linear(input_size, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(max_len, d_model))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=dropout,
                                       batch_first=True, norm_first=norm_first)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.output = nn.Linear(d_model, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] > self.position.shape[0]:
            raise ValueError(f"TransformerClassifier expects [N, T <= {self.position.shape[0]}, "
                             f"input_size], got {list(x.shape)}")
        h = self.embed(x) + self.position[: x.shape[1]]  # [N, T, d_model]
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h).mean(dim=1))


class CNN(nn.Module):
    """A small convolutional classifier: ``blocks.{i}`` = 3x3 conv, norm, activation, and a
    2x2 max-pool after every block but the last; then global average pooling and ``output``.

    Args:
        in_channels: image channels.
        out_features: classes.
        widths: channels of each block.
        activation: a name in ``ACTIVATIONS``.
        norm: None, ``"batch"`` or ``"layer"`` (``make_norm`` with ``conv=True``).
        init: a name in ``INITS`` for every conv and the output layer.

    Shapes: ``[N, in_channels, H, W] -> [N, out_features]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        widths: tuple[int, ...] = (16, 32),
        activation: str = "relu",
        norm: str | None = None,
        init: str = "default",
    ) -> None:
        super().__init__()
        sizes = (in_channels, *widths)
        self.blocks = nn.ModuleList(
            nn.Sequential(OrderedDict(
                conv=init_layer_(nn.Conv2d(sizes[i], sizes[i + 1], 3, padding=1), init),
                norm=make_norm(norm, sizes[i + 1], conv=True),
                act=make_activation(activation),
                pool=nn.MaxPool2d(2) if i < len(widths) - 1 else nn.Identity(),
            ))
            for i in range(len(widths))
        )
        self.output = init_layer_(nn.Linear(sizes[-1], out_features), init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CNN expects images [N, C, H, W], got {list(x.shape)}")
        for block in self.blocks:
            x = block(x)
        return self.output(x.mean(dim=(2, 3)))
