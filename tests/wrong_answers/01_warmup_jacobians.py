"""Plausible wrong answers for solutions/01_warmup_jacobians.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
CORRECT_ANSWERS, in the same form, are right answers written differently (loops, vectorised,
float64 inside): each must pass every check.
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
    (
        "backprop that reverses the caller's list in place (jacobians.reverse()) before its loop",
        {"solution-backprop": (
            "def backprop_through(jacobians, grad_output):\n"
            "    jacobians.reverse()\n"
            "    grad = grad_output\n"
            "    for J in jacobians:\n"
            "        grad = grad @ J\n"
            "    return grad"
        )},
    ),
    (
        "backprop as one matrix product with functools.reduce: fails on an empty list of layers",
        {"solution-backprop": (
            "import functools\n\n\n"
            "def backprop_through(jacobians, grad_output):\n"
            "    return grad_output @ functools.reduce(lambda A, B: B @ A, jacobians)"
        )},
    ),
    (
        "backprop that squeezes its result: shape [] instead of [1] when d_0 = 1",
        {"solution-backprop": (
            "def backprop_through(jacobians, grad_output):\n"
            "    grad = grad_output\n"
            "    for J in reversed(jacobians):\n"
            "        grad = grad @ J\n"
            "    return grad.squeeze()"
        )},
    ),
    (
        "tanh Jacobian computed in float32 (W.float()): a tensor of the wrong dtype",
        {"solution-tanh-jacobian": (
            "def tanh_layer_jacobian(W, b, h_in):\n"
            "    h = torch.tanh(W.float() @ h_in.float() + b.float())\n"
            "    return (1 - h**2).unsqueeze(1) * W.float()"
        )},
    ),
    (
        "tanh Jacobian that builds the pre-activation in the caller's bias (b.add_)",
        {"solution-tanh-jacobian": (
            "def tanh_layer_jacobian(W, b, h_in):\n"
            "    h = b.add_(W @ h_in).tanh()\n"
            "    return (1 - h**2).unsqueeze(1) * W"
        )},
    ),
    (
        "gradient norms as a Python list of floats, not a tensor",
        {"solution-gradient-norms": (
            "def gradient_norms(jacobians, grad_output):\n"
            "    grad, norms = grad_output, [grad_output.norm().item()]\n"
            "    for J in reversed(jacobians):\n"
            "        grad = grad @ J\n"
            "        norms.append(grad.norm().item())\n"
            "    return norms"
        )},
    ),
    (
        "gradient norms through the unit direction grad / ||grad||: NaN for a zero gradient",
        {"solution-gradient-norms": (
            "def gradient_norms(jacobians, grad_output):\n"
            "    norm = grad_output.norm()\n"
            "    unit, norms = grad_output / norm, [norm]\n"
            "    for J in reversed(jacobians):\n"
            "        step = unit @ J\n"
            "        norm = norm * step.norm()\n"
            "        unit = step / step.norm()\n"
            "        norms.append(norm)\n"
            "    return torch.stack(norms)"
        )},
    ),
    (
        "gradient norms that reverse the caller's list in place",
        {"solution-gradient-norms": (
            "def gradient_norms(jacobians, grad_output):\n"
            "    jacobians.reverse()\n"
            "    grad, norms = grad_output, [grad_output.norm()]\n"
            "    for J in jacobians:\n"
            "        grad = grad @ J\n"
            "        norms.append(grad.norm())\n"
            "    return torch.stack(norms)"
        )},
    ),
]

CORRECT_ANSWERS = [
    (
        "loops, one entry at a time, in float64 inside",
        {
            "solution-tanh-jacobian": (
                "import math\n\n\n"
                "def tanh_layer_jacobian(W, b, h_in):\n"
                "    m, n = W.shape\n"
                "    J = torch.zeros(m, n, dtype=torch.float64)\n"
                "    for i in range(m):\n"
                "        z = sum(float(W[i, j]) * float(h_in[j]) for j in range(n)) + float(b[i])\n"
                "        slope = 1 - math.tanh(z) ** 2\n"
                "        for j in range(n):\n"
                "            J[i, j] = slope * float(W[i, j])\n"
                "    return J.to(W.dtype)"
            ),
            "solution-backprop": (
                "def backprop_through(jacobians, grad_output):\n"
                "    grad = grad_output.to(torch.float64)\n"
                "    for l in range(len(jacobians) - 1, -1, -1):\n"
                "        grad = jacobians[l].to(torch.float64).T @ grad\n"
                "    return grad.to(grad_output.dtype)"
            ),
            "solution-gradient-norms": (
                "import math\n\n\n"
                "def gradient_norms(jacobians, grad_output):\n"
                "    grad = grad_output.clone()\n"
                "    norms = torch.empty(len(jacobians) + 1, dtype=grad_output.dtype)\n"
                "    norms[0] = math.sqrt(sum(float(v) ** 2 for v in grad))\n"
                "    for k in range(len(jacobians)):\n"
                "        grad = grad @ jacobians[len(jacobians) - 1 - k]\n"
                "        norms[k + 1] = math.sqrt(sum(float(v) ** 2 for v in grad))\n"
                "    return norms"
            ),
        },
    ),
    (
        "vectorised: diag(...) @ W, functools.reduce and itertools.accumulate",
        {
            "solution-tanh-jacobian": (
                "def tanh_layer_jacobian(W, b, h_in):\n"
                "    return torch.diag(1 - torch.tanh(torch.addmv(b, W, h_in)) ** 2) @ W"
            ),
            "solution-backprop": (
                "import functools\n\n\n"
                "def backprop_through(jacobians, grad_output):\n"
                "    return functools.reduce(torch.matmul, reversed(jacobians), grad_output)"
            ),
            "solution-gradient-norms": (
                "import itertools\n\n\n"
                "def gradient_norms(jacobians, grad_output):\n"
                "    grads = itertools.accumulate(reversed(jacobians), torch.matmul, initial=grad_output)\n"
                "    return torch.stack([torch.linalg.vector_norm(g) for g in grads])"
            ),
        },
    ),
]
