"""Diagnose gradient flow from one forward and backward pass, and prescribe the fix.

    diagnosis = diagnose(model, loss_fn, inputs, targets)
    print(diagnosis.report())          # the library returns text; the notebook prints it
    diagnose(model, loss_fn, inputs, targets, optimizer=optimizer, steps=10)  # also watch training
    for finding in diagnosis.findings:
        finding.kind, finding.layers, finding.evidence, finding.fix

One step under ``GradientMonitor`` (lesson 05) gives, per layer, the gradient norm and
the output statistics; ``diagnose`` reads five symptoms from them:

- **nonfinite**: a NaN/Inf in the inputs, the loss, an output or a gradient. Every other
  number is then meaningless, so it is the only finding reported.
- **dead_relu**: a ReLU layer whose units output zero for *every* example, so no gradient
  flows through them (the unit can never recover by gradient descent).
- **saturation**: tanh/sigmoid outputs on the flat part of the curve (``|tanh| >= 0.99``),
  where the derivative is below 0.02.
- **exploding**: the forward signal grows layer after layer (a gain above the one that
  preserves variance), or the gradient grows from the output back to the input.
- **vanishing**: the gradient reaching the input end is a tiny fraction of the one at the
  output end, or the forward signal dies out layer after layer; in a recurrent model
  (``nn.RNN``/``LSTM``/``GRU`` on inputs ``[N, T, D]``), also *through time*: the gradient
  reaching the first step's input is a tiny fraction of the last step's (weight gradients
  sum over time steps, so late steps make every weight look healthy).
- **saturation** also covers attention: ``nn.MultiheadAttention`` rows that put more than
  0.99 of their weight on one key (the softmax's Jacobian ``diag(p) - p p^T`` is then nearly
  zero), read with ``probes.attention_entropy``.

The "weight layers" compared are the modules owning a parameter of 2 or more dimensions
(linear and convolutional layers), input to output. Their gradient scale is the RMS
``||dL/dW|| / sqrt(numel)``, so wide and narrow layers compare fairly. When dead units,
saturation or an exploding forward signal are found, a small input-end gradient is their
consequence and is not reported again as vanishing: one root cause, one fix.

With ``optimizer`` and ``steps > 0`` it also **watches training** (on copies of the model
and the optimizer) and reports a too-high learning rate as **exploding**, which one pass
cannot see: a healthy network at a learning rate of 5 has healthy gradients at step 0.

Thresholds are module constants; lesson 09 measures them on healthy and sick networks
(seeds 0-2, width 32, batch 128) and prints the margins.
"""

from __future__ import annotations

import copy
import inspect
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from ._params import trainable_parameters
from ._state import _tensors, batch_size, checked_loss, inspecting, usable
from .monitor import SATURATING_KINDS, GradientMonitor
from .probes import attention_entropy, input_gradient_norms

GRADIENT_RATIO_MIN = 1e-3
"""Vanishing below this RMS gradient ratio, input-end weight layer / output-end one.
Measured (lesson 09, seeds 0-2): healthy networks (Kaiming ReLU x30, Xavier tanh x10,
Kaiming GELU x10, pre-LN residual MLP x16) stay above 0.02, small CNNs above 0.07; a
10-layer sigmoid net is below 1e-8 (sigmoid' <= 1/4 per layer)."""

GRADIENT_RATIO_MAX = 1e3
"""Exploding above this ratio (the gradient grows 1000x on its way back to the input)."""

SIGNAL_RATIO_MIN = 1e-2
"""Vanishing when the output std of the last hidden weight layer is below this fraction
of the first one's. Healthy networks measured stay above 0.09; a 30-layer ReLU net with
Xavier init (variance halves per layer) falls below 1e-4."""

SIGNAL_RATIO_MAX = 20.0
"""Exploding when that std grows above this factor. Healthy networks measured stay below
3.2 (a 30-layer Kaiming ReLU net fluctuates most); Kaiming init times gain 2 over 10
layers reaches 130 or more (2 per layer, minus finite-width losses)."""

