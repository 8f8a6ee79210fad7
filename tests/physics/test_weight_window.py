"""Weight windows: splitting and roulette keep the weight; a windowed run stays unbiased."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.errors import InputError
from ctdose.materials import get_medium
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.sources import PointSource
from ctdose.physics.transport import PhotonState
from ctdose.physics.weight_window import (
    MAX_SPLIT,
    WeightWindow,
    apply_weight_window,
    voxel_targets,
    window_targets,
    window_voxel_table,
)


def _window(targets: list[float]) -> WeightWindow:
    """A 1 x 1 x len(targets) row of 10 mm blocks along x from x = 0."""
    n = len(targets)
    block_f = torch.tensor([0.1, 0.1, 0.1, 10.0, 10.0, 10.0, n, 1, 1, 1e-3])
    grid_f = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 10 * n, 10, 10])
    return WeightWindow(torch.tensor(targets), block_f, grid_f, torch.tensor([n, 1, 1]))


def _photons(x_mm: float, weight: float, n: int) -> PhotonState:
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return PhotonState(full(x_mm), full(5.0), full(5.0), full(1.0), full(0.0), full(0.0), full(60.0), full(weight),
                       torch.arange(n))


def test_split_keeps_the_weight_exactly():
    gen = torch.Generator().manual_seed(0)
    st = _photons(15.0, 1.0, 1000)  # block 1, target 0.1: ten copies of weight 0.1 each
    out = apply_weight_window(st, _window([1.0, 0.1]), gen)
    assert len(out) == 10_000
    assert torch.allclose(out.weight, torch.full((10_000,), 0.1))
    # copies follow their original (batch offsets repeated in order)
    assert torch.equal(out.offset, torch.arange(1000).repeat_interleave(10))
    # no splitting while the pool is too large (roulette only)
    st = _photons(15.0, 1.0, 10)
    assert len(apply_weight_window(st, _window([1.0, 0.1]), gen, allow_split=False)) == 10
    # a deep target: at most MAX_SPLIT copies, the weight still kept exactly
    out = apply_weight_window(_photons(15.0, 1.0, 100), _window([1.0, 1e-3]), gen)
    assert len(out) == 100 * MAX_SPLIT
    assert float(out.weight.sum()) == pytest.approx(100.0, rel=1e-6)


def test_roulette_keeps_the_weight_in_expectation():
    gen = torch.Generator().manual_seed(1)
    n, w = 200_000, 0.05
    out = apply_weight_window(_photons(5.0, w, n), _window([1.0, 1.0]), gen)
    # survivors carry the target weight; their number is binomial(n, w / W)
    assert torch.all(out.weight == 1.0)
    expected, sd = n * w, math.sqrt(n * w * (1 - w))
    assert abs(len(out) - expected) < 4 * sd
    # inside the window, or where there is no window (target 0), nothing changes
    for x, weight in ((5.0, 0.8), (25.0, 0.01)):
        st = _photons(x, weight, 50)
        out = apply_weight_window(st, _window([1.0, 1.0, 0.0]), gen)
        assert len(out) == 50 and torch.all(out.weight == weight)


def test_targets_follow_the_fluence_not_the_dose():
    # 4 blocks of 2 voxels along x: soft tissue, bone, tissue, air; the fluence halves per block
    mi = np.zeros((2, 2, 8), np.int64)
    rho = np.ones(mi.shape)
    mi[..., 2:4] = 1
    rho[..., 2:4] = 1.9
    rho[..., 6:8] = 1.2e-3
    tr = np.array([0.03, 0.09])  # bone transfers three times more per unit density
    fluence = np.repeat(0.5 ** np.arange(4), 2)[None, None, :] * np.ones(mi.shape)
    energy = fluence * rho * tr[mi]
    t = window_targets(energy, mi, rho, tr, block_vox=2, n_blocks=(1, 1, 4), min_weight=1 / 64)
    assert t[3] == 0.0  # air: no window
    # relative to the 99th percentile of the three tissue blocks (about the first one)
    assert t[1] / t[0] == pytest.approx(0.5, rel=0.02) and t[2] / t[0] == pytest.approx(0.25, rel=0.02)
    # clipped below at min_weight; no window where the pilot never came or far out of the field
    base = energy.copy()
    energy[..., 4:6] = base[..., 4:6] / 0.25 * 0.01  # 1 % of the first block's fluence
    energy[..., 2:4] = 0.0
    t = window_targets(energy, mi, rho, tr, block_vox=2, n_blocks=(1, 1, 4), min_weight=1 / 64)
    assert t[2] == pytest.approx(1 / 64) and t[1] == 0.0
    energy[..., 4:6] = base[..., 4:6] / 0.25 * 0.001  # 0.1 %: below a quarter of 1/64
    t = window_targets(energy, mi, rho, tr, block_vox=2, n_blocks=(1, 1, 4), min_weight=1 / 64)
    assert t[2] == 0.0 and t[0] == pytest.approx(1.0)


def test_window_voxel_table_holds_medium_density_and_target_in_one_row():
    """[medium, density, target, 0] per voxel: the grid's voxel table and the block targets of
    each voxel's centre, the targets then held once (target_vox a view of column 2), cached."""
    from ctdose.physics.transport import prepare_transport

    rng = np.random.default_rng(5)
    shape, spacing = (6, 10, 14), (2.0, 3.0, 2.5)
    media = [get_medium("water"), get_medium("lung"), get_medium("spine_bone")]
    mi = rng.integers(0, 3, shape).astype(np.uint8)
    rho = (np.array([m.density_g_cm3 for m in media], np.float32)[mi] * rng.uniform(0.8, 1.2, shape)).astype(np.float32)
    prep = prepare_transport(mi, rho, media, spacing, (0.0, 0.0, 0.0), 150.0, "cpu", "expected_track_length", "block",
                             block_vox=4, compile=False)
    ts, nb = prep.track_setup, prep.block.n_blocks
    target = torch.tensor(rng.uniform(0.0, 1.0, int(np.prod(nb))), dtype=torch.float32)
    win = WeightWindow(target, ts.block_f, ts.grid_f, ts.block_i)
    table = window_voxel_table(win, prep.grid.voxel_table, ts.cell_f)
    assert table.shape == (mi.size, 4) and table.dtype == torch.float32 and table.is_contiguous()
    np.testing.assert_array_equal(table[:, 0].numpy(), mi.reshape(-1))
    np.testing.assert_array_equal(table[:, 1].numpy(), rho.reshape(-1))
    assert np.all(table[:, 3].numpy() == 0)
    # an independent look-up: voxel (k, j, i) lies in block (k // 4, j // 4, i // 4)
    k, j, i = np.indices(shape)
    want = target.numpy().reshape(nb)[k // 4, j // 4, i // 4]
    np.testing.assert_array_equal(table[:, 2].numpy(), want.reshape(-1))
    assert voxel_targets(win, ts.cell_f).data_ptr() == table[:, 2].data_ptr()  # held once
    assert window_voxel_table(win, prep.grid.voxel_table, ts.cell_f) is table


def _cylinder(radius_mm: float = 100.0, sp: float = 5.0, nz: int = 6):
    n = int(2 * radius_mm / sp) + 2
    c = (np.arange(n) - (n - 1) / 2) * sp
    inside = c[None, :] ** 2 + c[:, None] ** 2 <= radius_mm**2
    rho = np.broadcast_to(np.where(inside, 1.0, 0.0).astype(np.float32), (nz, n, n)).copy()
    geo = VoxelGeometry(np.zeros(rho.shape, np.uint8), rho, [get_medium("water")], (sp, sp, sp),
                        (-(nz - 1) / 2 * sp, c[0], c[0]))
    half = math.atan((n * sp / 2) / 500.0)
    src = PointSource((0.0, -600.0, 0.0), (0, 1, 0), energy_kev=60.0, half_angles_rad=(half, math.atan(12.0 / 500)))
    return geo, src, rho > 0, c


@pytest.mark.parametrize("estimator", ["expected_track_length", "track_length"])
def test_windowed_run_is_unbiased_and_evens_out_the_noise(estimator):
    geo, src, body, y = _cylinder()
    runs = {ww: simulate(geo, src, 150_000, seed=4, keep_batches=True, weight_window=ww, estimator=estimator)
            for ww in (False, True)}
    thirds = np.array_split(np.arange(y.size), 3)
    sig = {}
    for k, idx in enumerate(thirds):  # near, middle and far third along the beam (y)
        w = np.zeros(geo.shape)
        w[:, idx, :] = 1.0
        w *= body
        (a, sa), (b, sb) = (runs[ww].sum_with_sigma(w) for ww in (False, True))
        print(f"third {k}: plain {a:.4g} +- {100 * sa / a:.2f} %, window {b:.4g} +- {100 * sb / b:.2f} %")
        assert abs(a - b) < 4 * math.hypot(sa, sb)
        sig[k] = (sa / a, sb / b)
    # far side: the window brings more photons there. Judged per voxel: the relative error of
    # the far third's *sum* from 10 batches scatters by about 24 % and the split copies of one
    # photon are correlated, so its ratio windowed / plain ranged 0.20-1.68 over 26 seeds (the
    # voxel mean below never failed); printed, not asserted
    print(f"far third's sum, relative error windowed / plain: {sig[2][1] / sig[2][0]:.2f}")
    far = np.zeros(geo.shape, bool)
    far[:, thirds[2], :] = body[:, thirds[2], :]
    plain, windowed = (float(runs[ww].rel_sigma[far].mean()) for ww in (False, True))
    print(f"far third, mean relative error per voxel: plain {plain:.4f}, window {windowed:.4f}")
    assert windowed < 0.55 * plain
    res = runs[True]
    assert res.deposited_energy_ev + res.escaped_energy_ev == pytest.approx(res.emitted_energy_ev, rel=0.02)


def test_windowed_run_is_reproducible_and_runs_in_worker_processes():
    geo, src, body, _ = _cylinder(60.0, nz=4)
    a = simulate(geo, src, 30_000, seed=2, weight_window=True)
    b = simulate(geo, src, 30_000, seed=2, weight_window=True)
    assert np.array_equal(a.energy_ev, b.energy_ev) and np.array_equal(a.rel_sigma, b.rel_sigma)
    c = simulate(geo, src, 30_000, seed=2, weight_window=True, workers=2)
    ratio = c.energy_ev[body].sum() / a.energy_ev[body].sum()
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_window_needs_the_track_length_estimator_and_a_valid_min_weight():
    geo, src, _, _ = _cylinder(40.0, nz=2)
    with pytest.raises(InputError, match="weight_window"):
        simulate(geo, src, 1000, estimator="collision", weight_window=True)
    with pytest.raises(InputError, match="window_min_weight"):
        simulate(geo, src, 1000, weight_window=True, window_min_weight=0.0)
