"""What does clipping cost? The percentile clipper against a full-history percentile, and
every clipper's overhead on a training step.

    python benchmarks/clipping.py --threads 1  # about a minute on a 2-core CPU
    python benchmarks/clipping.py --device cuda

Part 1, cost per step after N steps (N = 10^3, 10^4, 10^5). AutoClip as published keeps
every gradient norm since the start and calls ``np.percentile`` on the whole list each
step, so a step costs O(N). ``PercentileClipper`` keeps the last ``--window`` norms in a
ring buffer on the device, so a step costs the same at any N. The gradient is a single
small tensor, so that the threshold, not the norm, is what is timed. Our clipper reaches
each N by really taking N steps; the full-history variants get N recorded norms directly
(taking them one by one would cost O(N^2)). Each variant is timed over ``--k`` steps,
interleaved, in ``--rounds`` rounds; the fastest round is reported (timeit's rule: load on
the machine only ever adds time).

Part 2, overhead on a training step: every variant trains its own copy of the same MLP
(about a million parameters) with SGD, interleaved round after round so that load on the
machine hits them alike; the table gives the median time per step and the median over
rounds of (variant / bare step in the same round).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gradflow_lessons.clipping import PercentileClipper, agc_, clip_by_norm_, clip_by_value_
from gradflow_lessons.env import environment_report, seed_everything
from gradflow_lessons.models import MLP


class FullHistoryClipper:
    """AutoClip's reference: every norm since the start, ``np.percentile`` over all of them."""

    def __init__(self, percentile: float, history: list[float] | None = None) -> None:
        self.percentile = percentile
        self.history = list(history or [])

    def clip_(self, parameters: list[torch.Tensor]) -> None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters]).item()
        self.history.append(norm)
        threshold = float(np.percentile(self.history, self.percentile))
        torch.nn.utils.clip_grad_norm_(parameters, threshold)


class FullHistoryTorchClipper:
    """The same with the history in a growing tensor and ``torch.quantile`` (no .item())."""

    def __init__(self, percentile: float, history: list[float], device: torch.device) -> None:
        self.q = percentile / 100
        self.buffer = torch.empty(2 * len(history) + 1024, device=device)
        self.buffer[: len(history)] = torch.tensor(history, device=device)
        self.n = len(history)

    def clip_(self, parameters: list[torch.Tensor]) -> None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if self.n == len(self.buffer):
            self.buffer = torch.cat([self.buffer, torch.empty_like(self.buffer)])
        self.buffer[self.n] = norm
        self.n += 1
        threshold = torch.quantile(self.buffer[: self.n], self.q)
        coef = torch.clamp(threshold / (norm + 1e-6), max=1.0)
        torch._foreach_mul_([p.grad for p in parameters], coef)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], k: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(k):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / k