DEAD_FRACTION = 0.9
"""A ReLU layer is dead when this fraction of its units is zero for the whole batch.
Deep Kaiming ReLU nets already reach 0.5-0.66 at init (inputs become correlated with depth,
so a unit is off for all of them); biases of -3 kill every unit (1.0)."""

SATURATED_FRACTION = 0.2
"""A tanh/sigmoid layer is saturated when this fraction of its outputs is on the flat
part. Xavier-initialised tanh measures 0.00; tanh with gain 4 or inputs x10, 0.46-0.75."""

LOSS_GROWTH_MAX = 2.0
"""Watched training explodes when the loss after the last watched step is above this
multiple of the first (on a fixed batch a small enough step never raises the loss: the
descent lemma). ``benchmarks/diagnose_thresholds.py`` (ReLU x30 and x4, GELU x10 Kaiming,
tanh x10 Xavier, pre-LN residual x16; seeds 0-4; 5, 10, 20 steps; float32 and float64):
good learning rates (SGD 0.01, Adam 1e-3) end at <= 1.0x, Adam 1e-2 at <= 1.1x (mid-run
spikes recover, so the final loss counts); SGD 1 and 5 end at >= 990x or NaN."""

UPDATE_RATIO_MAX = 0.15
"""Watched training explodes when, at some step, the median over weight layers of the
update-to-data ratio ``||W_after - W_before|| / ||W_after||`` is above this (healthy:
~1e-3, Karpathy 2019). Same sweep: good learning rates <= 0.021, Adam 1e-2 <= 0.098; Adam
0.1 >= 0.25 and Adam 1 >= 0.94, though Adam 0.1's loss can still fall (to 0.15x): Adam
moves every weight by ~lr per step, whatever the gradient. Good runs flagged: 0/300;
too-high (SGD 1, 5, Adam 0.1, 1) caught: 600/600. SGD 0.1 is too high for several of these
nets (flagged in 84/150 runs); lesson 09 shows where."""

TIME_RATIO_MIN = 1e-6
"""Vanishing through time below this ratio ``||dL/dx_1|| / ||dL/dx_T||`` (first step's input
gradient over the last's). Measured over seeds 0-9 (``RNNClassifier`` LSTM, 16 hidden units,
batch 64; see the README): healthy LSTMs at T = 10 and 20 (PyTorch's init or forget bias 1)
give 1.6e-5 to 0.17; a closed forget gate (bias -3 or -5) at T = 10, 7.5e-9 to 1.5e-7."""

ATTENTION_SATURATED_FRACTION = 0.5
"""Attention saturated when, in some ``nn.MultiheadAttention`` layer, more than this fraction
of the attention rows (over batch, heads and queries) put > 0.99 of their weight on one key.
Measured (``TransformerClassifier`` depth 2, 16 steps, batch 32, seeds 0-9, post- and
pre-norm): healthy 0.000 at most; query and key weights x5 0.131-0.292; x10 0.625-0.744."""

KINDS = ("vanishing", "exploding", "dead_relu", "saturation", "nonfinite")


@dataclass
class Finding:
    """One symptom: its ``kind`` (in ``KINDS``), the ``layers`` involved (qualified module
    names), the ``evidence`` (the numbers that triggered it) and the ``fix`` to apply."""

    kind: str
    layers: list[str]
    evidence: dict[str, float]
    fix: str

    def __str__(self) -> str:
        shown = self.layers
        if len(shown) > 4:
            shown = shown[:3] + [f"... ({len(shown)} layers)"]
        numbers = ", ".join(f"{k}={v:.3g}" for k, v in self.evidence.items())
        return f"[{self.kind}] in {', '.join(shown)}\n  evidence: {numbers}\n  fix: {self.fix}"


