"""Plausible wrong answers for solutions/02_gradient_flow_experiment.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
"""

WRONG_ANSWERS = [
    (
        "per-layer norms in the wrong order (output layer first)",
        {"solution-layer-gradient-norms": (
            "def layer_gradient_norms(model, inputs, targets):\n"
            "    model.zero_grad()\n"
            "    F.cross_entropy(model(inputs), targets).backward()\n"
            "    return torch.stack([l.weight.grad.norm() for _, l in reversed(model.linear_layers())])"
        )},
    ),
    (
        "norms of the weights instead of their gradients",
        {"solution-layer-gradient-norms": (
            "def layer_gradient_norms(model, inputs, targets):\n"
            "    model.zero_grad()\n"
            "    F.cross_entropy(model(inputs), targets).backward()\n"
            "    return torch.stack([l.weight.norm() for _, l in model.linear_layers()])"
        )},
    ),
    (
        "forgets zero_grad, so a second call returns accumulated gradients",
        {"solution-layer-gradient-norms": (
            "def layer_gradient_norms(model, inputs, targets):\n"
            "    F.cross_entropy(model(inputs), targets).backward()\n"
            "    return torch.stack([l.weight.grad.norm() for _, l in model.linear_layers()])"
        )},
    ),
    (
        "ratio of the last layer over the first (inverted)",
        {"solution-first-layer-ratio": (
            "def first_layer_ratio(depth, activation, init, width=32, seed=0):\n"
            "    seed_everything(seed)\n"
            "    model = MLP(2, 3, depth=depth, width=width, activation=activation, init=init)\n"
            "    norms = layer_gradient_norms(model, inputs, targets)\n"
            "    return (norms[-1] / norms[0]).item()"
        )},
    ),
    (
        "vanishing depth that returns the last depth still above the threshold",
        {"solution-vanishing-depth": (
            "DEPTHS = (5, 10, 15, 20, 30, 40, 50)\n"
            "def vanishing_depth(activation, init, threshold=1e-6, depths=DEPTHS,\n"
            "                    measure=first_layer_ratio):\n"
            "    last = None\n"
            "    for depth in depths:\n"
            "        if measure(depth, activation, init) < threshold:\n"
            "            return last\n"
            "        last = depth\n"
            "    return None"
        )},
    ),
]
