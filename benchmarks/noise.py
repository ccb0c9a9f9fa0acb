"""Per-sample gradients and the gradient noise scale: accuracy and cost, side by side in one run.

    .venv/bin/python benchmarks/noise.py --threads 1          # about 2 minutes on a 2-core CPU
    PYTHONPATH=/path/to/backpack .venv/bin/python benchmarks/noise.py --threads 1 --skip-accuracy

1. Accuracy: a synthetic softmax-regression task whose exact B_simple = tr(Sigma) / |G|^2
   is computed from all per-sample gradients of the data set (the population). Estimates
   from random batches (one batch; the mean of many; the paper's two-batch estimator with
   exponential averaging) are compared with it: median relative error over repeats.
2. Cost relative to one forward+backward of the same model and batch, for an MLP and a CNN:
   the hook path for per-sample squared norms (each layer's Gram/explicit choice printed, and
   the hook path with every layer forced to one contraction, to show the rule's choice), on the
   MLP the floor of any hook method (hooks, one ``autograd.grad``, row norms; no checks, no
   snapshot) with and without the snapshot every tool takes, the noise scale through hooks,
   ``method="auto"`` and vmap, torch.func vmap per-sample gradients, a Python loop of one
   backward per sample, and BackPACK's ``BatchL2Grad`` when BackPACK is importable
   (``backpack-for-pytorch``; not a dependency). Each method is timed in pairs with
   a forward+backward right before it, the methods interleaved round by round (who goes first
   rotates), so that load drifting on the machine hits them alike, the slow ones (> 4x a
   forward+backward) in rounds of their own afterwards: the table gives the best time
   of each over the pairs and their ratio (timeit's rule: load on the machine only ever adds
   time), and the median over the pairs of (method / forward+backward) with its quartiles. Time
   is the process's CPU time (``--clock wall`` for wall time), so other jobs on a shared machine
   count only through the contention they cause (caches, memory bandwidth). ``--baseline DIR``
   adds the hook path of another checkout (its ``gradflow_lessons``), in the same rounds.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
import warnings
from unittest import mock

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from gradflow_lessons import _state, noise, per_sample
from gradflow_lessons.models import MLP
from gradflow_lessons.tooling.baseline import baseline_module

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


def contraction_table(model: nn.Module, x: torch.Tensor) -> list[str]:
    """How ``per_sample_grad_sq_norms`` contracts each layer: positions L, inputs K and outputs O
    per position and group, and the cost rule's choice."""
    rows = []

    def note(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                k, o, groups = module.in_features, module.out_features, 1
                length = output.numel() // (len(output) * o)
            else:
                groups = module.groups
                k = module.in_channels // groups * math.prod(module.kernel_size)
                o, length = module.out_channels // groups, math.prod(output.shape[2:])
            gram = per_sample.gram_is_cheaper(module, output)
            how = ("Gram (|d|^2 |a|^2)" if length == 1 else "Gram") if gram else "explicit"
            if not gram and not isinstance(module, nn.Linear):
                how += (" (patches)" if math.prod(module.kernel_size) == 1 or k // math.prod(
                    module.kernel_size) < 8 else " (grouped conv)")
            rows.append(f"    {name:16s} {type(module).__name__:7s} L={length:<5d} K={k:<5d} O={o:<4d} "
                        f"groups={groups}: L(K+O)={length * (k + o):,} vs KO={k * o:,} -> {how}")
        return hook

    forward_with_hooks(model, x, {m: note(n) for n, m in model.named_modules()
                                  if isinstance(m, per_sample.HOOK_LAYERS)})
    return rows