@dataclass
class Diagnosis:
    """The findings of ``diagnose`` and the per-layer numbers they were read from.

    Attributes:
        findings: empty for a healthy model.
        loss: the loss of the diagnosed step.
        grad_rms: ``||dL/dW|| / sqrt(numel)`` per weight layer, input to output.
        output_std: the std of each weight layer's output, input to output.
        dead_fraction: per ReLU layer, the fraction of units zero for the whole batch.
        saturated_fraction: per tanh/sigmoid layer, the fraction of saturated outputs.
        watched_losses: with ``steps > 0``, the loss before each watched step and after
            the last (``steps + 1`` values, fewer if it became NaN/Inf); else empty.
        update_ratio: with ``steps > 0``, per weight layer, the update-to-data ratio
            ``||W_after - W_before|| / ||W_after||`` of each watched step; else empty.
        time_gradient: for a recurrent model on ``[N, T, D]`` float inputs, ``||dL/dx_t||``
            for ``t = 1 .. T`` (first step first); else empty.
        attention_saturated_fraction: per ``nn.MultiheadAttention`` layer, the fraction of
            attention rows with a weight above 0.99; else empty.
    """

    findings: list[Finding]
    loss: float
    grad_rms: dict[str, float] = field(default_factory=dict)
    output_std: dict[str, float] = field(default_factory=dict)
    dead_fraction: dict[str, float] = field(default_factory=dict)
    saturated_fraction: dict[str, float] = field(default_factory=dict)
    watched_losses: list[float] = field(default_factory=list)
    update_ratio: dict[str, list[float]] = field(default_factory=dict)
    time_gradient: list[float] = field(default_factory=list)
    attention_saturated_fraction: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        return [f.kind for f in self.findings]

    def report(self) -> str:
        """A readable summary (the library never prints; print this)."""
        watched = []
        if self.watched_losses:
            first, last = self.watched_losses[0], self.watched_losses[-1]
            watched = [f"watched {len(self.watched_losses) - 1} steps: loss {first:.3g} -> {last:.3g}"]
        if self.healthy:
            return "\n".join([f"healthy: no findings (loss {self.loss:.3g})"] + watched)
        lines = [f"{len(self.findings)} finding(s) (loss {self.loss:.3g}):"]
        return "\n".join(lines + [str(f) for f in self.findings] + watched)

    __str__ = report


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if any(p.dim() >= 2 and p.requires_grad for p in m.parameters(recurse=False))]


def _kaiming_gain(layers: list[tuple[str, nn.Module]]) -> float:
    """Median over layers of ``std(W) / sqrt(2 / fan_in)``: 1 for Kaiming init."""
    gains = []
    for _, module in layers:
        weight = next(p for p in module.parameters(recurse=False) if p.dim() >= 2).detach()
        gains.append(weight.double().std().item() / math.sqrt(2.0 / weight[0].numel()))
    return float(torch.tensor(gains).median()) if gains else math.nan


@dataclass
class _Case:
    """What the rules read: the call's arguments, the monitored step and the diagnosis so far."""

    model: nn.Module
    loss_fn: Callable
    inputs: object
    targets: object
    optimizer: torch.optim.Optimizer | None
    steps: int
    loss: float
    monitor: GradientMonitor
    diagnosis: Diagnosis
    layers: list[tuple[str, nn.Module]]  # weight layers, input to output
    loss_scale: float = 1.0  # a GradScaler's scale the backward ran with (1: none)

    @cached_property
    def gain(self) -> float:
        return _kaiming_gain(self.layers)

    @cached_property
    def grad_ratio(self) -> float:
        """RMS gradient of the input-end weight layer over the output-end one's."""
        values = list(self.diagnosis.grad_rms.values())
        return values[0] / values[-1] if len(values) >= 2 and values[-1] > 0 else math.nan

    @cached_property
    def signal_ratio(self) -> float:
        """Output std of the last hidden weight layer over the first one's."""
        values = list(self.diagnosis.output_std.values())
        return values[-2] / values[0] if len(values) >= 3 and values[0] > 0 else math.nan

    def shape_evidence(self) -> dict[str, float]:
        return {"grad_ratio_first_last": self.grad_ratio, "signal_ratio_last_first": self.signal_ratio,
                "kaiming_gain": self.gain}


