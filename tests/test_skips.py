import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from gradflow_lessons.skips import (
    DenseBlock,
    DenseCNN,
    DenseMLP,
    ResidualBlock,
    ResidualCNN,
    ResidualMLP,
    build_network,
    gradient_profile,
    hidden_layers,
    init_layer_,
    resolve_branch_scale,
)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def test_pre_norm_block_adds_the_scaled_branch_of_the_normalised_input():
    block = ResidualBlock(6, "tanh", norm="layer", placement="pre", branch_scale=0.3, branch_layers=2)
    h = torch.randn(4, 6)
    b = block.branch
    expected = h + 0.3 * b.linear2(torch.tanh(b.linear1(torch.tanh(block.norm(h)))))
    assert torch.allclose(block(h), expected)


def test_post_norm_block_normalises_the_sum():
    block = ResidualBlock(6, "relu", norm="layer", placement="post", branch_scale=0.5)
    h = torch.randn(4, 6)
    expected = nn.functional.layer_norm(h + 0.5 * block.branch.linear1(torch.relu(h)), (6,))
    assert torch.allclose(block(h), expected)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_plain_block_is_the_branch_alone(placement):
    block = ResidualBlock(5, "relu", placement=placement, skip=False)
    h = torch.randn(3, 5)
    assert torch.allclose(block(h), block.branch.linear1(torch.relu(h)))


def test_residual_block_jacobian_is_identity_plus_scaled_branch_jacobian():
    block = ResidualBlock(5, "tanh", branch_scale=0.7, branch_layers=2)
    h = torch.randn(5)
    expected = torch.eye(5) + 0.7 * jacrev(block.branch)(h)
    assert torch.allclose(jacrev(block)(h), expected, atol=1e-12)


def test_zero_init_block_starts_as_the_identity_and_still_learns():
    block = ResidualBlock(5, "relu", branch_layers=2, zero_init=True, init="kaiming")
    h = torch.randn(8, 5)
    assert torch.equal(block(h), h)
    block(h).pow(2).sum().backward()
    assert block.branch.linear2.weight.grad.norm() > 0  # its own input is not zero


def test_branch_scale_one_over_sqrt_depth():
    assert resolve_branch_scale("1/sqrt(depth)", 16) == 0.25
    model = ResidualMLP(3, 2, depth=9, width=4, branch_scale="1/sqrt(depth)")
    assert all(b.branch_scale == pytest.approx(1 / 3) for b in model.blocks)


@pytest.mark.parametrize(
    "bad", [{"placement": "middle"}, {"norm": "group"}, {"branch_scale": "sqrt"}, {"depth": 0},
            {"branch_layers": 0}, {"activation": "swish"}, {"init": "he"}]
)
def test_residual_mlp_rejects_bad_arguments_naming_the_choices(bad):
    with pytest.raises(ValueError, match="choose one of|must be"):
        ResidualMLP(3, 2, **bad)


def test_plain_and_residual_networks_share_their_weights_for_the_same_seed():
    torch.manual_seed(1)
    plain = ResidualMLP(3, 2, depth=4, width=8, skip=False)
    torch.manual_seed(1)
    residual = ResidualMLP(3, 2, depth=4, width=8)
    for (name, a), (_, b) in zip(plain.state_dict().items(), residual.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3)
    assert not torch.allclose(plain(x), residual(x))


def test_residual_mlp_has_readable_layer_names_and_its_stream_ends_in_the_head():
    model = ResidualMLP(3, 2, depth=3, width=8, branch_layers=2, norm="layer")
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.LayerNorm))]
    assert names == ["stem"] + [f"blocks.{i}.{part}" for i in range(3)
                                for part in ("norm", "branch.linear1", "branch.linear2")] + ["head.linear"]
    x = torch.randn(5, 3)
    stream = model.stream(x)
    assert len(stream) == 4 and torch.allclose(model(x), model.head(stream[-1]))


def test_unscaled_residual_stream_grows_with_depth_and_scaling_bounds_it():
    x = torch.randn(256, 8)
    stds = {}
    for scale in (1.0, "1/sqrt(depth)"):
        torch.manual_seed(0)
        stream = ResidualMLP(8, 2, depth=30, width=64, init="kaiming", branch_scale=scale).stream(x)
        stds[scale] = (stream[-1].std() / stream[0].std()).item()
    assert stds[1.0] > 1e3  # about 2 ** (30 / 2)
    assert stds["1/sqrt(depth)"] < math.e  # about sqrt(prod(1 + 1/L)) <= sqrt(e)