def threshold_cost(args: argparse.Namespace, device: torch.device) -> dict[int, dict[str, float]]:
    """Part 1: seconds per clipping step after N steps, for each variant."""
    seed_everything(0)
    param = torch.zeros(1000, device=device, requires_grad=True)
    param.grad = torch.randn(1000, device=device)
    params = [param]
    ours = PercentileClipper(args.percentile, args.window)  # both "ours" variants step this one
    results = {}
    for n in (10**3, 10**4, 10**5):
        while ours.steps < n:  # really take the steps up to n
            ours.clip_(params, stats=False)
        history = (np.random.default_rng(0).lognormal(size=n)).tolist()
        full = FullHistoryClipper(args.percentile, history)
        full_torch = FullHistoryTorchClipper(args.percentile, history, device)
        steps: dict[str, Callable[[], object]] = {
            "full history, np.percentile": full.clip_,
            "full history, torch.quantile": full_torch.clip_,
            "PercentileClipper, stats": ours.clip_,
            "PercentileClipper, no stats": lambda p: ours.clip_(p, stats=False),
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(args.rounds):
            names = list(steps)
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(time_steps(lambda f=steps[name]: f(params), args.k, device))
        results[n] = {name: min(t) for name, t in times.items()}
    return results


def training_overhead(
    args: argparse.Namespace, device: torch.device
) -> tuple[int, dict[str, tuple[float, float]]]:
    """Part 2: (ms per step, x bare) for each clipper on an MLP training step."""
    seed_everything(0)
    base = MLP(args.width, 10, depth=args.depth, width=args.width).to(device)
    inputs = torch.randn(args.batch, args.width, device=device)
    targets = torch.randint(0, 10, (args.batch,), device=device)
    n_params = sum(p.numel() for p in base.parameters())
    history = np.random.default_rng(0).lognormal(size=10**4).tolist()
    clippers: dict[str, Callable[[torch.nn.Module], object] | None] = {
        "bare training step": None,
        "torch clip_grad_norm_": lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0),
        "clip_by_norm_ (with stats)": lambda m: clip_by_norm_(m.parameters(), 1.0),
        "clip_by_value_ (with stats)": lambda m: clip_by_value_(m.parameters(), 1e-3),
        "agc_ (with stats)": lambda m: agc_(m.parameters()),
        "PercentileClipper, stats": None,  # filled per model below
        "PercentileClipper, no stats": None,
        "full history (10^4), np.percentile": None,
    }
    runs = {}
    for name, clip in clippers.items():
        model = copy.deepcopy(base)
        if name.startswith("PercentileClipper"):
            clipper = PercentileClipper(args.percentile, args.window)
            stats = name.endswith(", stats")
            clip = lambda m, c=clipper, s=stats: c.clip_(m.parameters(), stats=s)  # noqa: E731
        elif name.startswith("full history"):
            full = FullHistoryClipper(args.percentile, history)
            clip = lambda m, c=full: c.clip_(list(m.parameters()))  # noqa: E731
        runs[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-4), clip)

    def train(name: str) -> float:
        model, optimizer, clip = runs[name]

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), targets).backward()
            if clip is not None:
                clip(model)
            optimizer.step()

        return time_steps(step, args.steps, device)

    names = list(runs)
    for name in names:  # warm-up
        train(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(train(name))
    bare = times[names[0]]
    ratio = {name: statistics.median(t / b for t, b in zip(times[name], bare)) for name in names}
    return n_params, {name: (1e3 * statistics.median(times[name]), ratio[name]) for name in names}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--percentile", type=float, default=90.0)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--k", type=int, default=30, help="part 1: steps per variant per round")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10, help="part 2: steps per variant per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = environment_report()
    print(f"machine: {report.cpu_count}-core CPU, torch {report.torch}, {report.cpu_threads} threads, "
          f"device {device}")

    cost = threshold_cost(args, device)
    names = list(cost[10**3])
    print(f"\n1. Clipping step (norm, threshold, scaling) after N steps, microseconds per step; "
          f"p{args.percentile:g}, window {args.window}, a 1000-entry gradient")
    print(f"{'variant':32s}" + "".join(f"{f'N = 10^{e}':>12s}" for e in (3, 4, 5)))
    for name in names:
        print(f"{name:32s}" + "".join(f"{1e6 * cost[n][name]:12.0f}" for n in cost))
    ref = "PercentileClipper, stats"
    for name in names[:2]:
        print(f"{name + ' / ' + ref:60s}" + "".join(f"{cost[n][name] / cost[n][ref]:7.1f}x" for n in cost))

    n_params, overhead = training_overhead(args, device)
    print(f"\n2. Overhead on a training step: MLP with {n_params:,} parameters (depth {args.depth}, "
          f"width {args.width}), batch {args.batch}, SGD; {args.rounds} interleaved rounds x "
          f"{args.steps} steps per variant")
    print(f"{'variant':38s} {'ms/step':>8s} {'x bare':>7s}")
    for name, (ms, ratio) in overhead.items():
        print(f"{name:38s} {ms:8.2f} {ratio:7.3f}")
    return {"threshold_cost": cost, "overhead": overhead}


if __name__ == "__main__":
    main()