# --------------------------------------------------------------------------- the rules
# Each rule reads a _Case and returns a Finding or None; RULES runs them in order.


def nonfinite_rule(case: _Case) -> Finding | None:
    """A NaN/Inf in the inputs, targets, parameters, loss, an output or a gradient."""
    bad_inputs, bad_targets = (sum(int((~torch.isfinite(t)).sum()) for t in _tensors(data)
                                   if t.is_floating_point()) for data in (case.inputs, case.targets))
    bad_params = sum(int((~torch.isfinite(p.detach())).sum()) for p in case.model.parameters())
    grads = {r.layer: r.nonfinite for r in case.monitor.history if r.nonfinite}
    outputs = [a.layer for a in case.monitor.activations if not math.isfinite(a.mean)]
    if not (bad_inputs or bad_targets or bad_params or grads or outputs or not math.isfinite(case.loss)):
        return None
    if bad_inputs or bad_targets:
        fix = ("the data contain NaN/Inf: clean the data before training (find the rows with "
               "~torch.isfinite(x).all(1), drop or impute them, e.g. torch.nan_to_num) and assert "
               "torch.isfinite(inputs).all() in the data pipeline")
    elif bad_params:
        fix = ("the parameters are already NaN/Inf (a diverged update): restart from the last finite "
               "checkpoint with a lower learning rate and gradient clipping (clip_grad_norm_)")
    elif case.loss_scale != 1.0 and grads and math.isfinite(case.loss):
        fix = (f"the gradients of the loss times the GradScaler's scale {case.loss_scale:g} overflow: "
               "GradScaler skips such a step and lowers the scale, which is normal now and then; if it "
               "happens every step, lower init_scale or look for large gradients (clip after "
               "scaler.unscale_(optimizer))")
    else:
        fix = ("the forward or backward pass overflows: look for log(0), division by zero or exp of "
               "large values in the loss (use log_softmax/cross_entropy), lower the learning rate, "
               "clip gradients")
    evidence = {"nonfinite_inputs": float(bad_inputs), "nonfinite_targets": float(bad_targets),
                "nonfinite_parameters": float(bad_params),
                "nonfinite_gradients": float(sum(grads.values())), "loss": case.loss}
    if case.loss_scale != 1.0:
        evidence["loss_scale"] = case.loss_scale
    return Finding("nonfinite", outputs + [n for n in grads if n not in outputs] or ["(inputs)"],
                   evidence, fix)


def dead_relu_rule(case: _Case) -> Finding | None:
    """ReLU layers with at least ``DEAD_FRACTION`` of their units zero for the whole batch."""
    dead = {n: v for n, v in case.diagnosis.dead_fraction.items() if v >= DEAD_FRACTION}
    if not dead:
        return None
    biases = [m.bias.detach().double().mean().item() for _, m in case.layers
              if getattr(m, "bias", None) is not None]
    mean_bias = sum(biases) / len(biases) if biases else 0.0
    return Finding(
        "dead_relu", list(dead),
        {"max_dead_fraction": max(dead.values()), "dead_layers": float(len(dead)), "mean_bias": mean_bias},
        "these ReLUs output 0 for every example, so no gradient reaches them: reset the "
        f"biases to 0 (mean bias now {mean_bias:.3g}), use Kaiming init, or use LeakyReLU/GELU; "
        "if it happened during training, lower the learning rate")


def saturation_rule(case: _Case) -> Finding | None:
    """tanh/sigmoid layers with at least ``SATURATED_FRACTION`` of their outputs on the flat part."""
    saturated = {n: v for n, v in case.diagnosis.saturated_fraction.items() if v >= SATURATED_FRACTION}
    if not saturated:
        return None
    first = _tensors(case.inputs)[0].detach().double()
    return Finding(
        "saturation", list(saturated),
        {"max_saturated_fraction": max(saturated.values()), "input_std": first.std().item(),
         "kaiming_gain": case.gain},
        "pre-activations are too large for tanh/sigmoid (derivative < 0.02): standardise the "
        "inputs to std 1, use Xavier init with gain 1 (std = sqrt(2/(fan_in+fan_out))), or "
        "add LayerNorm before the activation")


