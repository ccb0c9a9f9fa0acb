"""What do many seeds cost? N seeds as one vmap'd computation against N separate runs.

    python benchmarks/seeds.py --threads 1        # about a minute on a 2-core CPU
    python benchmarks/seeds.py --seeds 16 --dtype float64 --device cuda

Both variants train the same N = ``--seeds`` networks, a lesson-sized MLP (the spirals of
lessons 02-06: 2 inputs, 3 classes; ``--depth`` linear layers of ``--width`` units, ReLU,
Kaiming init) with mini-batch SGD for ``--steps`` steps, through
``gradflow_lessons.seeds.train_over_seeds``: ``method="vmap"`` (one batched computation)
and ``method="loop"`` (``torch.optim.SGD`` on each seed in turn). They are timed in
alternation over ``--rounds`` rounds and the fastest round of each is reported (timeit's
rule: load on the machine only ever adds time); the ratio is loop / vmap. One extra round
first warms both up (the first ``torch.func`` call imports its machinery). The results of
the two variants are checked to agree before anything is printed.
"""

from __future__ import annotations

import argparse
import time

import torch

from gradflow_lessons.data import spirals
from gradflow_lessons.env import environment_report
from gradflow_lessons.models import MLP
from gradflow_lessons.seeds import train_over_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    inputs, targets = spirals(n=600, seed=0)
    inputs, targets = inputs.to(device, dtype), targets.to(device)

    def make_model(seed: int) -> MLP:
        return MLP(2, 3, depth=args.depth, width=args.width, init="kaiming").to(device, dtype)

    def run(method: str):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = train_over_seeds(make_model, inputs, targets, range(args.seeds), steps=args.steps, lr=0.05,
                                  batch_size=args.batch, method=method)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, result

    best = {"vmap": float("inf"), "loop": float("inf")}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for method in best:
            seconds, result = run(method)
            if round_ > 0:
                best[method] = min(best[method], seconds)
            if round_ == 0 and method == "vmap":
                reference = result
        if round_ == 0:  # batched and looped runs are the same runs
            torch.testing.assert_close(reference.final_loss, result.final_loss, rtol=1e-3, atol=1e-5)

    model = make_model(0)
    params = sum(p.numel() for p in model.parameters())
    env = environment_report()
    print(f"machine: {env.platform}, {env.device}, torch {env.torch}, {torch.get_num_threads()} thread(s), "
          f"{env.cpu_count} cores visible")
    print(f"model:   MLP depth {args.depth}, width {args.width} ({params:,} parameters), spirals, "
          f"batch {args.batch}, {args.dtype}, SGD {args.steps} steps")
    print(f"{'N = ' + str(args.seeds) + ' seeds':24s} {'seconds':>8s} {'per seed-step':>14s}")
    for method, label in (("loop", "loop (N separate runs)"), ("vmap", "vmap (one batched run)")):
        per = best[method] / (args.seeds * args.steps) * 1e3
        print(f"{label:24s} {best[method]:8.3f} {per:11.3f} ms")
    print(f"ratio loop / vmap: {best['loop'] / best['vmap']:.1f}x "
          f"(vmap takes {best['vmap'] / best['loop']:.0%} of the loop's time; best of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
