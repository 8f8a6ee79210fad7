"""Fused kernels: exact track-length integrals, the collision estimator's sites and its exact
compound-Poisson sum, exact interaction distributions, compiled = eager, block faces, parallel
runs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ctdose.materials import get_medium
from ctdose.physics import kernels, mc_workers, transport
from ctdose.physics.interactions import ELECTRON_REST_KEV, HC_KEV_ANGSTROM, klein_nishina_pdf
from ctdose.physics.kernels import (
    advance,
    advance_block,
    advance_block_collision,
    advance_collision,
    advance_collision_sites,
    get_kernels,
    score_points,
    segment_points,
)
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.sources import PointSource
from ctdose.physics.transport import (
    TrackLengthSetup,
    TransportGrid,
    TransportTally,
    build_block_majorant,
    build_tables,
)
from ctdose.physics.xsection import form_factor_sq, incoherent_sf

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
    i, f = tab.energy_index(torch.tensor([energy_kev], **F32))
    row = tab.total_tr_ab[medium * tab.n_rows + int(i[0])].double()
    return float((row[2] + float(f[0]) * row[3]) * rho)


def _score(setup, grid, tab, n, x0, s, energy_kev, k, seed=0, u=1.0):
    """Score ``n`` equal segments with at most ``k`` points: tally index and score of each point,
    and each photon's total."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n,), x0, **F32)
    zero = torch.zeros(n, **F32)
    e = torch.full((n,), energy_kev, **F32)
    ie, fe = tab.energy_index(e)
    r_strat = torch.rand(n, generator=gen)
    seg = torch.full((n,), s, **F32)
    count, hi = segment_points(seg, r_strat, torch.tensor(float(k)), setup.h_mm)
    ends = count.cumsum(0)
    pid = torch.repeat_interleave(count, output_size=int(ends[-1]))
    idx, val = score_points(
        pid, ends - count, x, zero + 1.0, zero + 1.0, torch.full((n,), u, **F32), zero,
        torch.full((n,), math.sqrt(1 - u * u), **F32), hi, e, ie, fe, torch.zeros(n, dtype=torch.int64), r_strat,
        setup.grid_f, setup.grid_i, grid.voxel_table, tab.total_tr_ab,
    )
    per = torch.zeros(n, dtype=torch.float64).index_add_(0, pid, val)
    return idx, val, per.numpy()


def test_segment_points_are_the_points_inside_the_segment():
    """The count is exactly the number of slots j < K with (j + U) h < s, as placed in float32."""
    grid, tab, *_ = _slab_world()
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    gen = torch.Generator().manual_seed(8)
    n, k = 50_000, 16
    s = torch.cat([torch.rand(n, generator=gen) * 60.0, torch.tensor([0.0, 2.0, 4.0, 32.0, 1e6])])
    r = torch.cat([torch.rand(n, generator=gen), torch.tensor([0.5, 0.0, 0.999, 0.0, 0.3])])
    count, hi = segment_points(s, r, torch.tensor(float(k)), setup.h_mm)
    h_ref = torch.maximum(s / k, setup.h_mm)
    t = (torch.arange(k, **F32)[:, None] + r[None, :]) * h_ref[None, :]
    np.testing.assert_array_equal(count.numpy(), (t < s[None, :]).sum(0).numpy())
    np.testing.assert_array_equal(hi.numpy(), h_ref.numpy())


def test_point_owners_are_repeat_interleave():
    counts = torch.tensor([0, 3, 1, 0, 0, 5, 2, 0])
    ends = counts.cumsum(0)
    owners = transport._owners(ends, int(ends[-1]))
    np.testing.assert_array_equal(owners.numpy(), torch.repeat_interleave(counts).numpy())
    assert owners.dtype == torch.int64


def test_score_points_give_the_exact_track_length_integral_in_one_medium():
    grid, tab, *_ = _slab_world()
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    energy, s_mm = 60.0, 37.3
    mu_tr = _mu_tr_per_mm(tab, 0, energy, 1.0)
    # K points cover the segment (spacing s/K > h): every estimate is exact
    idx, val, per = _score(setup, grid, tab, 8, 1.0, s_mm, energy, k=8)
    np.testing.assert_allclose(per, energy * mu_tr * s_mm, rtol=2e-6)
    # more slots than the segment needs: each estimate is h * (#points < s); its mean is exact
    idx, val, per = _score(setup, grid, tab, 20_000, 1.0, s_mm, energy, k=64)
    mean, sem = per.mean(), per.std(ddof=1) / math.sqrt(per.size)
    print(f"one medium: mean {mean:.5f} +- {sem:.5f}, exact {energy * mu_tr * s_mm:.5f}")
    assert abs(mean - energy * mu_tr * s_mm) < 4 * sem + 1e-6 * mean
    assert per.std() > 0  # really sampled, not integrated