def exploding_rule(case: _Case) -> Finding | None:
    """The forward signal grows past ``SIGNAL_RATIO_MAX`` or the gradient past ``GRADIENT_RATIO_MAX``."""
    if not (case.signal_ratio > SIGNAL_RATIO_MAX or case.grad_ratio > GRADIENT_RATIO_MAX):
        return None
    stds = case.diagnosis.output_std
    first = next(iter(stds.values()), math.nan)
    grows = [n for n, v in stds.items() if v > SIGNAL_RATIO_MAX * first]
    evidence, fix = case.shape_evidence(), (
        f"weights are {case.gain:.3g}x the Kaiming scale: re-initialise with Kaiming init "
        "(std = sqrt(2/fan_in); Xavier for tanh), add normalisation (LayerNorm/BatchNorm), "
        "and clip the gradient norm (clip_grad_norm_) with a lower learning rate")
    if case.loss_scale != 1.0:  # the numbers here are unscaled; the user's own may not be
        evidence["loss_scale"] = case.loss_scale
        fix += (f". Under mixed precision, gradients still multiplied by the loss scale "
                f"({case.loss_scale:g}) look exploding too: unscale them (scaler.unscale_(optimizer)) "
                "before reading or clipping them; the numbers here are unscaled")
    return Finding("exploding", grows or list(case.diagnosis.grad_rms)[:1], evidence, fix)


def vanishing_rule(case: _Case) -> Finding | None:
    """The gradient or the signal dies out; only when no other finding explains it already."""
    if case.diagnosis.findings or not (case.grad_ratio < GRADIENT_RATIO_MIN
                                       or case.signal_ratio < SIGNAL_RATIO_MIN):
        return None
    rms, stds = case.diagnosis.grad_rms, case.diagnosis.output_std
    last_rms, first_std = list(rms.values())[-1], next(iter(stds.values()), math.nan)
    weak = [n for n, v in rms.items() if v < GRADIENT_RATIO_MIN * last_rms]
    weak += [n for n, v in list(stds.items())[:-1] if v < SIGNAL_RATIO_MIN * first_std]
    squashing = any(isinstance(m, SATURATING_KINDS) for m in case.model.modules())
    fix = ("replace sigmoid/tanh by ReLU or GELU with Kaiming init (std = sqrt(2/fan_in)), "
           "or add residual connections with normalisation (pre-LayerNorm)" if squashing else
           f"weights are {case.gain:.3g}x the Kaiming scale: re-initialise with Kaiming init "
           "(std = sqrt(2/fan_in)), or add residual connections with normalisation")
    return Finding("vanishing", list(dict.fromkeys(weak)), case.shape_evidence(), fix)


def learning_rate_rule(case: _Case) -> Finding | None:
    """With ``steps > 0``: watch training on copies and catch a too-high learning rate."""
    if case.steps == 0 or case.optimizer is None:
        return None
    diagnosis = case.diagnosis
    diagnosis.watched_losses, ratios = _watch(case.model, case.loss_fn, case.inputs, case.targets,
                                              case.optimizer, case.steps)
    diagnosis.update_ratio = {n: ratios[n] for n, _ in case.layers if n in ratios}
    lr = float(case.optimizer.param_groups[0]["lr"])
    losses, per_layer = diagnosis.watched_losses, list(diagnosis.update_ratio.values())
    medians = [statistics.median(r[i] for r in per_layer) for i in range(min(map(len, per_layer), default=0))]
    peak = max((m for m in medians if math.isfinite(m)), default=0.0)
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]  # NaN weights give a NaN loss
    growth = losses[-1] / losses[0] if losses[0] > 0 else math.nan  # a ratio needs a loss > 0
    if not (bad or growth > LOSS_GROWTH_MAX or peak > UPDATE_RATIO_MAX):
        return None
    evidence = {"loss_growth": growth, "max_update_ratio": peak, "learning_rate": lr,
                "watched_steps": float(len(losses) - 1)}
    if bad:
        evidence["first_nonfinite_step"] = float(bad[0])
    layers = [n for n, r in diagnosis.update_ratio.items() if any(v > UPDATE_RATIO_MAX for v in r)]
    return Finding("exploding", layers or list(diagnosis.update_ratio), evidence,
                   f"the learning rate {lr:.3g} is too high for this model: lower it by 10x, to about "
                   f"{lr / 10:.3g} (and add warm-up), and/or clip the gradient norm (clip_grad_norm_); "
                   "then watch again")


