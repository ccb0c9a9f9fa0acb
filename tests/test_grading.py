import numpy as np
import pytest
import torch

from gradflow_lessons.grading import CheckFailed, check_close, check_shape, check_true


def test_check_close_passes_and_prints_a_tick(capsys):
    check_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), "values")
    assert capsys.readouterr().out.strip() == "\u2713 values"


def test_check_close_reports_the_size_of_the_error_and_the_hint():
    with pytest.raises(CheckFailed, match=r"off by up to 0\.5.*Hint: look here"):
        check_close(torch.tensor([1.5]), torch.tensor([1.0]), "x", hint="look here")


def test_check_close_rejects_an_object_that_claims_to_equal_everything():
    class Liar:
        def __eq__(self, other):
            return True

    with pytest.raises(CheckFailed, match="expected a tensor or a number, got Liar"):
        check_close(Liar(), 1.0, "x")


def test_check_close_rejects_none_with_a_hint_about_returning():
    with pytest.raises(CheckFailed, match="return"):
        check_close(None, 1.0, "x")


def test_check_close_rejects_nan():
    with pytest.raises(CheckFailed, match="NaN"):
        check_close(torch.tensor([float("nan")]), torch.tensor([1.0]), "x")


def test_check_close_rejects_a_broadcastable_but_wrong_shape():
    with pytest.raises(CheckFailed, match="shape"):
        check_close(torch.ones(3, 1), torch.ones(3), "x")


def test_check_close_accepts_numpy_and_numbers():
    check_close(np.array([1.0, 2.0]), torch.tensor([1.0, 2.0]), "numpy", quiet=True)
    check_close(3, 3.0, "int", quiet=True)


def test_check_shape_names_both_shapes():
    with pytest.raises(CheckFailed, match=r"expected shape \[2, 3\], got \[3, 2\]"):
        check_shape(torch.ones(3, 2), (2, 3), "m")


def test_check_true_does_not_accept_merely_truthy_values():
    with pytest.raises(CheckFailed):
        check_true("yes", "flag", "must be True")
    check_true(np.bool_(True), "numpy flag", "ok")
    check_true(torch.tensor(True), "tensor flag", "ok")
