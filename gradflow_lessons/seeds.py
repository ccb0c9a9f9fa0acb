"""One experiment over many seeds, as one batched computation.

A single training run of a small network is an anecdote: change the seed (the initial
weights, the order of the mini-batches) and a chaotic run can end anywhere. This module
trains the same seeded model for N seeds *at once*: ``torch.func.stack_module_state``
stacks the N models' parameters into tensors with a leading seed dimension ``[N, ...]``,
and ``vmap`` over ``functional_call`` runs forward, backward, clipping and the update of
all N as one computation (the "model ensembling" recipe of the ``torch.func`` tutorials).
Small networks leave most of a CPU idle; N of them side by side less so
(``benchmarks/seeds.py`` measures the ratio; a network big enough to keep the CPU busy
on its own gains little).

- ``train_over_seeds``: SGD or Adam, mini-batch or full-batch, optionally clipped
  (``norm_clipping``, ``agc_clipping``), for every seed; returns a ``SeedRuns`` with
  per-seed curves, the trained parameters, and helpers for the median, a quantile band
  and the success rate.
- ``clipping_over_seeds``: the clipping experiment lessons 04 and 10 share (one place,
  so both print the same numbers).

Seed ``s`` sets both the initial weights (``make_model(s)`` runs under
``torch.manual_seed(s)``, in a forked RNG so the caller's stream is untouched) and the
mini-batch order (a ``torch.Generator`` seeded with ``s``).

``method="vmap"`` refuses a model vmap cannot run (one whose ``forward`` branches on a
tensor's value, ``if x.mean() > 0``, or calls ``.item()``) with a ``ValueError`` that says so;
``method="loop"`` trains the seeds one after another with ``torch.optim`` and the
library's own ``clip_by_norm_``/``agc_`` (the reference the batched path is tested
against); ``method="auto"`` (the default) uses vmap and falls back to the loop with a
warning.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from .clipping import agc_, clip_by_norm_, unitwise_norm
from .data import first_token_task
from .models import RNNClassifier

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Clipping:
    """How each run's gradient is clipped after ``backward``: norm clipping, then AGC.

    ``max_norm`` (``tau``) and ``agc`` (``lambda``) are one value for every run or one per
    run ``[N]``; ``math.inf`` switches a method off for that run, so runs with different
    methods train side by side in one batch. ``skip`` names the top-level modules AGC
    leaves alone (the paper leaves the classifier unclipped: ``("output",)``).
    """

    max_norm: float | Sequence[float] | Tensor = math.inf
    agc: float | Sequence[float] | Tensor = math.inf
    skip: tuple[str, ...] = ("output",)
    eps: float = 1e-3


def norm_clipping(max_norm: float | Sequence[float] | Tensor) -> Clipping:
    """``g <- g * min(1, tau / (||g|| + 1e-6))`` (torch's ``clip_grad_norm_``), per run."""
    return Clipping(max_norm=max_norm)


def agc_clipping(clipping: float | Sequence[float] | Tensor = 0.01, skip: Sequence[str] = ("output",),
                 eps: float = 1e-3) -> Clipping:
    """Unit-wise AGC (Brock et al. 2021), as ``clipping.agc_``; modules in ``skip`` unclipped."""
    return Clipping(agc=clipping, skip=tuple(skip), eps=eps)


@dataclass(frozen=True)
class SeedRuns:
    """N training runs of one experiment, one row per seed (detached CPU tensors).

    Attributes:
        seeds: the seeds, in row order.
        loss: mini-batch loss at every step, ``[N, steps]``.
        grad_norm: total gradient norm before clipping, ``[N, steps]``.
        clipped: whether the step was clipped, ``[N, steps]`` (all False unclipped).
        eval_loss: full-data-set loss every ``eval_every`` steps, ``[N, steps // eval_every]``.
        final_loss: full-data-set loss after the last step, ``[N]``.
        method: ``"vmap"`` or ``"loop"``: how the runs were computed.
        parameters: the trained parameters, name -> ``[N, ...]`` (see ``state_dict``).
    """

    seeds: tuple[int, ...]
    loss: Tensor
    grad_norm: Tensor
    clipped: Tensor
    eval_loss: Tensor
    final_loss: Tensor
    method: str
    eval_every: int = field(default=0)
    parameters: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def state_dict(self, row: int) -> dict[str, Tensor]:
        """Run ``row``'s trained parameters, for ``model.load_state_dict(..., strict=False)``."""
        return {name: value[row] for name, value in self.parameters.items()}

    def median(self, values: Tensor | None = None) -> Tensor:
        """Median over seeds of ``values`` (``[N, ...]``; default ``final_loss``)."""
        values = self.final_loss if values is None else values
        return values.quantile(0.5, dim=0)

    def band(
        self, values: Tensor | None = None, lower: float = 0.1, upper: float = 0.9
    ) -> tuple[Tensor, Tensor]:
        """The ``lower`` and ``upper`` quantiles over seeds (default: the 10-90 % band)."""
        if not 0.0 <= lower <= upper <= 1.0:
            raise ValueError(f"need 0 <= lower <= upper <= 1, got {lower} and {upper}")
        values = self.final_loss if values is None else values
        return values.quantile(lower, dim=0), values.quantile(upper, dim=0)

    def success_rate(self, below: float) -> float:
        """Fraction of seeds whose final loss is below ``below`` (NaN counts as failure)."""
        return (self.final_loss < below).double().mean().item()

    def fraction_clipped(self) -> Tensor:
        """Per seed, the fraction of steps that were clipped, ``[N]``."""
        return self.clipped.double().mean(dim=1)

    def rows(self, start: int, stop: int) -> SeedRuns:
        """The runs ``start:stop`` as their own ``SeedRuns``."""
        pick = slice(start, stop)
        return replace(self, seeds=self.seeds[pick], loss=self.loss[pick], grad_norm=self.grad_norm[pick],
                       clipped=self.clipped[pick], eval_loss=self.eval_loss[pick],
                       final_loss=self.final_loss[pick],
                       parameters={k: v[pick] for k, v in self.parameters.items()})


def train_over_seeds(
    make_model: Callable[[int], nn.Module],
    inputs: Tensor,
    targets: Tensor,
    seeds: Sequence[int],
    *,
    steps: int,
    lr: float,
    batch_size: int | None,
    optimizer: str = "sgd",
    loss_fn: LossFn = F.cross_entropy,
    clipping: Clipping | None = None,
    eval_every: int = 0,
    method: str = "auto",
) -> SeedRuns:
    """Train ``make_model(seed)`` with SGD or Adam for every seed; one batched computation.

    Each step, for every seed ``s``: draw ``batch_size`` indices with seed ``s``'s generator
    (or take the whole data set), ``g = grad loss_fn(model(inputs[idx]), targets[idx])``,
    record ``||g||``, clip, and update: SGD ``w <- w - lr * g``, or Adam (Kingma & Ba, 2015,
    betas 0.9 and 0.999, eps 1e-8, as ``torch.optim.Adam``).

    Args:
        make_model: builds the model for a seed (same architecture for every seed).
        inputs: the data set ``[n, ...]``; targets ``[n, ...]``.
        seeds: the seeds, at least one.
        steps, lr: the run.
        batch_size: mini-batch size, or None for full-batch training.
        optimizer: ``"sgd"`` or ``"adam"``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        clipping: ``norm_clipping(...)``, ``agc_clipping(...)`` or None.
        eval_every: also record the full-data loss every this many steps (0: only at the end).
        method: ``"auto"``, ``"vmap"`` or ``"loop"`` (see the module docstring).

    Returns:
        ``SeedRuns``. Cost: ``steps`` batched forward+backward passes (vmap), or N times
        ``steps`` plain ones (loop).

    Raises:
        ValueError: no seed, a bad argument, or (``method="vmap"``) a model vmap cannot run.
    """
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 1:
        raise ValueError("need at least one seed (N >= 1); pass e.g. seeds=range(10)")
    if method not in ("auto", "vmap", "loop"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if steps < 1 or (batch_size is not None and batch_size < 1) or not lr > 0 or eval_every < 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, eval_every >= 0; got "
                         f"{steps}, {batch_size}, {lr}, {eval_every}")
    clipping = Clipping() if clipping is None else clipping
    thresholds = torch.stack([_per_run(clipping.max_norm, len(seeds), inputs.dtype, "max_norm"),
                              _per_run(clipping.agc, len(seeds), inputs.dtype, "agc")], dim=1)  # [N, 2]
    run = _Run(steps, lr, batch_size, optimizer, loss_fn, clipping, thresholds, eval_every)
    if method == "loop":
        return _loop(make_model, inputs, targets, seeds, run)
    try:
        return _vmapped(make_model, inputs, targets, seeds, run)
    except RuntimeError as e:  # vmap's own errors are RuntimeErrors
        if method == "vmap":
            raise ValueError(f"vmap cannot run this model ({str(e).splitlines()[0]}); pass "
                             "method='loop' (N separate runs), or make forward free of Python branches "
                             "on tensor values and of .item() (torch.where instead of if)") from e
        warnings.warn(f"train_over_seeds: vmap failed ({str(e).splitlines()[0]}); running the "
                      f"{len(seeds)} seeds one by one instead", stacklevel=2)
        return _loop(make_model, inputs, targets, seeds, run)


@dataclass(frozen=True)
class _Run:
    steps: int
    lr: float
    batch_size: int | None
    optimizer: str
    loss_fn: LossFn
    clipping: Clipping
    thresholds: Tensor  # [N, 2]: max_norm and AGC lambda per run
    eval_every: int


def _per_run(threshold, n: int, dtype: torch.dtype, name: str) -> Tensor:
    t = torch.as_tensor(threshold, dtype=dtype).detach().cpu().flatten()
    t = t.expand(n).clone() if t.numel() == 1 else t
    if t.numel() != n:
        raise ValueError(f"clipping {name} has {t.numel()} values for {n} runs; give one, or one per seed")
    if not bool((t > 0).all()):
        raise ValueError(f"clipping {name} must be positive (math.inf: off), got {t.tolist()}")
    return t


def _build(make_model: Callable[[int], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the caller's RNG is as it was
        torch.manual_seed(seed)
        return make_model(seed)


def _batch_indices(seeds: tuple[int, ...], steps: int, n: int, batch_size: int | None, device) -> Tensor:
    """``[steps, N, batch_size]``: seed s draws its batches from its own generator."""
    if batch_size is None:  # full batch: every example, every step
        return torch.arange(n, device=device).expand(steps, len(seeds), n)
    per_seed = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        per_seed.append(torch.stack([torch.randint(0, n, (batch_size,), generator=g) for _ in range(steps)]))
    return torch.stack(per_seed, dim=1).to(device)


def _vmapped(make_model, inputs: Tensor, targets: Tensor, seeds: tuple[int, ...], run: _Run) -> SeedRuns:
    models = [_build(make_model, s) for s in seeds]
    shapes = [{k: v.shape for k, v in m.named_parameters()} for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("make_model(seed) built models of different shapes; every seed needs the same model")
    params, buffers = stack_module_state(models)  # {name: [N, ...]}
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    skip, eps, lr = run.clipping.skip, run.clipping.eps, run.lr

    def loss_of(p, b, x, y):
        return run.loss_fn(functional_call(base, (p, b), (x,)), y)

    def step(p, b, x, y, threshold, m, v, t):  # one run; vmap adds the run dimension
        g, loss = grad_and_value(loss_of)(p, b, x, y)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in g.values()]))
        # norm clipping as torch's clip_grads_with_norm_ (the same 1e-6, the same clamp)
        scale = (threshold[0] / (norm + 1e-6)).clamp(max=1.0)
        g, clipped = {k: v * scale for k, v in g.items()}, norm > threshold[0]
        for k, gk in g.items():  # then AGC as clipping.agc_, unit by unit
            if k.split(".")[0] not in skip:
                max_norm = unitwise_norm(p[k]).clamp(min=eps) * threshold[1]
                grad_norm = unitwise_norm(gk)
                s = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-6), 1.0)
                g[k], clipped = gk * s, clipped | (s < 1).any()
        if run.optimizer == "sgd":
            return {k: p[k] - lr * g[k] for k in p}, loss, norm, clipped, m, v
        # Adam, in torch.optim.Adam's order of operations
        m = {k: m[k] * 0.9 + g[k] * 0.1 for k in p}
        v = {k: v[k] * 0.999 + g[k] * g[k] * 0.001 for k in p}
        step_size, root = lr / (1 - 0.9**t), math.sqrt(1 - 0.999**t)
        return ({k: p[k] - step_size * m[k] / (v[k].sqrt() / root + 1e-8) for k in p}, loss, norm, clipped,
                m, v)

    def full_loss(p, b):  # through grad_and_value: nn.RNN has a batching rule only under autograd
        return grad_and_value(loss_of)(p, b, inputs, targets)[1]

    vstep, vloss = vmap(step, in_dims=(0, 0, 0, 0, 0, 0, 0, None)), vmap(full_loss)
    m = {k: torch.zeros_like(w) for k, w in params.items()}  # Adam's moments (unused by SGD)
    v = {k: torch.zeros_like(w) for k, w in params.items()}
    idx = _batch_indices(seeds, run.steps, len(inputs), run.batch_size, inputs.device)
    thresholds = run.thresholds.to(inputs.device)
    losses, norms, clips, evals = [], [], [], []
    with torch.no_grad():
        for t in range(run.steps):
            params, loss, norm, clipped, m, v = vstep(params, buffers, inputs[idx[t]], targets[idx[t]],
                                                      thresholds, m, v, t + 1)
            losses.append(loss), norms.append(norm), clips.append(clipped)
            if run.eval_every and (t + 1) % run.eval_every == 0:
                evals.append(vloss(params, buffers))
        final = vloss(params, buffers)
    return _result(seeds, losses, norms, clips, evals, final, "vmap", run.eval_every, params)


