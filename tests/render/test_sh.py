"""Spherical harmonics against gsplat's pure-torch reference (same basis, signs, constants)."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics

from pointillist.render.sh import (SH_C0, eval_sh, num_sh_bases, rgb_to_sh0, sh_degree_from_coeffs,
                                   sh_to_rgb)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("n_coeffs", [None, 16])
def test_eval_sh_matches_gsplat(degree, n_coeffs):
    g = torch.Generator().manual_seed(degree)
    K = n_coeffs or num_sh_bases(degree)
    sh = torch.randn(200, K, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(200, 3, generator=g, dtype=torch.float64)  # not unit: both normalise
    ours = eval_sh(degree, sh, dirs)
    ref = _spherical_harmonics(degree, dirs, sh)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_eval_sh_gradients_match_gsplat():
    g = torch.Generator().manual_seed(7)
    sh = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64)
    w = torch.randn(50, 3, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda s, d: eval_sh(3, s, d), lambda s, d: _spherical_harmonics(3, d, s)):
        s, d = sh.clone().requires_grad_(), dirs.clone().requires_grad_()
        (fn(s, d) * w).sum().backward()
        grads.append((s.grad, d.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_view_dependence_and_float32():
    sh = torch.zeros(2, 4, 3)
    sh[:, 3] = 2.0  # band-1 x coefficient; its basis function is -C1 * x
    rgb = sh_to_rgb(1, sh, torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
    assert rgb.dtype == torch.float32
    assert rgb[0, 0] == 0.0  # 0.5 - 2 * 0.4886 < 0 is clamped
    assert rgb[1, 0] == pytest.approx(0.5 + 2 * 0.4886025119029199)


def test_dc_round_trip_and_clamp():
    rgb = torch.rand(10, 3)
    sh = rgb_to_sh0(rgb)[:, None, :]
    torch.testing.assert_close(sh_to_rgb(0, sh, torch.randn(10, 3)), rgb)
    assert SH_C0 == pytest.approx(0.28209479177387814)
    assert (sh_to_rgb(0, torch.full((1, 1, 3), -10.0), torch.ones(1, 3)) == 0).all()


def test_degree_helpers_and_errors():
    assert [sh_degree_from_coeffs(k) for k in (1, 3, 4, 9, 15, 16, 25)] == [0, 0, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        eval_sh(2, torch.zeros(1, 4, 3), torch.ones(1, 3))
    with pytest.raises(ValueError):
        eval_sh(4, torch.zeros(1, 25, 3), torch.ones(1, 3))
