"""gradflow_lessons._params: which parameters every tool inspects."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradflow_lessons._params import (
    BLAS_MIN,
    exact_norm,
    module_of,
    norms,
    parameter_list,
    total_norm,
    trainable_parameters,
    wide,
)


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


def test_a_meta_device_model_is_named_with_the_fix():
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        trainable_parameters(nn.Linear(2, 2, device="meta"))


def test_parameter_list_refuses_a_model_or_named_parameters_naming_the_fix():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"f takes the parameters, not the model"):
        parameter_list(model, "f")
    with pytest.raises(ValueError, match=r"named_parameters\(\) gives \(name, tensor\) pairs"):
        parameter_list(model.named_parameters(), "f")


# --------------------------------------------------------------------------- norms that do not lie


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_norms_are_accumulated_in_float32(dtype):
    t = torch.full((65_536,), 300.0, dtype=dtype)  # the norm 76,800 overflows float16
    (norm,) = norms([t])
    assert norm.dtype == torch.float32 and norm.item() == pytest.approx(76_800, rel=1e-3)
    assert wide(dtype) == torch.float32 and wide(torch.float64) == torch.float64


def test_norms_of_every_kind_of_tensor_keep_their_order_and_agree_with_float64():
    torch.manual_seed(0)
    big = torch.randn(256, 256)  # BLAS dot: contiguous, float32, >= BLAS_MIN entries
    tensors = [big, torch.randn(7), big.t(), big[:, ::2], torch.randn(128, 128, dtype=torch.float64),
               torch.randn(200, 100).half(), torch.full((BLAS_MIN,), math.nan),
               torch.full((BLAS_MIN,), math.inf), torch.zeros(BLAS_MIN)]
    got = [n.item() for n in norms(tensors)]
    want = [torch.linalg.vector_norm(t.double()).item() for t in tensors]
    for g, w, t in zip(got, want, tensors):
        if math.isnan(w):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(w, rel=1e-3 if t.dtype == torch.float16 else 1e-5), t.shape
    assert [n.dtype for n in norms(tensors)][:6] == [torch.float32] * 4 + [torch.float64, torch.float32]


@pytest.mark.parametrize("scale", [1e-26, 1e25])
def test_exact_norm_redoes_in_float64_what_float32_squares_lose(scale):
    t = torch.full((100,), scale)
    lost = total_norm([t]).item()
    assert lost in (0.0, math.inf)  # float32 squares underflow / overflow
    assert exact_norm([t], lost) == pytest.approx(scale * 10, rel=1e-6)  # scale as a float32


def test_exact_norm_keeps_a_norm_float32_holds_and_nan():
    t = torch.full((4,), 2.0)
    assert exact_norm([t], 4.0) == 4.0 and math.isnan(exact_norm([t], math.nan))


def test_total_norm_is_the_norm_of_all_tensors_as_one_vector():
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert total_norm([a, b]).item() == pytest.approx(torch.cat([a.flatten(), b]).norm().item(), rel=1e-12)
