"""Plausible wrong answers for solutions/13_gradient_clinic.ipynb: each must fail a check.

A list of (description, {solution cell id: wrong source}); tests/test_exercises.py runs each.
"""

patched = globals()["patched"]  # (cell id, old, new) -> {cell id: the solution cell with old,
# found exactly once, replaced by new}; tests/test_exercises.py gives it, for this file's solution


THRESHOLDS = "LAYER_GAIN_MAX = 2.0\nACCUMULATION_MIN = 1.5\n\n\n"

# treat() as in the solution, but over an examine() of the wrong answer's choosing.
PRESCRIPTIONS = (
    "PRESCRIPTIONS = {'vanishing': {'activation': 'relu', 'init': 'kaiming'}, 'dead_relu': {'bias': 0.0},\n"
    "                 'exploding_recurrence': {'clip': 1.0}, 'no_zero_grad': {'zero_grad': True},\n"
    "                 'detached': {'remove_detach': True}, 'frozen': {'unfreeze': True},\n"
    "                 'nan_data': {'drop_nonfinite': True}, 'init_scale': {'init': 'kaiming'},\n"
    "                 'unscaled_inputs': {'standardize_inputs': True}}\n\n\n"
)

WRONG_ANSWERS = [
    (
        "always say exploding",
        {"solution-examine": THRESHOLDS + (
            "def examine(patient):\n"
            "    print('the loss does not fall: the gradients must be exploding')\n"
            "    return 'exploding_recurrence'"
        )},
    ),
    (
        "read only diagnose's findings (blind to the loop: detached, frozen, no zero_grad, recurrence)",
        {"solution-examine": THRESHOLDS + (
            "def examine(patient):\n"
            "    model = patient.new_model()\n"
            "    found = diagnose(model, patient.loss_fn, patient.inputs, patient.targets,\n"
            "                     optimizer=patient.new_optimizer(model), steps=10)\n"
            "    names = {'vanishing': 'vanishing', 'dead_relu': 'dead_relu',\n"
            "             'saturation': 'unscaled_inputs',\n"
            "             'nonfinite': 'nan_data', 'exploding': 'lr_too_high'}\n"
            "    kind = found.kinds[0] if found.kinds else 'exploding'\n"
            "    print(found.report())\n"
            "    return names[kind]"
        )},
    ),
    (
        "fix everything by lowering the learning rate 10x",
        {"solution-treat": PRESCRIPTIONS + (
            "def treat(patient):\n"
            "    lr = patient.new_optimizer(patient.new_model()).param_groups[0]['lr']\n"
            "    return {'lr': lr / 10}"
        )},
    ),
    (
        "fix everything by adding residual connections",
        {"solution-treat": PRESCRIPTIONS + (
            "def treat(patient):\n"
            "    return {'residual': True}"
        )},
    ),
    (
        "treat the right illness but change everything that might help (not minimal)",
        {"solution-treat": PRESCRIPTIONS + (
            "def treat(patient):\n"
            "    fix = dict(PRESCRIPTIONS.get(examine(patient), {}))\n"
            "    fix.update(init='kaiming', clip=1.0)\n"
            "    return fix"
        )},
    ),
    (
        "examine that trusts diagnose's dead_relu threshold alone: a layer 75% dead is missed",
        patched("solution-examine", "    if dead >= dead_min:", "    if False:"),
    ),
    (
        "examine whose layer-gain threshold is 3x: a slowly growing init_scale is missed",
        patched("solution-examine", "    layer_gain_max = 2.0", "    layer_gain_max = 3.0"),
    ),
]
