"""Residual and dense (concatenating) connections, for MLPs and small CNNs (lesson 06).

A **residual block** adds its input to a branch: ``h_l = h_{l-1} + alpha * F(h_{l-1})``, so
its Jacobian is ``I + alpha * dF/dh``: the identity carries the gradient through every block
whatever ``F`` does (He et al., 2016, "Deep Residual Learning"). A **dense block** feeds every
layer the concatenation of all earlier outputs and passes them all on, so every layer has a
direct path to the loss (Huang et al., 2017, "Densely Connected Convolutional Networks").

Every builder here has a plain counterpart with the same parameters and the same
initialisation: ``ResidualMLP(..., skip=False)`` is the same network without the ``+ h``,
so a lesson can compare the two with nothing else changed.

Layer names are stable and readable (``stem``, ``blocks.3.branch.linear1``,
``dense.layers.3.linear``, ``head``): they are the names ``GradientMonitor`` and the
figures show. The gradient each network's layers receive is measured in
``gradflow_lessons.probes`` (``gradient_profile``, ``hidden_layers``; still importable from here).

``ResidualBlock`` is the course's one residual block: ``models.MLP(residual=True)`` is built
from it too.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .models import init_layer_, make_activation, make_norm

__all__ = [  # init_layer_ is models.init_layer_, re-exported for the lessons that import it here
    "CONNECTIONS", "PLACEMENTS", "DenseBlock", "DenseCNN", "DenseMLP", "ResidualBlock",
    "ResidualCNN", "ResidualMLP", "build_network", "init_layer_", "resolve_branch_scale",
]

PLACEMENTS = ("pre", "post")
CONNECTIONS = ("plain", "residual", "dense")


def _layer(n_in: int, n_out: int, conv: bool) -> nn.Module:
    return nn.Conv2d(n_in, n_out, 3, padding=1) if conv else nn.Linear(n_in, n_out)


def _stem(n_in: int, width: int, conv: bool) -> nn.Module:
    return nn.Conv2d(n_in, width, 3, padding=1) if conv else nn.Linear(n_in, width)


def resolve_branch_scale(branch_scale: float | str, depth: int) -> float:
    """A number, or ``"1/sqrt(depth)"``: the scale that keeps the residual stream's
    variance bounded, ``prod (1 + 1/L) -> e`` over ``L`` blocks instead of ``2**L``."""
    if branch_scale == "1/sqrt(depth)":
        return 1.0 / math.sqrt(depth)
    if isinstance(branch_scale, str):
        raise ValueError(f"branch_scale must be a number or '1/sqrt(depth)', got {branch_scale!r}")
    return float(branch_scale)


class ResidualBlock(nn.Module):
    """One residual block, ``h + alpha * F(h)``, with a pre-activation branch.

    The branch is ``F(h) = W_k act(... W_1 act(h))`` (``branch_layers = k`` linear or 3x3
    conv layers, He et al., 2016, "Identity Mappings in Deep Residual Networks"). With
    ``norm``:

    - ``placement="pre"``: ``h + alpha * F(norm(h))`` (pre-norm, as in GPT-2; the stream
      itself is never normalised, its variance grows about linearly with depth).
    - ``placement="post"``: ``norm(h + alpha * F(h))`` (post-norm, as in the original ResNet
      and Transformer; the stream is renormalised after every block).

    ``skip=False`` drops the ``h +`` (and nothing else): the plain counterpart. ``zero_init``
    zeroes the branch's last layer, so the block starts as the identity (Goyal et al., 2017;
    Fixup, Zhang et al., 2019; SkipInit, De & Smith, 2020).

    Shapes: ``[N, C] -> [N, C]`` (``conv=False``) or ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(
        self,
        features: int,
        activation: str = "relu",
        norm: str | None = None,
        placement: str = "pre",
        branch_scale: float = 1.0,
        zero_init: bool = False,
        branch_layers: int = 1,
        init: str = "default",
        skip: bool = True,
        conv: bool = False,
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; choose one of {list(PLACEMENTS)}")
        if branch_layers < 1:
            raise ValueError(f"branch_layers must be at least 1, got {branch_layers}")
        self.norm = make_norm(norm, features, conv)
        kind = "conv" if conv else "linear"
        parts: list[tuple[str, nn.Module]] = []
        for i in range(1, branch_layers + 1):
            parts.append((f"act{i}", make_activation(activation)))
            parts.append((f"{kind}{i}", init_layer_(_layer(features, features, conv), init)))
        self.branch = nn.Sequential(OrderedDict(parts))
        if zero_init:
            last = self.branch[-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()
        self.placement, self.branch_scale, self.skip = placement, float(branch_scale), skip

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.placement == "pre":
            out = self.branch_scale * self.branch(self.norm(h))
            return h + out if self.skip else out
        out = self.branch_scale * self.branch(h)
        return self.norm(h + out if self.skip else out)


class DenseBlock(nn.Module):
    """DenseNet-style block: layer ``l`` sees the concatenation of every earlier output.

    ``h_l = W_l act(norm([h_0, h_1, ..., h_{l-1}]))`` with ``growth`` new features per layer,
    and the block returns ``[h_0, h_1, ..., h_L]`` (Huang et al., 2017). Every ``h_l`` reaches
    the block's output, and so the loss, through a direct path of length one.

    Shapes: ``[N, C] -> [N, C + layers * growth]`` (or the same in channels, for images).
    Cost: layer ``l`` has ``(C + l * growth) * growth`` weights: quadratic in depth.
    """

    def __init__(
        self,
        in_features: int,
        growth: int,
        layers: int,
        activation: str = "relu",
        norm: str | None = None,
        init: str = "default",
        conv: bool = False,
    ) -> None:
        super().__init__()
        kind = "conv" if conv else "linear"
        self.layers = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    norm=make_norm(norm, in_features + i * growth, conv),
                    act=make_activation(activation),
                    **{kind: init_layer_(_layer(in_features + i * growth, growth, conv), init)},
                )
            )
            for i in range(layers)
        )
        self.out_features = in_features + layers * growth

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        features = [h]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


