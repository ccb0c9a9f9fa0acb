"""How accurate, and how cheap, are the Hessian tools?

    python benchmarks/hessian.py                 # about two minutes on a 2-core CPU
    python benchmarks/hessian.py --device cuda
    python benchmarks/hessian.py --threads 1     # steadier timings on a busy machine

On an MLP of a few thousand parameters trained on spirals, in float64, against its exact
Hessian (``P`` products with the unit vectors, then ``torch.linalg.eigvalsh``):

1. Top-3 eigenvalues: ``top_eigenvalues`` (Lanczos) at several tolerances, its HVP count and
   largest relative error; scipy's ARPACK ``eigsh`` on the same products; and power iteration
   with deflation as PyHessian (Yao et al. 2020) runs it (tol 1e-3, at most 100 steps per
   eigenvalue), then power iteration pushed to the same accuracy as Lanczos.
2. Trace: ``hessian_trace`` over 20 seeds, plain Hutchinson and with Lanczos deflation,
   capped at 100 products: median relative error, and how often ``|error| <= stderr`` (68%
   expected) and ``<= 2 stderr`` (95%).
3. Cost of one Hessian-vector product relative to one forward + backward of the same model
   (median of per-round ratios over interleaved rounds, every other round in reverse order;
   process CPU time on a CPU, so what the scheduler gives other jobs is not counted), on the
   spirals MLP above, an MLP of about 6k parameters (float64) and one of about 150k
   (float32), for each way of computing it: ``HessianOperator.matvec`` (the gradient's graph
   built once and kept, one double backward per product) and ``matmat`` on 8 vectors at
   once; PyHessian's product (Yao et al. 2020), reimplemented here in a few lines
   (``PyHessianStyle``), and PyHessian 0.1 itself when it happens to be installed (the
   project does not depend on it); ``torch.autograd.functional.hvp`` and forward-over-reverse
   ``torch.func.jvp(grad(...))``, which redo the forward and backward every time;
   ``torch.func.linearize(grad(...))``, forward-over-reverse traced once; and building the
   operator; and matvec's backward alone (no flat vector, no check) on graphs of its own.
   Every method's ``H v`` is checked against the operator's first. Methods that keep a graph
   are built three times and each copy is called once a round. Per model, ``matvec``'s time
   over PyHessian's (0.1, else the reimplementation) round by round: the median and quartiles.

    python benchmarks/hessian.py --parts 3 --threads 1 --rounds 30   # part 3 alone, about a minute
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call, grad, jvp, linearize

from gradflow_lessons import hessian
from gradflow_lessons.data import spirals
from gradflow_lessons.env import environment_report, seed_everything
from gradflow_lessons.models import MLP


def trained_mlp(width: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    seed_everything(0)
    model = MLP(2, 3, depth=3, width=width, activation="tanh").to(device)
    x, y = spirals(300, seed=0)
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.double(), x.double(), y


def power_iteration_deflated(op: hessian.HessianOperator, k: int, tol: float, max_iter: int,
                             seed: int = 0) -> tuple[list[float], int]:
    """PyHessian's ``eigenvalues``: power iteration per eigenvalue, orthogonalised against the
    ones found, stopped when the Rayleigh quotient changes by less than ``tol`` (relative)."""
    gen = torch.Generator().manual_seed(seed)
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    start = op.n_hvp
    for _ in range(k):
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
        v = v / v.norm()
        value = None
        for _ in range(max_iter):
            for u in vectors:
                v = v - torch.dot(v, u) * u
            v = v / v.norm()
            hv = op.matvec(v)
            new = torch.dot(hv, v).item()
            v = hv / hv.norm()
            if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                value = new
                break
            value = new
        values.append(value)
        vectors.append(v)
    return values, op.n_hvp - start


def relative_error(found, exact) -> float:
    found, exact = np.asarray(found, dtype=float), np.asarray(exact, dtype=float)
    return float(np.max(np.abs(found - exact) / np.abs(exact)))


def eigenvalue_section(model, x, y, exact_top: np.ndarray, exact_min: float) -> None:
    loss = torch.nn.CrossEntropyLoss()
    print(f"\n1. top-3 eigenvalues (exact {', '.join(f'{v:.4g}' for v in exact_top)}; "
          f"most negative {exact_min:.3g})")
    print(f"{'method':50s} {'HVPs':>5s} {'max rel. error':>15s}")
    for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        r = hessian.top_eigenvalues(model, loss, x, y, k=3, tol=tol, negative=False)
        print(f"{f'Lanczos (top_eigenvalues), tol={tol:g}':50s} {r.n_hvp:5d} "
              f"{relative_error(r.eigenvalues, exact_top):15.1e}")
    r = hessian.top_eigenvalues(model, loss, x, y, k=3, tol=1e-4)
    print(f"{'  tol=1e-4, negative=True':50s} {r.n_hvp:5d} "
          f"{relative_error(r.eigenvalues, exact_top):15.1e}   most negative {r.smallest_eigenvalue:.3g} "
          f"+- {r.smallest_residual:.1g}")
    op = hessian.HessianOperator(model, loss, x, y)
    arpack = LinearOperator((op.dim, op.dim), dtype=np.float64,
                            matvec=lambda v: op.matvec(torch.as_tensor(v).reshape(-1)).cpu().numpy())
    v0 = np.random.default_rng(0).standard_normal(op.dim)
    for tol in (1e-4, 0):
        start = op.n_hvp
        values = np.sort(eigsh(arpack, k=3, which="LA", tol=tol, v0=v0, return_eigenvectors=False))[::-1]
        print(f"{f'scipy eigsh (ARPACK), tol={tol:g}':50s} {op.n_hvp - start:5d} "
              f"{relative_error(values, exact_top):15.1e}")
    for tol, max_iter, label in ((1e-3, 100, "tol=1e-3 (PyHessian's)"),
                                 (1e-6, 1000, "tol=1e-6"), (1e-9, 3000, "tol=1e-9")):
        values, n = power_iteration_deflated(op, 3, tol, max_iter)
        label = "power iteration + deflation, " + label
        print(f"{label:50s} {n:5d} {relative_error(values, exact_top):15.1e}")


def trace_section(model, x, y, exact_trace: float, seeds: int) -> None:
    loss = torch.nn.CrossEntropyLoss()
    print(f"\n2. trace (exact {exact_trace:.5g}), {seeds} seeds, at most 100 HVPs each")
    print(f"{'method':42s} {'median err':>10s} {'max err':>8s} {'median HVPs':>11s} "
          f"{'|e|<=se':>8s} {'|e|<=2se':>9s}")
    for label, options in (("plain Hutchinson, 100 probes", {"deflate": 0, "max_probes": 100}),
                           ("Hutchinson, deflate=10, rtol=0.01", {"deflate": 10, "max_probes": 90})):
        errors, hvps, within, within2 = [], [], 0, 0
        for seed in range(seeds):
            r = hessian.hessian_trace(model, loss, x, y, seed=seed, **options)
            error = abs(r.estimate - exact_trace)
            errors.append(error / abs(exact_trace))
            hvps.append(r.n_hvp)
            within += error <= r.stderr
            within2 += error <= 2 * r.stderr
        print(f"{label:42s} {100 * np.median(errors):9.2f}% {100 * max(errors):7.2f}% "
              f"{np.median(hvps):11.0f} {within / seeds:8.0%} {within2 / seeds:9.0%}")


class PyHessianStyle:
    """PyHessian 0.1's product, reimplemented in a few lines to time it side by side without
    depending on it (Yao et al. 2020; ``pyhessian.hessian.__init__`` and
    ``pyhessian.utils.hessian_vector_product``): ``loss.backward(create_graph=True)`` once,
    the gradient read from ``.grad``, then per product one
    ``torch.autograd.grad(gradsH, params, grad_outputs=v, retain_graph=True)`` on lists of
    per-parameter tensors: no flat vectors, no checks. Runs on a copy (it leaves ``.grad`` set)."""

    def __init__(self, model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> None:
        model = copy.deepcopy(model).eval()
        with warnings.catch_warnings():  # backward(create_graph=True) warns of a reference cycle
            warnings.simplefilter("ignore")
            loss_fn(model(x), y).backward(create_graph=True)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads = [p.grad for p in self.params]

    def hvp(self, v: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(self.grads, self.params, grad_outputs=v, only_inputs=True,
                                   retain_graph=True)


def pyhessian_product(model, loss_fn, x, y):
    """The installed PyHessian 0.1's own product (``pip install pyhessian``), or None: the project does
    not depend on it; when present it checks the reimplementation above."""
    try:
        from pyhessian import hessian as pyhessian_hessian
        from pyhessian.utils import hessian_vector_product
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = pyhessian_hessian(copy.deepcopy(model), loss_fn, data=(x, y), cuda=x.device.type == "cuda")
    return lambda v: hessian_vector_product(comp.gradsH, comp.params, v)


COLUMNS = {  # name: what is timed, per product (the first is the baseline)
    "fwd+bwd": "loss(model(x), y).backward()",
    "gradflow": "HessianOperator.matvec: flat [P] in and out, graph of g kept (double backward)",
    "its bwd": "matvec's backward alone: no flat vector out, no finiteness check",
    "matmat/8": "HessianOperator.matmat of 8 vectors (is_grads_batched), per product",
    "PyH-style": "PyHessianStyle.hvp above: lists of tensors, graph kept (double backward)",
    "PyH 0.1": "the installed pyhessian's hessian_vector_product, if installed",
    "func.hvp": "torch.autograd.functional.hvp: double backward, forward + backward redone each time",
    "jvp(grad)": "torch.func.jvp(grad(loss)): forward-over-reverse, redone each time",
    "linearize": "torch.func.linearize(grad(loss)): forward-over-reverse, traced once (not timed)",
    "build": "HessianOperator(...): forward + backward with create_graph=True",
}


def cost_ratios(label: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int,
                copies: int = 3) -> None:
    """Each method that keeps a graph is built ``copies`` times and each round calls every copy
    once: where a graph's tensors happen to land in memory moves its cost by up to ~10% here,
    and one lucky or unlucky copy would decide the comparison."""
    loss = torch.nn.CrossEntropyLoss()
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params)
    ops = [hessian.HessianOperator(model, loss, x, y) for _ in range(copies)]
    bare = [hessian.HessianOperator(model, loss, x, y) for _ in range(copies)]  # its own graphs: running
    # it on matvec's would warm them for matvec
    op = ops[0]
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v.to(x.device, x.dtype)
    tangent = op.unflatten(v)
    tangents = list(tangent.values())
    references = [PyHessianStyle(model, loss, x, y) for _ in range(copies)]
    installed = [pyhessian_product(model, loss, x, y) for _ in range(copies)]

    def loss_of(p):
        return loss(functional_call(model, p, (x,)), y)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        loss(model(x), y).backward()

    with warnings.catch_warnings():  # torch.fx's constant folding warns about its own graph
        warnings.simplefilter("ignore", UserWarning)
        _, linearized = linearize(grad(loss_of), params)
    block = torch.randn(8, op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    block = block.to(x.device, x.dtype)
    tasks = {"fwd+bwd": [forward_backward], "gradflow": [lambda op=op: op.matvec(v) for op in ops],
             # private attributes: the one place matvec is taken apart
             "its bwd": [lambda op=op: torch.autograd.grad(op._flat_gradient, op._params, v,
                                                           retain_graph=True) for op in bare],
             "matmat/8": [lambda op=op: op.matmat(block) for op in ops],
             "PyH-style": [lambda r=r: r.hvp(tangents) for r in references],
             "PyH 0.1": [lambda p=p: p(tangents) for p in installed if p is not None],
             "func.hvp": [lambda: torch.autograd.functional.hvp(
                 lambda *p: loss_of(dict(zip(names, p))), tuple(params.values()), tuple(tangents))],
             "jvp(grad)": [lambda: jvp(grad(loss_of), (params,), (tangent,))],
             "linearize": [lambda: linearized(tangent)],
             "build": [lambda: hessian.HessianOperator(model, loss, x, y)]}
    tasks = {name: calls for name, calls in tasks.items() if calls}
    expected = op.matvec(v)  # the methods all compute the same H v
    for name, products in (("PyH-style", references[0].hvp(tangents)),
                           ("PyH 0.1", installed[0] and installed[0](tangents)),
                           ("func.hvp", tasks["func.hvp"][0]()[1]),
                           ("linearize", linearized(tangent).values())):
        if products:
            torch.testing.assert_close(torch.cat([h.reshape(-1) for h in products]), expected, msg=name)
    torch.testing.assert_close(op.matmat(block), torch.stack([op.matvec(row) for row in block]))
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for calls in tasks.values():  # warm-up
        for call in calls:
            call()
    # on a CPU, the process's CPU time: the time the scheduler gives other jobs on a shared machine
    # is not counted (it is most of the noise there); on a GPU, wall-clock time
    clock = time.perf_counter if x.device.type == "cuda" else time.process_time
    reps = 3
    for round_ in range(rounds):  # every other round in reverse order: no task always follows the same one
        for name, calls in (list(tasks.items()) if round_ % 2 == 0 else list(tasks.items())[::-1]):
            calls = (calls * reps)[:reps]  # three calls: one on each copy, where there are copies
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            start = clock()
            for call in calls:
                call()
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times[name].append((clock() - start) / reps / (8 if name == "matmat/8" else 1))
    base = times["fwd+bwd"]
    ratio = {name: statistics.median(t / b for t, b in zip(times[name], base)) for name in tasks}
    label = f"{label}, {op.dim:,} params, N={len(x)}, {str(x.dtype)[6:]}"
    cells = " ".join(f"{f'{ratio[name]:.2f}x' if name in ratio else '-':>9s}" for name in list(COLUMNS)[1:])
    print(f"{label:50s} {1e3 * statistics.median(base):10.2f} {cells}")
    reference = "PyH 0.1" if "PyH 0.1" in times else "PyH-style"
    paired = [a / b for a, b in zip(times["gradflow"], times[reference])]  # the same round: the same load
    q1, middle, q3 = statistics.quantiles(paired, n=4)
    print(f"{'':50s} gradflow / {reference}, round by round: median {middle:.2f} "
          f"(quartiles {q1:.2f}-{q3:.2f})")


def timing_section(device: torch.device, rounds: int, spirals_mlp, width: int) -> None:
    print(f"\n3. cost of one Hessian-vector product relative to one forward + backward of the same model "
          f"(median over {rounds} interleaved rounds, 3 calls each, on 3 copies of each kept graph)")
    for name, what in COLUMNS.items():
        print(f"   {name:10s} {what}")
    print(f"{'model':50s} {'fwd+bwd ms':>10s} " + " ".join(f"{name:>9s}" for name in list(COLUMNS)[1:]))
    model, x, y = spirals_mlp
    cost_ratios(f"MLP 2-{width}-{width}-3 spirals", model, x, y, rounds)
    for width, batch, dtype in ((40, 300, torch.float64), (256, 256, torch.float32)):
        seed_everything(0)
        model = MLP(64, 10, depth=4, width=width, activation="tanh").to(device, dtype)
        x = torch.randn(batch, 64, device=device, dtype=dtype)
        y = torch.randint(0, 10, (batch,), device=device)
        cost_ratios(f"MLP 64-{width}x3-10", model, x, y, rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=50, help="hidden width of the float64 MLP")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--parts", choices=["all", "3"], default="all",
                        help="3: only the cost of one product (part 3)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = environment_report()
    print(f"machine: {report.cpu_count}-core CPU, torch {report.torch}, {report.cpu_threads} threads, "
          f"device {device}")

    model, x, y = trained_mlp(args.width, device)
    if args.parts != "3":
        start = time.perf_counter()
        exact = hessian.exact_hessian(model, torch.nn.CrossEntropyLoss(), x, y)
        eigenvalues = torch.linalg.eigvalsh(exact).numpy()
        print(f"MLP 2-{args.width}-{args.width}-3 (tanh) trained on spirals: {exact.shape[0]:,} parameters, "
              f"float64; exact Hessian from {exact.shape[0]:,} HVPs in {time.perf_counter() - start:.0f} s")
        eigenvalue_section(model, x, y, eigenvalues[::-1][:3], float(eigenvalues[0]))
        trace_section(model, x, y, float(np.trace(exact.numpy())), args.seeds)
    timing_section(device, args.rounds, (model, x, y), args.width)

if __name__ == "__main__":
    main()
