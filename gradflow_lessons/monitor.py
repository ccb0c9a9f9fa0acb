"""Watch gradient flow while a model trains: per-layer gradient and activation statistics.

    with GradientMonitor(model, optimizer) as monitor:
        for step in range(steps):
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            monitor.record()          # after backward(), before optimizer.step()
            optimizer.step()
    plots.plot_gradient_flow(monitor.history)

What is tracked (``monitor.history``, ``.activations``, ``.histograms``):

- **Gradients**, from ``p.grad`` (no backward hook), per module that owns trainable
  parameters: the L2 norm ``sqrt(sum_p ||g_p||^2)`` over its own parameters and the count
  of NaN/Inf entries (kept, never dropped), every record: one pass (``_params.norms``: a
  fused norm, or a BLAS dot per large CPU tensor) and one host sync. Mean and max ``|g|``
  and the fraction of exact zeros take one more pass (``|g|``) and three reductions of it:
  on the *detail* records, every ``detail_every``-th (default 50; the first record is
  always one).
- **Activations**, on the detail records, from forward hooks on every leaf module but
  ``nn.Identity`` (parameter-free ones included), pooled over the forwards run with grad
  enabled since the previous record: mean, std, the fraction of **dead** ReLU units (zero for the whole
  batch) and of **saturated** tanh/sigmoid outputs (``|tanh| >= 0.99``; sigmoid within
  0.005 of 0 or 1).
- **Update-to-data ratio** ``||W_after - W_before|| / ||W_after||`` per module when the
  optimizer is given, on the detail records: step hooks copy the weights (one buffer the
  size of the model) before the first ``optimizer.step()`` after each detail record.
  Karpathy's rule of thumb ("A Recipe for Training Neural Networks", 2019) puts healthy
  values near ``1e-3``.
- **Histograms** every ``histogram_every`` records, on fixed bins: ``log10 |g|`` (zeros and
  NaN/Inf left out) and output values, at most ``histogram_samples`` entries per layer
  (a fixed random subset), values beyond the range in the end bins.

Statistics are accumulated in float32 or wider whatever the model's dtype (float16
sums of squares overflow at 65,504), and a norm that float32 cannot hold (entries near
1e-26 or 1e25) is redone in float64. Forwards run by a tool inside the monitor's block
(``diagnose``, the Hessian and noise tools) or inside ``torch.func`` transforms are not
counted: tools compose.

Memory is bounded by a rolling window: the last ``max_steps`` recorded steps are kept
(``dropped_steps`` counts the others). A module reachable under two names is reported
once, under its first; its activation statistics pool all its calls.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor

from ._params import exact_norms, norms, trainable_parameters, wide
from ._state import inspection_depth, unscale_factor
from .distributed import (
    NORM,
    ROW_RULES,
    gather_sharded,
    is_sharded,
    keeps_history,
    local,
    shard_group,
    sum_across,
)

DEAD_KINDS = (nn.ReLU, nn.ReLU6)
_CHUNK = 1 << 22
"""Entries of ``|g|`` taken at a time for the fine statistics: the scratch buffer stays at most
16 MB per dtype in float32."""
_BITS = {torch.float64: torch.int64, torch.float32: torch.int32,
         torch.float16: torch.int16, torch.bfloat16: torch.int16}
SATURATING_KINDS = (nn.Tanh, nn.Sigmoid)


def count_hooks(model: nn.Module) -> int:
    """How many module hooks are registered on ``model`` and its submodules: forward,
    forward-pre, backward and backward-pre hooks, PyTorch's global ones not included.

    The course's tools promise that this is the same after a call (or a ``with`` block)
    as before it: ``count_hooks(model) == 0`` after ``GradientMonitor`` has closed.
    """
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, kind, {})) for m in model.modules() for kind in kinds)


@dataclass
class GradientRecord:
    """Gradient statistics of one module at one step (plain CPU numbers).

    ``grad_norm`` is NaN or inf when a gradient entry is; ``nonfinite`` says how many.
    ``grad_mean_abs``, ``grad_max_abs``, ``zero_fraction`` and ``update_ratio`` are None on
    records that are not detail records (see ``detail_every``); ``update_ratio`` is also None
    until the optimizer step after this record has run.
    """

    step: int
    layer: str
    grad_norm: float
    grad_mean_abs: float | None
    grad_max_abs: float | None
    zero_fraction: float | None
    nonfinite: int
    numel: int
    update_ratio: float | None = None


@dataclass
class ActivationRecord:
    """Output statistics of one module at one step, pooled over its ``calls`` forward calls.

    ``dead_fraction`` (ReLU only) is the fraction of units, i.e. output entries but the
    batch dimension, that are zero for every example; ``saturated_fraction`` (tanh and
    sigmoid only) is the fraction of entries on the flat part of the curve. Both are None
    for other modules. ``std`` is the population standard deviation; ``mean`` is NaN or inf
    when an output entry is.
    """

    step: int
    layer: str
    kind: str
    mean: float
    std: float
    dead_fraction: float | None
    saturated_fraction: float | None
    numel: int
    calls: int


@dataclass
class HistogramRecord:
    """A histogram of one module at one step. ``kind`` is ``"gradient"`` (bins of
    ``log10 |g|``) or ``"activation"`` (bins of the output values).
    ``edges`` [bins + 1], ``counts`` [bins] (of a sample for large layers)."""

    step: int
    layer: str
    kind: str
    edges: torch.Tensor
    counts: torch.Tensor


@dataclass
class _Step:
    gradients: list[GradientRecord]
    activations: list[ActivationRecord]
    histograms: list[HistogramRecord]


def _to_cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` as float64 CPU tensors, with one transfer (one host sync) per device."""
    if len(tensors) == 1:
        return [tensors[0].to("cpu", torch.float64)]
    out: list[torch.Tensor] = [torch.empty(0)] * len(tensors)
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.device, []).append(i)
    for index in groups.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in index]).to("cpu", torch.float64)
        for i, part in zip(index, flat.split([tensors[i].numel() for i in index])):
            out[i] = part.view(tensors[i].shape)
    return out


