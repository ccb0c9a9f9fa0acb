"""Plausible wrong answers for solutions/09_gradient_dashboard.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
CORRECT_ANSWERS, in the same form, are right answers written differently (loops, vectorised
with torch): each must pass every check.
"""

patched = globals()["patched"]  # (cell id, old, new) -> {cell id: the solution cell with old,
# found exactly once, replaced by new}; tests/test_exercises.py gives it, for this file's solution


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
    (
        "heat-map table that sorts the caller's history in place (history.sort(...))",
        {"solution-norm-matrix": (
            "def norm_matrix(history):\n"
            "    layers = list(dict.fromkeys(r.layer for r in history))\n"
            "    history.sort(key=lambda r: r.step)\n"
            "    steps = list(dict.fromkeys(r.step for r in history))\n"
            "    values = torch.full((len(layers), len(steps)), math.nan, dtype=torch.float64)\n"
            "    for r in history:\n"
            "        values[layers.index(r.layer), steps.index(r.step)] = r.grad_norm\n"
            "    return layers, steps, values"
        )},
    ),
    (
        "heat-map table that copies a tuple into a list but sorts a caller's list in place",
        {"solution-norm-matrix": (
            "def norm_matrix(history):\n"
            "    if not isinstance(history, list):\n"
            "        history = list(history)\n"
            "    layers = list(dict.fromkeys(r.layer for r in history))\n"
            "    history.sort(key=lambda r: r.step)\n"
            "    steps = list(dict.fromkeys(r.step for r in history))\n"
            "    values = torch.full((len(layers), len(steps)), math.nan, dtype=torch.float64)\n"
            "    for r in history:\n"
            "        values[layers.index(r.layer), steps.index(r.step)] = r.grad_norm\n"
            "    return layers, steps, values"
        )},
    ),
    (
        "heat-map table that turns an Inf norm into NaN (a blown-up layer looks silent)",
        patched("solution-norm-matrix", "] = r.grad_norm",
                 "] = r.grad_norm if math.isfinite(r.grad_norm) else math.nan"),
    ),
    (
        "heat-map table built row by row with torch.stack: breaks on an empty history",
        {"solution-norm-matrix": (
            "def norm_matrix(history):\n"
            "    layers = list(dict.fromkeys(r.layer for r in history))\n"
            "    steps = sorted({r.step for r in history})\n"
            "    cell = {(r.layer, r.step): r.grad_norm for r in history}\n"
            "    rows = [torch.tensor([cell.get((name, s), math.nan) for s in steps], dtype=torch.float64)\n"
            "            for name in layers]\n"
            "    values = torch.stack(rows)\n"
            "    return layers, steps, values"
        )},
    ),
    (
        "global norms with torch.stack: breaks on an empty history",
        {"solution-global-norms": (
            "def global_norms(history):\n"
            "    totals = {}\n"
            "    for r in history:\n"
            "        totals[r.step] = totals.get(r.step, 0.0) + r.grad_norm**2\n"
            "    steps = sorted(totals)\n"
            "    norms = [torch.tensor(totals[s], dtype=torch.float64) for s in steps]\n"
            "    return steps, torch.stack(norms).sqrt()"
        )},
    ),
    (
        "global norms whose steps come back as a tensor's items (floats, not ints)",
        patched("solution-global-norms", "    steps = sorted(totals)\n",
                 "    steps = torch.tensor(sorted(totals), dtype=torch.float64).tolist()\n"),
    ),
    (
        "spike alarm with >= : a value equal to factor x median (and every zero after zeros) is a spike",
        patched("solution-find-spikes", "value > factor", "value >= factor"),
    ),
    (
        "spike alarm that reads norms[0] first: breaks on an empty tensor",
        patched("solution-find-spikes", "    values = [float(v) for v in norms]\n",
                 "    values = [float(v) for v in norms]\n    first_finite = math.isfinite(values[0])\n"),
    ),
    (
        "spike alarm returning a tensor of positions",
        patched("solution-find-spikes", "    return spikes",
                 "    return torch.tensor(spikes, dtype=torch.long)"),
    ),
    (
        "alerts that count nonfinite entries only above one (nonfinite > 1)",
        patched("solution-alerts", "r.nonfinite > 0]", "r.nonfinite > 1]"),
    ),
    (
        "alerts that sort the caller's records by grad_norm in place to find the top layer",
        patched("solution-alerts",
                 "        finite = [r for r in records if math.isfinite(r.grad_norm)]\n",
                 "        records.sort(key=lambda r: -r.grad_norm if math.isfinite(r.grad_norm)\n"
                 "                     else math.inf)\n"
                 "        finite = [r for r in records if math.isfinite(r.grad_norm)]\n"),
    ),
    (
        "alerts whose spike names the last of several tied layers (>= in a running maximum)",
        patched("solution-alerts",
                 "        top = max(finite, key=lambda r: r.grad_norm) if finite else None\n",
                 "        top = None\n"
                 "        for r in finite:\n"
                 "            if top is None or r.grad_norm >= top.grad_norm:\n"
                 "                top = r\n"),
    ),
    (
        "alerts that crash when no layer is finite (max of an empty list)",
        patched("solution-alerts", "max(finite, key=lambda r: r.grad_norm) if finite else None",
                 "max(finite, key=lambda r: r.grad_norm)"),
    ),
    (
        "dashboard frame that lets an unrecorded step raise KeyError (not a ValueError naming the steps)",
        patched("solution-dashboard",
                 "        if step not in steps:\n",
                 "        if False:\n"),
    ),
    (
        "dashboard update that compares the first spike, not the last, with this step",
        patched("solution-dashboard", "spikes[-1] == len(steps) - 1", "spikes[0] == len(steps) - 1"),
    ),
]

