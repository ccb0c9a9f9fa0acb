"""Where diagnose's learning-rate thresholds come from: a sweep that counts false alarms and misses.

    .venv/bin/python benchmarks/diagnose_thresholds.py            # a few minutes on a 2-core CPU
    .venv/bin/python benchmarks/diagnose_thresholds.py --quick    # seeds 0-1, 10 steps, float64

``diagnose(..., optimizer=, steps=)`` flags a too-high learning rate when the loss ends above
``LOSS_GROWTH_MAX`` times where it started, turns NaN/Inf, or when the median layer's
update-to-data ratio exceeds ``UPDATE_RATIO_MAX`` at some step. This runs it on healthy networks
(those of lesson 09, plus a shallow ReLU net) for several seeds, watch lengths and dtypes, at
good and at too-high learning rates, and prints, per optimizer setting, the range of the two
quantities and how many runs were flagged. Not a timing: counts, not seconds.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from torch import nn

from gradflow_lessons import diagnose as rules
from gradflow_lessons.data import teacher_regression
from gradflow_lessons.diagnose import diagnose
from gradflow_lessons.models import MLP
from gradflow_lessons.skips import ResidualMLP

NETWORKS = {
    "ReLU x30, Kaiming": lambda: MLP(16, 1, depth=30, width=32, init="kaiming"),
    "ReLU x4, Kaiming": lambda: MLP(16, 1, depth=4, width=32, init="kaiming"),
    "tanh x10, Xavier": lambda: MLP(16, 1, depth=10, width=32, activation="tanh", init="xavier"),
    "GELU x10, Kaiming": lambda: MLP(16, 1, depth=10, width=32, activation="gelu", init="kaiming"),
    "residual x16, pre-LN": lambda: ResidualMLP(16, 1, depth=16, width=32, norm="layer"),
}
SETTINGS = {  # name: (optimizer class, learning rate, meant to be flagged)
    "SGD 0.01": (torch.optim.SGD, 0.01, False),
    "Adam 1e-3": (torch.optim.Adam, 1e-3, False),
    "Adam 1e-2": (torch.optim.Adam, 1e-2, None),  # borderline: reported, not counted
    "SGD 0.1": (torch.optim.SGD, 0.1, None),  # too high for some of these nets: see lesson 09
    "SGD 1": (torch.optim.SGD, 1.0, True),
    "SGD 5": (torch.optim.SGD, 5.0, True),
    "Adam 0.1": (torch.optim.Adam, 0.1, True),
    "Adam 1": (torch.optim.Adam, 1.0, True),
}


def watch(build, seed: int, dtype: torch.dtype, optimizer_class, lr: float, steps: int):
    """One watched diagnosis: (flagged, loss growth or inf, peak median update ratio)."""
    torch.manual_seed(seed)
    model = build().to(dtype)
    inputs, targets = (t.to(dtype) for t in teacher_regression(n=256, in_features=16, seed=seed))
    result = diagnose(model, nn.functional.mse_loss, inputs, targets,
                      optimizer=optimizer_class(model.parameters(), lr=lr), steps=steps)
    losses = result.watched_losses
    growth = losses[-1] / losses[0] if all(map(math.isfinite, losses)) else math.inf
    ratios = list(result.update_ratio.values())
    medians = [statistics.median(r[i] for r in ratios) for i in range(min(map(len, ratios), default=0))]
    peak = max((m for m in medians if math.isfinite(m)), default=0.0)
    return "exploding" in result.kinds, growth, peak


def main(argv: list[str] | None = None) -> dict[bool, list[int]]:
    """Print the sweep; return {meant to be flagged: [flagged, runs]} for the counted settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seeds 0-1, 10 steps, float64 only")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sweep(args.quick)
    finally:
        torch.set_num_threads(threads)


def sweep(quick: bool) -> dict[bool, list[int]]:
    seeds = range(2) if quick else range(5)
    lengths = (10,) if quick else (5, 10, 20)
    dtypes = (torch.float64,) if quick else (torch.float32, torch.float64)
    print(f"networks: {', '.join(NETWORKS)}; seeds {seeds[0]}-{seeds[-1]}; steps {lengths}; "
          f"dtypes {[str(d).removeprefix('torch.') for d in dtypes]}")
    print(f"thresholds: LOSS_GROWTH_MAX {rules.LOSS_GROWTH_MAX:g}, "
          f"UPDATE_RATIO_MAX {rules.UPDATE_RATIO_MAX:g}\n")
    print(f"{'setting':10s} {'final/first loss':>18s} {'peak median update ratio':>26s} {'flagged':>10s}")
    totals = {False: [0, 0], True: [0, 0]}  # meant-to-be-flagged -> [flagged, runs]
    for name, (optimizer_class, lr, expected) in SETTINGS.items():
        runs = [watch(build, seed, dtype, optimizer_class, lr, steps)
                for build in NETWORKS.values() for seed in seeds for steps in lengths for dtype in dtypes]
        flagged = sum(f for f, _, _ in runs)
        growths = [g for _, g, _ in runs]
        peaks = [p for _, _, p in runs]
        low, high = min(growths), max(growths)
        span = f"{low:.2g} .. {'NaN/Inf' if math.isinf(high) else f'{high:.2g}'}"
        print(f"{name:10s} {span:>18s} {f'{min(peaks):.2g} .. {max(peaks):.2g}':>26s} "
              f"{f'{flagged}/{len(runs)}':>10s}")
        if expected is not None:
            totals[expected][0] += flagged
            totals[expected][1] += len(runs)
    good, bad = totals[False], totals[True]
    print(f"\ngood learning rates flagged: {good[0]}/{good[1]}; too-high ones caught: {bad[0]}/{bad[1]}")
    return totals


if __name__ == "__main__":
    main()
