"""Plausible wrong answers for solutions/12_loss_scaling.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
The scaler is one class in one cell, so each wrong answer is the solution's class with one
method body changed (``_patched`` fails loudly if the solution no longer holds the text).
CORRECT_ANSWERS, in the same form, are right answers written differently: each must pass
every check.
"""

patched = globals()["patched"]  # (cell id, old, new) -> {cell id: the solution cell with old,
# found exactly once, replaced by new}; tests/test_exercises.py gives it, for this file's solution


WRONG_ANSWERS = [
    (
        "never skipping: step always calls optimizer.step(), even with an inf/NaN gradient",
        patched("solution-scaler",
                 "        if self.found_inf:\n            return False\n        optimizer.step()",
                 "        optimizer.step()"),
    ),
    (
        "growing every good step, ignoring growth_interval",
        patched("solution-scaler",
                 "            if self.growth_tracker == self.growth_interval:",
                 "            if True:"),
    ),
    (
        "clipping before unscaling: clip_grad_norm_ sees gradients still multiplied by the scale",
        patched("solution-clip-and-step",
                 "    scaler.unscale_(params)  # clip_grad_norm_ must see the true gradient\n",
                 ""),
    ),
    (
        "looking for inf only (torch.isinf), so a NaN gradient is stepped with",
        patched("solution-scaler",
                 "found = found or not bool(torch.isfinite(p.grad).all())",
                 "found = found or bool(torch.isinf(p.grad).any())"),
    ),
    (
        "step unscales again after a manual unscale_ (the gradient is divided twice)",
        patched("solution-scaler",
                 "        if not self.unscaled:\n            self.unscale_(",
                 "        self.unscaled = False\n        if True:\n            self.unscale_("),
    ),
    (
        "not resetting the count of good steps after a back-off",
        patched("solution-scaler",
                 "            self.growth_tracker = 0\n        else:",
                 "        else:"),
    ),
    (
        "update that does not start a new iteration: later steps think they are unscaled already",
        patched("solution-scaler",
                 "        self.unscaled = False\n        self.found_inf = False\n",
                 "        self.found_inf = False\n"),
    ),
    (
        "clip_and_step that never calls scaler.update(): the scale never adapts",
        patched("solution-clip-and-step", "    scaler.update()\n", ""),
    ),
    (
        "clip_and_step that returns clip_grad_norm_'s tensor, not a Python float",
        patched("solution-clip-and-step", "    return float(norm)", "    return norm"),
    ),
    (
        "update that keeps found_inf: the flag of a skipped step outlives its iteration",
        patched("solution-scaler",
                 "        self.unscaled = False\n        self.found_inf = False\n",
                 "        self.unscaled = False\n"),
    ),
]

CORRECT_ANSWERS = [
    (
        "div_ instead of mul_ by the inverse, any() over isinf | isnan, norm.item() for the float",
        {
            **patched("solution-scaler",
                       "                p.grad.mul_(inverse)\n"
                       "                found = found or not bool(torch.isfinite(p.grad).all())\n",
                       "                p.grad.div_(self.current_scale)\n"
                       "                found |= bool((torch.isinf(p.grad) | torch.isnan(p.grad)).any())\n"),
            **patched("solution-clip-and-step", "    return float(norm)", "    return norm.item()"),
        },
    ),
]