def forward_with_hooks(model: nn.Module, x: torch.Tensor, hooks: dict) -> None:
    """One forward of ``model`` without gradients, with ``hooks`` ({module: forward hook}) on."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()


def floor(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The least a hook method does for an MLP's per-sample norms, or None for other models: a
    forward hook keeps each Linear's input and output edge, one ``autograd.grad`` returns the
    batch gradient and the outputs' gradients, and ``N^2 |d_i|^2 (|a_i|^2 + 1)`` and the batch
    gradient's norms follow, with none of the tool's checks and no snapshot of the model."""
    layers = [m for m in model.modules() if isinstance(m, per_sample.HOOK_LAYERS)]
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != 2 * len(layers) or not all(isinstance(m, nn.Linear) and m.bias is not None
                                                 for m in layers):
        return None

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        seen = []

        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen.append((args[0].detach(), get_gradient_edge(output)))

        handles = [m.register_forward_hook(keep) for m in layers]
        try:
            loss = loss_fn(model(x), y)
        finally:
            for handle in handles:
                handle.remove()
        grads = torch.autograd.grad(loss, params + [edge for _, edge in seen])
        a = torch.stack([torch.linalg.vector_norm(a, dim=1) for a, _ in seen]).double().square()
        d = torch.stack([torch.linalg.vector_norm(d, dim=1) for d in grads[len(params):]]).double().square()
        return d * (a + 1) * len(x) ** 2, torch.stack(torch._foreach_norm(grads[: len(params)]))

    ours = noise.per_sample_grad_sq_norms(model, loss_fn, x, y)
    assert torch.allclose(run()[0], torch.stack(list(ours.values())), rtol=1e-4), "not the same quantity"
    return run


def inspected(model: nn.Module, run):
    """``run`` inside the snapshot every tool takes (``.grad``, buffers, flags, the RNGs)."""
    def go():
        with _state.inspecting(model):
            run()
    return run and go


