"""Fused track-length kernels: exact integrals, compiled = eager, block faces, parallel runs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ctdose.materials import get_medium
from ctdose.physics import kernels, mc_workers
from ctdose.physics.kernels import advance, advance_block, get_kernels, score_segment
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.sources import PointSource
from ctdose.physics.transport import (
    TrackLengthSetup,
    TransportGrid,
    build_block_majorant,
    build_tables,
)

F32 = dict(dtype=torch.float32)


def _slab_world(n_x: int = 40, spacing_mm: float = 2.0, split: int | None = None):
    """A row of ``n_x`` voxels along x (1 x 1 in y, z): water, or water | bone at ``split``."""
    media = [get_medium("water"), get_medium("spine_bone")]
    mi = np.zeros((1, 1, n_x), np.uint8)
    if split is not None:
        mi[..., split:] = 1
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    # voxel centres at spacing/2: the row spans x in [0, n_x * spacing], y and z in [0, spacing]
    grid = TransportGrid.from_arrays(mi, rho, (spacing_mm,) * 3, (spacing_mm / 2,) * 3, "cpu")
    rho_max = np.array([media[0].density_g_cm3, media[1].density_g_cm3 if split is not None else 0.0])
    tab = build_tables(media, rho_max, 150.0, "cpu")
    return grid, tab, media, mi, rho


def _mu_tr_per_mm(tab, medium: int, energy_kev: float, rho: float) -> float:
    pe = (energy_kev - tab.e0_kev) / tab.de_kev
    i = int(pe)
    row = tab.total_tr_ab[medium * tab.n_e + i].double()
    return float((row[2] + (pe - i) * row[3]) * rho)


def _score(setup, grid, tab, n, x0, s, energy_kev, k, seed=0, u=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n,), x0, **F32)
    zero = torch.zeros(n, **F32)
    e = torch.full((n,), energy_kev, **F32)
    pe = ((e - tab.e0_kev) / tab.de_kev).clamp(0, tab.n_e - 1.001)
    ie = pe.to(torch.int64)
    fe = pe - ie
    idx, val = score_segment(
        x, zero + 1.0, zero + 1.0, torch.full((n,), u, **F32), zero, torch.full((n,), math.sqrt(1 - u * u), **F32),
        torch.full((n,), s, **F32), e, ie, fe, torch.zeros(n, dtype=torch.int64), torch.rand(n, generator=gen),
        torch.arange(k, **F32), setup.h_mm, setup.grid_f, setup.grid_i, grid.voxel_table, tab.total_tr_ab,
    )
    return idx, val


def test_score_segment_is_the_exact_track_length_integral_in_one_medium():
    grid, tab, *_ = _slab_world()
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    energy, s_mm = 60.0, 37.3
    mu_tr = _mu_tr_per_mm(tab, 0, energy, 1.0)
    # K points cover the segment (spacing s/K > h): every estimate is exact
    idx, val = _score(setup, grid, tab, 8, 1.0, s_mm, energy, k=8)
    np.testing.assert_allclose(val.sum(0).numpy(), energy * mu_tr * s_mm, rtol=2e-6)
    # more slots than the segment needs: each estimate is h * (#points < s); its mean is exact
    idx, val = _score(setup, grid, tab, 20_000, 1.0, s_mm, energy, k=64)
    per = val.sum(0).numpy()
    mean, sem = per.mean(), per.std(ddof=1) / math.sqrt(per.size)
    print(f"one medium: mean {mean:.5f} +- {sem:.5f}, exact {energy * mu_tr * s_mm:.5f}")
    assert abs(mean - energy * mu_tr * s_mm) < 4 * sem + 1e-6 * mean
    assert per.std() > 0  # really sampled, not integrated


def test_score_segment_is_unbiased_across_a_medium_boundary_and_scores_the_crossed_voxels():
    split = 20
    grid, tab, media, *_ = _slab_world(split=split)
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    energy, x0, s_mm = 45.0, 31.0, 25.5  # 9 mm of water then 16.5 mm of bone (boundary at 40 mm)
    exact = energy * (
        _mu_tr_per_mm(tab, 0, energy, media[0].density_g_cm3) * (2.0 * split - x0)
        + _mu_tr_per_mm(tab, 1, energy, media[1].density_g_cm3) * (x0 + s_mm - 2.0 * split)
    )
    idx, val = _score(setup, grid, tab, 40_000, x0, s_mm, energy, k=16, seed=3)
    per = val.sum(0).numpy()
    mean, sem = per.mean(), per.std(ddof=1) / math.sqrt(per.size)
    print(f"water|bone: mean {mean:.4f} +- {sem:.4f}, exact {exact:.4f}")
    assert abs(mean - exact) < 4 * sem
    hit = np.unique(idx[val > 0].numpy())
    np.testing.assert_array_equal(hit, np.arange(int(x0 // 2), int((x0 + s_mm) // 2) + 1))


def test_points_outside_the_grid_score_nothing():
    grid, tab, *_ = _slab_world()
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    # from x = 70 mm (10 mm before the end of the 80 mm row) a 50 mm segment: 10 mm inside
    idx, val = _score(setup, grid, tab, 8, 70.0, 50.0, 60.0, k=64)
    mu_tr = _mu_tr_per_mm(tab, 0, 60.0, 1.0)
    per = val.sum(0).numpy()
    assert np.all(np.abs(per - 60.0 * mu_tr * 10.0) <= 60.0 * mu_tr * 2.0 + 1e-9)  # one point of 2 mm either way
    assert np.all(idx.numpy() < grid.n_vox)


def _random_pool(grid, n, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(grid.lo_mm), torch.tensor(grid.hi_mm)
    pos = lo + (hi - lo) * torch.rand((n, 3), generator=g)
    d = torch.randn((n, 3), generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    e = 20.0 + 100.0 * torch.rand(n, generator=g)
    return pos.T.contiguous(), d.T.contiguous(), e, torch.rand((3, n), generator=g)


def _bone_cube():
    media = [get_medium("air"), get_medium("water"), get_medium("spine_bone")]
    mi = np.zeros((12, 12, 12), np.uint8)
    mi[2:10, 2:10, 2:10] = 1
    mi[5:7, 5:7, 5:7] = 2
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    rho_max = np.array([m.density_g_cm3 for m in media])
    grid = TransportGrid.from_arrays(mi, rho, (5.0, 5.0, 5.0), (-27.5, -27.5, -27.5), "cpu")
    tab = build_tables(media, rho_max, 150.0, "cpu")
    return mi, rho, grid, tab


def test_compiled_kernels_equal_the_eager_ones():
    mi, rho, grid, tab = _bone_cube()
    block = build_block_majorant(mi, rho, tab, 4)
    eager = TrackLengthSetup.build(grid, tab, None, compile=False, block=block)
    fused = TrackLengthSetup.build(grid, tab, None, compile=True, block=block)
    if not fused.compiled or kernels._FAILED:
        pytest.skip("torch.compile is not available here")
    (x, y, z), (u, v, w), e, r = _random_pool(grid, 5000, 1)
    common = (x, y, z, u, v, w, e, r[0].clamp_min(1e-7), r[1], eager.grid_f, eager.grid_i, eager.energy_f)
    for name, args in [
        ("advance", common + (eager.maj_ab, grid.voxel_table, tab.total_tr_ab)),
        ("advance_block", common + (eager.block_ab, eager.block_f, eager.block_i, grid.voxel_table, tab.total_tr_ab)),
    ]:
        k = {"advance": 0, "advance_block": 2}[name]
        a = eager.kernels[k](*args)
        b = fused.kernels[k](*args)
        for ta, tb in zip(a, b):
            if ta.dtype == torch.bool or ta.dtype == torch.int64:
                assert (ta == tb).float().mean() > 0.999, name
            else:
                np.testing.assert_allclose(tb.numpy(), ta.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    s = -torch.log(r[0].clamp_min(1e-7)) * 20.0
    pe = ((e - tab.e0_kev) / tab.de_kev).clamp(0, tab.n_e - 1.001)
    ie = pe.to(torch.int64)
    args = (x, y, z, u, v, w, s, e, ie, pe - ie, torch.zeros(5000, dtype=torch.int64), r[2], torch.arange(6, **F32),
            eager.h_mm, eager.grid_f, eager.grid_i, grid.voxel_table, tab.total_tr_ab)
    ia, va = eager.kernels[1](*args)
    ib, vb = fused.kernels[1](*args)
    np.testing.assert_allclose(vb.sum().item(), va.sum().item(), rtol=1e-5)
    assert (ia == ib).float().mean() > 0.999


def test_block_faces_always_make_progress():
    """A photon grazing a block face (tiny direction cosine across it) must not crawl."""
    mi, rho, grid, tab = _bone_cube()
    # vacuum world of the same shape: the photon only crosses block faces
    grid0 = TransportGrid.from_arrays(mi, np.zeros_like(rho), (5.0, 5.0, 5.0), (-27.5, -27.5, -27.5), "cpu")
    block = build_block_majorant(mi, np.zeros_like(rho), tab, 2)
    st = TrackLengthSetup.build(grid0, tab, None, compile=False, block=block)
    n = 3
    x = torch.tensor([-29.99, -29.99, -5.0])  # the first two start on a block face (x = -30)
    y = torch.tensor([-12.0, 3.0, -29.99])
    z = torch.tensor([0.0, 0.0, 0.0])
    d = torch.tensor([[1.0, 1e-6, 0.0], [1e-7, 1.0, 0.0], [0.0, 1.0, 1e-6]])
    d = d / d.norm(dim=1, keepdim=True)
    u, v, w = d.T.contiguous()
    e = torch.full((n,), 60.0)
    steps = torch.zeros(n, dtype=torch.int64)
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(200):
        out = advance_block(x, y, z, u, v, w, e, torch.full((n,), 0.5), torch.full((n,), 0.5), st.grid_f, st.grid_i,
                            st.energy_f, st.block_ab, st.block_f, st.block_i, grid0.voxel_table, tab.total_tr_ab)
        x, y, z, inside = out[1], out[2], out[3], out[13]
        steps += alive.to(torch.int64)
        alive &= inside
        if not alive.any():
            break
    print("block crossings to leave a 60 mm box with 10 mm blocks:", steps.tolist())
    assert not alive.any()
    assert int(steps.max()) <= 2 * 6 + 2  # at most one step per block crossed, plus the exit


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "_FAILED", set())
    guarded = kernels._Guarded("fake", broken, lambda a: a + 1)
    with pytest.warns(RuntimeWarning, match="eager"):
        assert guarded(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert guarded(2) == 3  # falls back for good, silently
    assert get_kernels("cpu", compile=False)[0] is advance


def _water_box():
    water = get_medium("water")
    geo = VoxelGeometry(np.zeros((8, 8, 8), np.uint8), np.ones((8, 8, 8), np.float32), [water], (5.0,) * 3, (-17.5,) * 3)
    src = PointSource((0, -300.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.08, 0.08))
    return geo, src


def test_compiled_and_eager_runs_agree_and_each_is_reproducible():
    geo, src = _water_box()
    a = simulate(geo, src, 20_000, seed=5, compile=True, keep_batches=True)
    a2 = simulate(geo, src, 20_000, seed=5, compile=True)
    b = simulate(geo, src, 20_000, seed=6, compile=False, keep_batches=True)
    np.testing.assert_array_equal(a.energy_ev, a2.energy_ev)
    ta, sa = a.sum_with_sigma(np.ones(geo.shape))
    tb, sb = b.sum_with_sigma(np.ones(geo.shape))
    assert abs(ta - tb) < 4 * math.hypot(sa, sb)


def test_threads_inside_the_kernels_do_not_change_the_result(monkeypatch):
    """Where no worker processes can start, workers=2 means two OpenMP threads: same numbers."""
    geo, src = _water_box()
    one = simulate(geo, src, 20_000, seed=9)
    monkeypatch.setattr(mc_workers, "can_use_processes", lambda: False)
    two = simulate(geo, src, 20_000, seed=9, workers=2)
    np.testing.assert_array_equal(one.energy_ev, two.energy_ev)
    assert torch.get_num_threads() == 1  # restored (the test session runs one torch thread)


def test_worker_processes_are_reproducible_and_agree_with_one_process():
    geo, src = _water_box()
    one = simulate(geo, src, 40_000, seed=4, keep_batches=True)
    two = simulate(geo, src, 40_000, seed=4, workers=2, keep_batches=True)
    two_again = simulate(geo, src, 40_000, seed=4, workers=2)
    np.testing.assert_array_equal(two.energy_ev, two_again.energy_ev)
    assert not np.array_equal(one.energy_ev, two.energy_ev)  # the second group has its own stream
    t1, s1 = one.sum_with_sigma(np.ones(geo.shape))
    t2, s2 = two.sum_with_sigma(np.ones(geo.shape))
    assert abs(t1 - t2) < 4 * math.hypot(s1, s2)
    assert two.emitted_energy_ev == pytest.approx(60e3, rel=1e-9)
