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
3. Cost of one Hessian-vector product relative to one forward + backward, timed
   interleaved round after round (median of per-round ratios), for the small MLP and a
   larger one (about 150k parameters) in float32: the cached double backward, building the operator, and
   forward-over-reverse ``torch.func.jvp(grad(...))`` which recomputes everything each time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call, grad, jvp

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


def cost_ratios(width: int, batch: int, dtype: torch.dtype, device: torch.device, rounds: int) -> None:
    seed_everything(0)
    model = MLP(64, 10, depth=4, width=width, activation="tanh").to(device, dtype)
    x = torch.randn(batch, 64, device=device, dtype=dtype)
    y = torch.randint(0, 10, (batch,), device=device)
    loss = torch.nn.CrossEntropyLoss()
    params = {n: p.detach() for n, p in model.named_parameters()}
    tangent = {n: torch.randn_like(p) for n, p in params.items()}
    op = hessian.HessianOperator(model, loss, x, y)
    v = torch.randn(op.dim, device=device, dtype=dtype)

    def loss_of(p):
        return loss(functional_call(model, p, (x,)), y)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        loss(model(x), y).backward()

    tasks = {"fwd+bwd": forward_backward, "HVP": lambda: op.matvec(v),
             "build": lambda: hessian.HessianOperator(model, loss, x, y),
             "jvp(grad)": lambda: jvp(grad(loss_of), (params,), (tangent,))}
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for task in tasks.values():  # warm-up
        task()
    for _ in range(rounds):
        for name, task in tasks.items():
            reps = 3
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(reps):
                task()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) / reps)
    base = times["fwd+bwd"]
    ratio = {name: statistics.median(t / b for t, b in zip(times[name], base)) for name in tasks}
    label = f"MLP width {width}, {op.dim:,} params, N={batch}, {str(dtype)[6:]}"
    print(f"{label:34s} {1e3 * statistics.median(base):10.2f} {ratio['HVP']:5.2f}x "
          f"{ratio['build']:5.2f}x {ratio['jvp(grad)']:8.2f}x")


def timing_section(device: torch.device, rounds: int) -> None:
    print(f"\n3. cost relative to one forward + backward (median over {rounds} interleaved rounds)")
    print(f"{'model':34s} {'fwd+bwd ms':>10s} {'HVP':>6s} {'build':>6s} {'jvp(grad)':>9s}")
    for width, batch, dtype in ((40, 300, torch.float64), (256, 256, torch.float32)):
        cost_ratios(width, batch, dtype, device, rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=50, help="hidden width of the float64 MLP")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = environment_report()
    print(f"machine: {report.cpu_count}-core CPU, torch {report.torch}, {report.cpu_threads} threads, "
          f"device {device}")

    model, x, y = trained_mlp(args.width, device)
    start = time.perf_counter()
    exact = hessian.exact_hessian(model, torch.nn.CrossEntropyLoss(), x, y)
    eigenvalues = torch.linalg.eigvalsh(exact).numpy()
    print(f"MLP 2-{args.width}-{args.width}-3 (tanh) trained on spirals: {exact.shape[0]:,} parameters, "
          f"float64; exact Hessian from {exact.shape[0]:,} HVPs in {time.perf_counter() - start:.0f} s")
    eigenvalue_section(model, x, y, eigenvalues[::-1][:3], float(eigenvalues[0]))
    trace_section(model, x, y, float(np.trace(exact.numpy())), args.seeds)
    timing_section(device, args.rounds)


if __name__ == "__main__":
    main()
