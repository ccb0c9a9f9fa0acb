"""Per-sample gradients and the gradient noise scale: accuracy and cost, side by side in one run.

    .venv/bin/python benchmarks/noise.py

1. Accuracy: a synthetic softmax-regression task whose exact B_simple = tr(Sigma) / |G|^2
   is computed from all per-sample gradients of the data set (the population). Estimates
   from random batches (one batch; the mean of many; the paper's two-batch estimator with
   exponential averaging) are compared with it: median relative error over repeats.
2. Cost relative to one forward+backward of the same batch: the hook fast path for
   per-sample squared norms, torch.func vmap per-sample gradients, and a Python loop of
   one backward per sample. Timings interleave the methods round by round and report
   the best of 20 rounds, so machine load hits them alike; one thread.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch
from torch import nn

from gradflow_lessons import noise
from gradflow_lessons.models import MLP

torch.manual_seed(0)
GEN = torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- accuracy


def softmax_regression(population: int = 8192, dim: int = 32, classes: int = 10):
    """Inputs, labels drawn from a random softmax teacher, and a zero-initialised linear student."""
    x = torch.randn(population, dim, generator=GEN, dtype=torch.float64)
    teacher = torch.randn(dim, classes, generator=GEN, dtype=torch.float64) / dim**0.5
    y = torch.multinomial(torch.softmax(3 * x @ teacher, 1), 1, generator=GEN).squeeze(1)
    model = nn.Linear(dim, classes).double()
    with torch.no_grad():  # the start of training: every class equally likely
        model.weight.zero_()
        model.bias.zero_()
    return model, nn.CrossEntropyLoss(), x, y


def exact_noise_scale(model, loss_fn, x, y) -> tuple[float, float, float]:
    grads = noise.per_sample_gradients(model, loss_fn, x, y)
    flat = torch.cat([g.reshape(len(x), -1) for g in grads.values()], 1)
    mean = flat.mean(0)
    g2, trace = mean.square().sum().item(), (flat - mean).square().sum(1).mean().item()
    return trace / g2, g2, trace


def accuracy() -> None:
    model, loss_fn, x, y = softmax_regression()
    b_exact, g2, trace = exact_noise_scale(model, loss_fn, x, y)
    print("softmax regression at zero init, 8192 samples, 32 features, 10 classes (330 parameters)")
    print(f"exact from all per-sample gradients: B_simple = {b_exact:.1f}  (|G|^2 = {g2:.4g}, "
          f"tr Sigma = {trace:.4g})\n")

    def batch(size: int):
        i = torch.randint(0, len(x), (size,), generator=GEN)  # with replacement: i.i.d. samples
        return x[i], y[i]

    def rel(b: float) -> float:
        return abs(b - b_exact) / b_exact

    repeats = 20
    header = "estimator (batches drawn with replacement)"
    print(f"{header:58s} {'median rel. error':>18s}   ({repeats} repeats)")
    for size in (256, 1024, 4096):
        one = [rel(noise.gradient_noise_scale(model, loss_fn, *batch(size)).b_simple) for _ in range(repeats)]
        print(f"{f'one batch of {size}':58s} {statistics.median(one):17.1%}")
    for size, steps in ((1024, 16),):
        errors = []
        for _ in range(repeats):
            results = [noise.gradient_noise_scale(model, loss_fn, *batch(size)) for _ in range(steps)]
            errors.append(rel(sum(r.trace_cov for r in results) / sum(r.grad_sq_norm for r in results)))
        label = f"mean tr Sigma / mean |G|^2 over {steps} batches of {size}"
        print(f"{label:58s} {statistics.median(errors):17.1%}")
    small, big, steps = 64, 512, 200
    errors = []
    for _ in range(repeats):
        ema = noise.NoiseScaleEMA(beta=0.99)
        for _ in range(steps):  # the paper's recipe: two batch sizes at the same parameters
            xb, yb = batch(big)
            g_big = torch.autograd.grad(loss_fn(model(xb), yb), list(model.parameters()))
            g_small = torch.autograd.grad(loss_fn(model(xb[:small]), yb[:small]), list(model.parameters()))
            ema.update(noise.two_batch_estimate(sum(g.square().sum() for g in g_small),
                                                sum(g.square().sum() for g in g_big), small, big))
        errors.append(rel(ema.b_simple))
    label = f"two-batch ({small} in {big}), EMA beta=0.99 over {steps} steps"
    print(f"{label:58s} {statistics.median(errors):17.1%}\n")


# --------------------------------------------------------------------------- cost


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cost(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 20) -> None:
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]

    def forward_backward():
        torch.autograd.grad(loss_fn(model(x), y), params)

    def loop():
        for i in range(len(x)):
            torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)

    methods = {
        "forward+backward": forward_backward,
        "hooks: per-sample |g_i|^2": lambda: noise.per_sample_grad_sq_norms(model, loss_fn, x, y),
        "hooks: gradient_noise_scale": lambda: noise.gradient_noise_scale(model, loss_fn, x, y, "hooks"),
        "vmap: per-sample gradients": lambda: noise.per_sample_gradients(model, loss_fn, x, y),
        "vmap: gradient_noise_scale": lambda: noise.gradient_noise_scale(model, loss_fn, x, y, "vmap"),
        "Python loop: per-sample gradients": loop,
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    for r in range(rounds):  # interleaved: each round times every method once
        for k, fn in methods.items():
            if k.startswith("Python") and r >= 3:
                continue  # the loop is slow and steady; 3 rounds suffice
            times[k].append(timed(fn))
    base = min(times["forward+backward"])
    n_params = sum(p.numel() for p in params)
    print(f"{name}: batch {len(x)}, {n_params:,} parameters (best of {rounds} interleaved rounds)")
    for k, t in times.items():
        print(f"  {k:36s} {min(t) * 1e3:9.2f} ms   {min(t) / base:6.2f}x")
    print()


def main() -> None:
    torch.set_num_threads(1)  # one core each: thread contention on a shared machine distorts ratios
    print(f"machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    accuracy()
    torch.manual_seed(0)
    mlp = MLP(64, 10, depth=4, width=256)
    cost("MLP 64-256-256-256-10", mlp, torch.randn(256, 64), torch.randint(0, 10, (256,)))
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    cost("CNN 2 conv + linear on 32x32x3", cnn, torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)))


if __name__ == "__main__":
    main()
