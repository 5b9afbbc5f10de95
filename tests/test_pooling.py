"""Poolings of a feature map [B, C, H, W] -> [B, C]: known answers, GeM limits, R-MAC regions."""

from __future__ import annotations

import math

import pytest
import torch

from cbir.errors import CbirError
from cbir.features.cnn.pooling import (
    POOLINGS,
    Pool,
    gap,
    gem,
    mac,
    pool,
    rmac,
    rmac_regions,
    spoc,
)


@pytest.fixture
def fmap() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, 5, 6, 7, dtype=torch.float64) + 0.05


def test_gap_mac_spoc_known_values():
    x = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    torch.testing.assert_close(gap(x), torch.tensor([[1.5, 5.5]]))
    torch.testing.assert_close(mac(x), torch.tensor([[3.0, 7.0]]))
    torch.testing.assert_close(spoc(x), torch.tensor([[6.0, 22.0]]))


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_output_shape_and_batch_independence(name, fmap):
    out = pool(name, fmap)
    assert out.shape == (3, 5) and out.dtype == fmap.dtype
    torch.testing.assert_close(pool(name, fmap[1:2]), out[1:2])


def test_gem_matches_its_formula(fmap):
    expected = fmap.pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    torch.testing.assert_close(gem(fmap), expected)
    torch.testing.assert_close(gem(fmap, p=2.5), fmap.pow(2.5).mean(dim=(-2, -1)).pow(1 / 2.5))


def test_gem_p1_is_gap(fmap):
    torch.testing.assert_close(gem(fmap, p=1.0), gap(fmap))


def test_gem_approaches_mac_for_large_p(fmap):
    # mean over H*W positions of (x/max)^p lies in [1/(HW), 1], so MAC * (HW)^(-1/p) <= GeM <= MAC
    n = fmap.shape[-1] * fmap.shape[-2]
    errors = []
    for p in [5.0, 20.0, 100.0, 1000.0]:
        out = gem(fmap, p=p)
        assert torch.all(out <= mac(fmap) * (1 + 1e-12))
        assert torch.all(out >= mac(fmap) * n ** (-1 / p) * (1 - 1e-12))
        errors.append(float((mac(fmap) - out).abs().max()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-2


def test_gem_large_p_does_not_overflow():
    x = torch.full((1, 2, 3, 3), 50.0)
    x[0, 0, 1, 1] = 60.0
    out = gem(x, p=500.0)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, torch.tensor([[60.0 * (1 / 9) ** (1 / 500), 50.0]]), rtol=1e-4, atol=0)


def test_gem_clamps_negative_activations():
    x = torch.tensor([[[[-1.0, 0.0], [0.0, 8.0]]]])
    # negatives and zeros count as eps: (8^3 / 4)^(1/3) = 128^(1/3)
    torch.testing.assert_close(gem(x, p=3.0), torch.tensor([[128.0 ** (1 / 3)]]), rtol=1e-5, atol=0)


def test_gem_accepts_learnable_tensor_p(fmap):
    p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    out = gem(fmap, p=p)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), gem(fmap, p=3.0))
    assert p.grad is not None and torch.isfinite(p.grad)


# --------------------------------------------------------------------------- R-MAC

def test_rmac_regions_square_map():
    # level 1: the whole 4x4 map; level 2: side floor(8/3) = 2, 2 x 2 quadrants
    assert rmac_regions(4, 4, levels=2) == [(0, 0, 4), (0, 0, 2), (0, 2, 2), (2, 0, 2), (2, 2, 2)]


def test_rmac_regions_wide_map():
    # 4 x 8: side 4; step b = 4/(k-1) for k = 2..7 regions gives overlaps 0, .5, .67, ...; .5 is
    # nearest 0.4, so 3 regions along the width at level 1, starting at 0, 2, 4
    assert rmac_regions(4, 8, levels=1) == [(0, 0, 4), (0, 2, 4), (0, 4, 4)]
    assert rmac_regions(8, 4, levels=1) == [(0, 0, 4), (2, 0, 4), (4, 0, 4)]