def _forget_bias(module: nn.Module) -> float | None:
    """Mean total forget-gate bias ``b_ih + b_hh`` of an ``nn.LSTM``'s first layer (None: no LSTM
    or no bias)."""
    if not isinstance(module, nn.LSTM) or not module.bias:
        return None
    size = module.hidden_size
    total = module.bias_ih_l0.detach()[size:2 * size] + module.bias_hh_l0.detach()[size:2 * size]
    return float(total.double().mean())


def time_vanishing_rule(case: _Case) -> Finding | None:
    """A recurrent model whose gradient dies out before it reaches the early time steps:
    ``||dL/dx_1|| / ||dL/dx_T|| < TIME_RATIO_MIN`` (NaN: no gradient reaches the steps)."""
    recurrent = [(n, m) for n, m in case.model.named_modules() if isinstance(m, nn.RNNBase)]
    x = case.inputs
    if not recurrent or not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
        return None
    time_dim = 1 if recurrent[0][1].batch_first else 0
    if x.shape[time_dim] < 2:
        return None
    through = input_gradient_norms(case.model, case.loss_fn, x, case.targets, time_dim=time_dim)
    case.diagnosis.time_gradient = through.norms
    ratio = through.first_to_last
    if ratio >= TIME_RATIO_MIN:
        return None
    evidence = {"first_to_last": ratio, "decay_per_step": through.decay_per_step,
                "time_steps": float(len(through.norms))}
    biases = [b for b in (_forget_bias(m) for _, m in recurrent) if b is not None]
    if biases:
        evidence["forget_bias"] = biases[0]
    lstm = (f"the forget gate keeps sigmoid({biases[0]:.3g}) = {1 / (1 + math.exp(-biases[0])):.2g} of the "
            "cell state per step: initialise the forget-gate bias to 1-2 (Gers et al. 2000; "
            "Jozefowicz et al. 2015)" if biases else "use a gated cell (LSTM or GRU, forget-gate bias 1)")
    return Finding(
        "vanishing", [n for n, _ in recurrent], evidence,
        f"the gradient reaching the first of {len(through.norms)} time steps is {ratio:.2g} of the "
        f"last one's, so the early steps are never learned from: {lstm}; or truncate "
        "backpropagation through time to the span the gradient survives, or let the output "
        "attend to every step (attention) instead of reading the last state only")


def attention_rule(case: _Case) -> Finding | None:
    """Attention rows saturated on one key in more than ``ATTENTION_SATURATED_FRACTION`` of cases."""
    if not any(isinstance(m, nn.MultiheadAttention) for m in case.model.modules()):
        return None
    found = attention_entropy(case.model, case.inputs)
    fractions = dict(zip(found.layers, found.saturated_fraction))
    case.diagnosis.attention_saturated_fraction = fractions
    saturated = [n for n, v in fractions.items() if v > ATTENTION_SATURATED_FRACTION]
    if not saturated:
        return None
    return Finding(
        "saturation", saturated,
        {"max_attention_saturated_fraction": max(found.saturated_fraction),
         "min_attention_entropy_normalized": min(found.normalized)},
        "attention rows put > 0.99 of their weight on one key, where the softmax passes almost no "
        "gradient to the queries and keys (attention entropy collapse, Zhai et al. 2023): keep the "
        "query/key weights at Xavier scale, normalise queries and keys (QK-LayerNorm), use "
        "pre-norm layers, and lower the learning rate with warm-up")


