"""Plausible wrong answers for solutions/04_clip_by_norm.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
"""

WRONG_ANSWERS = [
    (
        "global norm as the sum of the per-tensor norms (not one long vector)",
        {"solution-global-norm": (
            "def global_grad_norm(grads):\n"
            "    return torch.stack([g.norm() for g in grads]).sum()"
        )},
    ),
    (
        "clipping each tensor by its own norm instead of the joint norm",
        {"solution-clip-by-norm": (
            "def clip_by_norm(grads, max_norm):\n"
            "    total = global_grad_norm(grads)\n"
            "    for g in grads:\n"
            "        g.mul_(torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0))\n"
            "    return total"
        )},
    ),
    (
        "rescaling to max_norm always, so short gradients are lengthened",
        {"solution-clip-by-norm": (
            "def clip_by_norm(grads, max_norm):\n"
            "    total = global_grad_norm(grads)\n"
            "    for g in grads:\n"
            "        g.mul_(max_norm / total)\n"
            "    return total"
        )},
    ),
    (
        "returning the norm after clipping instead of before",
        {"solution-clip-by-norm": (
            "def clip_by_norm(grads, max_norm):\n"
            "    total = global_grad_norm(grads)\n"
            "    for g in grads:\n"
            "        g.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))\n"
            "    return global_grad_norm(grads)"
        )},
    ),
    (
        "percentile by nearest rank, without interpolation",
        {"solution-threshold": (
            "def threshold_from_history(norms, percentile):\n"
            "    s = torch.sort(norms).values\n"
            "    return s[int(round(percentile / 100 * (len(s) - 1)))].item()"
        )},
    ),
    (
        "fraction of norms at or above the threshold (>= instead of >)",
        {"solution-fraction": (
            "def fraction_clipped(norms, threshold):\n"
            "    return (norms >= threshold).double().mean().item()"
        )},
    ),
    (
        "percentile that sorts the caller's history in place",
        {"solution-threshold": (
            "def threshold_from_history(norms, percentile):\n"
            "    norms.copy_(torch.sort(norms).values)\n"
            "    r = percentile / 100 * (len(norms) - 1)\n"
            "    lo = int(np.floor(r))\n"
            "    hi = min(lo + 1, len(norms) - 1)\n"
            "    return (norms[lo] + (r - lo) * (norms[hi] - norms[lo])).item()"
        )},
    ),
    (
        "percentile that returns a 0-d tensor where a float is asked",
        {"solution-threshold": (
            "def threshold_from_history(norms, percentile):\n"
            "    s = torch.sort(norms).values\n"
            "    r = percentile / 100 * (len(s) - 1)\n"
            "    lo = int(np.floor(r))\n"
            "    hi = min(lo + 1, len(s) - 1)\n"
            "    return s[lo] + (r - lo) * (s[hi] - s[lo])"
        )},
    ),
]
