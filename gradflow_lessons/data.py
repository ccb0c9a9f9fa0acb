"""Seeded synthetic data sets with real structure to learn, and one small real one.

Each function returns ``(inputs, targets)`` as tensors and is a pure function of its
``seed``: the same call gives the same data on every machine.

- ``spirals``: interleaved 2-D spirals, a classification task no linear model solves.
- ``teacher_regression``: targets from a fixed random "teacher" network plus noise, so
  the best possible loss is known (the noise variance).
- ``first_token_task``: a sequence task whose answer sits at the first time step, so a
  recurrent network must carry gradient through every step (vanishing/exploding).
- ``digits``: scikit-learn's bundled 8x8 handwritten digits, real data with no download.
"""

from __future__ import annotations

import math

import torch

from .models import MLP


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spirals(
    n: int = 600, classes: int = 3, noise: float = 0.15, turns: float = 1.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on ``classes`` interleaved spiral arms in the plane.

    Args:
        n: number of points, split as evenly as possible between classes.
        classes: number of arms (and labels).
        noise: std of Gaussian noise added to each coordinate.
        turns: how many half-turns each arm makes (more is harder).
        seed: seed of the data.

    Returns:
        ``inputs`` [n, 2] float32 and ``targets`` [n] int64 in ``0..classes-1``.
    """
    if n < classes or classes < 2:
        raise ValueError(f"need classes >= 2 and n >= classes, got n={n}, classes={classes}")
    g = _generator(seed)
    labels = torch.arange(n) % classes
    radius = torch.rand(n, generator=g)  # 0 at the centre, 1 at the tip
    angle = radius * turns * math.pi + labels * (2 * math.pi / classes)
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    points = points + noise * radius.unsqueeze(1) * torch.randn(n, 2, generator=g)
    return points.float(), labels


def teacher_regression(
    n: int = 512,
    in_features: int = 16,
    out_features: int = 1,
    depth: int = 3,
    width: int = 32,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression targets from a random tanh "teacher" MLP, plus Gaussian noise.

    ``y = teacher(x) + noise * eps``, ``x ~ N(0, I)``; the teacher's output is scaled to
    unit variance, so the best achievable mean squared error is ``noise**2``.

    Returns:
        ``inputs`` [n, in_features] and ``targets`` [n, out_features], float32.
    """
    g = _generator(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = MLP(in_features, out_features, depth, width, activation="tanh", init="xavier")
    inputs = torch.randn(n, in_features, generator=g)
    with torch.no_grad():
        clean = teacher(inputs)
        clean = (clean - clean.mean(0)) / clean.std(0).clamp_min(1e-8)
    targets = clean + noise * torch.randn(n, out_features, generator=g)
    return inputs, targets


def first_token_task(
    n: int = 256, length: int = 20, input_size: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose label is decided by the first time step alone.

    The first step's first feature is +1 or -1 (the label is 1 or 0); every other entry
    is standard Gaussian noise. A recurrent model reads the label out at the *last* step,
    so the gradient that teaches it must travel back ``length - 1`` steps.

    Returns:
        ``inputs`` [n, length, input_size] float32 and ``targets`` [n] int64 in {0, 1}.
    """
    if length < 1 or input_size < 1:
        raise ValueError(f"need length >= 1 and input_size >= 1, got {length}, {input_size}")
    g = _generator(seed)
    targets = torch.randint(0, 2, (n,), generator=g)
    inputs = torch.randn(n, length, input_size, generator=g)
    inputs[:, 0, 0] = targets.float() * 2 - 1
    return inputs, targets


def digits(
    split: str = "train", test_fraction: float = 0.25, image: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes): real
    data that installs with the package and is never downloaded.

    Pixel values (0..16) are scaled to [0, 1]. The split into train and test is a seeded
    permutation, stratified by class so both halves hold every digit in proportion.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        test_fraction: share of each class held out for ``"test"``.
        image: ``[n, 1, 8, 8]`` images (True) or ``[n, 64]`` vectors (False).
        seed: seed of the split.

    Returns:
        ``inputs`` float32 and ``targets`` [n] int64 in ``0..9``.

    Raises:
        ValueError: an unknown split or a test fraction outside (0, 1).
        ImportError: scikit-learn is not installed (``pip install scikit-learn``).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; choose 'train', 'test' or 'all'")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("digits() needs scikit-learn, which bundles the data: "
                          "pip install scikit-learn") from e
    bunch = load_digits()
    inputs = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # [1797, 64]
    targets = torch.tensor(bunch.target, dtype=torch.int64)
    if split != "all":
        g = _generator(seed)
        test = torch.zeros(len(targets), dtype=torch.bool)
        for label in range(10):
            members = torch.nonzero(targets == label).squeeze(1)
            members = members[torch.randperm(len(members), generator=g)]
            test[members[: round(test_fraction * len(members))]] = True
        keep = test if split == "test" else ~test
        inputs, targets = inputs[keep], targets[keep]
    return (inputs.reshape(-1, 1, 8, 8) if image else inputs), targets