def _loop(make_model, inputs: Tensor, targets: Tensor, seeds: tuple[int, ...], run: _Run) -> SeedRuns:
    idx = _batch_indices(seeds, run.steps, len(inputs), run.batch_size, inputs.device)
    rows = []
    for i, seed in enumerate(seeds):
        model = _build(make_model, seed)
        optimizer_class = torch.optim.SGD if run.optimizer == "sgd" else torch.optim.Adam
        optimizer = optimizer_class(model.parameters(), lr=run.lr)
        skip = [p for n, p in model.named_parameters() if n.split(".")[0] in run.clipping.skip]
        max_norm, agc = run.thresholds[i].tolist()
        row = ([], [], [], [])
        for t in range(run.steps):
            loss = run.loss_fn(model(inputs[idx[t, i]]), targets[idx[t, i]])
            optimizer.zero_grad()
            loss.backward()
            norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
            clipped = False
            if max_norm < math.inf:
                clipped = clip_by_norm_(model.parameters(), max_norm).clipped
            if agc < math.inf:
                clipped = agc_(model.parameters(), agc, run.clipping.eps, skip=skip).clipped or clipped
            optimizer.step()
            row[0].append(loss.detach()), row[1].append(norm), row[2].append(torch.tensor(clipped))
            if run.eval_every and (t + 1) % run.eval_every == 0:
                with torch.no_grad():
                    row[3].append(run.loss_fn(model(inputs), targets))
        with torch.no_grad():
            rows.append((*row, run.loss_fn(model(inputs), targets), dict(model.named_parameters())))
    columns = [[torch.stack([r[c][t] for r in rows]) for t in range(len(rows[0][c]))] for c in range(4)]
    final = torch.stack([r[4] for r in rows])
    params = {k: torch.stack([r[5][k] for r in rows]) for k in rows[0][5]}
    return _result(seeds, *columns, final, "loop", run.eval_every, params)


