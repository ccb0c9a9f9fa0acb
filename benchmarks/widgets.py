"""How long does one explorer update take (lessons 02 and 03)? Goal: <= 150 ms per update.

    python benchmarks/widgets.py            # about a minute on a 2-core CPU
    python benchmarks/widgets.py --rounds 5

One update is what moving a slider costs the learner: the whole callback, i.e. rebuild the
network, forward and backward, set the line data, rescale, and render the figure to the PNG
the ``Image`` widget shows. The rendering alone (``figure_png``) is timed too, to show where the
time goes. Both are measured for the lessons' own settings and for the slowest corner of each
explorer's controls. Variants run interleaved,
round after round, so load on the machine hits them alike; the table gives medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gradflow_lessons.data import spirals
from gradflow_lessons.env import environment_report, seed_everything
from gradflow_lessons.widgets import GradientFlowExplorer, RecurrenceExplorer, figure_png

GOAL_MS = 150.0


def timed_update(explorer, control, values: list) -> tuple[float, float]:
    """Seconds for one whole callback (control.value = next value) and for its PNG rendering."""
    value = values[0] if control.value != values[0] else values[1]
    start = time.perf_counter()
    control.value = value  # the observer runs the callback synchronously
    callback = time.perf_counter() - start
    start = time.perf_counter()
    figure_png(explorer.figure)  # the part of the callback that renders the figure
    return callback, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)

    seed_everything(0)
    inputs, targets = spirals(n=300, seed=0)
    inputs = inputs.double()  # as lesson 02 uses it
    variants = {
        "gradient flow, lesson setting (depth 20, width 64)": (
            GradientFlowExplorer(inputs, targets, depth=20, width=64), "depth", [20, 21]),
        "gradient flow, largest (depth 60, width 128)": (
            GradientFlowExplorer(inputs, targets, depth=60, width=128), "depth", [60, 59]),
        "recurrence, lesson setting (50 steps)": (
            RecurrenceExplorer(radius=1.1, steps=50), "radius", [1.1, 1.15]),
        "recurrence, largest (200 steps, tanh)": (
            RecurrenceExplorer(radius=1.1, steps=200, nonlinearity="tanh"), "radius", [1.1, 1.15]),
    }
    samples = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (explorer, control, values) in variants.items():
            samples[name].append(timed_update(explorer, getattr(explorer, control), values))

    report = environment_report()
    print(f"machine: {report.platform}, {report.cpu_count} CPU cores, torch {report.torch}, "
          f"{report.cpu_threads} threads; {args.rounds} rounds, medians")
    print(f"{'explorer update':52s} {'callback':>9s} {'of which PNG':>13s} {'callback / goal':>16s}")
    totals = {}
    for name, pairs in samples.items():
        callback = statistics.median(c for c, _ in pairs) * 1e3
        render = statistics.median(r for _, r in pairs) * 1e3
        totals[name] = callback
        print(f"{name:52s} {callback:7.0f}ms {render:11.0f}ms {callback / GOAL_MS:15.2f}x")
    print(f"goal: <= {GOAL_MS:.0f} ms per update (callback / goal <= 1)")
    return totals


if __name__ == "__main__":
    main()
