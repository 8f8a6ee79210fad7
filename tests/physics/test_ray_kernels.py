"""The expected-track-length flight: exact voxel traversal, scores, collision depth, roulette.

References are independent: path lengths per voxel from dense sampling of the ray, the
track-length integral from them, optical depths by summation along the sampled ray.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.materials import get_medium
from ctdose.physics.ray_kernels import ROULETTE_SURVIVAL, ray_chunk, ray_start
from ctdose.physics.transport import prepare_transport

SHAPE = (5, 6, 7)  # nz, ny, nx
SPACING = (1.5, 3.0, 2.0)  # dz, dy, dx (mm)
ENERGY_KEV = 40.0


def _setup(media_index, density, media, spacing=SPACING, shape=SHAPE, compile=False):
    origin = tuple(0.5 * s for s in spacing)  # voxel centres: the box corner is at 0
    return prepare_transport(media_index, density, media, spacing, origin, 150.0, "cpu", "expected_track_length",
                             "global", compile=compile)


def _random_grid(rng):
    media = [get_medium("water"), get_medium("spine_bone"), get_medium("lung")]
    mi = rng.integers(0, 3, SHAPE).astype(np.uint8)
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi] * rng.uniform(0.5, 1.5, SHAPE).astype(np.float32)
    return mi, rho, media


def _traverse(prep, pos, dirs, energy_kev, tau_c=None, ew=None, r_roulette=None, tau_r=None):
    """Run the eager kernels to the end; returns per-voxel scores (summed), t_c and the crossings."""
    n = pos.shape[0]
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    x, y, z = (f(pos[:, i]) for i in range(3))
    u, v, w = (f(dirs[:, i]) for i in range(3))
    ts, tab, grid = prep.track_setup, prep.tables, prep.grid
    state = list(ray_start(x, y, z, u, v, w, ts.grid_f, ts.grid_i, ts.cell_f))
    e = torch.full((n,), float(energy_kev))
    ie, fe = tab.energy_index(e)
    zeros = torch.zeros(n)
    state += [zeros.clone(), zeros.clone(), torch.ones(n), torch.full((n,), -1.0),
              torch.full((n,), math.inf) if tau_r is None else torch.full((n,), float(tau_r)),
              torch.full((n,), float(energy_kev) if ew is None else float(ew))]
    tc = torch.full((n,), math.inf) if tau_c is None else f(tau_c)
    scores = torch.zeros(grid.n_vox, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    crossings = 0
    for _ in range(1000):
        rr = torch.rand(n, generator=gen) if r_roulette is None else torch.full((n,), float(r_roulette))
        out = ray_chunk(*state[:16], tc, *state[16:], ie, fe, torch.zeros(n, dtype=torch.int64), rr,
                        grid.voxel_table, tab.total_tr_ab, ts.grid_i, 8)
        flat, tx, ty, tz, rx, ry, rz, t, tau, att, t_c, tau_r_, ew_, index, score = out
        scores.index_add_(0, index.reshape(-1), score.reshape(-1))
        crossings += int((score != 0).sum())
        state[:4] = flat, tx, ty, tz
        state[10:] = rx, ry, rz, t, tau, att, t_c, tau_r_, ew_
        if not bool(((rx >= 0) & (ry >= 0) & (rz >= 0)).any()):
            break
    return scores.numpy(), state[16].numpy(), crossings


def _mu_tables(prep, energy_kev):
    """mu and mu_tr (1/mm) of every voxel at one energy, from the tables (numpy)."""
    tab = prep.tables
    ie, fe = tab.energy_index(torch.tensor([float(energy_kev)]))
    rows = prep.grid.media.to(torch.int64) * tab.n_rows + ie
    t = tab.total_tr_ab[rows]
    rho = prep.grid.density
    mu = ((t[:, 0] + fe * t[:, 1]) * rho).numpy().astype(np.float64)
    mu_tr = ((t[:, 2] + fe * t[:, 3]) * rho).numpy().astype(np.float64)
    return mu, mu_tr


def _dense_ray(p, d, shape=SHAPE, spacing=SPACING, n=400_000):
    """Voxel (flat index) of each of ``n`` points along the ray to the box exit, and their spacing."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    hi = np.array([nx * dx, ny * dy, nz * dz])
    with np.errstate(divide="ignore"):
        t_exit = np.min(np.where(d > 0, (hi - p) / d, np.where(d < 0, -p / d, np.inf)))
    dt = t_exit / n
    t = (np.arange(n) + 0.5) * dt
    q = p[None, :] + t[:, None] * d[None, :]
    i = np.minimum((q[:, 0] / dx).astype(int), nx - 1)
    j = np.minimum((q[:, 1] / dy).astype(int), ny - 1)
    k = np.minimum((q[:, 2] / dz).astype(int), nz - 1)
    return (k * ny + j) * nx + i, dt, t