def _result(seeds, losses, norms, clips, evals, final, method, eval_every, params) -> SeedRuns:
    def stack(xs, dtype=None):  # list over steps of [N] -> [N, steps], detached on the CPU
        if not xs:
            return torch.empty(len(seeds), 0, dtype=dtype or final.dtype)
        return torch.stack(xs, dim=1).detach().cpu()

    trained = {k: v.detach().cpu() for k, v in params.items()}
    return SeedRuns(seeds, stack(losses), stack(norms), stack(clips, torch.bool), stack(evals),
                    final.detach().cpu(), method, eval_every, trained)


# --------------------------------------------------------------------------- lessons 04 and 10


@dataclass(frozen=True)
class ThresholdExperiment:
    """``clipping_over_seeds``: one ``SeedRuns`` per threshold, the same seeds in each.

    Attributes:
        runs: label (``"no clipping"``, ``"p50"``, ..., ``"AGC 0.05"``) -> ``SeedRuns``.
        thresholds: label -> the norm threshold tau of each seed ``[N]`` (percentile runs only).
        success_below: a run succeeds when its final full-data loss is below this.
    """

    runs: dict[str, SeedRuns]
    thresholds: dict[str, Tensor]
    success_below: float

    def success_rates(self) -> dict[str, float]:
        return {label: r.success_rate(self.success_below) for label, r in self.runs.items()}


