import pytest
import torch

from gradflow_lessons import skips
from gradflow_lessons.models import (
    INITS,
    MLP,
    HiddenLayer,
    RNNClassifier,
    init_layer_,
    init_linear_,
    make_norm,
)


def test_mlp_has_depth_linear_layers_and_readable_names():
    model = MLP(3, 2, depth=5, width=8)
    names = [name for name, _ in model.linear_layers()]
    assert names == [f"hidden.{i}.linear" for i in range(4)] + ["output"]
    assert model(torch.randn(7, 3)).shape == (7, 2)


def test_depth_one_is_a_single_linear_layer():
    model = MLP(3, 2, depth=1)
    assert len(model.hidden) == 0 and model(torch.randn(4, 3)).shape == (4, 2)


@pytest.mark.parametrize("bad", [{"depth": 0}, {"activation": "sigmoidd"}, {"init": "he"}, {"norm": "group"}])
def test_mlp_rejects_unknown_arguments_with_the_choices(bad):
    with pytest.raises(ValueError, match="depth|choose one of"):
        MLP(3, 2, **bad)


def test_kaiming_init_has_std_sqrt_two_over_fan_in():
    torch.manual_seed(0)
    layer = init_linear_(torch.nn.Linear(400, 300), "kaiming")
    assert layer.weight.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.02)
    assert torch.all(layer.bias == 0)


def test_xavier_init_has_glorot_std():
    torch.manual_seed(0)
    layer = init_linear_(torch.nn.Linear(400, 200), "xavier", gain=2.0)
    assert layer.weight.std().item() == pytest.approx(2 * (2 / 600) ** 0.5, rel=0.02)


def test_orthogonal_init_sets_every_singular_value_to_the_gain():
    layer = init_linear_(torch.nn.Linear(32, 32), "orthogonal", gain=1.5)
    svals = torch.linalg.svdvals(layer.weight.detach())
    assert torch.allclose(svals, torch.full((32,), 1.5), atol=1e-5)


def test_bias_argument_sets_hidden_biases():
    model = MLP(3, 2, depth=3, width=8, init="kaiming", bias=-3.0)
    assert all(torch.all(h.linear.bias == -3.0) for h in model.hidden)


@pytest.mark.parametrize("init", INITS)
def test_every_init_gives_finite_outputs(init):
    model = MLP(5, 1, depth=6, width=16, activation="tanh", init=init)
    assert torch.isfinite(model(torch.randn(4, 5))).all()


def test_residual_layers_are_the_skips_pre_activation_block():
    model = MLP(4, 1, depth=3, width=4, activation="relu", residual=True)
    layer = model.hidden[1]
    x = torch.randn(2, 4)
    assert isinstance(layer, skips.ResidualBlock)
    assert torch.allclose(layer(x), x + layer.branch.linear1(torch.relu(x)))  # h + W relu(h)
    assert isinstance(model.hidden[0], HiddenLayer)  # the first layer changes the width


def test_residual_mlp_names_its_linear_layers_readably():
    model = MLP(3, 2, depth=4, width=8, residual=True)
    names = [name for name, _ in model.linear_layers()]
    assert names == ["hidden.0.linear", "hidden.1.branch.linear1", "hidden.2.branch.linear1", "output"]
    parameters = dict(model.named_parameters())
    assert all(f"{name}.weight" in parameters for name in names)


@pytest.mark.parametrize("init", INITS)
def test_residual_and_plain_mlps_share_their_weights_for_a_seed(init):
    torch.manual_seed(3)
    plain = MLP(3, 2, depth=5, width=8, init=init, gain=1.3, bias=0.1)
    torch.manual_seed(3)
    residual = MLP(3, 2, depth=5, width=8, init=init, gain=1.3, bias=0.1, residual=True)
    after_residual = torch.rand(1)
    for (_, a), (_, b) in zip(plain.linear_layers(), residual.linear_layers()):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    torch.manual_seed(3)
    MLP(3, 2, depth=5, width=8, init=init, gain=1.3, bias=0.1)
    assert torch.equal(torch.rand(1), after_residual)  # both consume the random stream alike


def test_plain_mlp_draws_the_same_weights_as_the_layer_by_layer_recipe():
    """MLP without residual is what it always was: Linear per layer in order, then init."""
    torch.manual_seed(0)
    model = MLP(3, 2, depth=3, width=5, init="xavier")
    torch.manual_seed(0)
    layers = [torch.nn.Linear(3, 5), torch.nn.Linear(5, 5), torch.nn.Linear(5, 2)]
    for layer in layers[:-1]:
        init_layer_(layer, "xavier")
    init_layer_(layers[-1], "xavier")
    for (_, mine), reference in zip(model.linear_layers(), layers):
        assert torch.equal(mine.weight, reference.weight)


def test_init_linear_is_the_one_init_routine():
    assert init_linear_ is init_layer_ and skips.init_layer_ is init_layer_


@pytest.mark.parametrize("norm, conv, kind", [
    (None, False, torch.nn.Identity), ("batch", False, torch.nn.BatchNorm1d),
    ("layer", False, torch.nn.LayerNorm), ("batch", True, torch.nn.BatchNorm2d),
    ("layer", True, torch.nn.GroupNorm),
])
def test_make_norm_builds_the_named_normalisation(norm, conv, kind):
    assert isinstance(make_norm(norm, 6, conv=conv), kind)


