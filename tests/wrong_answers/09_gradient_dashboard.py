"""Plausible wrong answers for solutions/09_gradient_dashboard.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
"""

WRONG_ANSWERS = [
    (
        "heat-map table that fills missing records with 0 instead of NaN (a silent layer looks dead)",
        {"solution-norm-matrix": (
            "def norm_matrix(history):\n"
            "    layers = list(dict.fromkeys(r.layer for r in history))\n"
            "    steps = sorted({r.step for r in history})\n"
            "    values = torch.zeros(len(layers), len(steps), dtype=torch.float64)\n"
            "    for r in history:\n"
            "        values[layers.index(r.layer), steps.index(r.step)] = r.grad_norm\n"
            "    return layers, steps, values"
        )},
    ),
    (
        "global norm as the sum of the layer norms (not the root of the sum of squares)",
        {"solution-global-norms": (
            "def global_norms(history):\n"
            "    totals = {}\n"
            "    for r in history:\n"
            "        totals[r.step] = totals.get(r.step, 0.0) + r.grad_norm\n"
            "    steps = sorted(totals)\n"
            "    return steps, torch.tensor([totals[s] for s in steps], dtype=torch.float64)"
        )},
    ),
    (
        "spike alarm against the mean of the recent norms (an earlier spike hides the next)",
        {"solution-find-spikes": (
            "def find_spikes(norms, window=20, factor=10.0):\n"
            "    values = [float(v) for v in norms]\n"
            "    spikes = []\n"
            "    for i, value in enumerate(values):\n"
            "        recent = [v for v in values[max(0, i - window):i] if math.isfinite(v)]\n"
            "        mean = sum(recent) / len(recent) if recent else math.inf\n"
            "        if not math.isfinite(value) or value > factor * mean:\n"
            "            spikes.append(i)\n"
            "    return spikes"
        )},
    ),
    (
        "spike alarm whose window includes the current value",
        {"solution-find-spikes": (
            "def find_spikes(norms, window=20, factor=10.0):\n"
            "    values = [float(v) for v in norms]\n"
            "    spikes = []\n"
            "    for i, value in enumerate(values):\n"
            "        recent = [v for v in values[max(0, i - window):i + 1] if math.isfinite(v)]\n"
            "        level = statistics.median(recent) if recent else math.inf\n"
            "        if not math.isfinite(value) or value > factor * level:\n"
            "            spikes.append(i)\n"
            "    return spikes"
        )},
    ),
    (
        "alerts that ignore the diagnosis",
        {"solution-alerts": (
            "def alerts(step, records, spike, diagnosis=None):\n"
            "    found = []\n"
            "    broken = [r for r in records if r.nonfinite > 0]\n"
            "    if broken:\n"
            "        found.append({'step': step, 'kind': 'nonfinite', 'layers': [r.layer for r in broken],\n"
            "                      'message': 'NaN/Inf gradients'})\n"
            "    if spike:\n"
            "        finite = [r for r in records if math.isfinite(r.grad_norm)]\n"
            "        top = max(finite, key=lambda r: r.grad_norm)\n"
            "        found.append({'step': step, 'kind': 'spike', 'layers': [top.layer],\n"
            "                      'message': 'spike'})\n"
            "    return found"
        )},
    ),
]