def exploding_rnn_task(
    dtype: torch.dtype = torch.float64,
) -> tuple[Callable[[int], nn.Module], Tensor, Tensor]:
    """Lesson 04's setting: ``(make_model, inputs, targets)`` for ``train_over_seeds``.

    ``make_model(seed)`` is ``RNNClassifier(4, 32, 2, recurrent_gain=2.0)``, a tanh RNN whose
    recurrent matrix is orthogonal times 2 (its gradients through time explode), built in
    ``dtype`` whatever the default dtype; the data is ``first_token_task(n=512, length=20)``
    (the label is the sign of the first of 20 steps): ``[512, 20, 4]`` inputs, ``[512]`` targets.
    """
    inputs, targets = first_token_task(n=512, length=20, seed=0)

    def make_model(seed: int) -> nn.Module:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # the init is drawn in dtype; restored at once
        try:
            return RNNClassifier(4, 32, 2, recurrent_gain=2.0)
        finally:
            torch.set_default_dtype(previous)

    return make_model, inputs.to(dtype), targets


def clipping_over_seeds(
    seeds: Sequence[int] = range(12),
    percentiles: Sequence[float] = (50, 90, 99),
    agc: float = 0.05,
    *,
    steps: int = 150,
    lr: float = 0.3,
    batch_size: int = 32,
    success_below: float = 0.05,
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
) -> ThresholdExperiment:
    """Which clipping threshold trains an exploding RNN? Each one over many seeds.

    The setting of lesson 04 (``exploding_rnn_task``): a tanh RNN whose recurrent matrix is
    orthogonal times 2, on ``first_token_task``, SGD at ``lr`` with mini-batches of
    ``batch_size``. Seed s sets the initial weights and
    the batch order. First every seed trains unclipped and records its gradient norms;
    then, from the same start, it trains clipped by norm at each percentile of *its own*
    recorded norms (the recipe of lesson 04), and with AGC (lambda ``agc``, output layer
    unclipped). All clipped runs train as one batch.

    A run is chaotic: a rounding difference of 1e-16 grows about tenfold per step, so the
    numbers depend on how the runs are batched and on the thread count (the lessons use
    one thread); the success rates are what carries over.

    Returns:
        ``ThresholdExperiment``. Cost: 2 x ``steps`` batched steps (N and
        N x (len(percentiles) + 1) runs).
    """
    make_model, inputs, targets = exploding_rnn_task(dtype)
    seeds = tuple(seeds)
    n = len(seeds)
    common = dict(steps=steps, lr=lr, batch_size=batch_size, method=method)
    unclipped = train_over_seeds(make_model, inputs, targets, seeds, **common)
    labels = [f"p{q:g}" for q in percentiles]
    q = torch.tensor([p / 100 for p in percentiles], dtype=unclipped.grad_norm.dtype)
    taus = unclipped.grad_norm.quantile(q, dim=1)  # [len(percentiles), N]
    off = torch.full((n,), math.inf, dtype=taus.dtype)
    max_norm = torch.cat([*taus, off])  # the percentile runs, then the AGC run
    lambdas = torch.cat([off] * len(labels) + [torch.full_like(off, agc)])
    clipped = train_over_seeds(make_model, inputs, targets, seeds * (len(labels) + 1),
                               clipping=Clipping(max_norm=max_norm, agc=lambdas), **common)
    runs = {"no clipping": unclipped}
    runs |= {label: clipped.rows(i * n, (i + 1) * n) for i, label in enumerate(labels + [f"AGC {agc:g}"])}
    return ThresholdExperiment(runs, dict(zip(labels, taus)), success_below)
