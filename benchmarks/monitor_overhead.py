"""How much does GradientMonitor slow the training it watches?

    python benchmarks/monitor_overhead.py --threads 1   # about a minute on a 2-core CPU
    python benchmarks/monitor_overhead.py --device cuda
    git worktree add --detach /tmp/v1 f936493           # the monitor before issue 16
    python benchmarks/monitor_overhead.py --threads 1 --baseline /tmp/v1

Every variant trains its own copy of the same MLP (about a million parameters) with SGD;
the variants run interleaved, round after round (who goes first rotates), so that load on
the machine hits them alike. Each round times ``--steps`` training steps per variant, by
the wall clock and by the process's CPU time (which other processes on a busy machine do
not inflate; use ``--threads 1`` there, since idle OpenMP threads spin). The table gives
the median time per step and, per variant, the median over rounds of
(variant / bare step of the same round).

Variants:
- bare: zero_grad, forward, backward, step.
- bare again: the same, on its own copy of the model: what two identical variants differ by on
  this machine (the noise the other ratios carry).
- floor: one fused norm pass: ``torch.stack(torch._foreach_norm(grads)).tolist()``, the least
  any per-parameter norm logger does (one read of every gradient, one host sync).
- monitor, defaults: ``GradientMonitor(model)``: norms and non-finite counts every record,
  mean/max |g|, zero fraction and activation statistics every 50th. Goal: <= 1.05x.
- monitor, defaults + optimizer: also the update-to-data ratio, every step.
- monitor, norms every step: ``GradientMonitor(activations=False, detail_every=0)``,
  record() every step: per-layer L2 norm and non-finite count.
- monitor, all gradient stats every step: also mean and max |g| and the zero fraction.
- monitor, everything every step: also activation statistics and the update-to-data ratio.
- monitor, histograms every step: everything, plus gradient and activation histograms.
- naive per-parameter loop: ``p.grad.norm().item()`` and a non-finite ``.item()`` for each
  parameter, what a hand-written logger usually does (one host sync per call).
- naive histogram logger: ``numpy.histogram`` of every parameter's gradient each step, what
  logging histograms to a dashboard every step costs.

``--baseline DIR`` adds every monitor variant a second time, with the ``GradientMonitor`` of
another checkout of this project (its ``gradflow_lessons`` package, loaded under another
name), in the same rounds: an older version against this one, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gradflow_lessons.env import environment_report, seed_everything
from gradflow_lessons.models import MLP
from gradflow_lessons.monitor import GradientMonitor
from gradflow_lessons.tooling.baseline import baseline_module


def floor(model: torch.nn.Module) -> list[float]:
    return torch.stack(torch._foreach_norm([p.grad for p in model.parameters()])).tolist()


def naive_norms(model: torch.nn.Module) -> list[tuple[float, int]]:
    return [(p.grad.norm().item(), int((~torch.isfinite(p.grad)).sum().item()))
            for p in model.parameters()]


def naive_histograms(model: torch.nn.Module) -> list[np.ndarray]:
    return [np.histogram(p.grad.detach().cpu().numpy(), bins=40)[0] for p in model.parameters()]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50,
                        help="steps per variant per round (50: one detail record of the defaults in each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--baseline", help="a checkout of an older version: its monitor runs beside")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    seed_everything(0)
    base = MLP(args.width, 10, depth=args.depth, width=args.width).to(device)
    inputs = torch.randn(args.batch, args.width, device=device)
    targets = torch.randint(0, 10, (args.batch,), device=device)
    n_params = sum(p.numel() for p in base.parameters())

    monitors = {"": GradientMonitor}
    if args.baseline:
        baseline = baseline_module(args.baseline, "monitor").GradientMonitor
        monitors[f"baseline {Path(args.baseline).name}: "] = baseline
    every_step = {"detail_every": 1}
    monitored = {  # name -> monitor options
        "monitor, defaults": {},
        "monitor, defaults + optimizer": {"optimizer": True},
        "monitor, norms every step": {"activations": False, "detail_every": 0},
        "monitor, all gradient stats every step": {"activations": False, **every_step},
        "monitor, everything every step": {"optimizer": True, **every_step},
        "monitor, + histograms every step": {"optimizer": True, "histogram_every": 1, **every_step},
    }
    variants = {"bare training step": (None, None, None),  # name -> (monitor class, options, logger)
                "bare again (noise)": (None, None, None),
                "floor: one fused norm pass + tolist": (None, None, floor)}
    for prefix, monitor_class in monitors.items():
        for name, options in monitored.items():
            variants[prefix + name] = (monitor_class, options, None)
    variants["naive per-parameter .item() loop"] = (None, None, naive_norms)
    variants["naive numpy histogram logger"] = (None, None, naive_histograms)
    runs = {}
    with contextlib.ExitStack() as stack:
        for name, (monitor_class, options, logger) in variants.items():
            model = copy.deepcopy(base)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
            monitor = None
            if monitor_class is not None:
                options = dict(options)
                if options.pop("optimizer", False):
                    options["optimizer"] = optimizer
                monitor = stack.enter_context(monitor_class(model, max_steps=100, **options))
            runs[name] = (model, optimizer, monitor, logger)

        def train(name: str, steps: int) -> tuple[float, float]:
            model, optimizer, monitor, logger = runs[name]
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(inputs), targets).backward()
                if monitor is not None:
                    monitor.record()
                if logger is not None:
                    logger(model)
                optimizer.step()
            synchronize(device)
            return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps

        names = list(variants)
        for name in names:  # warm-up
            train(name, 3)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                times[name].append(train(name, args.steps))

    report = environment_report()
    print(f"GradientMonitor overhead: MLP with {n_params:,} parameters (depth {args.depth}, "
          f"width {args.width}), batch {args.batch}, SGD")
    print(f"machine: {report.cpu_count}-core CPU, torch {report.torch}, {report.cpu_threads} threads, "
          f"device {device}; {args.rounds} interleaved rounds x {args.steps} steps per variant")
    width = max(map(len, names))
    print(f"{'variant':{width}s} {'ms/step':>8s} {'x bare (wall)':>14s} {'x bare (CPU)':>13s} "
          f"{'CPU, middle half of rounds':>27s}")
    ratios = {}
    bare = times[names[0]]
    for name in names:
        wall = statistics.median(t[0] / b[0] for t, b in zip(times[name], bare))
        cpu_ratios = [t[1] / b[1] for t, b in zip(times[name], bare)]
        low, _, high = statistics.quantiles(cpu_ratios, n=4) if len(cpu_ratios) > 1 else cpu_ratios * 3
        ms = 1e3 * statistics.median(t[0] for t in times[name])
        print(f"{name:{width}s} {ms:8.2f} {wall:14.3f} {statistics.median(cpu_ratios):13.3f} "
              f"{f'{low:.3f} - {high:.3f}':>27s}")
        ratios[name] = wall if device.type == "cuda" else statistics.median(cpu_ratios)
    return ratios


if __name__ == "__main__":
    main()