def gram_memory(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes the largest layer's float64 Gram matrices would take (N L^2 each, two of them)."""
    sizes = []

    def size(m: nn.Module, args: tuple, o: torch.Tensor) -> None:
        sizes.append(o[0].numel() // (o.shape[-1] if isinstance(m, nn.Linear) else m.out_channels))

    forward_with_hooks(model, x, {m: size for m in model.modules() if isinstance(m, per_sample.HOOK_LAYERS)})
    return 2 * 8 * len(x) * max(sizes) ** 2


def forced(gram: bool):
    """Run the hook path with every layer taking one contraction, whatever the cost rule says."""
    return mock.patch.object(per_sample, "gram_is_cheaper", lambda module, output: gram)


def sequential(model: nn.Module) -> nn.Sequential:
    """The same network as an ``nn.Sequential`` (BackPACK extends only that; it also stores each
    module's output in ``module.output``, which clashes with the course MLP's last layer)."""
    if isinstance(model, MLP):
        layers = [m for layer in model.hidden for m in (layer.linear, layer.norm, layer.act)] + [model.output]
        model = nn.Sequential(*layers)
    return copy.deepcopy(model)


def backpack_norms(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """BackPACK's BatchL2Grad on a copy of the model, or None when BackPACK is not installed."""
    try:
        import backpack
        from backpack.extensions import BatchL2Grad
    except ImportError:
        return None
    extended, extended_loss = backpack.extend(sequential(model)), backpack.extend(copy.deepcopy(loss_fn))
    with torch.no_grad():
        assert torch.equal(extended(x), model(x)), "the Sequential copy is not the same network"
    params = [p for p in extended.parameters() if p.requires_grad]

    def run():
        with warnings.catch_warnings(), backpack.backpack(BatchL2Grad()):
            warnings.simplefilter("ignore", UserWarning)  # "no inputs require gradients"
            extended_loss(extended(x), y).backward()
        norms = [p.batch_l2 for p in params]
        for p in params:
            p.grad = None
        return norms

    ours = noise.per_sample_grad_sq_norms(model, loss_fn, x, y)
    theirs = len(x) ** 2 * sum(run())  # BackPACK's g_i are those of the mean loss: 1/N of ours
    ref = sum(ours.values())
    assert torch.allclose(theirs.double(), ref, rtol=1e-3), "BackPACK disagrees: not the same quantity"
    return run


def cost(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> None:
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def forward_backward():
        torch.autograd.grad(loss_fn(model(x), y), params)

    def loop():
        for i in range(len(x)):
            torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)

    def hooks_forced(gram: bool):
        def run():
            with forced(gram):
                noise.per_sample_grad_sq_norms(model, loss_fn, x, y)
        return run

    problem = (model, loss_fn, x, y)
    older = baseline_module(args.baseline, "per_sample") if args.baseline else None
    methods = {
        "hooks: per_sample_grad_sq_norms (the rule)": lambda: noise.per_sample_grad_sq_norms(*problem),
        f"hooks, baseline {args.baseline}": older and (lambda: older.per_sample_grad_sq_norms(*problem)),
        "floor: hooks, one grad, row norms, no checks": floor(*problem),
        "the floor inside the tools' snapshot": inspected(model, floor(*problem)),
        "hooks, every layer explicit": hooks_forced(False),
        "hooks, every layer Gram": hooks_forced(True) if gram_memory(model, x) < 2**28 else None,
        'gradient_noise_scale(method="hooks")': lambda: noise.gradient_noise_scale(*problem, "hooks"),
        "gradient_noise_scale() (auto)": lambda: noise.gradient_noise_scale(*problem),
        "vmap: per_sample_gradients": lambda: noise.per_sample_gradients(*problem),
        'gradient_noise_scale(method="vmap")': lambda: noise.gradient_noise_scale(*problem, "vmap"),
        "Python loop: one backward per sample": loop,
        "BackPACK BatchL2Grad (reference)": backpack_norms(*problem),
    }
    auto = noise.gradient_noise_scale(model, loss_fn, x, y).method
    n_params = sum(p.numel() for p in params)
    print(f"{name}: batch {len(x)}, {x.dtype}, {n_params:,} parameters; how per_sample_grad_sq_norms "
          "contracts each layer:")
    print("\n".join(contraction_table(model, x)))
    print(f"  (gradient_noise_scale's auto picks {auto!r}; {args.rounds} pairs per method, "
          f"{max(3, args.rounds // 4)} for the slow ones, > 4x a forward+backward, timed after the others)")
    print(f"  {'method':46s} {'best ms':>9s} {'best x':>7s} {'median x':>9s} (quartiles)")
    skipped = {label: ("(BackPACK not installed)" if label.startswith("BackPACK")
                       else "(Linear layers with bias only)" if "floor" in label
                       else "(skipped: the largest layer's Gram matrices need > 256 MB)")
               for label, fn in methods.items() if fn is None and "baseline" not in label}
    timed = {label: fn for label, fn in methods.items() if fn is not None}
    slow = set()
    for label, fn in timed.items():  # warm-up; a slow method would disturb the fast ones' rounds
        forward_backward()
        start = clock()
        forward_backward()
        middle = clock()
        fn()
        if clock() - middle > 4 * (middle - start):
            slow.add(label)
    pairs: dict[str, list[tuple[float, float]]] = {label: [] for label in timed}
    for labels, rounds in (([k for k in timed if k not in slow], args.rounds),
                           ([k for k in timed if k in slow], max(3, args.rounds // 4))):
        for round_ in range(rounds if labels else 0):
            for label in labels[round_ % len(labels):] + labels[: round_ % len(labels)]:
                start = clock()
                forward_backward()
                middle = clock()
                timed[label]()
                pairs[label].append((middle - start, clock() - middle))
    base = [a for label in timed for a, _ in pairs[label]]
    for label in methods:
        if label in skipped:
            print(f"  {label:46s} {skipped[label]}")
        if label not in timed:
            continue
        ratios = [b / a for a, b in pairs[label]]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        best = min(b for _, b in pairs[label])
        print(f"  {label:46s} {1e3 * best:9.2f} {best / min(a for a, _ in pairs[label]):6.2f}x "
              f"{statistics.median(ratios):8.2f}x ({q1:.2f}-{q3:.2f})")
    print(f"  {'forward+backward':46s} {1e3 * min(base):9.2f} {1:6.2f}x\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=20, help="timed pairs per method")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--skip-accuracy", action="store_true", help="only part 2, the cost")
    parser.add_argument("--baseline", help="a checkout of an older version: its hook path runs beside")
    args = parser.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        print(f"machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.clock} time\n")
        if not args.skip_accuracy:
            accuracy()
        torch.manual_seed(0)
        mlp = MLP(64, 10, depth=4, width=256)
        cost("MLP 64-256-256-256-10", mlp, torch.randn(256, 64), torch.randint(0, 10, (256,)), args)
        cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
        cost("CNN 2 conv + linear on 32x32x3", cnn, torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)),
             args)
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    main()