@pytest.mark.parametrize(("h", "w"), [(7, 7), (7, 10), (14, 9), (3, 17), (1, 1), (2, 5), (32, 24)])
def test_rmac_regions_properties(h, w):
    short, n_extra = min(h, w), None
    previous: list = []
    for level in range(1, 4):
        regions = rmac_regions(h, w, levels=level)
        assert regions[: len(previous)] == previous  # levels are appended in order
        new, previous = regions[len(previous):], regions
        side = math.floor(2 * short / (level + 1))
        if side < 1:
            assert new == []
            continue
        assert all(s == side for _, _, s in new)
        tops, lefts = sorted({t for t, _, _ in new}), sorted({c for _, c, _ in new})
        assert set(new) == {(t, c, side) for t in tops for c in lefts}  # a full grid
        assert tops[0] == 0 and lefts[0] == 0 and tops[-1] + side == h and lefts[-1] + side == w
        n_short, n_long = (len(tops), len(lefts)) if h <= w else (len(lefts), len(tops))
        if n_extra is None:
            n_extra = n_long - 1  # regions added along the long side at level 1
            assert (n_extra == 0) == (h == w) and 0 <= n_extra <= 6
        if side > 1:  # like the reference code, a side-1 grid may repeat starts after flooring
            assert (n_short, n_long) == (level, level + n_extra) and len(new) == n_short * n_long


def test_rmac_on_hand_made_map():
    # channel 0 fires only at the top-left corner, channel 1 only at the bottom-right corner
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0, 0] = 1.0
    x[0, 1, 3, 3] = 1.0
    # regions: whole map -> (1, 1)/sqrt2; quadrants TL -> (1, 0), TR -> 0, BL -> 0, BR -> (0, 1)
    expected = torch.tensor([[1 + 1 / math.sqrt(2), 1 + 1 / math.sqrt(2)]])
    torch.testing.assert_close(rmac(x, levels=2), expected, rtol=1e-5, atol=1e-6)
    x[0, 0, 0, 0] = 5.0  # scale does not matter: every region vector is L2-normalised
    out = rmac(x, levels=2)
    whole = torch.tensor([5.0, 1.0]) / math.sqrt(26)
    torch.testing.assert_close(out[0], whole + torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 1.0]),
                               rtol=1e-5, atol=1e-6)


def test_rmac_single_channel_counts_regions(fmap):
    one = fmap[:, :1]
    torch.testing.assert_close(rmac(one, levels=3), torch.full((3, 1), float(len(rmac_regions(6, 7, 3))),
                                                                 dtype=fmap.dtype), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- registry and errors

def test_pool_forwards_params_and_module_wrapper(fmap):
    torch.testing.assert_close(pool("gem", fmap, p=4.0), gem(fmap, p=4.0))
    torch.testing.assert_close(Pool("rmac", levels=2)(fmap), rmac(fmap, levels=2))
    assert "p=4.0" in repr(Pool("gem", p=4.0))


@pytest.mark.parametrize(("call", "match"), [
    (lambda x: pool("avg", x), r"unknown pooling 'avg'; choose one of \['gap', 'gem', 'mac', 'rmac', 'spoc'\]"),
    (lambda x: Pool("avg"), r"unknown pooling 'avg'"),
    (lambda x: pool("gap", x, p=3), r"pooling gap: unknown parameter\(s\) \['p'\]; accepted: \[\]"),
    (lambda x: pool("gem", x, q=3), r"unknown parameter\(s\) \['q'\]; accepted: \['p', 'eps'\]"),
    (lambda x: pool("gem", x, p=0.0), r"gem: parameter 'p' must be a finite number > 0, got 0.0"),
    (lambda x: pool("gem", x, p=float("inf")), r"'p' must be a finite number > 0"),
    (lambda x: pool("gem", x, eps=0), r"gem: parameter 'eps' must be a number > 0"),
    (lambda x: pool("rmac", x, levels=0), r"rmac: parameter 'levels' must be an integer >= 1, got 0"),
    (lambda x: pool("rmac", x, levels=2.5), r"'levels' must be an integer >= 1, got 2.5"),
    (lambda x: pool("mac", x[0]), r"mac: expected a feature map tensor \[B, C, H, W\] .* got \(5, 6, 7\)"),
    (lambda x: pool("gap", x.flatten(2)), r"gap: expected a feature map tensor"),
    (lambda x: pool("spoc", x[..., :0]), r"spoc: expected a feature map tensor \[B, C, H, W\] with H, W >= 1"),
])
def test_errors(call, match, fmap):
    with pytest.raises(CbirError, match=match):
        call(fmap)