CORRECT_ANSWERS = [
    (
        "plain Python loops and lists (math.hypot for the global norm, a hand-made median)",
        {
            "solution-norm-matrix": (
                "def norm_matrix(history):\n"
                "    layers, steps = [], []\n"
                "    for r in history:\n"
                "        if r.layer not in layers:\n"
                "            layers.append(r.layer)\n"
                "        if r.step not in steps:\n"
                "            steps.append(r.step)\n"
                "    steps = sorted(steps)\n"
                "    rows = [[math.nan] * len(steps) for _ in layers]\n"
                "    for r in history:\n"
                "        rows[layers.index(r.layer)][steps.index(r.step)] = r.grad_norm\n"
                "    values = torch.tensor(rows, dtype=torch.float64)\n"
                "    return layers, steps, values.reshape(len(layers), len(steps))"
            ),
            "solution-global-norms": (
                "def global_norms(history):\n"
                "    steps = sorted({r.step for r in history})\n"
                "    norms = [math.hypot(*[r.grad_norm for r in history if r.step == s]) for s in steps]\n"
                "    return steps, torch.tensor(norms, dtype=torch.float64)"
            ),
            "solution-find-spikes": (
                "def find_spikes(norms, window=20, factor=10.0):\n"
                "    spikes = []\n"
                "    for i in range(len(norms)):\n"
                "        value = norms[i].item()\n"
                "        if value != value or value in (math.inf, -math.inf):\n"
                "            spikes.append(i)\n"
                "            continue\n"
                "        recent = sorted(v.item() for v in norms[max(0, i - window):i]\n"
                "                        if torch.isfinite(v))\n"
                "        if not recent:\n"
                "            continue\n"
                "        half = len(recent) // 2\n"
                "        middle = recent[half - 1 : half + 1] if len(recent) % 2 == 0 else [recent[half]]\n"
                "        median = sum(middle) / len(middle)\n"
                "        if value > factor * median:\n"
                "            spikes.append(i)\n"
                "    return spikes"
            ),
            "solution-alerts": (
                "def alerts(step, records, spike, diagnosis=None):\n"
                "    out = []\n"
                "    bad = [r.layer for r in records if r.nonfinite]\n"
                "    if bad:\n"
                "        out.append(dict(step=step, kind='nonfinite', layers=bad,\n"
                "                        message='NaN or Inf gradients'))\n"
                "    if spike:\n"
                "        top, best = [], -math.inf\n"
                "        for r in records:\n"
                "            if math.isfinite(r.grad_norm) and r.grad_norm > best:\n"
                "                top, best = [r.layer], r.grad_norm\n"
                "        out.append(dict(step=step, kind='spike', layers=top, message='gradient spike'))\n"
                "    if diagnosis is not None:\n"
                "        for f in diagnosis.findings:\n"
                "            out.append(dict(step=step, kind=f.kind, layers=list(f.layers), message=f.fix))\n"
                "    return out"
            ),
        },
    ),
    (
        "vectorised with torch (index_put_, index_add_)",
        {
            "solution-norm-matrix": (
                "def norm_matrix(history):\n"
                "    layers = list(dict.fromkeys(r.layer for r in history))\n"
                "    steps = sorted({r.step for r in history})\n"
                "    rows = torch.tensor([layers.index(r.layer) for r in history], dtype=torch.long)\n"
                "    cols = torch.tensor([steps.index(r.step) for r in history], dtype=torch.long)\n"
                "    values = torch.full((len(layers), len(steps)), math.nan, dtype=torch.float64)\n"
                "    norms = torch.tensor([r.grad_norm for r in history], dtype=torch.float64)\n"
                "    values.index_put_((rows, cols), norms)\n"
                "    return layers, steps, values"
            ),
            "solution-global-norms": (
                "def global_norms(history):\n"
                "    steps = sorted({r.step for r in history})\n"
                "    where = torch.tensor([steps.index(r.step) for r in history], dtype=torch.long)\n"
                "    squares = torch.tensor([r.grad_norm for r in history], dtype=torch.float64) ** 2\n"
                "    totals = torch.zeros(len(steps), dtype=torch.float64).index_add_(0, where, squares)\n"
                "    return steps, totals.sqrt()"
            ),
        },
    ),
]