def test_score_points_are_unbiased_across_a_medium_boundary_and_score_the_crossed_voxels():
    split = 20
    grid, tab, media, *_ = _slab_world(split=split)
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    energy, x0, s_mm = 45.0, 31.0, 25.5  # 9 mm of water then 16.5 mm of bone (boundary at 40 mm)
    exact = energy * (
        _mu_tr_per_mm(tab, 0, energy, media[0].density_g_cm3) * (2.0 * split - x0)
        + _mu_tr_per_mm(tab, 1, energy, media[1].density_g_cm3) * (x0 + s_mm - 2.0 * split)
    )
    idx, val, per = _score(setup, grid, tab, 40_000, x0, s_mm, energy, k=16, seed=3)
    mean, sem = per.mean(), per.std(ddof=1) / math.sqrt(per.size)
    print(f"water|bone: mean {mean:.4f} +- {sem:.4f}, exact {exact:.4f}")
    assert abs(mean - exact) < 4 * sem
    hit = np.unique(idx[val > 0].numpy())
    np.testing.assert_array_equal(hit, np.arange(int(x0 // 2), int((x0 + s_mm) // 2) + 1))


def test_points_outside_the_grid_score_nothing():
    grid, tab, *_ = _slab_world()
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    # from x = 70 mm (10 mm before the end of the 80 mm row) a 50 mm segment: 10 mm inside
    idx, val, per = _score(setup, grid, tab, 8, 70.0, 50.0, 60.0, k=64)
    mu_tr = _mu_tr_per_mm(tab, 0, 60.0, 1.0)
    assert np.all(np.abs(per - 60.0 * mu_tr * 10.0) <= 60.0 * mu_tr * 2.0 + 1e-9)  # one point of 2 mm either way
    assert np.all(idx.numpy() < grid.n_vox)


def _row_photons(n, x0, energy_kev, seed):
    """``n`` photons at x0 (mm) on the row's axis, flying along +x: state, ew, offsets, generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n,), x0, **F32)
    one, zero = torch.ones(n, **F32), torch.zeros(n, **F32)
    e = torch.full((n,), energy_kev, **F32)
    return (x, one, one, one, zero, zero, e), e * 1.0, torch.zeros(n, dtype=torch.int64), gen


def test_collision_site_scores_mu_tr_over_the_majorant_where_the_flight_ends():
    """One flight: the site is at -ln(r)/mu_maj, scores w E mu_tr / mu_maj in its voxel, and is
    real where r_real mu_maj < mu; beyond the grid it scores nothing (exact arithmetic)."""
    grid, tab, media, *_ = _slab_world(split=20)  # water up to x = 40 mm, bone beyond
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    energy = 60.0
    (x, y, z, u, v, w, e), ew, offset, _ = _row_photons(4, 5.0, energy, 0)
    ie, fe = tab.energy_index(e)
    maj = float(tab.maj_a[ie[0]] + fe[0] * tab.maj_b[ie[0]])
    s_mm = torch.tensor([10.0, 50.0, 50.0, 100.0])  # water, bone, bone, outside (row ends at 80 mm)
    r_path = torch.exp(-s_mm * maj)
    r_real = torch.tensor([0.0, 0.0, 0.999, 0.0])
    ew = ew * torch.tensor([1.0, 2.0, 1.0, 1.0])
    offset = torch.tensor([0, 3 * grid.n_vox, 0, 0])
    x1, y1, z1, ie1, fe1, rr, real, inside, index, score = advance_collision(
        x, y, z, u, v, w, e, ew, r_path, r_real, offset, setup.grid_f, setup.grid_i, setup.energy_f, setup.maj_ab,
        grid.voxel_table, tab.total_tr_ab,
    )
    np.testing.assert_allclose(x1.numpy(), 5.0 + s_mm.numpy(), rtol=1e-5)
    rho_w, rho_b = media[0].density_g_cm3, media[1].density_g_cm3
    mu_w = _mu_tr_per_mm(tab, 0, energy, rho_w)
    mu_b = _mu_tr_per_mm(tab, 1, energy, rho_b)
    expected = [energy * mu_w / maj, 2.0 * energy * mu_b / maj, energy * mu_b / maj, 0.0]
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5)
    assert score.dtype == torch.float64
    np.testing.assert_array_equal(index.numpy(), [7, 3 * grid.n_vox + 27, 27, 39])
    # r_real = 0.999 in bone: real exactly where 0.999 mu_maj < mu_bone (bone sets the majorant)
    mu_bone_total = float((tab.total_tr_ab[1 * tab.n_rows + ie[0], 0] + fe[0] * tab.total_tr_ab[1 * tab.n_rows + ie[0], 1])
                          * rho_b)
    assert real.tolist() == [True, True, 0.999 * maj < mu_bone_total, False]
    assert inside.tolist() == [True, True, True, False]


@pytest.mark.parametrize("sites_per_call", [1, kernels.COLLISION_SITES_PER_CALL])
def test_collision_estimator_sum_along_a_path_is_the_exact_compound_poisson_mean(sites_per_call):
    """Sites of rate mu_maj along L mm of one medium, each scoring E mu_tr / mu_maj: the sum has
    mean E mu_tr L and variance L (E mu_tr)^2 / mu_maj (all sites counted, real or not); with
    one flight per call (:func:`advance_collision`) and with several
    (:func:`advance_collision_sites`; a real collision ends a photon's call, not its path here)."""
    grid, tab, *_ = _slab_world()
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    energy, x0, n = 45.0, 12.0, 20_000
    state, ew, offset, gen = _row_photons(n, x0, energy, 4)
    x = state[0]
    total = torch.zeros(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(500):
        if sites_per_call == 1:
            r = torch.rand((2, n), generator=gen)
            out = advance_collision(x, *state[1:], ew, 1.0 - r[0], r[1], offset, setup.grid_f, setup.grid_i,
                                    setup.energy_f, setup.maj_ab, grid.voxel_table, tab.total_tr_ab)
        else:
            r = torch.rand((2 * sites_per_call, n), generator=gen)
            out = advance_collision_sites(x, *state[1:], ew, r, offset, setup.grid_f, setup.grid_i, setup.energy_f,
                                          setup.maj_ab, setup.maj_ab, _no_voids(grid), tab.total_tr_ab)
            out = out[:9] + (out[9].sum(1),)
        x, inside, score = out[0], out[7], out[9]
        alive &= inside
        total += torch.where(alive, score, torch.zeros_like(score))
        if not alive.any():
            break
    assert not alive.any()
    length = 80.0 - x0
    mu_tr = _mu_tr_per_mm(tab, 0, energy, 1.0)
    ie, fe = tab.energy_index(torch.tensor([energy]))
    maj = float(tab.maj_a[ie] + fe * tab.maj_b[ie])
    mean, sem = float(total.mean()), float(total.std()) / math.sqrt(n)
    exact = energy * mu_tr * length
    print(f"collision sum over {length} mm: mean {mean:.5f} +- {sem:.5f}, exact {exact:.5f}; "
          f"variance {float(total.var()):.6f}, exact {length * (energy * mu_tr) ** 2 / maj:.6f}")
    assert abs(mean - exact) < 4 * sem
    var_exact = length * (energy * mu_tr) ** 2 / maj
    # the sample variance of a compound Poisson sum: relative standard error about sqrt(2 / n)
    assert abs(float(total.var()) / var_exact - 1.0) < 0.06


def test_void_flights_keep_the_collision_sum_exact_in_every_region():
    """A row of air (80 mm), water (20 mm) and bone (20 mm): photons fly from the air through
    all three, each call up to K flights (:func:`advance_collision_sites`; real collisions
    do not end the path here). With void flights in the air far from the water the sum of the
    scores in each region keeps its exact mean E mu_tr L (the air's too, from its fewer sites),
    and the photons need fewer flights than without (the same run with no void distances)."""
    media = [get_medium("air"), get_medium("water"), get_medium("spine_bone")]
    mi = np.zeros((1, 1, 60), np.uint8)
    mi[..., 40:50], mi[..., 50:] = 1, 2
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    grid = TransportGrid.from_arrays(mi, rho, (2.0,) * 3, (1.0,) * 3, "cpu")
    tab = build_tables(media, np.array([m.density_g_cm3 for m in media]), 150.0, "cpu")
    setup = TrackLengthSetup.build(grid, tab, None, compile=False, void_flights=True)
    assert float(setup.void_table[:, 2].max()) > 70.0
    energy, x0, n = 45.0, 2.0, 20_000
    region = torch.as_tensor(mi.reshape(-1), dtype=torch.int64)
    sums, flights = {}, {}
    for voids in (True, False):
        state, ew, offset, gen = _row_photons(n, x0, energy, 7)
        x = state[0]
        table = setup.void_table if voids else _no_voids(grid)
        per_region = torch.zeros((n, 3), dtype=torch.float64)
        alive = torch.ones(n, dtype=torch.bool)
        flown = 0
        for _ in range(500):
            r = torch.rand((2 * kernels.COLLISION_SITES_PER_CALL, n), generator=gen)
            out = advance_collision_sites(x, *state[1:], ew, r, offset, setup.grid_f, setup.grid_i, setup.energy_f,
                                          setup.maj_ab, setup.void_ab, table, tab.total_tr_ab)
            x, inside, index, score, n_sites = out[0], out[7], out[8], out[9], out[10]
            live = alive[:, None].expand_as(score)
            per_region.scatter_add_(1, region[index], torch.where(live, score, torch.zeros_like(score)))
            flown += int(n_sites[alive].sum())
            alive &= inside
            if not alive.any():
                break
        assert not alive.any()
        sums[voids], flights[voids] = per_region, flown / n
    lengths = (80.0 - x0, 20.0, 20.0)
    for m, (medium, length) in enumerate(zip(media, lengths)):
        exact = energy * _mu_tr_per_mm(tab, m, energy, medium.density_g_cm3) * length
        for voids in (True, False):
            col = sums[voids][:, m]
            mean, sem = float(col.mean()), float(col.std()) / math.sqrt(n)
            print(f"{medium.name}, void flights {voids}: {mean:.6g} +- {sem:.2g}, exact {exact:.6g}")
            assert abs(mean - exact) < 4 * sem
    print(f"flights per photon: {flights[True]:.2f} with void flights, {flights[False]:.2f} without")
    assert flights[True] < flights[False] - 1.0


def _no_voids(grid):
    """The voxel table of :func:`advance_collision_sites` with no void distances (no void flights)."""
    return torch.cat([grid.voxel_table, torch.zeros(grid.n_vox, 2)], 1)


def test_collision_sites_per_call_are_one_site_flights_in_sequence():
    """:func:`advance_collision_sites` without void distances equals ``K`` calls of
    :func:`advance_collision` with the same numbers, each for the photons whose earlier flights
    ended at a virtual site inside the grid (bit for bit: the same arithmetic); the slots after a photon's last flight score nothing
    and hold its last site's index. Random photons in a bone cube in water in air, so that
    photons stop after every number of flights, by a real collision or at the grid's exit."""
    mi, rho, grid, tab = _bone_cube()
    st = TrackLengthSetup.build(grid, tab, None, compile=False)
    n, k_sites = 6000, kernels.COLLISION_SITES_PER_CALL
    (x, y, z), (u, v, w), e, _ = _random_pool(grid, n, 5)
    rnd = torch.rand((2 * k_sites, n), generator=torch.Generator().manual_seed(6))
    ew = e * 0.5
    offset = torch.arange(n) % 3 * grid.n_vox
    tables = (st.grid_f, st.grid_i, st.energy_f, st.maj_ab, grid.voxel_table, tab.total_tr_ab)
    x1, y1, z1, ie, fe, rr, real, inside, index, score, n_sites = advance_collision_sites(
        x, y, z, u, v, w, e, ew, rnd, offset, *tables[:4], st.maj_ab, _no_voids(grid), tab.total_tr_ab)
    assert index.shape == score.shape == (n, k_sites)
    going = torch.ones(n, dtype=torch.bool)
    ref = [x.clone(), y.clone(), z.clone(), None, None, torch.zeros(n), torch.zeros(n, dtype=torch.bool),
           torch.ones(n, dtype=torch.bool)]
    flights = torch.zeros(n, dtype=torch.int32)
    last_index = None
    for k in range(k_sites):
        out = advance_collision(ref[0], ref[1], ref[2], u, v, w, e, ew, 1.0 - rnd[2 * k], rnd[2 * k + 1], offset,
                                *tables)
        for i in (0, 1, 2, 5, 6, 7):
            ref[i] = torch.where(going, out[i], ref[i])
        ref[3], ref[4] = out[3], out[4]
        last_index = out[8] if last_index is None else torch.where(going, out[8], last_index)
        np.testing.assert_array_equal(index[:, k].numpy(), last_index.numpy())
        np.testing.assert_array_equal(score[:, k].numpy(), torch.where(going, out[9], 0.0).numpy())
        flights += going.to(torch.int32)
        going = going & out[7] & ~out[6]
    for name, got, want in zip(("x1", "y1", "z1", "ie", "fe", "rr", "real", "inside"),
                               (x1, y1, z1, ie, fe, rr, real, inside), ref):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=name)
    np.testing.assert_array_equal(n_sites.numpy(), flights.numpy())
    # every number of flights occurs; the photons that flew all K are still on their way
    counts = np.bincount(n_sites.numpy(), minlength=k_sites + 1)
    assert counts[0] == 0 and (counts[1:] > 100).all(), counts
    whole = n_sites == k_sites
    assert int((whole & inside & ~real).sum()) > 100
    assert int(real.sum()) > 500 and int((~inside).sum()) > 500


def test_a_block_face_is_no_collision_site():
    """With the block majorant a flight cut at a block face scores nothing and does not collide."""
    mi, rho, grid, tab = _bone_cube()
    block = build_block_majorant(mi, rho, tab, 4)
    st = TrackLengthSetup.build(grid, tab, None, compile=False, block=block)
    n = 4000
    (x, y, z), (u, v, w), e, r = _random_pool(grid, n, 2)
    offset = torch.zeros(n, dtype=torch.int64)
    common = (x, y, z, u, v, w, e, e, r[0].clamp_min(1e-7), r[1], offset, st.grid_f, st.grid_i, st.energy_f)
    x1, y1, z1, ie, fe, rr, real, inside, index, score = advance_block_collision(
        *common, st.block_ab, st.block_f, st.block_i, grid.voxel_table, tab.total_tr_ab)
    ref = advance_block(x, y, z, u, v, w, e, r[0].clamp_min(1e-7), r[1], r[2], torch.tensor(8.0), st.h_mm, st.grid_f,
                        st.grid_i, st.energy_f, st.block_ab, st.block_f, st.block_i, grid.voxel_table,
                        tab.total_tr_ab)
    np.testing.assert_array_equal(x1.numpy(), ref[1].numpy())
    np.testing.assert_array_equal(real.numpy(), ref[7].numpy())
    # a tentative site inside the block: the photon flew the whole path sampled with the block's
    # majorant; at a face it flew less
    site = torch.isclose(-torch.log(r[0].clamp_min(1e-7)) / _block_majorant_at(st, grid, tab, x, y, z, e), ref[0])
    face = ~site
    assert int(face.sum()) > 100 and int(site.sum()) > 100
    assert not bool(real[face].any())
    assert float(score[face].abs().max()) == 0.0
    assert float(score[site & inside].min()) > 0.0


def _block_majorant_at(st, grid, tab, x, y, z, e):
    """The block majorant (1/mm) at each point, computed independently of the kernels."""
    bw = 1.0 / st.block_f[:3]
    lo = torch.tensor(grid.lo_mm)
    nb = st.block_i
    bx = ((x - lo[0]) / bw[0]).floor().clamp(0, int(nb[0]) - 1).long()
    by = ((y - lo[1]) / bw[1]).floor().clamp(0, int(nb[1]) - 1).long()
    bz = ((z - lo[2]) / bw[2]).floor().clamp(0, int(nb[2]) - 1).long()
    ie, fe = tab.energy_index(e)
    row = ((bz * nb[1] + by) * nb[0] + bx) * tab.n_rows + ie
    return st.block_ab[row, 0] + fe * st.block_ab[row, 1]

def _random_pool(grid, n, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(grid.lo_mm), torch.tensor(grid.hi_mm)
    pos = lo + (hi - lo) * torch.rand((n, 3), generator=g)
    d = torch.randn((n, 3), generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    e = 20.0 + 100.0 * torch.rand(n, generator=g)
    # separate tensors, not rows of one (views): a photon pool's arrays are separate, and views
    # as arguments would compile the kernels once more
    xyz, uvw = (tuple(c.clone() for c in a.unbind(1)) for a in (pos, d))
    return xyz, uvw, e, torch.rand((3, n), generator=g)


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


def _chi2_ok(samples: np.ndarray, pdf, bins: int = 40) -> tuple[bool, float, int]:
    """Chi-square of a histogram of cos(theta) against a density on [-1, 1], within 5 sigma."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(samples, edges)
    fine = np.linspace(-1.0, 1.0, 40001)
    dens = pdf(fine)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(fine))])
    expected = np.diff(np.interp(edges, fine, cdf / cdf[-1])) * samples.size
    keep = expected > 20
    chi2 = float((((counts - expected) ** 2) / expected)[keep].sum())
    dof = int(keep.sum()) - 1
    return chi2 < dof + 5.0 * math.sqrt(2.0 * dof), chi2, dof


def _water_voxel_world(compiled: bool, energy_kev: float):
    """A 100 mm water cube centred on the origin, its tables and fused-step set-up, and the
    interaction probabilities at ``energy_kev``: ``water, grid, tab, setup, (pe, mu, photo,
    incoh)`` (``pe`` the fractional table index, ``mu`` the attenuation in 1/mm).

    The cube is two 50 mm voxels along x, not one voxel: a one-voxel grid would compile the
    kernels once more for that size alone (``torch.compile`` specialises sizes of 1), which
    cost a fresh CI run the better part of a minute per kernel."""
    water = get_medium("water")
    mi = np.zeros((1, 1, 2), np.uint8)
    grid = TransportGrid.from_arrays(mi, np.ones((1, 1, 2), np.float32), (100.0, 100.0, 50.0), (0.0, 0.0, -25.0),
                                     "cpu")
    tab = build_tables([water], np.array([1.0]), 150.0, "cpu")
    setup = TrackLengthSetup.build(grid, tab, None, compile=compiled)
    if compiled and (not setup.compiled or kernels._FAILED):
        pytest.skip("torch.compile is not available here")
    pe = (energy_kev - tab.e0_kev) / tab.de_kev
    row = tab.total_tr_ab[int(pe)].double()
    mu = float(row[0] + (pe - int(pe)) * row[1])
    coef = setup.xs_ab[int(pe)].double()
    photo = float(coef[0] + (pe - int(pe)) * coef[1]) / mu
    incoh = float(coef[2] + (pe - int(pe)) * coef[3]) / mu
    return water, grid, tab, setup, (pe, mu, photo, incoh)


def _origins(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y, z of ``n`` photons at the origin: three tensors, not one passed three times (the
    transport never passes one tensor twice; aliased arguments would compile a kernel anew)."""
    return tuple(torch.zeros(n, **F32) for _ in range(3))


def _assert_exact_interactions(water, energy_kev: float, photo: float, incoh: float, e: np.ndarray,
                               cos_theta: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Photons of ``energy_kev`` after one interaction each (new energy, cos theta, alive): the
    types in proportion to the coefficients (incoherent: a lower energy; photoelectric: dead at
    its energy; coherent: the rest), cos theta from Klein-Nishina x S and from F^2 x Thomson,
    and the Compton energy. Returns the incoherent and coherent masks."""
    n = e.size
    is_inc = e < energy_kev
    is_photo = ~alive & ~is_inc
    is_coh = ~is_inc & ~is_photo
    for frac, p in ((is_photo.mean(), photo), (is_inc.mean(), incoh), (is_coh.mean(), 1.0 - photo - incoh)):
        assert abs(frac - p) < 5.0 * math.sqrt(p * (1.0 - p) / n), (frac, p)

    def incoherent_pdf(c):
        x = energy_kev / HC_KEV_ANGSTROM * np.sqrt((1 - c) / 2)
        return klein_nishina_pdf(energy_kev, c) * incoherent_sf(water, x)

    def coherent_pdf(c):
        return (1 + c * c) * form_factor_sq(water, energy_kev / HC_KEV_ANGSTROM * np.sqrt((1 - c) / 2))

    ok, chi2, dof = _chi2_ok(cos_theta[is_inc], incoherent_pdf)
    assert ok, ("incoherent", chi2, dof)
    ok, chi2, dof = _chi2_ok(cos_theta[is_coh], coherent_pdf, bins=60)
    assert ok, ("coherent", chi2, dof)
    k = energy_kev / ELECTRON_REST_KEV
    np.testing.assert_allclose(e[is_inc], energy_kev / (1.0 + k * (1.0 - cos_theta[is_inc])), rtol=1e-4)
    return is_inc, is_coh


@pytest.mark.parametrize("compiled", [False, True])
def test_interaction_passes_sample_the_exact_distributions(compiled):
    """Photons colliding in water: interaction types in proportion to the coefficients, the
    incoherent angle from Klein-Nishina x S, the coherent one from F^2 x Thomson, the Compton
    energy, cutoff deposits: the fixed-proposal passes of transport._interact_fixed (about 5 %
    of the photons need a second pass) against the exact densities."""
    n, energy, cutoff = 300_000, 30.0, 28.0
    water, grid, tab, setup, (pe, mu, photo, incoh) = _water_voxel_world(compiled, energy)
    gen = torch.Generator().manual_seed(21)
    ie = torch.full((n,), int(pe), dtype=torch.int64)
    fe = torch.full((n,), pe - int(pe), **F32)
    e = torch.full((n,), energy, **F32)
    u, v, w = torch.ones(n), torch.zeros(n), torch.zeros(n)  # along +x: cos theta is the new u
    x1, y1, z1 = _origins(n)
    tally = TransportTally(torch.zeros(grid.n_vox, dtype=torch.float64))
    alive = torch.ones(n, dtype=torch.bool)
    rr = torch.rand(n, generator=gen) * mu
    transport._interact_fixed(torch.arange(n), e, u, v, w, torch.ones(n), x1, y1, z1, ie, fe, rr,
                              torch.zeros(n, dtype=torch.int64), alive, tally, gen, cutoff, grid, setup, setup.kernels)
    is_inc, _ = _assert_exact_interactions(water, energy, photo, incoh, e.numpy(), u.numpy(), alive.numpy())
    np.testing.assert_allclose(torch.sqrt(u * u + v * v + w * w).numpy(), 1.0, rtol=1e-5)
    # below the cutoff: the scattered photon deposits its energy and stops
    below = is_inc & (e.numpy() < cutoff)
    assert below.sum() > 1000 and not alive.numpy()[below].any() and alive.numpy()[is_inc & ~below].all()
    assert float(tally.energy_kev.sum()) == pytest.approx(float(e.double().numpy()[below].sum()), rel=1e-6)


def _uniform_chi2_ok(samples: np.ndarray, lo: float, hi: float, bins: int = 36) -> tuple[bool, float, int]:
    """Chi-square of a histogram against the uniform density on [lo, hi), within 5 sigma."""
    counts, _ = np.histogram(samples, np.linspace(lo, hi, bins + 1))
    expected = samples.size / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = bins - 1
    return chi2 < dof + 5.0 * math.sqrt(2.0 * dof), chi2, dof


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_collision_step_samples_the_exact_distributions(compiled):
    """kernels.collide_interact (flight, score and interaction in one pass, lean samplers: the
    incoherent branch and energy from one number, the azimuth from the acceptance number),
    followed by the passes of transport._interact_fixed for its pending photons, as the
    collision step runs them: photons from the centre of a 100 mm water voxel along +x, whose
    sites inside are real collisions (water is its own majorant). Interaction types in
    proportion to the coefficients, cos theta from Klein-Nishina x S and F^2 x Thomson, the
    Compton energy, the azimuth uniform and independent of theta, unit directions; the score
    of every site is E mu_tr / mu_maj and the cutoff deposits are added to it."""
    n, energy, cutoff = 400_000, 30.0, 28.0
    water, grid, tab, setup, (pe, mu, photo, incoh) = _water_voxel_world(compiled, energy)
    gen = torch.Generator().manual_seed(22)
    maj = float(setup.maj_ab[int(pe), 0] + (pe - int(pe)) * setup.maj_ab[int(pe), 1])
    e = torch.full((n,), energy, **F32)
    u, v, w = torch.ones(n), torch.zeros(n), torch.zeros(n)  # along +x: cos theta is the new u
    offset = torch.zeros(n, dtype=torch.int64)
    key = kernels.counter_key(gen, "cpu")  # the kernel's own numbers, as the collision step draws them
    out = setup.kernels[7](*_origins(n), u, v, w, e, e.clone(), torch.ones(n), offset, key, torch.tensor(cutoff),
                           setup.grid_f, setup.grid_i, setup.energy_f, setup.maj_ab, grid.voxel_table,
                           tab.total_tr_ab, setup.xs_ab, setup.sf_ratio, setup.coh_x2_inv, setup.coh_frac,
                           setup.scatter_f, setup.scatter_i, setup.fl_ab, setup.fl_e)
    x1, y1, z1, ie, fe, rr, e1, u1, v1, w1, real, inside, alive, pending, index, score = out
    # the free paths: the sites lie at -ln(1 - r) / mu_maj along +x
    r_path = kernels.counter_uniforms(key, 2 + kernels.interaction_uniforms(lean=True), n)[0]
    np.testing.assert_allclose(x1.numpy(), (-torch.log1p(-r_path.double()) / maj).numpy(), rtol=1e-4, atol=1e-4)
    # inside, all but a few sites are real (the majorant's margin of 1e-5); escapes: exp(-50 mm mu)
    assert not bool((real & ~inside).any()) and int((inside & ~real).sum()) < 30
    assert 0.1 < 1.0 - float(inside.float().mean()) < 0.2
    # the score of every site inside, plus the deposits of the photons below the cutoff
    below = (inside & ~alive & (e1 < energy)).numpy()
    mu_tr = _mu_tr_per_mm(tab, 0, energy, 1.0)
    expected = int(inside.sum()) * energy * mu_tr / maj + float(e1.double().numpy()[below].sum())
    assert float(score.sum()) == pytest.approx(expected, rel=1e-5)
    assert float(score.numpy()[~inside.numpy()].sum()) == 0.0
    # the pending photons (no proposal accepted) come back unchanged; then the usual passes
    pend = pending.numpy()
    assert 0.01 < pend.mean() < 0.1 and bool((e1[pending] == energy).all()) and bool((u1[pending] == 1.0).all())
    tally = TransportTally(torch.zeros(grid.n_vox, dtype=torch.float64))
    transport._interact_fixed(transport._indices(pending), e1, u1, v1, w1, torch.ones(n), x1, y1, z1, ie, fe, rr,
                              offset, alive, tally, gen, cutoff, grid, setup, setup.kernels)
    sel = real.numpy()
    u_s = u1.numpy()[sel]
    is_inc, is_coh = _assert_exact_interactions(water, energy, photo, incoh, e1.numpy()[sel], u_s, alive.numpy()[sel])
    # the azimuth about +x: uniform, for forward and backward incoherent scattering alike
    phi = np.arctan2(w1.numpy()[sel], v1.numpy()[sel])
    for part, name in ((is_inc & (u_s > 0.3), "incoherent forward"), (is_inc & (u_s <= 0.3), "incoherent back"),
                       (is_coh, "coherent")):
        ok, chi2, dof = _uniform_chi2_ok(phi[part], -math.pi, math.pi, bins=24 if name == "coherent" else 36)
        assert ok, (name, chi2, dof)
    np.testing.assert_allclose(torch.sqrt(u1 * u1 + v1 * v1 + w1 * w1).numpy(), 1.0, rtol=1e-5)
    # the cutoff deposits of the later passes go into the tally
    late = pend & ~alive.numpy() & (e1.numpy() < energy)
    assert float(tally.energy_kev.sum()) == pytest.approx(float(e1.double().numpy()[late].sum()), rel=1e-6)


def _assert_same(a, b, name):
    for ta, tb in zip(a, b):
        if ta.dtype == torch.bool or ta.dtype == torch.int64:
            assert (ta == tb).float().mean() > 0.999, name
        else:
            np.testing.assert_allclose(tb.numpy(), ta.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_compiled_kernels_equal_the_eager_ones():
    mi, rho, grid, tab = _bone_cube()
    block = build_block_majorant(mi, rho, tab, 4)
    eager = TrackLengthSetup.build(grid, tab, None, compile=False, block=block)
    fused = TrackLengthSetup.build(grid, tab, None, compile=True, block=block)
    if not fused.compiled or kernels._FAILED:
        pytest.skip("torch.compile is not available here")
    n = 5000
    (x, y, z), (u, v, w), e, r = _random_pool(grid, n, 1)
    common = (x, y, z, u, v, w, e, r[0].clamp_min(1e-7), r[1], r[2], torch.tensor(12.0), eager.h_mm, eager.grid_f,
              eager.grid_i, eager.energy_f)
    coll = (x, y, z, u, v, w, e, e * r[2], r[0].clamp_min(1e-7), r[1], torch.arange(n) % 3 * grid.n_vox,
            eager.grid_f, eager.grid_i, eager.energy_f)
    for name, args in [
        ("advance", common + (eager.maj_ab, grid.voxel_table, tab.total_tr_ab)),
        ("advance_block", common + (eager.block_ab, eager.block_f, eager.block_i, grid.voxel_table, tab.total_tr_ab)),
        ("advance_collision", coll + (eager.maj_ab, grid.voxel_table, tab.total_tr_ab)),
        ("advance_block_collision",
         coll + (eager.block_ab, eager.block_f, eager.block_i, grid.voxel_table, tab.total_tr_ab)),
    ]:
        k = {"advance": 0, "advance_block": 2, "advance_collision": 4, "advance_block_collision": 5}[name]
        _assert_same(eager.kernels[k](*args), fused.kernels[k](*args), name)
    s, x1, y1, z1, ie, fe, rr, real, inside, count, hi = eager.kernels[0](*common[:-3], eager.grid_f, eager.grid_i,
                                                                            eager.energy_f, eager.maj_ab,
                                                                            grid.voxel_table, tab.total_tr_ab)
    ends = count.cumsum(0)
    pid = torch.repeat_interleave(count, output_size=int(ends[-1]))
    args = (pid, ends - count, x, y, z, u, v, w, hi, e, ie, fe, torch.zeros(n, dtype=torch.int64), r[2],
            eager.grid_f, eager.grid_i, grid.voxel_table, tab.total_tr_ab)
    ia, va = eager.kernels[1](*args)
    ib, vb = fused.kernels[1](*args)
    np.testing.assert_allclose(vb.sum().item(), va.sum().item(), rtol=1e-5)
    assert (ia == ib).float().mean() > 0.999
    idx = real.nonzero().view(-1).clone()
    # the random numbers as the transport draws them: a key for the kernels' own (the same bits
    # compiled and eager, test_counter_uniforms_compiled_give_the_same_bits); the arguments as
    # the transport passes them, so that the compiled kernels are the ones a run uses
    args = (idx, kernels.counter_key(torch.Generator().manual_seed(3), "cpu"), e, u, v, w, torch.ones(n), x1, y1, z1,
            ie, fe, rr, torch.zeros(n, dtype=torch.int64), torch.tensor(1.0), eager.grid_f, eager.grid_i,
            grid.voxel_table, eager.xs_ab, eager.sf_ratio, eager.coh_x2_inv, eager.coh_frac, eager.scatter_f,
            eager.scatter_i, eager.fl_ab, eager.fl_e)
    _assert_same(eager.kernels[3](*args), fused.kernels[3](*args), "interact")
    rnd = kernels.counter_key(torch.Generator().manual_seed(4), "cpu")
    args = (x, y, z, u, v, w, e, e * r[2], r[2].clone(), torch.arange(n) % 3 * grid.n_vox, rnd, torch.tensor(20.0),
            eager.grid_f, eager.grid_i, eager.energy_f, eager.maj_ab, grid.voxel_table, tab.total_tr_ab, eager.xs_ab,
            eager.sf_ratio, eager.coh_x2_inv, eager.coh_frac, eager.scatter_f, eager.scatter_i, eager.fl_ab,
            eager.fl_e)
    _assert_same(eager.kernels[7](*args), fused.kernels[7](*args), "collide_interact")
    rnd = kernels.counter_key(torch.Generator().manual_seed(5), "cpu")
    voids = transport._void_tensors(grid, tab, 0.0)
    assert float(voids["void_table"][:, 2].max()) > 4.0  # the air at the cube's faces: void flights (low energies)
    args = (x, y, z, u, v, w, e, e * r[2], rnd, torch.arange(n) % 3 * grid.n_vox, eager.grid_f, eager.grid_i,
            eager.energy_f, eager.maj_ab, voids["void_ab"], voids["void_table"], tab.total_tr_ab)
    _assert_same(eager.kernels[8](*args), fused.kernels[8](*args), "advance_collision_sites")
    # the entry kernel: the same bits (no transcendental functions in it), from outside the
    # box too, and with zero direction cosines
    u[:50], w[50:100] = 0.0, 0.0
    outside = (x - 100.0, y, z - 3.0 * w, u, v, w, eager.box_f)
    for args in [(x, y, z, u, v, w, eager.box_f), outside]:
        for a, b in zip(eager.kernels[6](*args), fused.kernels[6](*args)):
            assert torch.equal(a, b), "grid_entry"


def test_grid_entry_by_the_slab_method():
    """Entry distances and points for rays whose answers are known by hand (box [0, 10] x [0, 20]
    x [0, 30] mm), including axis-parallel rays (zero direction cosines) and starts inside."""
    box_f = torch.tensor([0.0, 0.0, 0.0, 10.0, 20.0, 30.0, 1e-3])
    s = 1.0 / math.sqrt(2.0)
    rays = [  # start, direction, expected hit and distance to the face
        ((-5.0, 10.0, 15.0), (1.0, 0.0, 0.0), True, 5.0),  # along +x onto the x = 0 face
        ((5.0, 25.0, 15.0), (0.0, -1.0, 0.0), True, 5.0),  # along -y onto the y = 20 face
        ((5.0, 10.0, -2.0), (0.0, s, s), True, 2.0 / s),  # diagonal in y-z onto z = 0 at y = 12
        ((-5.0, 25.0, 15.0), (1.0, 0.0, 0.0), False, None),  # parallel to x, outside the y slab
        ((-5.0, 10.0, 15.0), (-1.0, 0.0, 0.0), False, None),  # pointing away
        ((-1.0, -1.0, 15.0), (s, -s, 0.0), False, None),  # passes the corner's outside
        ((5.0, 10.0, 15.0), (0.0, 0.0, 1.0), True, 0.0),  # born inside
    ]
    x, y, z = (torch.tensor([r[0][i] for r in rays]) for i in range(3))
    u, v, w = (torch.tensor([r[1][i] for r in rays]) for i in range(3))
    hit, t_in, x1, y1, z1 = kernels.grid_entry(x, y, z, u, v, w, box_f)
    assert hit.tolist() == [r[2] for r in rays]
    for i, (start, d, h, t) in enumerate(rays):
        if not h:
            assert (x1[i], y1[i], z1[i]) == (x[i], y[i], z[i])  # a miss stays where it is
            continue
        assert t_in[i].item() == pytest.approx(t, abs=1e-5)
        for p1, p0, di in zip((x1[i], y1[i], z1[i]), start, d):
            assert p1.item() == pytest.approx(p0 + (t + 1e-3) * di, abs=1e-5)  # put 1e-3 mm inside
    # the entered points are inside the box; the transport's helper drops the misses
    grid = TransportGrid.from_arrays(np.zeros((30, 20, 10), np.uint8), np.ones((30, 20, 10), np.float32),
                                     (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), "cpu")
    st = transport.PhotonState(x, y, z, u, v, w, torch.full((7,), 60.0), torch.ones(7))
    entered, missed = transport.enter_grid(st, grid)
    assert missed.tolist() == [not r[2] for r in rays]
    assert len(entered) == 4 and bool(((entered.x > 0) & (entered.x < 10) & (entered.z > 0)).all())


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
    half = torch.full((n,), 0.5)
    for _ in range(200):
        out = advance_block(x, y, z, u, v, w, e, half, half, half, torch.tensor(8.0), st.h_mm, st.grid_f, st.grid_i,
                            st.energy_f, st.block_ab, st.block_f, st.block_i, grid0.voxel_table, tab.total_tr_ab)
        x, y, z, inside = out[1], out[2], out[3], out[8]
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


@pytest.mark.parametrize("estimator", ["expected_track_length", "collision"])
def test_compiled_and_eager_runs_agree_and_each_is_reproducible(estimator):
    geo, src = _water_box()
    a = simulate(geo, src, 20_000, seed=5, compile=True, keep_batches=True, estimator=estimator)
    a2 = simulate(geo, src, 20_000, seed=5, compile=True, estimator=estimator)
    b = simulate(geo, src, 20_000, seed=6, compile=False, keep_batches=True, estimator=estimator)
    np.testing.assert_array_equal(a.energy_ev, a2.energy_ev)
    ta, sa = a.sum_with_sigma(np.ones(geo.shape))
    tb, sb = b.sum_with_sigma(np.ones(geo.shape))
    assert abs(ta - tb) < 4 * math.hypot(sa, sb)


#: Run in a fresh process by the test below: every estimator on a three-media box, then on a
#: one-medium water box of another shape and spacing (in this order: the first compilation
#: assumes sizes of at least 2 where the arrays have them); prints how many compiled versions
#: (Dynamo cache entries) each kernel has.
_COMPILE_COUNT_SCRIPT = """
import json
import numpy as np, torch
try:  # a private helper of torch._dynamo: where this torch lacks it, the test skips
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
except ImportError:
    print("null")
    raise SystemExit
from ctdose.materials import get_medium
from ctdose.physics import kernels, ray_kernels
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.sources import PointSource
torch.set_num_threads(1)
water = get_medium("water")
one = VoxelGeometry(np.zeros((8, 8, 8), np.uint8), np.ones((8, 8, 8), np.float32), [water], (5.0,) * 3,
                    (-17.5,) * 3)
media = [get_medium("air"), water, get_medium("spine_bone")]
mi = np.zeros((10, 9, 11), np.uint8)
mi[2:8, 2:7, 2:9] = 1
mi[4:6, 4:5, 4:7] = 2
rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
three = VoxelGeometry(mi, rho, media, (4.0, 5.0, 6.0), (-18.0, -20.0, -30.0))
src = PointSource((0, -300.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.08, 0.08))
for geo in (three, one):
    for kw in (dict(estimator="expected_track_length"), dict(estimator="expected_track_length", weight_window=True),
               dict(estimator="collision"), dict(estimator="track_length")):
        simulate(geo, src, 20_000, seed=1, compile=True, **kw)
print(json.dumps({f.__name__: len(_debug_get_cache_entry_list(f.__code__))
                  for f in (*kernels.EAGER_KERNELS, *ray_kernels.EAGER_RAY_KERNELS)}))
"""


def test_each_kernel_compiles_once_whatever_the_geometry():
    """A process compiles each kernel once for any geometry, estimator and weight window (one
    thread): no new version for another grid, number of media, the tails of flights (the
    padded calls) or a weight window. Each further version costs a fresh process the better
    part of a minute of C++ compilation on two cores. Two things did: tables that were views of
    a per-medium array (a one-medium array's size of 1 entered the guards) and random numbers
    passed as rows of one array where the padded calls passed separate tensors."""
    import json
    import subprocess
    import sys

    if not kernels.compile_enabled():
        pytest.skip("compilation is turned off (CTDOSE_MC_COMPILE=0)")
    out = subprocess.run([sys.executable, "-c", _COMPILE_COUNT_SCRIPT], capture_output=True, text=True, check=True)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    if counts is None:
        pytest.skip("this torch has no torch._dynamo.eval_frame._debug_get_cache_entry_list")
    if not any(counts.values()):
        pytest.skip("torch.compile is not available here")
    print(counts)
    assert max(counts.values()) == 1, counts
    # the kernels of the default estimator, the collision estimator's and the track-length one's
    for name in ("grid_entry", "ray_start", "ray_chunk", "ray_chunk_split", "interact", "collide_interact",
                 "advance_collision_sites", "advance_block", "score_points"):
        assert counts[name] == 1, (name, counts)


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


# -- counter-based uniform numbers ------------------------------------------------------------
#: SplitMix64 (Steele, Lea and Flood 2014; Vigna's reference C code): the Weyl increment and the
#: output function's multipliers, typed here as unsigned 64-bit numbers.
_GAMMA, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U64 = (1 << 64) - 1


def _splitmix64(seed: int, i: int) -> int:
    """The ``i + 1``-th output of SplitMix64 seeded with ``seed``, in Python's exact integers."""
    z = (seed + (i + 1) * _GAMMA) & _U64
    z = ((z ^ (z >> 30)) * _M1) & _U64
    z = ((z ^ (z >> 27)) * _M2) & _U64
    return z ^ (z >> 31)


def _key(seed: int) -> torch.Tensor:
    """A key of kernels.counter_uniforms from the constants above (as signed 64-bit numbers)."""
    signed = [c - (1 << 64) if c >= 1 << 63 else c for c in (seed, _GAMMA, _M1, _M2)]
    return torch.tensor(signed, dtype=torch.int64)


def test_counter_uniforms_are_splitmix64_bit_for_bit():
    """Every number is the top 24 bits of SplitMix64's output at its counter, computed here in
    exact unsigned integers: torch's signed 64-bit arithmetic (wrapping products, arithmetic
    shifts masked to logical ones) gives the same bits, for seeds whose states wrap around.
    SplitMix64 seeded with 0 starts with 0xE220A8397B1DCDAF (the reference code's output)."""
    assert _splitmix64(0, 0) == 0xE220A8397B1DCDAF
    rows, n = 3, 700
    for seed in (0, 12345, (1 << 62) - 1):
        r = kernels.counter_uniforms(_key(seed), rows, n).numpy().ravel()
        expected = np.array([(_splitmix64(seed, i) >> 40) / 2.0**24 for i in range(rows * n)])
        np.testing.assert_array_equal(r, expected.astype(np.float32))
    gen = torch.Generator().manual_seed(3)
    key = kernels.counter_key(gen, "cpu")
    assert key.dtype == torch.int64 and 0 <= int(key[0]) < 1 << 62
    assert torch.equal(key[1:], _key(0)[1:])
    assert not torch.equal(kernels.counter_key(gen, "cpu")[0], key[0])  # a new seed per call


def test_counter_uniforms_compiled_give_the_same_bits():
    """The compiled kernels compute the numbers in Inductor's C++ (vectorised 64-bit products):
    the same bits as eager PyTorch, whatever the length (vector body and scalar tail)."""
    if not kernels.compile_enabled():
        pytest.skip("compilation is switched off (CTDOSE_MC_COMPILE=0)")
    compiled = torch.compile(kernels.counter_uniforms, dynamic=True, fullgraph=True)
    key = _key(987654321987654321)
    try:
        with kernels.shape_settings():
            for n in (64, 1001):
                assert torch.equal(compiled(key, 4, n), kernels.counter_uniforms(key, 4, n))
    except Exception as exc:  # no compiler here
        if "compil" in type(exc).__name__.lower() or "Inductor" in type(exc).__name__:
            pytest.skip(f"torch.compile is not available here: {exc}")
        raise


def test_counter_uniforms_are_uniform_and_independent():
    """2e6 numbers: the histogram of 100 bins, consecutive pairs along a row and pairs across
    rows (20 x 20 bins) are flat within 5 sigma of their chi-square; two keys' streams are
    uncorrelated; the numbers lie in [0, 1) with 1 - r > 0 (finite free paths)."""
    rows, n = 8, 250_000
    r = kernels.counter_uniforms(_key(2024), rows, n).double().numpy()
    assert r.min() >= 0.0 and r.max() < 1.0
    assert abs(r.mean() - 0.5) < 5 * math.sqrt(1 / 12 / r.size)
    assert abs(r.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / r.size)

    def flat(counts):
        expected = counts.sum() / counts.size
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        dof = counts.size - 1
        return chi2 < dof + 5 * math.sqrt(2 * dof), chi2, dof

    ok, chi2, dof = flat(np.histogram(r, 100, (0.0, 1.0))[0])
    assert ok, ("one-dimensional", chi2, dof)
    for a, b, name in ((r[:, :-1], r[:, 1:], "along a row"), (r[:-1], r[1:], "across rows")):
        counts = np.histogram2d(a.ravel(), b.ravel(), 20, [[0.0, 1.0], [0.0, 1.0]])[0]
        ok, chi2, dof = flat(counts)
        assert ok, (name, chi2, dof)
    other = kernels.counter_uniforms(_key(2025), rows, n).double().numpy()
    corr = np.corrcoef(r.ravel(), other.ravel())[0, 1]
    assert abs(corr) < 5 / math.sqrt(r.size), corr
