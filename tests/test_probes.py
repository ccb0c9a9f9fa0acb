"""The layer-gradient probes: one implementation each, checked against brute-force autograd."""

import pytest
import torch
from torch import nn

from gradflow_lessons import probes, skips, widgets
from gradflow_lessons.models import MLP


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 3, generator=g, dtype=torch.float64), torch.arange(20) % 3


def test_weight_gradient_norms_equal_autograd_and_leave_grad_alone(batch):
    inputs, targets = batch
    torch.manual_seed(0)
    model = MLP(3, 3, depth=3, width=5).double()
    layers = [m for _, m in model.linear_layers()]
    norms, loss = probes.weight_gradient_norms(model, layers, inputs, targets)
    reference = nn.functional.cross_entropy(model(inputs), targets)
    reference.backward()
    assert norms == pytest.approx([m.weight.grad.norm().item() for m in layers], rel=1e-12)
    assert loss == pytest.approx(reference.item())


def test_weight_gradient_norms_do_not_fill_grad(batch):
    torch.manual_seed(0)
    model = MLP(3, 3, depth=2, width=4).double()
    probes.weight_gradient_norms(model, [model.output], *batch)
    assert all(p.grad is None for p in model.parameters())


def test_seeded_restores_the_global_random_state():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    probes.seeded(lambda: MLP(3, 2, depth=4), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_gradient_profile_accepts_float64_inputs(batch):
    profile = probes.gradient_profile("residual", 3, *batch, width=6)
    assert len(profile.grad_norms) == 5 and all(n > 0 for n in profile.grad_norms)


def test_mlp_gradient_norms_match_a_residual_free_mlp_built_with_the_seed(batch):
    inputs, targets = batch
    norms = probes.mlp_gradient_norms(inputs, targets, depth=4, width=6, seed=2)
    torch.manual_seed(2)
    model = MLP(3, 3, 4, 6, "relu", "kaiming").double()
    layers = [m for _, m in model.linear_layers()]
    assert norms == pytest.approx(probes.weight_gradient_norms(model, layers, inputs, targets)[0])


@pytest.mark.parametrize("name", ["gradient_profile", "GradientProfile", "hidden_layers"])
def test_old_skips_names_are_the_probes(name):
    assert getattr(skips, name) is getattr(probes, name)


@pytest.mark.parametrize("name", ["mlp_gradient_norms", "recurrence_gradient_norms"])
def test_old_widgets_names_are_the_probes(name):
    assert getattr(widgets, name) is getattr(probes, name)


def test_skips_still_names_unknown_attributes():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        skips.nope  # noqa: B018


# --------------------------------------------------------------------------- through time


def test_input_gradient_norms_equal_autograd_per_time_step():
    from gradflow_lessons.models import RNNClassifier

    torch.manual_seed(0)
    model = RNNClassifier(3, 6, 2, cell="lstm").double()
    x, y = torch.randn(5, 7, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    result = probes.input_gradient_norms(model, nn.functional.cross_entropy, x, y)
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y).backward()
    assert result.norms == pytest.approx([xg.grad[:, t].norm().item() for t in range(7)], rel=1e-12)
    assert result.first_to_last == pytest.approx(result.norms[0] / result.norms[-1])
    assert result.decay_per_step == pytest.approx(result.first_to_last ** (1 / 6))


def test_input_gradient_norms_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(6, 4, 3), torch.randint(0, 2, (6,))
    torch.manual_seed(1)
    expected_rng = torch.rand(1)
    torch.manual_seed(1)
    probes.input_gradient_norms(model, nn.functional.cross_entropy, x, y)
    assert torch.equal(torch.rand(1), expected_rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())


def test_a_closed_forget_gate_stops_the_gradient_reaching_early_steps():
    from gradflow_lessons.data import first_token_task
    from gradflow_lessons.models import RNNClassifier

    x, y = first_token_task(n=64, length=20, seed=0)
    ratios = {}
    for bias in (1.0, -6.0):
        torch.manual_seed(0)
        model = RNNClassifier(4, 16, 2, cell="lstm", forget_bias=bias)
        ratios[bias] = probes.input_gradient_norms(model, nn.functional.cross_entropy, x, y).first_to_last
    assert ratios[-6.0] < 1e-6 * ratios[1.0]


def test_input_gradient_norms_explain_integer_inputs_and_unreduced_losses():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="embedding"):
        probes.input_gradient_norms(model, nn.functional.cross_entropy, torch.ones(2, 4, 3, dtype=torch.long),
                                    torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="scalar"):
        probes.input_gradient_norms(model, lambda out, t: out.sum(-1), torch.randn(2, 4, 3), None)


# --------------------------------------------------------------------------- attention


def brute_force_entropy(layer: nn.TransformerEncoderLayer, h: torch.Tensor) -> float:
    attn = layer.self_attn
    x = layer.norm1(h) if layer.norm_first else h
    d = attn.embed_dim
    q, k, _ = (x @ attn.in_proj_weight.T + attn.in_proj_bias).split(d, dim=-1)
    heads, n, t = attn.num_heads, x.shape[0], x.shape[1]
    q = q.reshape(n, t, heads, d // heads).transpose(1, 2)
    k = k.reshape(n, t, heads, d // heads).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return -(p * p.log()).sum(-1).mean().item()


@pytest.mark.parametrize("norm_first", [False, True])
def test_attention_entropy_equals_the_softmax_rows_entropy(norm_first):
    from gradflow_lessons.models import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier(3, 2, d_model=8, nhead=2, depth=2, norm_first=norm_first, max_len=6)
    model = model.double()
    model.eval()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    result = probes.attention_entropy(model, x)
    h = model.embed(x) + model.position[:6]
    expected = []
    for layer in model.layers:
        expected.append(brute_force_entropy(layer, h))
        h = layer(h)
    assert result.layers == ["layers.0.self_attn", "layers.1.self_attn"]
    assert result.entropy == pytest.approx(expected, rel=1e-9)
    assert result.max_entropy == pytest.approx([torch.log(torch.tensor(6.0)).item()] * 2)
    assert all(0 <= v <= 1 for v in result.normalized)


def test_attention_entropy_finds_saturated_attention():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(4, 1, batch_first=True)
    with torch.no_grad():
        attn.in_proj_weight.mul_(100.0)  # huge scores: one key per query

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    result = probes.attention_entropy(Wrapper(), torch.randn(3, 5, 4))
    assert result.saturated_fraction[0] > 0.5 and result.normalized[0] < 0.3


def test_attention_entropy_restores_the_fast_path_flag_and_hooks():
    from gradflow_lessons.models import TransformerClassifier

    model = TransformerClassifier(3, 2, d_model=8, nhead=2, depth=1).eval()
    flag = torch.backends.mha.get_fastpath_enabled()
    probes.attention_entropy(model, torch.randn(2, 4, 3))
    assert torch.backends.mha.get_fastpath_enabled() == flag
    assert not model.layers[0].self_attn._forward_hooks


def test_attention_entropy_names_a_model_without_attention():
    with pytest.raises(ValueError, match="no nn.MultiheadAttention"):
        probes.attention_entropy(nn.Linear(2, 2), torch.randn(1, 2))