RULES: tuple[Callable[[_Case], Finding | None], ...] = (
    nonfinite_rule, dead_relu_rule, saturation_rule, attention_rule, exploding_rule, vanishing_rule,
    time_vanishing_rule, learning_rate_rule,
)
"""The symptoms, in order. A non-finite finding stops the rest (every other number is then
meaningless); a later finding of a kind already found adds its evidence to the first (one
root cause, one finding: a too-high learning rate on an exploding init)."""


def _apply_rules(case: _Case) -> None:
    findings = case.diagnosis.findings
    for rule in RULES:
        found = rule(case)
        if found is None:
            continue
        same = next((f for f in findings if f.kind == found.kind), None)
        if same is not None:
            same.evidence.update(found.evidence)
        else:
            findings.append(found)
        if found.kind == "nonfinite":
            return


def _check_steppable(optimizer: torch.optim.Optimizer | None) -> None:
    """Watching calls ``optimizer.step()`` without a closure; refuse optimizers that need one."""
    try:
        closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    except (TypeError, ValueError):  # no signature to read: let the step itself tell
        return
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ValueError(
            f"{type(optimizer).__name__}.step() needs a closure (it re-evaluates the loss), which "
            "diagnose's watched steps do not pass; watch with steps=0, or with an optimizer such as "
            "SGD or Adam at the learning rate you would use"
        )


