import pytest
import torch

from gradflow_lessons.data import first_token_task, spirals, teacher_regression
from gradflow_lessons.env import default_device, environment_report, seed_everything


def test_spirals_are_a_pure_function_of_the_seed():
    a, b = spirals(seed=3), spirals(seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(spirals(seed=4)[0], a[0])


def test_spirals_are_balanced_and_shaped():
    inputs, targets = spirals(n=300, classes=3)
    assert inputs.shape == (300, 2) and inputs.dtype == torch.float32
    assert torch.bincount(targets).tolist() == [100, 100, 100]


def test_spirals_reject_too_few_points():
    with pytest.raises(ValueError, match="classes"):
        spirals(n=2, classes=3)


def test_teacher_regression_noise_sets_the_best_loss():
    inputs, targets = teacher_regression(n=4000, noise=0.3, seed=1)
    same_inputs, noiseless = teacher_regression(n=4000, noise=0.0, seed=1)
    assert torch.equal(inputs, same_inputs)
    assert ((targets - noiseless) ** 2).mean().item() == pytest.approx(0.09, rel=0.1)


def test_teacher_regression_does_not_disturb_the_global_seed():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    teacher_regression(n=8)
    assert torch.equal(torch.rand(3), expected)


def test_first_token_task_label_is_in_the_first_step():
    inputs, targets = first_token_task(n=64, length=12, input_size=3)
    assert inputs.shape == (64, 12, 3)
    assert torch.equal((inputs[:, 0, 0] > 0).long(), targets)


def test_seed_everything_makes_torch_repeat():
    seed_everything(5)
    a = torch.randn(4)
    seed_everything(5)
    assert torch.equal(a, torch.randn(4))


def test_environment_report_names_the_device():
    report = environment_report()
    assert report.device.startswith(default_device().type)
    assert dict(report.rows())["PyTorch"] == torch.__version__


def test_digits_are_real_8x8_images_split_by_class():
    from gradflow_lessons.data import digits

    train_x, train_y = digits("train")
    test_x, test_y = digits("test")
    assert train_x.shape[1:] == (1, 8, 8) and len(train_x) + len(test_x) == 1797
    assert 0.0 <= train_x.min() and train_x.max() <= 1.0
    assert torch.equal(test_y.bincount(minlength=10) > 40, torch.ones(10, dtype=torch.bool))
    assert digits("all", image=False)[0].shape == (1797, 64)


def test_digits_split_is_a_pure_function_of_the_seed():
    from gradflow_lessons.data import digits

    assert torch.equal(digits("test", seed=1)[1], digits("test", seed=1)[1])
    assert not torch.equal(digits("test", seed=1)[0], digits("test", seed=2)[0])


def test_digits_train_and_test_do_not_overlap():
    from gradflow_lessons.data import digits

    train = {tuple(row.tolist()) for row in digits("train", image=False)[0]}
    test = [tuple(row.tolist()) for row in digits("test", image=False)[0]]
    all_rows = [tuple(r.tolist()) for r in digits("all", image=False)[0]]
    duplicates = len(all_rows) - len(set(all_rows))  # a few images occur twice in the data set
    assert sum(row in train for row in test) <= duplicates


@pytest.mark.parametrize("bad", [dict(split="valid"), dict(test_fraction=1.0)])
def test_digits_reject_bad_arguments(bad):
    from gradflow_lessons.data import digits

    with pytest.raises(ValueError):
        digits(**bad)