def test_dense_block_concatenates_every_layer_output():
    block = DenseBlock(4, growth=3, layers=3, activation="tanh")
    h = torch.randn(2, 4)
    features = [h]
    for layer in block.layers:
        features.append(layer.linear(torch.tanh(torch.cat(features, 1))))
    out = block(h)
    assert block.out_features == 13 and out.shape == (2, 13)
    assert torch.allclose(out, torch.cat(features, 1))
    assert [layer.linear.in_features for layer in block.layers] == [4, 7, 10]


def test_dense_mlp_gives_the_stem_a_direct_path_to_the_head():
    model = DenseMLP(3, 2, depth=5, width=6, growth=2)
    assert model.head.linear.in_features == 6 + 5 * 2
    x = torch.randn(4, 3)
    h0 = model.stem(x)
    direct = jacrev(lambda h: model.head(torch.cat([h, model.dense(h0)[:, 6:]], 1)))(h0)
    assert direct.abs().sum() > 0  # the head reads h_0 itself, not only through the layers


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_cnn_builders_keep_the_image_shape_until_the_pooling_head(norm):
    x = torch.randn(2, 3, 8, 8)
    residual = ResidualCNN(3, 5, depth=2, width=4, norm=norm, branch_layers=2, zero_init=True)
    dense = DenseCNN(3, 5, depth=3, width=4, growth=2, norm=norm)
    assert residual(x).shape == (2, 5) and dense(x).shape == (2, 5)
    assert isinstance(residual.blocks[0].branch.conv2, nn.Conv2d)
    assert all(s.shape == (2, 4, 8, 8) for s in residual.stream(x))
    assert dense.dense(dense.stem(x)).shape == (2, 10, 8, 8)
    if norm == "layer":
        assert isinstance(residual.blocks[0].norm, nn.GroupNorm)


def test_kaiming_conv_init_uses_channels_times_kernel_as_fan_in():
    conv = init_layer_(nn.Conv2d(40, 64, 3), "kaiming")
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (40 * 9)), rel=0.03)
    assert torch.all(conv.bias == 0)


def test_hidden_layers_name_each_block_input_to_output():
    assert [n for n, _ in hidden_layers(ResidualMLP(2, 2, depth=2, branch_layers=2))] == [
        "blocks.0.branch.linear2", "blocks.1.branch.linear2"]
    assert [n for n, _ in hidden_layers(DenseMLP(2, 2, depth=2))] == [
        "dense.layers.0.linear", "dense.layers.1.linear"]
    with pytest.raises(ValueError, match="expected"):
        hidden_layers(nn.Linear(2, 2))


def test_build_network_rejects_an_unknown_connection():
    with pytest.raises(ValueError, match="choose one of"):
        build_network("highway", 2, 2, depth=3)


@pytest.mark.parametrize("connection", ["plain", "residual", "dense"])
def test_gradient_profile_matches_autograd(connection):
    x, y = torch.randn(16, 3), torch.arange(16) % 3
    profile = gradient_profile(connection, 4, x, y, width=8, seed=3, activation="tanh")
    torch.manual_seed(3)
    model = build_network(connection, 3, 3, 4, 8, activation="tanh")
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    layers = [model.stem, *[m for _, m in hidden_layers(model)], model.head.linear]
    assert profile.layers[0] == "stem" and profile.layers[-1] == "head" and len(profile.layers) == 6
    assert profile.grad_norms == pytest.approx([m.weight.grad.norm().item() for m in layers], rel=1e-10)
    assert profile.loss == pytest.approx(loss.item())
    assert profile.first_layer == profile.grad_norms[0]


def test_plain_stem_gradient_vanishes_with_depth_but_residual_and_dense_do_not():
    x, y = torch.randn(64, 2), torch.arange(64) % 3
    first = {c: gradient_profile(c, 40, x, y, width=32).first_layer for c in ("plain", "residual", "dense")}
    assert first["plain"] < 1e-8 < 1e-3 < min(first["residual"], first["dense"])