def _check_sizes(depth: int, width: int, **sizes: int) -> None:
    if depth < 1:
        raise ValueError(f"depth must be at least 1 block, got {depth}")
    for name, value in dict(width=width, **sizes).items():
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")


class _Head(nn.Module):
    """Global average pooling over H, W (images only), then a linear layer."""

    def __init__(self, features: int, out_features: int, conv: bool, init: str) -> None:
        super().__init__()
        self.conv = conv
        self.linear = init_layer_(nn.Linear(features, out_features), init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.mean(dim=(2, 3)) if self.conv else h)


class ResidualMLP(nn.Module):
    """``stem`` (linear), ``depth`` residual blocks of ``width`` units, linear ``head``.

    Args:
        in_features: input size D.
        out_features: output size.
        depth: number of residual blocks L (each has ``branch_layers`` linear layers).
        width: units in the residual stream.
        activation: a name in ``models.ACTIVATIONS``.
        init: a name in ``models.INITS``, applied to every layer.
        norm: None, ``"batch"`` or ``"layer"``.
        placement: ``"pre"`` or ``"post"`` norm (see ``ResidualBlock``).
        branch_scale: alpha, a number or ``"1/sqrt(depth)"``.
        zero_init: zero each branch's last layer (every block starts as the identity).
        branch_layers: linear layers per branch.
        skip: False gives the plain network with the same layers and initialisation.

    Shapes: ``[N, in_features] -> [N, out_features]``.
    """

    conv = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int = 8,
        width: int = 64,
        activation: str = "relu",
        init: str = "default",
        norm: str | None = None,
        placement: str = "pre",
        branch_scale: float | str = 1.0,
        zero_init: bool = False,
        branch_layers: int = 1,
        skip: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(depth, width, in_features=in_features, out_features=out_features)
        scale = resolve_branch_scale(branch_scale, depth)
        self.stem = init_layer_(_stem(in_features, width, self.conv), init)
        self.blocks = nn.ModuleList(
            ResidualBlock(width, activation, norm, placement, scale, zero_init, branch_layers,
                          init, skip, self.conv)
            for _ in range(depth)
        )
        self.head = _Head(width, out_features, self.conv, init)

    def stream(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream ``[h_0, h_1, ..., h_L]``: the stem's output, then each block's."""
        states = [self.stem(x)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stream(x)[-1])


class ResidualCNN(ResidualMLP):
    """``ResidualMLP`` for images: 3x3 convolutions with ``width`` channels (same padding),
    then global average pooling and a linear ``head``. ``norm="layer"`` is GroupNorm(1, C).

    Shapes: ``[N, in_channels, H, W] -> [N, out_features]``.
    """

    conv = True


class DenseMLP(nn.Module):
    """``stem`` (linear, ``width`` units), a ``DenseBlock`` of ``depth`` layers, linear ``head``.

    The head reads all ``width + depth * growth`` features, so the stem and every layer
    have a direct path to the output.

    Shapes: ``[N, in_features] -> [N, out_features]``.
    """

    conv = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int = 8,
        width: int = 64,
        growth: int = 16,
        activation: str = "relu",
        init: str = "default",
        norm: str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(depth, width, growth=growth, in_features=in_features, out_features=out_features)
        self.stem = init_layer_(_stem(in_features, width, self.conv), init)
        self.dense = DenseBlock(width, growth, depth, activation, norm, init, self.conv)
        self.head = _Head(self.dense.out_features, out_features, self.conv, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.stem(x)))


class DenseCNN(DenseMLP):
    """``DenseMLP`` for images: 3x3 convolutions adding ``growth`` channels each, then global
    average pooling and a linear ``head``. Shapes: ``[N, in_channels, H, W] -> [N, out]``."""

    conv = True


def build_network(
    connection: str, in_features: int, out_features: int, depth: int, width: int = 64, **kwargs
) -> nn.Module:
    """``"plain"``, ``"residual"`` or ``"dense"`` MLP of ``depth`` hidden layers.

    ``plain`` and ``residual`` are ``ResidualMLP`` with ``skip`` False/True (same weights for
    the same seed); ``dense`` is a ``DenseMLP`` with ``growth = width // 4`` unless given.
    Other keyword arguments go to the builder.
    """
    if connection not in CONNECTIONS:
        raise ValueError(f"unknown connection {connection!r}; choose one of {list(CONNECTIONS)}")
    if connection == "dense":
        kwargs.setdefault("growth", max(1, width // 4))
        return DenseMLP(in_features, out_features, depth, width, **kwargs)
    return ResidualMLP(in_features, out_features, depth, width, skip=connection == "residual", **kwargs)


def __getattr__(name: str):
    # The gradient probes moved to gradflow_lessons.probes (which imports this module, so
    # they are looked up on first use rather than imported here).
    if name in ("GradientProfile", "gradient_profile", "hidden_layers"):
        from . import probes

        return getattr(probes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