def _watch(model: nn.Module, loss_fn: Callable, inputs: object, targets: object,
           optimizer: torch.optim.Optimizer, steps: int) -> tuple[list[float], dict[str, list[float]]]:
    """Run ``steps`` optimizer steps on copies of ``model`` and ``optimizer`` (its state,
    e.g. momentum or Adam's moments, carried over); return the losses and, per layer, the
    update-to-data ratios. Stops at the first NaN/Inf loss."""
    memo: dict[int, object] = {}
    clone = copy.deepcopy(model, memo)  # memo maps id(original parameter) -> its copy
    if any(id(p) not in memo for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("the optimizer updates tensors that are not parameters of the model; "
                         "pass the optimizer built over model.parameters()")
    # Copied through the same memo, the optimizer's groups and state point at the clone's
    # parameters; no constructor call, so any optimizer class works.
    watched = copy.deepcopy(optimizer, memo)
    losses = []
    with GradientMonitor(clone, watched, activations=False, detail_every=1) as monitor:
        for _ in range(steps):
            watched.zero_grad(set_to_none=True)
            loss = loss_fn(clone(inputs), targets)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            monitor.record()
            watched.step()
        else:
            with torch.no_grad():
                losses.append(loss_fn(clone(inputs), targets).item())
    ratios: dict[str, list[float]] = {}
    for record in monitor.history:
        ratios.setdefault(record.layer, []).append(record.update_ratio)
    return losses, ratios


def diagnose(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 0,
    scaler: torch.amp.GradScaler | None = None,
) -> Diagnosis:
    """Run one forward and backward pass of ``loss_fn(model(inputs), targets)`` under a
    ``GradientMonitor`` and read vanishing, exploding, dead-ReLU, saturation and non-finite
    symptoms from it, each with the layers, the evidence and a fix.

    With ``optimizer`` and ``steps > 0``, also run ``steps`` training steps on the batch, on
    a deep copy of the model and of the optimizer (its ``param_groups`` and state pointing at
    the copy's parameters), and report a too-high learning rate as ``exploding`` when the loss
    becomes NaN/Inf, ends above ``LOSS_GROWTH_MAX`` times the first, or when at some step
    the median over weight layers of ``||W_after - W_before|| / ||W_after||`` is above
    ``UPDATE_RATIO_MAX`` (Karpathy, "A Recipe for Training Neural Networks", 2019: ~1e-3
    is healthy). Its evidence: ``loss_growth``, ``max_update_ratio`` (that median at its
    largest step), ``learning_rate`` (of the first param group), ``watched_steps``. The
    optimizer is deep-copied (any class); its ``step()`` must work without a closure (not LBFGS).

    The model's parameters, ``.grad``, buffers (BatchNorm's running statistics), train/eval
    flags, the optimizer's state and the global RNG are left as they were, also on a batch
    with NaN; no hook outlives the call. A model in training mode is diagnosed as it trains
    (Dropout active, BatchNorm on batch statistics). Works under ``torch.no_grad()`` and
    ``torch.inference_mode()``, and in float16/bfloat16 (statistics in float32 or wider).

    Cost: one forward and backward pass; with ``steps > 0``, a
    copy of the model and optimizer state, ``steps`` forward+backward passes and optimizer
    steps, and one forward. Use a representative batch (>= 64 examples): dead units are
    counted over the batch.

    Args:
        model: any ``nn.Module`` with trainable parameters, on CPU or GPU.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        inputs: the batch, e.g. [N, D] or [N, C, H, W].
        targets: what ``loss_fn`` compares the outputs with.
        optimizer: the optimizer you train ``model`` with; needed when ``steps > 0``.
        steps: how many training steps to watch (0: none, the one-pass diagnosis only;
            5-20 is enough to see a too-high learning rate).
        scaler: the ``GradScaler`` you train with under mixed precision: the backward runs
            on the loss times its scale, as in training (float16 gradients underflow or
            overflow as they do there), and every number reported is unscaled; an overflow
            is reported as ``nonfinite`` naming the scale. The scaler is not changed.

    Returns:
        A ``Diagnosis``; ``findings`` is empty for a healthy model.

    Raises:
        ValueError: the model has no trainable parameters (or is on the meta device); an
            empty batch; ``loss_fn`` returns no scalar tensor with a graph; ``steps`` is
            negative, or positive without an ``optimizer`` or with one whose ``step()``
            needs a closure; the optimizer updates other tensors.
    """
    trainable_parameters(model)  # raises when there is nothing to diagnose
    if steps < 0:
        raise ValueError(f"steps={steps} is negative; pass steps=0 (one pass only) or e.g. steps=10 "
                         "to also watch ten training steps")
    if steps > 0 and optimizer is None:
        raise ValueError(f"steps={steps} watches training steps, which needs the optimizer: pass "
                         "optimizer=your_optimizer (it is copied, not stepped), or steps=0")
    if optimizer is not None and steps == 0:
        warnings.warn("diagnose ignores the optimizer when steps=0; pass e.g. steps=10 to watch "
                      "ten training steps with it", stacklevel=2)
    batch_size(inputs, "diagnose")
    if steps > 0:
        _check_steppable(optimizer)
    with inspecting(model):  # .grad, buffers, flags and the RNG are restored on the way out
        inputs, targets = usable(inputs), usable(targets)
        # With a GradScaler the backward runs on the scaled loss, as in training (so float16
        # gradients underflow or overflow as they do there); the statistics are unscaled.
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        with GradientMonitor(model) as monitor:
            loss = checked_loss(loss_fn(model(inputs), targets), "diagnose")
            (loss * scale if scale != 1.0 else loss).backward()
            monitor._record(None, 1.0 / scale)
        diagnosis = _diagnosis(model, loss.item(), monitor)
        _apply_rules(_Case(model, loss_fn, inputs, targets, optimizer, steps, diagnosis.loss, monitor,
                           diagnosis, _weight_layers(model), scale))
    return diagnosis


def _diagnosis(model: nn.Module, loss: float, monitor: GradientMonitor) -> Diagnosis:
    """The per-layer numbers of the monitored step, before any rule has looked at them."""
    layers = _weight_layers(model)
    rms = {r.layer: r.grad_norm / math.sqrt(r.numel) for r in monitor.history}
    stds = {a.layer: a.std for a in monitor.activations}
    return Diagnosis(
        [], loss,
        {n: rms[n] for n, _ in layers if n in rms},
        {n: stds[n] for n, _ in layers if n in stds},
        {a.layer: a.dead_fraction for a in monitor.activations if a.dead_fraction is not None},
        {a.layer: a.saturated_fraction for a in monitor.activations if a.saturated_fraction is not None},
    )