def _random_rays(seed, n):
    """A random grid (SHAPE, SPACING, three media) and ``n`` rays from random points inside it."""
    rng = np.random.default_rng(seed)
    mi, rho, media = _random_grid(rng)
    nz, ny, nx = SHAPE
    dz, dy, dx = SPACING
    pos = rng.uniform(0.05, 0.95, (n, 3)) * np.array([nx * dx, ny * dy, nz * dz])
    dirs = rng.normal(size=(n, 3))
    return rng, _setup(mi, rho, media), pos, dirs


def test_scores_are_the_exact_track_length_integral_of_each_voxel():
    n = 24
    _, prep, pos, dirs = _random_rays(1, n)
    dirs[0] = (1, 0, 0)  # along an axis: two direction cosines zero
    dirs[1] = (0, -1, 1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mu, mu_tr = _mu_tables(prep, ENERGY_KEV)
    worst = 0.0
    for r in range(n):
        got, _, _ = _traverse(prep, pos[r:r + 1], dirs[r:r + 1], ENERGY_KEV)
        vox, dt, _ = _dense_ray(pos[r], dirs[r])
        # independent: integrate E mu_tr exp(-tau) along the densely sampled ray
        tau = np.cumsum(mu[vox] * dt) - 0.5 * mu[vox] * dt
        ref = np.bincount(vox, weights=ENERGY_KEV * mu_tr[vox] * np.exp(-tau) * dt, minlength=mu.size)
        assert set(np.flatnonzero(got > 1e-9 * got.max())) <= set(np.flatnonzero(ref > 0))
        worst = max(worst, float(np.abs(got - ref).sum() / ref.sum()))
    print(f"largest relative L1 difference of the per-voxel scores over {n} rays: {worst:.2e}")
    assert worst < 2e-3


def test_collision_is_placed_at_the_sampled_optical_depth():
    n = 40
    rng, prep, pos, dirs = _random_rays(2, n)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mu, _ = _mu_tables(prep, ENERGY_KEV)
    tau_c = rng.exponential(size=n) * 0.5
    _, t_c, _ = _traverse(prep, pos, dirs, ENERGY_KEV, tau_c=tau_c)
    found = 0
    for r in range(n):
        vox, dt, t = _dense_ray(pos[r], dirs[r])
        tau_total = float((mu[vox] * dt).sum())
        if tau_c[r] > tau_total * (1 + 1e-3):
            assert t_c[r] < 0  # no collision in the grid: it escapes
            continue
        if tau_c[r] > tau_total * (1 - 1e-3):
            continue  # too close to the exit to tell
        found += 1
        tau_at = float((mu[vox] * dt)[t < t_c[r]].sum())
        assert tau_at == pytest.approx(tau_c[r], rel=2e-3, abs=1e-4)
    assert found >= 10


def test_roulette_of_deep_rays_keeps_the_expected_scores():
    """1-D column of water at 20 keV (optical depth ~ 24 over 300 mm): beyond the roulette depth
    rays score with weight 1/p or stop; the mean of many rays equals the exact scores."""
    water = get_medium("water")
    shape, spacing = (1, 1, 300), (1.0, 1.0, 1.0)
    mi = np.zeros(shape, np.uint8)
    rho = np.full(shape, 1.0, np.float32)
    prep = _setup(mi, rho, [water], spacing, shape)
    n = 50_000
    pos = np.tile([1e-3, 0.5, 0.5], (n, 1))
    dirs = np.tile([1.0, 0.0, 0.0], (n, 1))
    exact, _, c_exact = _traverse(prep, pos[:1], dirs[:1], 20.0, tau_c=np.zeros(1))
    got, _, c_roul = _traverse(prep, pos, dirs, 20.0, tau_c=np.zeros(n), tau_r=-math.log(1e-3))
    got /= n
    mu, _ = _mu_tables(prep, 20.0)
    depth = np.cumsum(mu) - mu  # optical depth at each voxel's entry
    # past the first roulettes (at depths 6.9, 8.3, 9.7): a ray scores there with weight p^-k
    # after k of them, or not at all; the relative variance of one ray is at most p^-3 - 1
    deep = (depth > 7.5) & (depth < 11.0)
    assert deep.sum() > 20
    ratio = got[deep].sum() / exact[deep].sum()
    sd = math.sqrt((ROULETTE_SURVIVAL ** -3 - 1) / n)
    print(f"deep region: mean / exact = {ratio:.4f} (sd {sd:.4f}); crossings per ray {c_roul / n:.0f} vs {c_exact}")
    assert abs(ratio - 1.0) < 4 * sd
    shallow = depth < 6.0
    np.testing.assert_allclose(got[shallow], exact[shallow], rtol=1e-5)
    assert c_roul / n < 0.5 * c_exact


def test_expected_track_length_equals_track_length_in_a_heterogeneous_phantom():
    """Water with a bone slab and a lung slab, 60 keV fan: every region's energy agrees."""
    from ctdose.physics.mc import VoxelGeometry, simulate
    from ctdose.physics.sources import PointSource

    water, bone, lung = get_medium("water"), get_medium("spine_bone"), get_medium("lung")
    mi = np.zeros((8, 16, 16), np.uint8)
    mi[:, 4:6, :] = 1
    mi[:, 9:13, :] = 2
    media = [water, bone, lung]
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    geo = VoxelGeometry(mi, rho, media, (5.0, 5.0, 5.0), (-17.5, -37.5, -37.5))
    src = PointSource((0, -400.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.1, 0.05))
    etl = simulate(geo, src, 60_000, seed=7, keep_batches=True)
    assert etl.estimator == "expected_track_length"
    trk = simulate(geo, src, 60_000, seed=8, keep_batches=True, estimator="track_length")
    for name, region in (("water in front", (mi == 0) & (np.arange(16)[None, :, None] < 4)), ("bone", mi == 1),
                         ("water between", (mi == 0) & (np.arange(16)[None, :, None] > 5)
                          & (np.arange(16)[None, :, None] < 9)), ("lung", mi == 2),
                         ("water behind", (mi == 0) & (np.arange(16)[None, :, None] > 12))):
        a, sa = etl.sum_with_sigma(region.astype(float))
        b, sb = trk.sum_with_sigma(region.astype(float))
        print(f"{name}: ETL {a:.2f} +- {sa:.2f} eV, TL {b:.2f} +- {sb:.2f} eV")
        assert abs(a - b) < 4 * math.hypot(sa, sb)
    body = etl.energy_ev > 0
    assert np.median(etl.rel_sigma[body]) < np.median(trk.rel_sigma[body])


def test_zero_optical_depth_collides_at_the_first_matter_not_in_vacuum():
    """U = 0 (a draw of 2^-24 probability) gives tau_c = 0: a ray starting in vacuum collides
    where the matter begins, not at 0 / 0 = NaN."""
    water = get_medium("water")
    shape, spacing = (1, 1, 10), (1.0, 1.0, 1.0)
    mi = np.zeros(shape, np.uint8)
    rho = np.zeros(shape, np.float32)
    rho[..., 4:] = 1.0
    prep = _setup(mi, rho, [water], spacing, shape)
    _, t_c, _ = _traverse(prep, np.array([[0.5, 0.5, 0.5]]), np.array([[1.0, 0.0, 0.0]]), 60.0, tau_c=np.zeros(1))
    assert t_c[0] == pytest.approx(3.5, abs=1e-5)


def _traverse_split(prep, pos, dirs, energy_kev, target_vox, window=(0.5, 2.0, 16.0), weight=1.0, seed=0,
                    tau_r=math.inf):
    """Run ``ray_chunk_split`` eagerly to the end; returns the scores and the collisions
    (ray, distance, weight) and the expected escaping weight of each ray."""
    from ctdose.physics.ray_kernels import ray_chunk_split

    n = pos.shape[0]
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    ts, tab, grid = prep.track_setup, prep.tables, prep.grid
    state = list(ray_start(*(f(pos[:, i]) for i in range(3)), *(f(dirs[:, i]) for i in range(3)), ts.grid_f,
                           ts.grid_i, ts.cell_f))
    e = torch.full((n,), float(energy_kev))
    ie, fe = tab.energy_index(e)
    gen = torch.Generator().manual_seed(seed)
    state += [torch.zeros(n), torch.zeros(n), torch.ones(n), -torch.rand(n, generator=gen), torch.full((n,), tau_r),
              torch.full((n,), float(weight))]
    scores = torch.zeros(grid.n_vox, dtype=torch.float64)
    rays, dist, wts = [], [], []
    for _ in range(1000):
        rr = torch.rand((3, n), generator=gen)
        out = ray_chunk_split(*state, e, ie, fe, torch.zeros(n, dtype=torch.int64), rr[0], rr[1], rr[2], grid.voxel_table,
                              tab.total_tr_ab, torch.as_tensor(target_vox, dtype=torch.float32),
                              torch.tensor(window, dtype=torch.float32), ts.grid_i, 8)
        flat, tx, ty, tz, rx, ry, rz, t, tau, att, lam, tau_r, wgt, index, score, t_coll, w_coll = out
        scores.index_add_(0, index.reshape(-1), score.reshape(-1))
        hit = w_coll > 0
        rays.append(torch.arange(n).expand_as(w_coll)[hit])
        dist.append(t_coll[hit])
        wts.append(w_coll[hit])
        state[:4] = flat, tx, ty, tz
        state[10:] = rx, ry, rz, t, tau, att, lam, tau_r, wgt
        if not bool(((rx >= 0) & (ry >= 0) & (rz >= 0)).any()):
            break
    escaping = (state[18] * state[15]).numpy()
    return scores.numpy(), torch.cat(rays).numpy(), torch.cat(dist).numpy(), torch.cat(wts).numpy(), escaping


def _water_column(n):
    """A 200 mm water column of forty 5 mm voxels along x and ``n`` rays along it from its start."""
    shape = (1, 1, 40)
    prep = _setup(np.zeros(shape, np.uint8), np.ones(shape, np.float32), [get_medium("water")], (1.0, 1.0, 5.0),
                  shape)
    return prep, np.tile([1e-3, 0.5, 0.5], (n, 1)), np.tile([1.0, 0.0, 0.0], (n, 1))


def test_split_flight_without_window_is_the_analogue_collision():
    """No window (target 0 everywhere): the same scores as ray_chunk, at most one collision per
    ray, at an exponentially distributed optical depth, weight kept."""
    n = 40_000
    prep, pos, dirs = _water_column(n)
    scores, rays, dist, wts, escaping = _traverse_split(prep, pos, dirs, 60.0, np.zeros(40), weight=0.75)
    exact, _, _ = _traverse(prep, pos[:1], dirs[:1], 60.0, ew=0.75 * 60.0)
    np.testing.assert_allclose(scores / n, exact, rtol=1e-5)
    assert np.bincount(rays, minlength=n).max() == 1 and np.all(wts == 0.75)
    mu = float(_mu_tables(prep, 60.0)[0][0])
    tau = mu * dist
    t_exit = mu * 200.0  # optical depth of the 200 mm column
    # collided fraction and the mean optical depth of the collisions (truncated exponential)
    p_coll = 1 - math.exp(-t_exit)
    assert rays.size / n == pytest.approx(p_coll, abs=4 * math.sqrt(p_coll * (1 - p_coll) / n))
    mean_tau = 1 - t_exit * math.exp(-t_exit) / p_coll
    assert float(tau.mean()) == pytest.approx(mean_tau, abs=4 * float(tau.std()) / math.sqrt(tau.size))
    assert escaping.mean() == pytest.approx(0.75 * math.exp(-t_exit), rel=1e-4)


def test_split_flight_collides_as_often_as_the_window_asks_and_keeps_the_weight():
    """A 200 mm water column whose far half has target weight 1/10: there a ray of weight 1
    collides ten times as often with weight 1/10; the collided weight per voxel is the exact
    W (T_in - T_out) everywhere, and the window changes no score."""
    n = 20_000
    prep, pos, dirs = _water_column(n)
    target = np.where(np.arange(40) >= 20, 0.1, 0.0)
    scores, rays, dist, wts, escaping = _traverse_split(prep, pos, dirs, 60.0, target)
    plain = _traverse_split(prep, pos[:1], dirs[:1], 60.0, np.zeros(40))[0]
    np.testing.assert_allclose(scores / n, plain, rtol=1e-5)
    mu = float(_mu_tables(prep, 60.0)[0][0])
    edges = np.arange(41) * 5.0
    vox = np.minimum((dist / 5.0).astype(int), 39)
    got = np.bincount(vox, weights=wts, minlength=40) / n
    exact = np.exp(-mu * edges[:-1]) - np.exp(-mu * edges[1:])
    count = np.bincount(vox, minlength=40)
    far = np.arange(40) >= 20
    assert np.allclose(wts[far[vox]], 0.1) and np.all(wts[~far[vox]] == 1.0)
    # systematic placement: the far half's collisions are ten times the analogue count
    assert count[far].sum() == pytest.approx(10 * n * exact[far].sum(), rel=0.03)
    for region in (~far, far):
        sd = math.sqrt(np.bincount(vox, weights=wts**2, minlength=40)[region].sum()) / n
        print(f"collided weight {got[region].sum():.5f} vs exact {exact[region].sum():.5f} (sd {sd:.5f})")
        assert abs(got[region].sum() - exact[region].sum()) < 4 * sd
    assert escaping.mean() == pytest.approx(math.exp(-mu * 200.0), rel=1e-4)


def test_split_flight_below_the_window_plays_roulette_and_stays_unbiased():
    """Rays of weight 0.1 in a 200 mm water column: the near half has target 0.1 (inside the
    window), the far half target 1, where the rays are ten times too light: there each ray
    plays roulette as a whole (scores, collisions and escape), so about a tenth go on, with
    weight 1. The far half's scores, collided weight and the escaping weight keep their exact
    expectations (20 independent runs give the spread); the near half is untouched."""
    n_runs, n = 20, 4000
    prep, pos, dirs = _water_column(n)
    target = np.where(np.arange(40) >= 20, 1.0, 0.1)
    mu = float(_mu_tables(prep, 60.0)[0][0])
    edges = np.arange(41) * 5.0
    exact_coll = 0.1 * (np.exp(-mu * edges[:-1]) - np.exp(-mu * edges[1:]))
    plain = 0.1 * _traverse_split(prep, pos[:1], dirs[:1], 60.0, np.zeros(40))[0]
    far = np.arange(40) >= 20
    runs = []
    for seed in range(n_runs):
        scores, rays, dist, wts, escaping = _traverse_split(prep, pos, dirs, 60.0, target, weight=0.1, seed=seed)
        vox = np.minimum((dist / 5.0).astype(int), 39)
        coll = np.bincount(vox, weights=wts, minlength=40) / n
        runs.append((scores[far].sum() / n, coll[far].sum(), escaping.mean(), scores[~far].sum() / n))
        # the near half sees the analogue ray: weight 0.1, scores exactly the plain ones
        np.testing.assert_allclose(scores[~far] / n, plain[~far], rtol=1e-5)
        assert np.all(wts[~far[vox]] == np.float32(0.1)) and np.all(wts[far[vox]] == 1.0)
        # a tenth of the rays reach the far half's collisions (survivors) - the rest are gone
        assert escaping[escaping > 0].min() == pytest.approx(math.exp(-mu * 200.0), rel=1e-4)
        assert (escaping > 0).mean() == pytest.approx(0.1, abs=4 * math.sqrt(0.09 / n))
    runs = np.array(runs)
    mean, sd = runs.mean(0), runs.std(0, ddof=1) / math.sqrt(n_runs)
    expected = (plain[far].sum(), exact_coll[far].sum(), 0.1 * math.exp(-mu * 200.0))
    for name, m, s, x in zip(("far scores (keV)", "far collided weight", "escaping weight"), mean, sd, expected):
        print(f"{name}: {m:.5g} +- {s:.2g} vs exact {x:.5g}")
        assert s > 0 and abs(m - x) < 4 * s


def test_split_flight_roulette_of_deep_rays_keeps_scores_collisions_and_escape():
    """30 keV in the 200 mm water column (optical depth 7.5): under a window the whole ray plays
    the deep roulette from ROULETTE_ATTENUATION_WINDOW on (scores, collisions and escape alike).
    Before it, every score is exact; past it, the mean scores, the collided weight and the
    escaping weight keep their exact expectations, and a quarter of the rays leave the column (one roulette), with weight 4."""
    from ctdose.physics.ray_kernels import ROULETTE_DEPTH_WINDOW

    n = 40_000
    prep, pos, dirs = _water_column(n)
    scores, rays, dist, wts, escaping = _traverse_split(prep, pos, dirs, 30.0, np.zeros(40),
                                                        tau_r=ROULETTE_DEPTH_WINDOW)
    exact = _traverse_split(prep, pos[:1], dirs[:1], 30.0, np.zeros(40))[0]
    mu = float(_mu_tables(prep, 30.0)[0][0])
    edges = np.arange(41) * 5.0
    depth = mu * edges[:-1]  # optical depth at each voxel's entry
    # the roulette acts at the first call (8 crossings) past its depth: exact scores before
    shallow = depth < ROULETTE_DEPTH_WINDOW
    np.testing.assert_allclose(scores[shallow] / n, exact[shallow], rtol=1e-5)
    # past it, one roulette (weight 4) before the exit: relative variance of one ray <= 1/p - 1
    deep = ~shallow
    assert deep.sum() >= 10
    ratio = scores[deep].sum() / n / exact[deep].sum()
    sd = math.sqrt((1 / ROULETTE_SURVIVAL - 1) / n)
    print(f"deep scores: mean / exact = {ratio:.4f} (sd {sd:.4f})")
    assert abs(ratio - 1.0) < 4 * sd
    vox = np.minimum((dist / 5.0).astype(int), 39)
    coll = np.bincount(vox, weights=wts, minlength=40) / n
    exact_coll = np.exp(-mu * edges[:-1]) - np.exp(-mu * edges[1:])
    sd_coll = math.sqrt(np.bincount(vox, weights=wts**2, minlength=40)[~shallow].sum()) / n
    print(f"deep collided weight {coll[~shallow].sum():.4g} vs exact {exact_coll[~shallow].sum():.4g} (sd {sd_coll:.2g})")
    assert abs(coll[~shallow].sum() - exact_coll[~shallow].sum()) < 4 * sd_coll
    # the survivors' collisions carry their raised weights (the roulette acts between calls)
    assert set(np.unique(wts).tolist()) == {1.0, 1.0 / ROULETTE_SURVIVAL}
    out = escaping > 0
    assert out.mean() == pytest.approx(ROULETTE_SURVIVAL, abs=4 * math.sqrt(0.1875 / n))
    assert escaping[out] == pytest.approx(math.exp(-mu * 200.0) / ROULETTE_SURVIVAL, rel=1e-4)
    sd_out = float(escaping.std()) / math.sqrt(n)
    print(f"escaping weight {escaping.mean():.4g} vs exact {math.exp(-mu * 200.0):.4g} (sd {sd_out:.2g})")
    assert abs(float(escaping.mean()) - math.exp(-mu * 200.0)) < 4 * sd_out


def test_a_grid_too_large_for_32_bit_voxel_indices_is_refused(monkeypatch):
    """The flights index voxels with 32-bit integers: a grid of 2^31 voxels or more gets a clear
    error when the kernels are set up (checked here with the limit lowered to 100 voxels)."""
    from ctdose.errors import InputError
    from ctdose.physics import transport

    shape = (2, 5, 10)  # 100 voxels
    mi, rho = np.zeros(shape, np.uint8), np.ones(shape, np.float32)
    _setup(mi, rho, [get_medium("water")], (1.0, 1.0, 1.0), shape)  # within the real limit
    monkeypatch.setattr(transport, "_MAX_TRAVERSAL_VOXELS", 100)
    with pytest.raises(InputError, match="2 x 5 x 10.*32-bit"):
        _setup(mi, rho, [get_medium("water")], (1.0, 1.0, 1.0), shape)


def _started_rays(seed, m):
    """A random three-media grid (compiled kernels asked for) and ``m`` rays at 50 keV from
    random points inside it in random directions, started: ``(prep, traversal state, [e, ie,
    fe, offset], three rows of uniform numbers, the generator)``."""
    rng = np.random.default_rng(seed)
    mi, rho, media = _random_grid(rng)
    prep = _setup(mi, rho, media, compile=True)
    ts, tab = prep.track_setup, prep.tables
    hi = np.array([SHAPE[2] * SPACING[2], SHAPE[1] * SPACING[1], SHAPE[0] * SPACING[0]])
    pos = torch.tensor(rng.uniform(0.1, 0.9, (m, 3)) * hi, dtype=torch.float32)
    d = torch.tensor(rng.normal(size=(m, 3)), dtype=torch.float32)
    d = d / d.norm(dim=1, keepdim=True)
    state = list(ray_start(*(a.contiguous() for a in (*pos.T, *d.T)), ts.grid_f, ts.grid_i, ts.cell_f))
    e = torch.full((m,), 50.0)
    ie, fe = tab.energy_index(e)
    const = [e, ie.to(torch.int32), fe, torch.zeros(m, dtype=torch.int64)]
    r = torch.tensor(rng.uniform(size=(3, m)), dtype=torch.float32)
    return prep, state, const, r, rng


def _split_args(state, const, r):
    """Per-ray arguments of ``ray_chunk_split`` at the start of a flight: t, tau 0, att 1,
    lam = -U, no roulette, weight 1; distinct tensors, as the transport passes them (one tensor
    passed twice would compile the kernel anew)."""
    m = r.shape[1]
    return [*state, torch.zeros(m), torch.zeros(m), torch.ones(m), -r[0], torch.full((m,), 99.0), torch.ones(m),
            *const, *(c.clone() for c in r)]


def _window_table(voxel_table: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The voxel table of a weight-window run, rows [medium, density, target, 0], and its target
    column (a strided view), as ``transport`` passes them to ``ray_chunk_split``."""
    from ctdose.physics.weight_window import voxel_table_with_targets

    wide = voxel_table_with_targets(voxel_table, target)
    return wide, wide[:, 2]


def test_split_chunk_reads_the_target_from_a_column_of_a_wider_voxel_table():
    """The window runs pass [medium, density, target, 0] rows as the voxel table and its third
    column as the targets: the compiled and the eager kernel give what the two-column table
    with a separate target array gives."""
    from ctdose.physics import kernels
    from ctdose.physics.ray_kernels import ray_chunk_split

    prep, state, const, r, rng = _started_rays(12, 200)
    ts, tab, grid = prep.track_setup, prep.tables, prep.grid
    args = _split_args(state, const, r)
    target = torch.tensor(rng.choice([0.0, 0.1, 2.0], grid.n_vox), dtype=torch.float32)  # split, roulette, none
    window_f = torch.tensor([0.8, 1.25, 8.0])
    wide, wide_target = _window_table(grid.voxel_table, target)
    want = ray_chunk_split(*args, grid.voxel_table, tab.total_tr_ab, target, window_f, ts.grid_i, 8)
    runs = [("eager", ray_chunk_split)]
    if ts.compiled and not kernels._FAILED:
        runs.append(("compiled", ts.ray_kernels[2]))
    for name, kernel in runs:
        got = kernel(*args, wide, tab.total_tr_ab, wide_target, window_f, ts.grid_i, 8)
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g.double().numpy(), w_.double().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(want[16].sum()) > 0 and float(want[14].sum()) > 0  # collisions and scores


def test_few_rays_run_the_compiled_chunks_padded():
    """Fewer rays than the compiled kernels' smallest size (the end of a flight) run the
    compiled chunks padded with copies of the last ray: the real rays get the eager kernel's
    results (up to rounding), the copies' outputs are dropped."""
    from ctdose.physics import kernels
    from ctdose.physics.ray_kernels import ray_chunk_split
    from ctdose.physics.transport import _ray_chunk

    m = kernels.MIN_COMPILED_PHOTONS - 1  # the largest set that is padded
    prep, state, const, r, _ = _started_rays(11, m)
    ts, tab, grid = prep.track_setup, prep.tables, prep.grid
    if not ts.compiled or kernels._FAILED:
        pytest.skip("torch.compile is not available here")
    # t, tau, att, the collision's optical depth 0.05 (inside the grid), t_c unknown, no roulette, w E
    plain = [*state, torch.zeros(m), torch.zeros(m), torch.ones(m), torch.full((m,), 0.05), -torch.ones(m),
             torch.full((m,), 99.0), *const, r[0]]
    fixed = (grid.voxel_table, tab.total_tr_ab, ts.grid_i, 8)
    # a window everywhere at a tenth of the weight: the rays split
    split = _split_args(state, const, r)
    wide, wide_target = _window_table(grid.voxel_table, torch.full((grid.n_vox,), 0.1))
    sfixed = (wide, tab.total_tr_ab, wide_target, torch.tensor([0.8, 1.25, 8.0]), ts.grid_i, 8)
    for k, eager, args, fix in [(1, ray_chunk, plain, fixed), (2, ray_chunk_split, split, sfixed)]:
        got, want = _ray_chunk(ts, k, args, fix), eager(*args, *fix)
        assert len(got) == len(want)
        for g, w_ in zip(got, want):
            assert g.shape == w_.shape
            np.testing.assert_allclose(g.double().numpy(), w_.double().numpy(), rtol=1e-5, atol=1e-6)
        assert float(want[14].sum()) > 0  # the rays scored
    assert float(want[16].sum()) > 0  # and collided (the collisions' weights)
