"""Plausible wrong answers for solutions/01_warmup_jacobians.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
"""

WRONG_ANSWERS = [
    (
        "tanh Jacobian that uses tanh(z) instead of its slope 1 - tanh(z)^2",
        {"solution-tanh-jacobian": (
            "def tanh_layer_jacobian(W, b, h_in):\n"
            "    return torch.tanh(W @ h_in + b).unsqueeze(1) * W"
        )},
    ),
    (
        "tanh Jacobian that scales columns instead of rows (W diag(...))",
        {"solution-tanh-jacobian": (
            "def tanh_layer_jacobian(W, b, h_in):\n"
            "    h = torch.tanh(W @ h_in + b)\n"
            "    return W * (1 - h[: W.shape[1]] ** 2)"
        )},
    ),
    (
        "backprop that multiplies the Jacobians from the first layer up",
        {"solution-backprop": (
            "def backprop_through(jacobians, grad_output):\n"
            "    grad = grad_output\n"
            "    for J in jacobians:\n"
            "        grad = J.T @ grad if J.shape[0] == grad.shape[0] else grad\n"
            "    return grad"
        )},
    ),
    (
        "backprop that forgets the transpose (J @ v instead of v @ J)",
        {"solution-backprop": (
            "def backprop_through(jacobians, grad_output):\n"
            "    grad = grad_output\n"
            "    for J in reversed(jacobians):\n"
            "        grad = J.T.T @ grad if J.shape[0] == J.shape[1] else grad @ J\n"
            "    return grad"
        )},
    ),
    (
        "gradient norms without the output's own norm (L values instead of L + 1)",
        {"solution-gradient-norms": (
            "def gradient_norms(jacobians, grad_output):\n"
            "    grad, norms = grad_output, []\n"
            "    for J in reversed(jacobians):\n"
            "        grad = grad @ J\n"
            "        norms.append(grad.norm())\n"
            "    return torch.stack(norms)"
        )},
    ),
]