def _histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of finite ``values`` in bins ``edges``; values beyond go to the end bins."""
    lo, hi = edges[0].item(), edges[-1].item()
    values = values.reshape(-1).float()
    values = torch.where(torch.isfinite(values), values.clamp(lo, hi), float("nan"))
    return torch.histc(values, bins=len(edges) - 1, min=lo, max=hi)  # histc skips NaN


def _max(values: list[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else max(values)


class GradientMonitor:
    """Per-layer gradient, activation and update statistics of ``model``, step by step.

    Args:
        model: any ``nn.Module``, on CPU or GPU.
        optimizer: if given, the update-to-data ratio is recorded (on the detail records).
        activations: hook leaf modules and record their output statistics on the detail
            records (and their histograms on the histogram records).
        histogram_every: record histograms on every n-th ``record()`` (0: never).
        detail_every: make every n-th ``record()``, the first included, a detail record
            (0: none): mean and max |g|, the zero fraction, the activation statistics and
            the update-to-data ratio are taken then. Norms and non-finite counts are
            taken on every record. A detail record costs several times what the norms
            do (README, "Overhead"): ``detail_every=1`` records everything every step, as
            lesson 05 does on its short runs; the default 50 (Lightning's logging interval)
            keeps a long run's cost near that of the norms alone.
        bins: histogram bins.
        histogram_samples: histogram at most this many entries per layer and step.
        grad_range: ``(lo, hi)`` of the gradient histograms, in ``log10 |g|``.
        activation_range: ``(lo, hi)`` of activation histograms (tanh always uses (-1, 1),
            sigmoid (0, 1)).
        max_steps: keep the statistics of the last ``max_steps`` recorded steps.
        keep_on: under ``torch.distributed``, who keeps the history: ``"all"`` (every rank)
            or a rank number (only that rank; the others still take part in the collectives
            and ``record()`` still returns their records). Gradient norms and non-finite
            counts are of the whole gradient on every rank: DDP's are replicated, and FSDP2's
            sharded ones are combined with one ``all_gather`` per record (see
            ``gradflow_lessons.distributed``). Activation statistics and histograms are of
            this rank's own batch and shards.

    Raises:
        ValueError: ``model`` has no trainable parameters; ``keep_on`` is not "all" or a rank.

    Hooks exist only between ``__enter__`` and ``__exit__`` (or ``close()``), also when the
    body raises; the recorded data stays readable afterwards.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        activations: bool = True,
        histogram_every: int = 0,
        detail_every: int = 50,
        bins: int = 40,
        histogram_samples: int = 16_384,
        grad_range: tuple[float, float] = (-10.0, 1.0),
        activation_range: tuple[float, float] = (-3.0, 3.0),
        max_steps: int = 10_000,
        keep_on: int | str = "all",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"GradientMonitor watches an nn.Module, got {type(model).__name__}")
        if min(max_steps, bins, histogram_samples) < 1 or min(histogram_every, detail_every) < 0:
            raise ValueError("need max_steps, bins, histogram_samples >= 1 and intervals >= 0 "
                             "(0 means never)")
        self.histogram_samples = histogram_samples
        self._sample_index: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.model, self.optimizer = model, optimizer
        self.histogram_every, self.detail_every = histogram_every, detail_every
        self.max_steps, self.dropped_steps = max_steps, 0
        self.keep_on, self._keeps = keep_on, keeps_history(keep_on)
        self._last_step = -1
        self.aliases: dict[str, list[str]] = {}  # first name -> every name of a shared module
        first: dict[int, str] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            if first.setdefault(id(module), name) != name:
                self.aliases.setdefault(first[id(module)], [first[id(module)]]).append(name)

        # Trainable parameters, grouped by the module that owns them (tied weights count
        # once, under their first name); layers are the modules that own at least one.
        self.frozen_parameters = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        trainable = trainable_parameters(model)
        self._params: list[nn.Parameter] = list(trainable.values())
        self._every = list(range(len(self._params)))  # `present` when every parameter has a gradient
        layer_of: dict[str, int] = {}
        self._owner = [layer_of.setdefault(name.rpartition(".")[0], len(layer_of)) for name in trainable]
        self.layers: list[str] = list(layer_of)
        self._group = shard_group(self._params)  # None: no sharded parameter, nothing to gather
        self._sharded = [i for i, p in enumerate(self._params) if is_sharded(p)]

        self._hooked = [
            (name, m) for name, m in model.named_modules()
            if activations and next(m.children(), None) is None and not isinstance(m, nn.Identity)
        ]
        self.activation_layers = [name for name, _ in self._hooked]
        self._grad_edges = torch.linspace(*grad_range, bins + 1, dtype=torch.float64)
        self._act_edges = [
            torch.linspace(*((-1.0, 1.0) if isinstance(m, nn.Tanh) else (0.0, 1.0)
                             if isinstance(m, nn.Sigmoid) else activation_range),
                           bins + 1, dtype=torch.float64)
            for _, m in self._hooked
        ]
        self._steps: deque[_Step] = deque()
        self._step_numbers: set[int] = set()
        self._last_seen: list[tuple[weakref.ref, int]] = []  # the gradients of the last record
        self._layout: tuple[tuple[int, ...], list[tuple[int, list[int], int]]] | None = None
        self._depth = 0
        self._handles: list = []  # the optimizer's step hooks
        self._forward_handles: list = []  # the leaf modules' forward hooks, when wanted
        self._active = False
        self._records_made = 0
        self._awaiting: list[GradientRecord] | None = None  # the record the next step updates
        self._before: list[torch.Tensor] | None = None  # weights before that step
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # for |g|
        self._unresolved: list[tuple[list[GradientRecord], torch.Tensor]] = []
        self._reset_activations()

    # ------------------------------------------------------------------ hooks

    def __enter__(self) -> GradientMonitor:
        if self._active:
            raise RuntimeError(
                "this GradientMonitor is already attached (entered twice); use a single "
                "`with monitor:` block, or create a second GradientMonitor"
            )
        self._active = True
        self._depth = inspection_depth()  # forwards of tools run inside this block are not ours
        self._attach_forward_hooks()
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_step))
            self._handles.append(self.optimizer.register_step_post_hook(self._after_step))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and free the weight copy (idempotent). Data stays readable."""
        for handle in self._handles + self._forward_handles:
            handle.remove()
        self._handles, self._forward_handles = [], []
        self._active, self._before, self._scratch = False, None, {}
        self._reset_activations()

    def _attach_forward_hooks(self) -> None:
        """Hook the leaf modules while the next record takes activation statistics or
        histograms, and only then: a module with a hook runs PyTorch's slower call path on
        every forward, which the records in between would pay for nothing."""
        wanted = self._due(self.detail_every) or self._due(self.histogram_every)
        if wanted and not self._forward_handles:
            self._forward_handles = [module.register_forward_hook(partial(self._forward_hook, index))
                                     for index, (_, module) in enumerate(self._hooked)]
        elif not wanted and self._forward_handles:
            for handle in self._forward_handles:
                handle.remove()
            self._forward_handles = []

    def _reset_activations(self) -> None:
        n = len(self._hooked)
        self._act_stats: list[list[torch.Tensor]] = [[] for _ in range(n)]  # per call: sum, norm(, count)
        self._act_counts = [[0, 0, 0] for _ in range(n)]  # entries, units, calls
        self._act_hist: list[torch.Tensor | None] = [None] * n
        self._pooled = False  # whether a forward hook kept anything since

    def _due(self, every: int) -> bool:
        return every > 0 and self._records_made % every == 0

    def _forward_hook(self, index: int, module: nn.Module, inputs: object, output: object) -> None:
        detail, histogram = self._due(self.detail_every), self._due(self.histogram_every)
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if not torch.is_grad_enabled() or not isinstance(out, torch.Tensor):
            return  # evaluation forwards (no backward follows) and non-tensor outputs
        if not out.is_floating_point() or out.numel() == 0 or inspection_depth() > self._depth:
            return  # a tool (diagnose, noise, hessian) inspecting the model inside our block
        if is_functorch_wrapped_tensor(out):
            return  # inside torch.func.vmap/grad: the tensor must not escape the transform
        out = out.detach()
        self._pooled = True
        flat = out.reshape(out.shape[0], -1) if out.dim() > 1 else out.reshape(1, -1)  # [N, units]
        if histogram:
            hist = _histogram(self._sample(flat), self._act_edges[index])
            previous = self._act_hist[index]
            self._act_hist[index] = hist if previous is None else previous + hist
        if not detail:
            return
        accumulate = wide(flat.dtype)  # float16: in float32
        stats = self._act_stats[index]  # 0-d tensors, left on the device: no host sync in the hook
        stats += (flat.sum(dtype=accumulate), torch.linalg.vector_norm(flat, dtype=accumulate))
        if isinstance(module, DEAD_KINDS):
            stats.append((flat.amax(0) == 0).sum().double())
        elif isinstance(module, SATURATING_KINDS):
            centred = flat if isinstance(module, nn.Tanh) else 2 * flat - 1  # both in [-1, 1]
            stats.append(torch.count_nonzero(centred.abs() >= 0.99).double())
        counts = self._act_counts[index]
        counts[0] += flat.numel()
        counts[1] += flat.shape[1]
        counts[2] += 1

    def _sample(self, values: torch.Tensor) -> torch.Tensor:
        """At most ``histogram_samples`` entries of ``values``, the same subset every step."""
        values = values.reshape(-1)
        if values.numel() <= self.histogram_samples:
            return values
        key = (values.numel(), values.device)
        if key not in self._sample_index:
            generator = torch.Generator().manual_seed(values.numel())
            index = torch.randint(values.numel(), (self.histogram_samples,), generator=generator)
            self._sample_index[key] = index.to(values.device)
        return values[self._sample_index[key]]

    def _before_step(self, optimizer: object, args: object, kwargs: object) -> None:
        if self._awaiting is None:
            return  # no record() since the last step: nothing to attach a ratio to
        now = [local(p.detach()) for p in self._params]
        if self._before is None:
            self._before = [p.clone() for p in now]
        else:
            torch._foreach_copy_(self._before, now)

    def _after_step(self, optimizer: object, args: object, kwargs: object) -> None:
        if self._awaiting is None or self._before is None:
            return
        now = [local(p.detach()) for p in self._params]
        torch._foreach_sub_(self._before, now)  # the buffer now holds -(W_after - W_before)
        pairs = torch.stack([torch.stack(norms(self._before)).double(),
                             torch.stack(norms(now)).double()], 1)  # [P, 2]
        if self._group is not None:  # sharded: the whole tensors' norms, one collective per step
            rows = pairs[self._sharded]
            pairs[self._sharded] = gather_sharded(rows, [NORM] * rows.numel(), self._group).view_as(rows)
        self._unresolved.append((self._awaiting, pairs))
        self._awaiting = None

    def _resolve(self, norms_on_cpu: list[torch.Tensor]) -> None:
        """Fill ``update_ratio`` of waiting records from their [P, 2] (|dW|, |W|)."""
        for (records, _), pairs in zip(self._unresolved, norms_on_cpu):
            squares = np.zeros((len(self.layers), 2))
            np.add.at(squares, self._owner, pairs.numpy() ** 2)
            ratio = {name: math.sqrt(d / w) if w > 0 else math.inf  # NaN stays NaN
                     for name, (d, w) in zip(self.layers, squares.tolist())}
            for record in records:
                record.update_ratio = ratio[record.layer]
        self._unresolved = []

    # ------------------------------------------------------------------ recording

    def record(self, step: int | None = None, *, scaler: torch.amp.GradScaler | None = None
               ) -> list[GradientRecord]:
        """Store the statistics of the current gradients, and of the forwards since the
        last record, as step ``step`` (default: the previous step + 1, starting at 0).

        Call it after ``loss.backward()`` and before ``optimizer.step()``. Under mixed
        precision pass the ``GradScaler``: while its gradients are still scaled (no
        ``scaler.unscale_`` this step; read for the monitor's optimizer, or for any optimizer
        when the monitor has none), norms, mean and max ``|g|`` and the histograms are of the
        true gradients, ``.grad / scaler.get_scale()``; after ``unscale_`` they are taken as
        they are.

        Returns:
            This step's gradient records, one per layer whose parameters have gradients.

        Raises:
            RuntimeError: the monitor is not attached, or no parameter has a gradient yet.
            ValueError: no backward since the last record (one record per backward: a
                second would be a phantom step), or ``step`` is already recorded.
        """
        return self._record(step, unscale_factor(scaler, self.optimizer))

    def _record(self, step: int | None, factor: float) -> list[GradientRecord]:
        """``record``, with the gradients multiplied by ``factor`` (1 / loss scale) on the way."""
        present, grads = self._gradients_now()
        step = self._step_number(step)
        detail = self._due(self.detail_every)
        shards = grads if self._group is None else [local(g) for g in grads]
        per_param = self._reduce_gradients(shards, detail)
        if self._group is not None:
            per_param = self._combine_shards(present, shards, per_param, detail)
        grad_hist = (self._gradient_histograms(present, shards, math.log10(factor))
                     if self._due(self.histogram_every) else [])
        pooled = self._pooled  # the forward hooks ran since the last record
        active = [i for i, stats in enumerate(self._act_stats) if stats] if pooled else []
        act_hist = [(i, hist) for i, hist in enumerate(self._act_hist) if hist is not None] if pooled else []

        if grad_hist or pooled or self._unresolved:
            parts = [[per_param], [torch.stack(self._act_stats[i]) for i in active],
                     [h for _, h in grad_hist], [h for _, h in act_hist], [t for _, t in self._unresolved]]
            moved = iter(_to_cpu([t for part in parts for t in part]))  # the one host sync
            (per_param,), act_sums, grad_counts, act_counts, updates = (
                [next(moved) for _ in part] for part in parts)
            self._resolve(updates)
        else:  # the usual record: the norms alone
            per_param, act_sums, grad_counts, act_counts = per_param.cpu(), [], [], []

        records = self._gradient_records(step, present, grads, per_param, detail, factor)
        activations = [self._activation_record(step, i, sums) for i, sums in zip(active, act_sums)]
        histograms = [HistogramRecord(step, self.layers[layer], "gradient", self._grad_edges, counts)
                      for (layer, _), counts in zip(grad_hist, grad_counts)]
        histograms += [HistogramRecord(step, self._hooked[i][0], "activation", self._act_edges[i], counts)
                       for (i, _), counts in zip(act_hist, act_counts)]
        self._store(_Step(records, activations, histograms), detail)
        return records

    def _combine_shards(self, present: list[int], shards: list[torch.Tensor], per_param: torch.Tensor,
                        detail: bool) -> torch.Tensor:
        """``per_param`` [1 or 4, P] of the local shards, with the sharded columns replaced by
        the whole tensors' values: one ``all_gather`` (L2 norms redone in float64 first, so no
        float32 underflow needs a second, collective pass)."""
        sharded = set(self._sharded)
        cols = [k for k, i in enumerate(present) if i in sharded]
        if not cols:
            return per_param
        per_param = per_param.double()
        l2 = torch._foreach_norm([shards[k] for k in cols], dtype=torch.float64)
        per_param[0, cols] = torch.stack(l2).to(per_param.device)
        rules = ROW_RULES[: per_param.shape[0]]
        part = per_param[:, cols]  # [rows, S]
        how = [rule for rule in rules for _ in cols]
        per_param[:, cols] = gather_sharded(part, how, self._group).view_as(part)
        return per_param

    def _step_number(self, step: int | None) -> int:
        if step is None:
            return self._last_step + 1
        if step in self._step_numbers:
            raise ValueError(
                f"step {step} is already recorded; each record() needs its own step number (leave "
                "step=None to count 0, 1, 2, ...), or call monitor.record() once per step"
            )
        return step

    def _gradients_now(self) -> tuple[list[int], list[torch.Tensor]]:
        """Indices of the trainable parameters that have a ``.grad``, and those (dense) gradients."""
        if not self._active:
            raise RuntimeError(
                "record() needs the monitor's hooks: call it inside "
                "`with GradientMonitor(model) as monitor:`"
            )
        grads = [p.grad for p in self._params]
        present = self._every
        if any(g is None for g in grads):
            present = [i for i, g in enumerate(grads) if g is not None]
            if not present:
                raise RuntimeError(
                    "record() found no gradients on the model's trainable parameters; call "
                    "loss.backward() before monitor.record()"
                )
            grads = [grads[i] for i in present]
        seen = [(weakref.ref(g), g._version) for g in grads]  # the same tensors, unchanged: no backward
        last = self._last_seen
        if len(seen) == len(last) and all(a() is b() and va == vb for (a, va), (b, vb) in zip(seen, last)):
            raise ValueError(
                "record() was called twice after one backward(): a record is one training step, so "
                "the second would be a phantom step (and the first would lose its update ratio). Call "
                "record() once per loss.backward(), before optimizer.step()"
            )
        self._last_seen = seen
        if any(g.is_sparse for g in grads):
            grads = [g.to_dense() if g.is_sparse else g for g in grads]
        return present, grads

    def _reduce_gradients(self, grads: list[torch.Tensor], detail: bool) -> torch.Tensor:
        """Per parameter, on the device, no sync: the L2 norm, and on detail steps the L1
        norm, max |g| and count of non-zeros; [1 or 4, P]."""
        per_param = norms(grads)  # accumulated in float32 or wider, checked on the host
        if detail:
            fine = [self._fine_statistics(g) for g in grads]
            per_param += [f[k] for k in range(3) for f in fine]
        try:
            stacked = torch.stack(per_param)
        except RuntimeError:  # a model split over devices: gather first
            stacked = torch.stack([t.cpu() for t in per_param])
        return stacked.view(-1, len(grads))

    def _fine_statistics(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sum |g|`` (in ``wide(dtype)``), ``max |g|`` and the count of non-zero entries of
        ``grad``, 0-d tensors on its device. ``|g|`` is written into a scratch buffer kept between
        records (at most ``_CHUNK`` entries: a fresh one each time costs page faults); the bits
        of ``|g|`` are zero exactly where ``g`` is +0.0 or -0.0, and counting non-zero bits is
        faster than comparing floats."""
        flat = grad.reshape(-1)
        size = min(flat.numel(), _CHUNK)
        scratch = self._scratch.get((flat.device, flat.dtype))
        if scratch is None or scratch.numel() < size:
            scratch = self._scratch[flat.device, flat.dtype] = flat.new_empty(size)
        parts = []
        for start in range(0, max(flat.numel(), 1), _CHUNK):
            piece = flat[start:start + _CHUNK]
            absolute = torch.abs(piece, out=scratch[:piece.numel()])
            parts.append((absolute.sum(dtype=wide(absolute.dtype)),
                          absolute.amax() if absolute.numel() else absolute.new_zeros(()),  # an empty shard
                          torch.count_nonzero(absolute.view(_BITS.get(absolute.dtype, absolute.dtype)))))
        if len(parts) == 1:
            return parts[0]
        sums, largest, nonzero = (torch.stack(column) for column in zip(*parts))
        return sums.sum(), largest.amax(), nonzero.sum()

    def _gradient_histograms(self, present: list[int], grads: list[torch.Tensor],
                             shift: float = 0.0) -> list[tuple[int, torch.Tensor]]:
        """``(layer index, counts of log10 |g| + shift)`` of each layer with gradients, on the device."""
        out = []
        for layer in range(len(self.layers)):
            mine = [g.reshape(-1) for i, g in zip(present, grads) if self._owner[i] == layer]
            if mine:
                values = self._sample(torch.cat(mine)).abs().log10() + shift
                out.append((layer, _histogram(values, self._grad_edges)))
        return out

    def _gradient_records(self, step: int, present: list[int], grads: list[torch.Tensor],
                          per_param: torch.Tensor, detail: bool, factor: float = 1.0) -> list[GradientRecord]:
        """One record per layer with gradients, from the per-parameter reductions on the CPU;
        norms and |g| statistics multiplied by ``factor`` (1 / loss scale)."""
        l2, *more = per_param.tolist()
        l2 = exact_norms(grads, l2)  # sharded ones: float64 already; float32 lost it: float64
        if factor != 1.0:
            l2 = [v * factor for v in l2]
        l1, high, nonzero = more if detail else (None, None, None)
        if detail and factor != 1.0:
            l1, high = [v * factor for v in l1], [v * factor for v in high]
        nonfinite = [0] * len(present)
        bad = [k for k in range(len(present)) if not math.isfinite(l2[k])]
        if bad:  # rare: count exactly (a second sync, only when something is NaN/Inf)
            shared = set(self._sharded)
            sharded = {k for k, i in enumerate(present) if i in shared}
            counts = torch.stack([(~torch.isfinite(local(grads[k]))).sum() for k in bad])
            if any(k in sharded for k in bad):  # the same on every rank: their norms are shared
                mask = torch.tensor([k in sharded for k in bad], device=counts.device)
                counts = torch.where(mask, sum_across(counts, self._group), counts)
            counts = counts.tolist()
            for k, count in zip(bad, counts):
                nonfinite[k] = count
        rows_of = self._rows_of(present, grads)
        records = []
        for layer, rows, numel in rows_of:  # layers without gradients this step are skipped
            records.append(GradientRecord(
                step=step,
                layer=self.layers[layer],
                grad_norm=math.sqrt(sum(l2[k] ** 2 for k in rows)),
                grad_mean_abs=None if l1 is None else sum(l1[k] for k in rows) / numel,
                grad_max_abs=None if high is None else _max([high[k] for k in rows]),
                zero_fraction=None if nonzero is None else 1 - sum(nonzero[k] for k in rows) / numel,
                nonfinite=sum(nonfinite[k] for k in rows),
                numel=numel,
            ))
        return records

    def _rows_of(self, present: list[int], grads: list[torch.Tensor]) -> list[tuple[int, list[int], int]]:
        """``(layer, its columns in present, its gradient entries)`` per layer with gradients;
        the same every step in the usual case, so kept from the last call."""
        key = tuple(present)
        if self._layout is None or self._layout[0] != key:
            rows_of: dict[int, list[int]] = {}
            for k, i in enumerate(present):
                rows_of.setdefault(self._owner[i], []).append(k)
            self._layout = key, [(layer, rows, sum(grads[k].numel() for k in rows))
                                 for layer, rows in rows_of.items()]
        return self._layout[1]

    def _activation_record(self, step: int, index: int, sums: torch.Tensor) -> ActivationRecord:
        """The pooled output statistics of hooked module ``index`` from its per-call sums,
        norms (and dead or saturated counts) on the CPU."""
        entries, units, calls = self._act_counts[index]
        name, module = self._hooked[index]
        values = sums.tolist()
        width = len(values) // calls
        total, square = sum(values[0::width]), sum(v * v for v in values[1::width])
        count = sum(values[2::width])  # 0 for a module that counts nothing
        mean = total / entries
        return ActivationRecord(
            step=step,
            layer=name,
            kind=type(module).__name__,
            mean=mean,
            std=math.sqrt(max(square / entries - mean**2, 0.0)) if math.isfinite(square) else math.nan,
            dead_fraction=count / units if isinstance(module, DEAD_KINDS) else None,
            saturated_fraction=count / entries if isinstance(module, SATURATING_KINDS) else None,
            numel=entries,
            calls=calls,
        )

    def _store(self, step: _Step, detail: bool) -> None:
        """Keep ``step`` in the rolling window (on the ranks that keep the history) and get
        ready for the next one: the optimizer step after a detail record measures its update."""
        self._last_step = step.gradients[0].step
        self._records_made += 1
        self._awaiting = step.gradients if self.optimizer is not None and detail else None
        if self._pooled:
            self._reset_activations()
        self._attach_forward_hooks()
        if not self._keeps:
            return
        self._steps.append(step)
        self._step_numbers.add(step.gradients[0].step)
        if len(self._steps) > self.max_steps:
            self._step_numbers.discard(self._steps.popleft().gradients[0].step)
            self.dropped_steps += 1

    # ------------------------------------------------------------------ reading

    @property
    def history(self) -> list[GradientRecord]:
        """Gradient records of the kept steps, oldest first, layers in model order."""
        if self._unresolved:
            self._resolve(_to_cpu([t for _, t in self._unresolved]))
        return [r for s in self._steps for r in s.gradients]

    @property
    def activations(self) -> list[ActivationRecord]:
        """Activation records of the kept steps, oldest first."""
        return [r for s in self._steps for r in s.activations]

    @property
    def histograms(self) -> list[HistogramRecord]:
        """Histogram records of the kept steps, oldest first."""
        return [r for s in self._steps for r in s.histograms]

    @property
    def steps(self) -> list[int]:
        """The kept step numbers, oldest first."""
        return [s.gradients[0].step for s in self._steps]


def to_matrix(records: list, field: str) -> tuple[list[str], list[int], np.ndarray]:
    """Records as a layer x step table of ``field`` (what heat maps and curves draw).

    Args:
        records: ``monitor.history`` or ``monitor.activations`` (or a part of them).
        field: a record attribute, e.g. ``"grad_norm"``, ``"update_ratio"``, ``"dead_fraction"``.

    Returns:
        ``(layers, steps, values)`` with ``values`` [len(layers), len(steps)]; NaN where a
        layer has no value at a step (or the value is None).
    """
    layers = list(dict.fromkeys(r.layer for r in records))
    steps = sorted({r.step for r in records})
    row, col = {name: i for i, name in enumerate(layers)}, {s: j for j, s in enumerate(steps)}
    values = np.full((len(layers), len(steps)), np.nan)
    for r in records:
        value = getattr(r, field)
        if value is not None:
            values[row[r.layer], col[r.step]] = value
    return layers, steps, values

