"""The gradient clinic: broken training set-ups ("patients") to examine and to treat.

    case = draw_case("dead_relu", seed=7)      # plain data: family, seed, sizes, broken layer
    patient = admit(case)                      # what the learner gets: no family on it
    model = patient.new_model()
    optimizer = patient.new_optimizer(model)
    with GradientMonitor(model, optimizer) as monitor:
        losses = patient.train(model, optimizer, steps=20, monitor=monitor)
    verdict = verify(case, {"bias": 0.0}, seeds=[11, 12])   # the grader's side

A ``Case`` is plain data and rebuilds the same patient on any machine (the grader's process
and the learner's kernel). A ``Patient`` is a training script: data, a model builder, an
optimizer builder and a loop, with exactly one thing broken, the one its family names
(``FAMILIES``). It carries its settings, as a script carries its code, but not its family:
the learner finds that by measuring, with ``GradientMonitor``, ``diagnose`` and the plots.

A treatment is a plain dict of the minimal change (``FIXES``: ``{"lr": 0.1}``,
``{"clip": 1.0}``, ``{"zero_grad": True}`` ...). ``verify`` applies it, trains the treated
patient on fresh seeds, and accepts it when the final loss reaches the task's target on most
seeds *and* the change touches only what the family's illness allows (a learning-rate case is
not cured by swapping the architecture).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import first_token_task, spirals
from .models import ACTIVATIONS, INITS, MLP, RNNClassifier


@dataclass(frozen=True)
class Family:
    """One illness: what is broken, what the tools show, and which changes treat it."""

    broken: str  # what is wrong in the script
    sign: str  # what the course's tools show (the feedback of a misread case)
    allowed: frozenset[str]  # FIXES keys that treat the cause


FAMILIES: dict[str, Family] = {
    "vanishing": Family(
        "a sigmoid MLP too deep for its activation",
        "diagnose reports vanishing: the input-end gradient is a tiny fraction of the output end's",
        frozenset({"activation", "init", "residual", "norm"})),
    "dead_relu": Family(
        "a hidden layer's biases set so negative that its ReLUs never fire",
        "diagnose reports dead_relu: every unit of a ReLU layer outputs 0 for the whole batch",
        frozenset({"bias", "activation"})),
    "exploding_recurrence": Family(
        "a recurrent network whose recurrent weights have spectral radius > 1, trained without clipping",
        "a recurrent model whose global gradient norm jumps far above its running median in training",
        frozenset({"clip"})),
    "lr_too_high": Family(
        "a learning rate about 100x too high",
        "one pass looks healthy, but diagnose(optimizer=..., steps=10) reports exploding (loss growth)",
        frozenset({"lr"})),
    "no_zero_grad": Family(
        "a loop that never calls optimizer.zero_grad(), so .grad accumulates",
        "the recorded .grad norm grows step after step, far above a fresh gradient's norm",
        frozenset({"zero_grad"})),
    "detached": Family(
        "a .detach() in forward that cuts the gradient to the layers below it",
        "layers with requires_grad=True that never get a gradient: missing from monitor.history",
        frozenset({"remove_detach"})),
    "frozen": Family(
        "layers left frozen (requires_grad=False) by mistake",
        "GradientMonitor counts frozen parameters (monitor.frozen_parameters > 0)",
        frozenset({"unfreeze"})),
    "nan_data": Family(
        "a few rows of NaN in the training inputs",
        "diagnose reports nonfinite with nonfinite_inputs > 0 from the very first step",
        frozenset({"drop_nonfinite"})),
    "init_scale": Family(
        "weights initialised with std 1 whatever the fan-in",
        "diagnose reports exploding at step 0: the forward signal grows layer by layer (Kaiming gain >> 1)",
        frozenset({"init"})),
    "unscaled_inputs": Family(
        "raw inputs in large units (x100) fed to a tanh network",
        "diagnose reports saturation with an input std far above 1",
        frozenset({"standardize_inputs"})),
}

FIXES: dict[str, str] = {
    "lr": "a new learning rate (a positive number)",
    "clip": "clip the global gradient norm at this value before each step (a positive number)",
    "zero_grad": "True: call optimizer.zero_grad() before each backward",
    "remove_detach": "True: remove the .detach() from forward",
    "unfreeze": "True: set requires_grad=True on every parameter",
    "drop_nonfinite": "True: drop the training rows with a NaN/Inf input",
    "standardize_inputs": "True: standardise each input feature to mean 0, std 1",
    "init": f"a weight initialisation, one of {list(INITS)}",
    "bias": "a constant for every hidden bias (a number)",
    "activation": f"an activation, one of {sorted(ACTIVATIONS)}",
    "residual": "True: skip connections around the hidden layers",
    "norm": "'layer' or 'batch': normalisation before each activation",
}

TARGETS = {"spirals": 0.35, "first_token": 0.25}
"""A treated patient is cured when its final training loss (cross-entropy, full data) is at
or below this. Chance level: log 3 = 1.10 (spirals, 3 classes), log 2 = 0.69 (first token)."""


@dataclass(frozen=True)
class Case:
    """Plain data that rebuilds one patient. ``layer`` and ``severity`` mean what the family
    needs: the broken hidden layer, the learning-rate factor, the bias, the input scale..."""

    family: str
    seed: int
    depth: int = 4
    width: int = 32
    layer: int = 0
    severity: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; choose one of {list(FAMILIES)}")


def draw_case(family: str, seed: int) -> Case:
    """A case of ``family`` with sizes, broken layer and severity drawn from ``seed``."""
    rng = random.Random(f"{family}:{seed}")
    depth = {"vanishing": [6, 7], "init_scale": [6, 7]}.get(family, [3, 4, 5])
    depth = rng.choice(depth)
    width = rng.choice([24, 32, 48])
    layer, severity = 0, 0.0
    if family == "dead_relu":
        layer, severity = rng.randrange(depth - 1), rng.uniform(-5.0, -3.0)
    elif family == "lr_too_high":
        severity = rng.uniform(80.0, 125.0)  # lr 4-6.25; good: 0.03-0.1 (0.3 fails 2 of 10 seeds)
    elif family in ("detached", "frozen"):
        layer = depth - 1  # only the output layer trains (one more trained layer fits the spirals)
    elif family == "nan_data":
        severity = float(rng.randint(1, 8))
    elif family == "unscaled_inputs":
        severity = rng.uniform(50.0, 200.0)
    elif family == "exploding_recurrence":
        depth, width, severity = rng.choice([16, 20]), 32, rng.uniform(1.9, 2.1)  # depth: sequence length
    return Case(family, seed, depth, width, layer, severity)


def settings(case: Case) -> dict:
    """The complete training script of ``case``, as plain values, with its illness in it."""
    s = {"task": "spirals", "n": 256, "depth": case.depth, "width": case.width, "activation": "relu",
         "init": "kaiming", "bias": None, "bias_layer": None, "residual": False, "norm": None,
         "lr": 0.05, "momentum": 0.9, "steps": 150, "batch": None, "clip": None, "zero_grad": True,
         "cut": None, "frozen_below": None, "nan_rows": 0, "drop_nonfinite": False,
         "input_scale": 1.0, "standardize_inputs": False, "recurrent_gain": None}
    family = case.family
    if family == "vanishing":
        s.update(activation="sigmoid", init="default", lr=0.03)  # deep ReLU nets, once cured, need <= 0.03
    elif family == "dead_relu":
        s.update(bias=case.severity, bias_layer=case.layer)
    elif family == "exploding_recurrence":
        s.update(task="first_token", n=512, lr=0.5, momentum=0.0, batch=32, init="default",
                 recurrent_gain=case.severity)
    elif family == "lr_too_high":
        s.update(lr=0.05 * case.severity)
    elif family == "no_zero_grad":
        s.update(zero_grad=False)
    elif family == "detached":
        s.update(cut=case.layer)
    elif family == "frozen":
        s.update(frozen_below=case.layer)
    elif family == "nan_data":
        s.update(nan_rows=int(case.severity))
    elif family == "init_scale":
        s.update(init="unit_normal", lr=0.03)  # shallower or faster, std-1 nets train half the time
    elif family == "unscaled_inputs":
        s.update(activation="tanh", init="xavier", input_scale=case.severity)
    return s


class PatientMLP(MLP):
    """``MLP`` whose forward may ``.detach()`` the input of hidden layer ``cut`` (``depth - 1``:
    the output layer's input), so that no gradient reaches the layers below it."""

    def __init__(self, *args, cut: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, classes]
        for i, layer in enumerate(self.hidden):
            x = x.detach() if i == self._cut else x
            x = layer(x)
        x = x.detach() if self._cut == len(self.hidden) else x
        return self.output(x)


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Every patient's loss: cross-entropy, ``[N, C]`` logits and ``[N]`` labels."""
    return F.cross_entropy(outputs, targets)


class Patient:
    """A training script with one illness. Read ``inputs``, ``targets``, ``loss_fn``, ``steps``
    and ``target``; build with ``new_model()`` / ``new_optimizer(model)``; run its loop with
    ``train``; try a treatment with ``treated(fix)`` and ``fit()``."""

    def __init__(self, script: dict, seed: int) -> None:
        self._script, self.seed = dict(script), seed
        s = self._script
        if s["task"] == "spirals":
            inputs, targets = spirals(n=s["n"], seed=seed)
        else:
            inputs, targets = first_token_task(n=s["n"], length=s["depth"], seed=seed)
        inputs = inputs * s["input_scale"]
        if s["nan_rows"]:
            rows = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[: s["nan_rows"]]
            inputs[rows] = math.nan
        if s["drop_nonfinite"]:
            keep = torch.isfinite(inputs.flatten(1)).all(1)
            inputs, targets = inputs[keep], targets[keep]
        if s["standardize_inputs"]:
            inputs = (inputs - inputs.mean(0)) / inputs.std(0).clamp_min(1e-8)
        self.inputs, self.targets = inputs, targets
        self.loss_fn = loss_fn
        self.steps = s["steps"]
        self.target = TARGETS[s["task"]]

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model (seeded by ``seed``, default the patient's own)."""
        s = self._script
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed if seed is None else seed)
            if s["task"] == "first_token":
                model = RNNClassifier(self.inputs.shape[-1], s["width"], 2,
                                      recurrent_gain=s["recurrent_gain"])
            else:
                init = "default" if s["init"] == "unit_normal" else s["init"]
                model = PatientMLP(2, 3, depth=s["depth"], width=s["width"], activation=s["activation"],
                                   init=init, norm=s["norm"], residual=s["residual"], cut=s["cut"])
                layers = [layer for _, layer in model.linear_layers()]  # input to output
                with torch.no_grad():
                    if s["init"] == "unit_normal":
                        for layer in layers:
                            nn.init.normal_(layer.weight, 0.0, 1.0)
                            layer.bias.zero_()
                    for i, hidden in enumerate(model.hidden):
                        if s["bias"] is not None and s["bias_layer"] in (None, i):
                            layers[i].bias.fill_(s["bias"])
                        if s["frozen_below"] is not None and i < s["frozen_below"]:
                            hidden.requires_grad_(False)
        return model

    def new_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The script's optimizer over ``model.parameters()`` (SGD)."""
        return torch.optim.SGD(model.parameters(), lr=self._script["lr"], momentum=self._script["momentum"])

    def train(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int | None = None,
              monitor: object | None = None) -> list[float]:
        """Run the script's loop for ``steps`` (default ``self.steps``); returns the loss of
        each step. With ``monitor`` (a ``GradientMonitor`` on ``model``), calls
        ``monitor.record(step)`` after each backward. Stops after a NaN/Inf loss."""
        s = self._script
        batches = torch.Generator().manual_seed(self.seed)
        losses = []
        for step in range(self.steps if steps is None else steps):
            if s["batch"]:
                index = torch.randint(0, len(self.inputs), (s["batch"],), generator=batches)
                inputs, targets = self.inputs[index], self.targets[index]
            else:
                inputs, targets = self.inputs, self.targets
            if s["zero_grad"]:
                optimizer.zero_grad()
            loss = self.loss_fn(model(inputs), targets)
            loss.backward()
            if monitor is not None:
                monitor.record(step)
            if s["clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
            optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
        return losses

    def treated(self, fix: dict) -> Patient:
        """This patient with ``fix`` (a dict of ``FIXES`` keys) applied to its script."""
        return Patient(apply_fix(self._script, fix), self.seed)

    def fit(self, seed: int | None = None) -> float:
        """Train a fresh model for ``self.steps`` steps and return how far it got: with
        full-batch training (the spirals), the lowest full-data loss of the last 10 steps (a
        run that spikes at the very end still counts as trained); with mini-batches, the
        full-data loss after the last step. NaN if it is not finite. Cured when at or below
        ``self.target``."""
        model = self.new_model(seed)
        losses = self.train(model, self.new_optimizer(model))
        if self._script["batch"] is None:
            loss = min(losses[-10:]) if all(map(math.isfinite, losses[-10:])) else math.nan
        else:
            with torch.no_grad():
                loss = self.loss_fn(model(self.inputs), self.targets).item()
        return loss if math.isfinite(loss) else math.nan


def admit(case: Case) -> Patient:
    """The patient of ``case``, as the learner receives it."""
    return Patient(settings(case), case.seed)


def apply_fix(script: dict, fix: object) -> dict:
    """``script`` with ``fix`` applied.

    Raises:
        ValueError: ``fix`` is not a dict of known keys with valid values (the message says
            which key and what it takes).
    """
    if not isinstance(fix, dict) or not fix:
        raise ValueError(f"a treatment is a non-empty dict such as {{'lr': 0.1}}, got {fix!r}; "
                         f"keys: {list(FIXES)}")
    s = dict(script)
    for key, value in fix.items():
        if key not in FIXES:
            raise ValueError(f"unknown treatment {key!r}; use one of {list(FIXES)}")
        ok = True
        if key in ("lr", "clip", "bias"):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (key == "bias" or value > 0)
            s[key] = float(value) if ok else None
            if key == "bias":
                s["bias_layer"] = None
        elif key in ("zero_grad", "remove_detach", "unfreeze", "drop_nonfinite", "standardize_inputs",
                     "residual"):
            ok = value is True
            undo = {"remove_detach": {"cut": None}, "unfreeze": {"frozen_below": None}}
            s.update(undo.get(key, {key: True}))
        elif key == "init":
            ok = value in INITS
            s["init"] = value
        elif key == "activation":
            ok = value in ACTIVATIONS
            s["activation"] = value
        elif key == "norm":
            ok = value in ("layer", "batch")
            s["norm"] = value
        if not ok:
            raise ValueError(f"treatment {key!r}: {value!r} is not valid; it takes {FIXES[key]}")
    return s


def misread(case: Case, said: object) -> str:
    """Feedback for an examination of ``case`` that answered ``said`` ("" when it is right):
    what the patient had, what the course's tools show for that illness, and what
    ``diagnose`` (one pass and ten watched steps) reports on this very patient."""
    if isinstance(said, str) and said == case.family:
        return ""
    if not isinstance(said, str) or said not in FAMILIES:
        return f"examine returned {said!r}; return one of the family names {list(FAMILIES)}"
    from .diagnose import diagnose  # diagnose builds on the monitor; the clinic only needs it here

    patient = admit(case)
    model = patient.new_model()
    kinds = diagnose(model, patient.loss_fn, patient.inputs, patient.targets,
                     optimizer=patient.new_optimizer(model), steps=10).kinds
    family = FAMILIES[case.family]
    return (f"this patient had {case.family!r} ({family.broken}), you said {said!r}. What the tools "
            f"show for it: {family.sign}. On this patient diagnose(..., steps=10) reports "
            f"{kinds or 'nothing'}")


@dataclass
class Verdict:
    """What ``verify`` found. ``cured``: the treated patient reached ``target`` on most seeds;
    ``minimal``: the fix touched only what the family allows; ``losses``: final loss per seed."""

    cured: bool
    minimal: bool
    losses: list[float]
    target: float
    message: str = ""

    @property
    def accepted(self) -> bool:
        return self.cured and self.minimal


def verify(case: Case, fix: object, seeds: list[int]) -> Verdict:
    """Check a treatment: ``fix`` must change only what ``case``'s family allows, and the
    treated patient, trained on each of ``seeds`` (fresh data and weights, the same sizes),
    must end at or below the task's target loss on a majority of them. Small networks
    trained with SGD diverge now and then (about 1 run in 50 of the cured ones), so a grader
    asks for 3 of 5 seeds: a correct treatment then fails about once in 10,000 patients,
    where 2 of 3 failed about once in 1,000 (and a class of ten families, once in 100).

    Cost: ``len(seeds)`` trainings of ``steps`` steps (0.05-0.3 s each on one CPU core), none
    when the fix is not minimal.
    """
    family = FAMILIES[case.family]
    try:
        script = apply_fix(settings(case), fix)
    except ValueError as e:
        return Verdict(False, False, [], math.nan, str(e))
    target = TARGETS[script["task"]]
    extra = sorted(set(fix) - family.allowed)
    if extra:
        return Verdict(False, False, [], target,
                       f"{fix} changes {extra}, which does not treat this patient's illness "
                       f"({case.family}: {family.broken}); a minimal fix changes only "
                       f"{sorted(family.allowed)}")
    losses = [Patient(script, seed).fit() for seed in seeds]
    cured = sum(loss <= target for loss in losses) > len(seeds) // 2  # NaN is never <= target
    shown = ", ".join(f"{v:.3g}" for v in losses)
    verb = "cured it" if cured else "did not cure it"
    return Verdict(cured, True, losses, target,
                   f"{fix} {verb}: final loss {shown} on fresh seeds (target <= {target:g})")