def test_make_norm_rejects_an_unknown_name_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        make_norm("group", 4)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_layers_sit_before_the_activation(norm):
    model = MLP(4, 1, depth=3, width=6, norm=norm)
    assert model(torch.randn(5, 4)).shape == (5, 1)
    assert not isinstance(model.hidden[0].norm, torch.nn.Identity)


def test_rnn_recurrent_gain_sets_the_spectral_radius():
    model = RNNClassifier(3, 16, 2, recurrent_gain=1.3)
    radius = torch.linalg.eigvals(model.rnn.weight_hh_l0.detach()).abs().max()
    assert radius.item() == pytest.approx(1.3, rel=1e-4)
    assert model(torch.randn(4, 10, 3)).shape == (4, 2)


def test_rnn_rejects_unbatched_input_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"\[N, T, input_size\]"):
        RNNClassifier(3, 8, 2)(torch.randn(10, 3))


def test_normal_init_has_std_gain_over_sqrt_fan_in():
    torch.manual_seed(0)
    layer = init_linear_(torch.nn.Linear(400, 300), "normal", gain=3.0)
    assert layer.weight.std().item() == pytest.approx(3.0 / 400**0.5, rel=0.02)


def test_init_counts_a_convolution_fan_in_over_the_kernel():
    torch.manual_seed(0)
    conv = init_linear_(torch.nn.Conv2d(40, 64, 3), "xavier")
    fan_in, fan_out = 40 * 9, 64 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.03)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_classifier_builds_each_cell(cell):
    model = RNNClassifier(3, 8, 2, cell=cell)
    assert type(model.rnn).__name__ == cell.upper() and model(torch.randn(4, 6, 3)).shape == (4, 2)


def test_default_recurrent_classifier_is_the_vanilla_rnn_it_always_was():
    torch.manual_seed(0)
    model = RNNClassifier(3, 8, 2, recurrent_gain=1.2)
    torch.manual_seed(0)
    rnn, output = torch.nn.RNN(3, 8, batch_first=True), torch.nn.Linear(8, 2)
    torch.nn.init.orthogonal_(rnn.weight_hh_l0, gain=1.2)
    assert torch.equal(model.rnn.weight_hh_l0, rnn.weight_hh_l0)
    assert torch.equal(model.output.weight, output.weight)


@pytest.mark.parametrize("cell, gate", [("lstm", "forget"), ("gru", "update")])
def test_forget_bias_sets_the_keeping_gate_and_nothing_else(cell, gate):
    torch.manual_seed(0)
    model = RNNClassifier(3, 5, 2, cell=cell, forget_bias=1.0)
    rows = model.gate_slices()[gate]
    total = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert torch.all(total[rows] == 1.0)
    others = torch.ones_like(total, dtype=torch.bool)
    others[rows] = False
    assert torch.all(total[others].abs() < 1.0)  # PyTorch's init elsewhere, |b| <= 2/sqrt(5)


def test_a_closed_lstm_forget_gate_keeps_almost_nothing_of_the_cell_state():
    model = RNNClassifier(1, 4, 2, cell="lstm", forget_bias=-8.0)
    f = torch.sigmoid(model.rnn.bias_ih_l0[model.gate_slices()["forget"]] + 0.0)
    assert torch.all(f < 1e-3)


@pytest.mark.parametrize("bad, match", [
    (dict(cell="lstmm"), "choose one of"), (dict(forget_bias=1.0), "gated cell"),
    (dict(cell="gru", recurrent_gain=1.1), "vanilla RNN"),
])
def test_recurrent_classifier_rejects_inconsistent_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        RNNClassifier(3, 8, 2, **bad)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_classifier_stacks_encoder_layers(norm_first):
    from gradflow_lessons.models import TransformerClassifier

    model = TransformerClassifier(5, 3, d_model=16, nhead=2, depth=3, norm_first=norm_first, max_len=10)
    assert model(torch.randn(4, 7, 5)).shape == (4, 3)
    assert all(layer.norm_first is norm_first for layer in model.layers)
    assert isinstance(model.norm, torch.nn.LayerNorm) is norm_first  # pre-norm ends with a LayerNorm
    names = [n for n, _ in model.named_modules()]
    assert "layers.2.self_attn" in names and "layers.0.linear1" in names


def test_transformer_classifier_names_the_shape_it_needs():
    from gradflow_lessons.models import TransformerClassifier

    with pytest.raises(ValueError, match=r"T <= 4"):
        TransformerClassifier(5, 3, d_model=8, nhead=2, depth=1, max_len=4)(torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match="divisible"):
        TransformerClassifier(5, 3, d_model=10, nhead=4)


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_cnn_classifies_images_with_readable_layer_names(norm):
    from gradflow_lessons.models import CNN

    model = CNN(1, 10, widths=(4, 8), norm=norm)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    names = dict(model.named_parameters()).keys()
    assert {"blocks.0.conv.weight", "blocks.1.conv.weight", "output.weight"} <= names
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        model(torch.randn(3, 64))
