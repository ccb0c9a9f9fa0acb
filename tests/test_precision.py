"""gradflow_lessons.precision: float-format facts and what a cast does, against float64
brute force and the IEEE constants."""

import math

import pytest
import torch

from gradflow_lessons.precision import (
    cast_report,
    float_format,
    lost_update_fraction,
    spacing,
)


def test_float16_facts_are_the_ieee_half_precision_constants():
    f = float_format(torch.float16)
    assert (f.bits, f.exponent_bits, f.mantissa_bits) == (16, 5, 10)
    assert f.max == 65504.0
    assert f.smallest_normal == 2.0**-14
    assert f.smallest_subnormal == 2.0**-24
    assert f.eps == 2.0**-10


def test_bfloat16_has_float32_range_and_8_bits_of_precision():
    b, s = float_format(torch.bfloat16), float_format(torch.float32)
    assert (b.exponent_bits, b.mantissa_bits) == (8, 7)
    assert b.smallest_normal == s.smallest_normal
    assert b.smallest_subnormal == 2.0**-133
    assert s.smallest_subnormal == 2.0**-149
    assert b.decimal_digits == pytest.approx(7 * math.log10(2))


def test_float_format_refuses_an_integer_dtype():
    with pytest.raises(ValueError, match="floating-point"):
        float_format(torch.int32)


def test_spacing_is_eps_at_one_and_the_subnormal_step_at_zero():
    got = spacing(torch.tensor([1.0, 1024.0, 0.0]), torch.float16)
    assert got.dtype == torch.float64
    assert got.tolist() == [2.0**-10, 1.0, 2.0**-24]


def test_an_update_below_half_an_ulp_is_rounded_away():
    w = torch.ones(3, dtype=torch.float16)
    ulp = spacing(torch.ones(1), torch.float16).item()
    for u, lost in [(0.4 * ulp, True), (0.6 * ulp, False)]:
        assert bool((w + torch.tensor(u, dtype=torch.float16) == w).all()) is lost


def test_cast_report_counts_underflow_subnormals_and_overflow_against_brute_force():
    g = torch.Generator().manual_seed(0)
    magnitude = 10.0 ** torch.empty(10_000, dtype=torch.float64).uniform_(-12, 6, generator=g)
    x = torch.randn(10_000, generator=g, dtype=torch.float64) * magnitude
    x[:7] = 0.0
    r = cast_report(x, torch.float16)
    nonzero = [v for v in x.tolist() if v != 0]
    zero = [v for v in nonzero if abs(v) < 2.0**-25]  # below half the smallest subnormal
    inf = [v for v in nonzero if abs(v) >= 65520.0]  # 65504 + half an ulp rounds up
    sub = [v for v in nonzero if 2.0**-25 < abs(v) < 2.0**-14]
    assert r.numel == 10_000 and r.nonzero == len(nonzero) == 9993
    assert r.underflow == len(zero)
    assert r.overflow == len(inf)
    assert abs(r.subnormal - len(sub)) <= 2  # ties at the boundaries round either way
    assert r.underflow_fraction == pytest.approx(len(zero) / len(nonzero))


def test_the_same_gradient_does_not_underflow_in_bfloat16_or_float32():
    x = torch.full((100,), 1e-26, dtype=torch.float64)
    assert cast_report(x, torch.float16).underflow_fraction == 1.0
    assert cast_report(x, torch.bfloat16).underflow == 0
    assert cast_report(x, torch.float32).underflow == 0


def test_cast_report_of_an_all_zero_tensor_has_zero_fractions():
    r = cast_report(torch.zeros(4), torch.float16)
    assert (r.nonzero, r.underflow_fraction, r.subnormal_fraction) == (0, 0.0, 0.0)


def test_lost_update_fraction_matches_elementwise_float16_arithmetic():
    w = torch.ones(1000)
    u = torch.linspace(1e-5, 1e-3, 1000)
    expected = sum(
        float(torch.tensor(1.0, dtype=torch.float16) + torch.tensor(v, dtype=torch.float16)) == 1.0
        for v in u.tolist()
    ) / 1000
    assert lost_update_fraction(w, u, torch.float16) == pytest.approx(expected)
    assert lost_update_fraction(w, u, torch.float32) == 0.0


def test_lost_update_fraction_counts_updates_that_underflow_on_their_own():
    assert lost_update_fraction(torch.zeros(2), torch.full((2,), 1e-9), torch.float16) == 1.0


def test_lost_update_fraction_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        lost_update_fraction(torch.ones(3), torch.ones(2), torch.float16)
