"""The gradient clinic: cases rebuild the same patient, each family has its illness (and only
its own), fixes are validated and verified by training."""

import math
import pickle
import statistics

import pytest
import torch

from gradflow_lessons import clinic
from gradflow_lessons.clinic import FAMILIES, Case, admit, apply_fix, draw_case, misread, settings, verify
from gradflow_lessons.diagnose import diagnose

# The reference treatment of each family (the solution's prescriptions, lr_too_high: 100x lower).
CURES = {
    "vanishing": {"activation": "relu", "init": "kaiming"},
    "dead_relu": {"bias": 0.0},
    "exploding_recurrence": {"clip": 1.0},
    "lr_too_high": None,  # lr / 100, computed from the case
    "no_zero_grad": {"zero_grad": True},
    "detached": {"remove_detach": True},
    "frozen": {"unfreeze": True},
    "nan_data": {"drop_nonfinite": True},
    "init_scale": {"init": "kaiming"},
    "unscaled_inputs": {"standardize_inputs": True},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cure(case: Case) -> dict:
    return CURES[case.family] or {"lr": settings(case)["lr"] / 100}


def test_there_are_at_least_ten_families_each_with_a_cure():
    assert len(FAMILIES) >= 10
    assert set(CURES) == set(FAMILIES)
    for name, family in FAMILIES.items():
        assert family.allowed <= set(clinic.FIXES), name


def test_a_case_rebuilds_the_same_patient():
    a, b = admit(draw_case("dead_relu", 5)), admit(draw_case("dead_relu", 5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    for p, q in zip(a.new_model().parameters(), b.new_model().parameters()):
        assert torch.equal(p, q)


def test_draw_case_is_a_pure_function_of_family_and_seed():
    assert draw_case("lr_too_high", 3) == draw_case("lr_too_high", 3)
    assert len({draw_case("lr_too_high", s) for s in range(20)}) > 1


def test_building_a_patient_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    admit(draw_case("vanishing", 1)).new_model()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_patient_does_not_carry_its_family_name(family):
    patient = admit(draw_case(family, 2))
    values = list(vars(patient).values()) + list(patient._script.values())
    assert family not in [v for v in values if isinstance(v, str)]


def test_a_patient_crosses_a_pickle_and_trains_the_same():
    patient = admit(draw_case("no_zero_grad", 4))
    copy = pickle.loads(pickle.dumps(patient))
    m1, m2 = patient.new_model(), copy.new_model()
    losses = patient.train(m1, patient.new_optimizer(m1), steps=3)
    assert losses == copy.train(m2, copy.new_optimizer(m2), steps=3)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_ill_and_its_cure_reaches_the_target(family):
    case = draw_case(family, 7)
    patient = admit(case)
    before = patient.fit()
    assert not before <= patient.target, f"{family}: the untreated patient already trains ({before:.3g})"
    verdict = verify(case, cure(case), seeds=[8])
    assert verdict.accepted, verdict.message


def test_a_missing_zero_grad_accumulates_the_gradient():
    patient = admit(draw_case("no_zero_grad", 1))
    model = patient.new_model()
    optimizer = patient.new_optimizer(model)
    optimizer.param_groups[0]["lr"] = 0.0  # the weights do not move: the same gradient each step
    patient.train(model, optimizer, steps=1)
    once = [p.grad.clone() for p in model.parameters()]
    patient.train(model, optimizer, steps=2)
    for g, g1 in zip((p.grad for p in model.parameters()), once):
        torch.testing.assert_close(g, 3 * g1)


def test_detached_and_frozen_layers_get_no_gradient_for_different_reasons():
    for family in ("detached", "frozen"):
        case = draw_case(family, 1)
        patient = admit(case)
        model = patient.new_model()
        patient.train(model, patient.new_optimizer(model), steps=1)
        hidden = [p for p in model.hidden.parameters()]
        assert all(p.grad is None for p in hidden), family
        assert model.output.weight.grad is not None
        assert all(p.requires_grad for p in hidden) == (family == "detached")


def test_the_nan_family_has_as_many_nan_rows_as_its_severity():
    case = draw_case("nan_data", 3)
    rows = (~torch.isfinite(admit(case).inputs)).any(1).sum().item()
    assert rows == case.severity >= 1
    assert torch.isfinite(admit(case).treated({"drop_nonfinite": True}).inputs).all()


def test_the_dead_relu_family_kills_exactly_its_layer():
    case = Case("dead_relu", 0, depth=4, width=32, layer=1, severity=-4.0)
    model = admit(case).new_model()
    biases = [layer.bias for _, layer in model.linear_layers()[:-1]]
    assert biases[1].eq(-4.0).all() and biases[0].eq(0).all() and biases[2].eq(0).all()


def test_std_one_init_is_std_one_and_kaiming_fixes_it():
    patient = admit(draw_case("init_scale", 0))
    weight = patient.new_model().linear_layers()[1][1].weight
    assert abs(weight.std().item() - 1.0) < 0.1
    fixed = patient.treated({"init": "kaiming"}).new_model().linear_layers()[1][1].weight
    assert abs(fixed.std().item() - math.sqrt(2 / fixed.shape[1])) < 0.1 * math.sqrt(2 / fixed.shape[1])


@pytest.mark.parametrize("fix, words", [
    ({}, "non-empty dict"),
    ("lr=0.1", "non-empty dict"),
    ({"learning_rate": 0.1}, "unknown treatment 'learning_rate'"),
    ({"lr": -1.0}, "positive number"),
    ({"lr": math.nan}, "positive number"),
    ({"zero_grad": 1}, "True"),
    ({"init": "he"}, "one of"),
    ({"norm": "group"}, "'layer' or 'batch'"),
])
def test_apply_fix_names_the_bad_key_and_what_it_takes(fix, words):
    with pytest.raises(ValueError, match=words):
        apply_fix(settings(draw_case("lr_too_high", 0)), fix)


def test_verify_refuses_a_fix_outside_the_family_without_training():
    verdict = verify(draw_case("no_zero_grad", 0), {"lr": 0.005}, seeds=[1])
    assert not verdict.minimal and not verdict.accepted and verdict.losses == []
    assert "zero_grad" in verdict.message


def test_verify_rejects_a_learning_rate_lowered_too_little():
    case = draw_case("lr_too_high", 0)
    verdict = verify(case, {"lr": settings(case)["lr"] / 2}, seeds=[1])
    assert verdict.minimal and not verdict.cured and "did not cure" in verdict.message


def test_verify_reports_an_invalid_fix_as_a_verdict():
    verdict = verify(draw_case("frozen", 0), ["unfreeze"], seeds=[1])
    assert not verdict.accepted and "dict" in verdict.message


def test_misread_is_silent_when_right_and_names_the_family_and_the_evidence_when_wrong():
    case = draw_case("dead_relu", 0)
    assert misread(case, "dead_relu") == ""
    message = misread(case, "lr_too_high")
    assert "'dead_relu'" in message and "dead_relu" in message.split("reports")[-1]
    assert "family names" in misread(case, 42)


def layer_gain(patient) -> float:
    """Median ratio of the output std of consecutive weight layers (the solution's measure)."""
    found = diagnose(patient.new_model(), patient.loss_fn, patient.inputs, patient.targets)
    stds = list(found.output_std.values())
    return statistics.median(b / a for a, b in zip(stds, stds[1:]))


def test_the_layer_gain_threshold_of_the_solution_has_margins_over_ten_seeds():
    sick = [admit(draw_case("init_scale", seed)) for seed in range(10)]
    ill = [layer_gain(p) for p in sick]
    well = [layer_gain(p.treated({"init": "kaiming"})) for p in sick]
    threshold = 2.0  # solutions/13_gradient_clinic.ipynb, examine()
    assert max(well) * 1.3 < threshold < min(ill) / 1.3, (min(well), max(well), min(ill), max(ill))
