"""gradflow_lessons._state: what every inspecting tool promises about the model, tested once."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradflow_lessons._state import (
    batch_size,
    checked_loss,
    inspecting,
    inspection_depth,
    refuse_train_mode,
    train_mode_modules,
    usable,
)


def model_with_state() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model(torch.randn(8, 3)).sum().backward()
    return model


def test_inspecting_restores_grads_buffers_flags_and_every_rng_also_on_error():
    model = model_with_state()
    grads = [p.grad for p in model.parameters()]
    buffers = {k: (b, b.clone()) for k, b in model.named_buffers()}
    rngs = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with pytest.raises(KeyError), inspecting(model):
        assert all(p.grad is None for p in model.parameters()) and torch.is_grad_enabled()
        model(torch.randn(8, 3)).sum().backward()  # updates BatchNorm, draws dropout masks
        model.eval()
        np.random.rand(), random.random()
        raise KeyError("a tool fails half way")
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    for k, b in model.named_buffers():
        assert b is buffers[k][0] and torch.equal(b, buffers[k][1]), k
    assert all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rngs[0])
    assert (np.random.get_state()[1] == rngs[1]).all() and random.getstate() == rngs[2]


def test_inspecting_turns_gradients_on_under_no_grad_and_inference_mode_and_counts_depth():
    model = nn.Linear(2, 2)
    with torch.inference_mode():
        x = torch.randn(3, 2)
        with inspecting(model):
            assert torch.is_grad_enabled() and inspection_depth() == 1
            model(usable(x)).sum().backward()  # an inference tensor cloned into a normal one
            with inspecting(model):
                assert inspection_depth() == 2
    assert inspection_depth() == 0


def test_train_mode_modules_are_the_random_or_stateful_ones():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0), nn.Dropout(0.1), nn.BatchNorm1d(2),
                          nn.LayerNorm(2), nn.LSTM(2, 2, num_layers=2, dropout=0.3))
    assert train_mode_modules(model) == ["2 (Dropout)", "3 (BatchNorm1d)", "5 (LSTM)"]
    assert train_mode_modules(model.eval()) == []


def test_refuse_train_mode_names_modules_and_both_ways_out():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    with pytest.raises(ValueError, match=r"tool: 1 \(Dropout\) is in training mode.*model\.eval\(\) first, "
                                         r"or pass allow_train_mode=True.*restored either way"):
        refuse_train_mode(model, False, "tool")
    refuse_train_mode(model, True, "tool")
    refuse_train_mode(model.eval(), False, "tool")


def test_batch_size_refuses_an_empty_batch():
    assert batch_size(torch.zeros(5, 2), "tool") == 5
    with pytest.raises(ValueError, match="tool: the batch is empty"):
        batch_size(torch.zeros(0, 2), "tool")


@pytest.mark.parametrize(("loss", "message"), [
    (1.5, r"returned a float, not a tensor.*no \.item\(\)"),
    (torch.ones(2, requires_grad=True), r"scalar.*\[2\]"),
    (torch.tensor(1.0), r"does not depend on any trainable parameter"),
])
def test_checked_loss_names_what_the_loss_function_did_wrong(loss, message):
    with pytest.raises(ValueError, match=message):
        checked_loss(loss, "tool")


@pytest.mark.parametrize("draw", [
    lambda: None,
    lambda: np.random.rand(),
    lambda: np.random.randn(),  # one of a pair: the other is cached (has_gauss), the raw state moved
    lambda: np.random.seed(0),
])
@pytest.mark.parametrize("cached_gaussian", [False, True])
def test_inspecting_restores_numpy_after_any_draw_also_from_its_cached_gaussian(draw, cached_gaussian):
    np.random.seed(1)
    if cached_gaussian:
        np.random.randn()  # the second of the pair waits in the cache, beside the raw state
    before = np.random.get_state()
    with inspecting(nn.Linear(2, 2)):
        draw()
        if cached_gaussian:
            np.random.randn()  # served from the cache: the raw state does not move
    after = np.random.get_state()
    assert (after[1] == before[1]).all() and after[2:] == before[2:]


def test_the_raw_numpy_state_is_read_in_place_here_and_moves_with_every_draw():
    from gradflow_lessons import _state

    assert _state._NUMPY_RAW_SIZE == 2500  # this numpy's MT19937 layout: the cheap path is on
    np.random.seed(0)
    raw = _state._numpy_raw()
    assert raw == _state._numpy_raw() and raw[-4:] == np.int32(np.random.get_state()[2]).tobytes()
    np.random.rand()
    assert _state._numpy_raw() != raw


def test_inspecting_restores_numpy_on_another_global_bit_generator():
    old = np.random.get_bit_generator()
    try:
        np.random.set_bit_generator(np.random.PCG64(3))
        before = np.random.get_state(legacy=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's legacy get_state warns for PCG64
            with inspecting(nn.Linear(2, 2)):
                np.random.rand(5)
        assert np.random.get_state(legacy=False) == before
    finally:
        np.random.set_bit_generator(old)
