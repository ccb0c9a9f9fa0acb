"""gradflow_lessons._params: which parameters every tool inspects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradflow_lessons._params import module_of, parameter_list, trainable_parameters


def test_trainable_parameters_skip_frozen_ones_and_count_tied_weights_once():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.Linear(2, 2), shared)
    model[1].bias.requires_grad_(False)
    assert list(trainable_parameters(model)) == ["0.weight", "0.bias", "1.weight"]


def test_a_subset_of_names_keeps_the_order_asked_for():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert list(trainable_parameters(model, ["1.bias", "0.weight"])) == ["1.bias", "0.weight"]


@pytest.mark.parametrize("names", [["nope"], []])
def test_unknown_or_no_names_raise_and_list_the_choices(names):
    with pytest.raises(ValueError, match=r"choose from \['bias', 'weight'\]"):
        trainable_parameters(nn.Linear(2, 2), names)


def test_a_frozen_model_raises_one_message_naming_the_fix():
    with pytest.raises(ValueError, match=r"requires_grad=True.*freeze.*requires_grad_\(True\)"):
        trainable_parameters(nn.Linear(2, 2).requires_grad_(False))


def test_module_of_names_the_owning_module():
    assert module_of("hidden.0.linear.weight") == "hidden.0.linear"
    assert module_of("weight") == "model"


def test_parameter_list_takes_one_tensor_or_an_iterable():
    p = torch.zeros(2, requires_grad=True)
    assert parameter_list(p, "f") == [p]
    assert parameter_list(iter([p, p]), "f") == [p, p]
