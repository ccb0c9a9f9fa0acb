"""Plausible wrong answers for solutions/07_gradient_noise_scale.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
"""

WRONG_ANSWERS = [
    (
        "|G|^2 estimated by |g_bar|^2, forgetting the bias correction - S / N",
        {"solution-statistics": (
            "def noise_statistics(per_sample):\n"
            "    n = per_sample.shape[0]\n"
            "    if n < 2:\n"
            "        raise ValueError('need 2 samples')\n"
            "    mean = per_sample.mean(0)\n"
            "    trace = (per_sample - mean).square().sum() / (n - 1)\n"
            "    return mean.square().sum(), trace"
        )},
    ),
    (
        "tr(Sigma) divided by N instead of N - 1 (the biased sample variance)",
        {"solution-statistics": (
            "def noise_statistics(per_sample):\n"
            "    n = per_sample.shape[0]\n"
            "    if n < 2:\n"
            "        raise ValueError('need 2 samples')\n"
            "    mean = per_sample.mean(0)\n"
            "    trace = (per_sample - mean).square().sum() / n\n"
            "    return mean.square().sum() - trace / n, trace"
        )},
    ),
    (
        "per-sample gradients that repeat the batch gradient for every sample",
        {"solution-per-sample": (
            "def per_sample_gradients(model, loss_fn, inputs, targets):\n"
            "    params = [p for p in model.parameters() if p.requires_grad]\n"
            "    grads = torch.autograd.grad(loss_fn(model(inputs), targets), params)\n"
            "    row = torch.cat([g.reshape(-1) for g in grads])\n"
            "    return row.expand(len(inputs), -1).clone()"
        )},
    ),
    (
        "noise scale inverted: |G|^2 / tr(Sigma) (that is the SNR, not B_simple)",
        {"solution-noise-scale": (
            "def gradient_noise_scale(model, loss_fn, inputs, targets):\n"
            "    g2, trace = noise_statistics(per_sample_gradients(model, loss_fn, inputs, targets))\n"
            "    return {'b_simple': g2 / trace, 'grad_sq_norm': g2, 'trace_cov': trace}"
        )},
    ),
    (
        "noise scale that divides by a negative |G|^2 estimate (a negative B_simple)",
        {"solution-noise-scale": (
            "def gradient_noise_scale(model, loss_fn, inputs, targets):\n"
            "    g2, trace = noise_statistics(per_sample_gradients(model, loss_fn, inputs, targets))\n"
            "    return {'b_simple': trace / g2, 'grad_sq_norm': g2, 'trace_cov': trace}"
        )},
    ),
    (
        "noise scale that takes abs() of a negative |G|^2 estimate",
        {"solution-noise-scale": (
            "def gradient_noise_scale(model, loss_fn, inputs, targets):\n"
            "    g2, trace = noise_statistics(per_sample_gradients(model, loss_fn, inputs, targets))\n"
            "    return {'b_simple': trace / abs(g2), 'grad_sq_norm': abs(g2), 'trace_cov': trace}"
        )},
    ),
    (
        "two-batch estimator that takes the big batch's norm as |G|^2 (no extrapolation)",
        {"solution-two-batch": (
            "def two_batch_estimate(small_sq_norm, big_sq_norm, small_batch, big_batch):\n"
            "    trace = (small_sq_norm - big_sq_norm) / (1 / small_batch - 1 / big_batch)\n"
            "    return big_sq_norm, trace"
        )},
    ),
]
