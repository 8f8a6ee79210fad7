"""Monte Carlo speed and efficiency: histories/s and 1/(sigma^2 t), ours next to ompMC.

Usage::

    python benchmarks/bench_mc.py                  # 2e6 histories per run, 3 rounds
    python benchmarks/bench_mc.py --rounds 1       # one round (a third of the time)
    python benchmarks/bench_mc.py --quick          # 2e5, one round
    python benchmarks/bench_mc.py --device cuda    # our engine on a GPU
    python benchmarks/bench_mc.py --large          # fixed costs of a 52 M-voxel grid instead

Phantoms: a 32 cm water cylinder (100 mm long, 5 mm voxels, vacuum outside), a demo phantom
(a synthetic thorax from ``ctdose.anatomy`` at 6 mm, the demo profile's grid) and a paper
phantom (the same at 2.5 mm, the paper profile's grid: 2.8 M voxels, 16 media). One
projection: a point source 541 mm from the axis whose rectangular opening on the grid's
entrance face covers the phantom (ompMC has no CT source), 120 kVp TG-195 spectrum.
sigma = mean relative standard error over body voxels; efficiency = 1 / (sigma^2 t).

ompMC (PyPI ``ompmc``, GPL-3.0, optional and never vendored) runs the same phantom, source and
photon count in the same process; its media are the nearest PEGS4 521ICRU media (air, lung,
ICRP bone, ICRU tissue, water) at our densities, its electrons are below ECUT (local), photon
splitting off. Its OpenMP threads follow OMP_NUM_THREADS (set it to 2 for 2 cores).

Our engine runs with its default estimator (expected track length: every flight traversed voxel
by voxel to the grid's exit, compiled kernels, see ``ctdose.physics.ray_kernels``) on 1 core and
on 2 cores (``simulate(workers=2)``: a second worker process), the same with weight windows
(``weight_window=True``: splitting and roulette from a pilot run, see
``ctdose.physics.weight_window``; with this estimator they act along the flights) on 2 cores,
the stratified track-length estimator (Woodcock flights, block majorant) with and without
windows on 2 cores, and the ``collision`` estimator (Woodcock flights, global majorant, a score
at every tentative site; compiled kernels) on 2 cores for comparison. Each
configuration is warmed up first (tables, kernel compilation, worker start), as in a cohort
run where these costs are paid once. The speed of a shared VM drifts by tens of percent between
minutes, so every configuration runs in several rounds, each between two ompMC runs whose
geometric mean is that round's reference; the table gives medians and ranges (:func:`run`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctdose.materials import get_medium  # noqa: E402
from ctdose.physics.mc import VoxelGeometry, geometry_from_case, simulate  # noqa: E402
from ctdose.physics.sources import PointSource  # noqa: E402
from ctdose.physics.tg195 import tg195_spectrum  # noqa: E402

SOURCE_TO_AXIS_MM = 541.0
GOAL_HIST_PER_S = 2e6
GOAL_EFFICIENCY_RATIO = 20.0
_PEGS = {"air": "AIR521ICRU", "lung": "LUNG521ICRU", "water": "H2O521ICRU",
         "spine_bone": "ICRPBONE521ICRU", "rib_bone": "ICRPBONE521ICRU", "skull": "ICRPBONE521ICRU"}


def water_cylinder() -> tuple[VoxelGeometry, np.ndarray, str]:
    """32 cm water cylinder, 100 mm long, 5 mm voxels, vacuum outside."""
    sp = 5.0
    n = 66
    c = (np.arange(n) - (n - 1) / 2) * sp
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = xx**2 + yy**2 <= 160.0**2
    nz = 20
    rho = np.broadcast_to(np.where(inside, 1.0, 0.0).astype(np.float32), (nz, n, n)).copy()
    geo = VoxelGeometry(np.zeros(rho.shape, np.uint8), rho, [get_medium("water")], (sp, sp, sp),
                        (-(nz - 1) / 2 * sp, c[0], c[0]))
    return geo, rho > 0, "32 cm water cylinder (5 mm)"


def profile_case(profile: str):
    """The profile's first synthetic thorax: ``(cfg, case Dataset)`` (labels on its grid)."""
    from ctdose.anatomy.cohort import phantom_case, sample_designs
    from ctdose.anatomy.synthetic import synthetic_params
    from ctdose.config import load_profile

    cfg = load_profile(profile, {"cohort.n_surrogate": 0, "cohort.n_synthetic": 1})
    row = sample_designs(cfg)["synthetic"].iloc[0]
    ds = phantom_case(synthetic_params(row), "bench_000", "synthetic", float(cfg["cohort"]["spacing_mm"]),
                      float(cfg["cohort"]["roi_margin_mm"]))
    return cfg, ds


def _profile_phantom(profile: str) -> tuple[VoxelGeometry, np.ndarray, str]:
    cfg, ds = profile_case(profile)
    geo = geometry_from_case(ds)
    name = f"{profile} phantom (synthetic thorax, {cfg['cohort']['spacing_mm']:g} mm, {np.prod(geo.shape) / 1e6:.2g} M voxels)"
    return geo, np.asarray(ds["labels"].values) > 0, name


def demo_phantom() -> tuple[VoxelGeometry, np.ndarray, str]:
    """A synthetic thorax of the demo profile at its 6 mm grid."""
    return _profile_phantom("demo")


def paper_phantom() -> tuple[VoxelGeometry, np.ndarray, str]:
    """A synthetic thorax of the paper profile at its 2.5 mm grid (16 media)."""
    return _profile_phantom("paper")


def _opening(geo: VoxelGeometry):
    """Entrance face (y = lo) and the half-widths (mm) of an opening covering the grid."""
    dz, dy, dx = geo.spacing_mm
    z0, y0, x0 = geo.origin_mm
    nz, ny, nx = geo.shape
    y_face = y0 - dy / 2
    ssd = SOURCE_TO_AXIS_MM + y_face  # source at y = -541 mm
    half_x = (nx * dx / 2) * ssd / SOURCE_TO_AXIS_MM
    half_z = (nz * dz / 2) * ssd / SOURCE_TO_AXIS_MM
    return y_face, ssd, half_x, half_z


def projection_source(geo: VoxelGeometry) -> PointSource:
    """The benchmark's one projection: a 120 kVp (TG-195) point source ``SOURCE_TO_AXIS_MM``
    from the grid's axis whose rectangular opening on the entrance face covers the grid
    (sampled by area, as ompMC's collimated source is)."""
    _, ssd, hx, hz = _opening(geo)
    z_mid = geo.origin_mm[0] + (geo.shape[0] - 1) / 2 * geo.spacing_mm[0]
    x_mid = geo.origin_mm[2] + (geo.shape[2] - 1) / 2 * geo.spacing_mm[2]
    return PointSource((x_mid, -SOURCE_TO_AXIS_MM, z_mid), (0, 1, 0), spectrum=tg195_spectrum(), collimation="fan",
                       half_angles_rad=(math.atan(hx / ssd), math.atan(hz / ssd)), fan_axis=(1, 0, 0),
                       sampling="plane")


def ours(geo, body, n, workers, device="cpu", seed=0, estimator="expected_track_length", weight_window=False):
    src = projection_source(geo)
    # warm-up: tables, kernel compilation, worker processes
    kw = dict(n_batches=10, seed=seed, device=device, workers=workers, estimator=estimator, weight_window=weight_window)
    simulate(geo, src, min(n, 40000), **kw)
    res = simulate(geo, src, n, **kw)
    sigma = float(np.mean(np.minimum(res.rel_sigma[body], 1.0)))
    return dict(wall_s=res.wall_s, hist_per_s=n / res.wall_s, sigma=sigma, eff=1.0 / (sigma**2 * res.wall_s))


def ompmc_run(geo, body, n):
    import ompmc

    y_face, ssd, hx, hz = _opening(geo)
    names = [_PEGS.get(m.name, "ICRUTISSUE521ICRU") for m in geo.media]
    uniq = sorted(set(names))
    lut = np.array([uniq.index(nm) + 1 for nm in names], np.int32)
    mi = np.asarray(geo.media_index)
    rho = np.asarray(geo.density_g_cm3, np.float64)
    mat = np.where(rho > 0, lut[mi], 0).astype(np.int32)
    dz, dy, dx = geo.spacing_mm
    z0, y0, x0 = geo.origin_mm
    nz, ny, nx = geo.shape
    # ompMC axes (X, Y, Z) = our (x, z, y): its beam runs along Z = our +y; cm
    xb = (x0 - dx / 2 + dx * np.arange(nx + 1)) / 10
    yb = (z0 - dz / 2 + dz * np.arange(nz + 1)) / 10
    zb = (y0 - dy / 2 + dy * np.arange(ny + 1)) / 10
    xb -= xb.mean()
    yb -= yb.mean()  # the ompMC source sits on X = Y = 0
    g = ompmc.Geometry(xb, yb, zb, uniq, np.asfortranarray(np.where(rho > 0, rho, 1.0).transpose(2, 0, 1)),
                       np.asfortranarray(mat.transpose(2, 0, 1)))
    spec = tg195_spectrum()
    upper_mev = (spec.energy_kev + 0.25) * 1e-3
    spectrum = ompmc.Spectrum.from_histogram(upper_mev, spec.probabilities(), e_min=float(upper_mev[0] - 0.5e-3))
    phys = ompmc.Physics(n_split=1, pegs_file=ompmc.data_path() / "pegs4" / "521icru.pegs4dat")
    src = ompmc.CollimatedSource(ssd=ssd / 10, x_min=-hx / 10, x_max=hx / 10, y_min=-hz / 10, y_max=hz / 10)
    t0 = time.perf_counter()
    _, unc = ompmc.calc_cube(g, src, spectrum, phys, n_histories=n, n_batches=10, output_dose=False)
    wall = time.perf_counter() - t0
    rel = np.asarray(unc).transpose(1, 2, 0)  # back to [z, y, x]
    sigma = float(np.mean(np.minimum(rel[body], 1.0)))
    return dict(wall_s=wall, hist_per_s=n / wall, sigma=sigma, eff=1.0 / (sigma**2 * wall))


def _median_range(values, fmt: str) -> str:
    """``median [min-max]`` of per-round values (the value alone for one round)."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return format(v[0], fmt)
    return f"{format(np.median(v), fmt)} [{format(v.min(), fmt)}-{format(v.max(), fmt)}]"


def run(quick: bool = False, device: str = "cpu", rounds: int = 1) -> list[dict]:
    """The table: per phantom, ompMC and each of our configurations, ``rounds`` times.

    The VM's speed drifts between minutes, and it moves both engines' figures. In every round
    ompMC runs just before and just after our configurations, and each efficiency ratio is
    taken against the geometric mean of that round's two ompMC runs (the drift within a round
    largely cancels); the table gives the median over the rounds, with their range.
    """
    n = 200_000 if quick else 2_000_000
    rows = []
    have_ompmc = importlib.util.find_spec("ompmc") is not None
    omp_threads = os.environ.get("OMP_NUM_THREADS", "default")
    etl = "expected_track_length"
    configs = ([(etl, 1, False), (etl, 2, False), (etl, 2, True), ("track_length", 2, False),
                ("track_length", 2, True), ("collision", 2, False)]
               if device == "cpu" else [(etl, 1, False), (etl, 1, True), ("track_length", 1, False),
                                        ("collision", 1, False)])
    for make in (water_cylinder, demo_phantom, paper_phantom):
        geo, body, name = make()
        refs, ours_runs = [], {c: [] for c in configs}
        for _ in range(rounds):
            before = ompmc_run(geo, body, n) if have_ompmc else None
            for c in configs:
                estimator, workers, window = c
                ours_runs[c].append(ours(geo, body, n, workers, device, estimator=estimator, weight_window=window))
            if have_ompmc:
                after = ompmc_run(geo, body, n)
                refs.append({k: math.sqrt(before[k] * after[k]) for k in ("hist_per_s", "eff", "sigma")})
        rounds_note = f"median [range] of {rounds} rounds; " if rounds > 1 else ""
        if refs:
            hps = [r["hist_per_s"] for r in refs]
            rows.append(dict(benchmark=f"ompMC histories/s, {name}", value=round(float(np.median(hps))), unit="1/s",
                             note=f"{rounds_note}{_median_range(hps, '.3g')}; OMP_NUM_THREADS={omp_threads}; "
                                  f"sigma {refs[0]['sigma']:.3f}"))
        for c, runs in ours_runs.items():
            estimator, workers, window = c
            name_est = estimator + (" + weight window" if window else "")
            tag = f"{name_est}, cpu, {workers} core(s)" if device == "cpu" else f"{name_est}, {device}"
            hps = [r["hist_per_s"] for r in runs]
            rows.append(dict(benchmark=f"ctdose histories/s, {name}, {tag}", value=round(float(np.median(hps))),
                             unit="1/s", goal=f">= {GOAL_HIST_PER_S:.0e} on 2 cores",
                             note=f"{rounds_note}{_median_range(hps, '.3g')}; sigma {runs[0]['sigma']:.3f}; "
                                  f"t {runs[0]['wall_s']:.1f} s; {n} histories"))
            if refs:
                ratios = [r["eff"] / ref["eff"] for r, ref in zip(runs, refs)]
                rows.append(dict(benchmark=f"efficiency ratio ctdose/ompMC, {name}, {tag}",
                                 value=round(float(np.median(ratios)), 2), unit="x", goal=f">= {GOAL_EFFICIENCY_RATIO:g}",
                                 note=f"{rounds_note}{_median_range(ratios, '.1f')}; 1/(sigma^2 t): ours "
                                      f"{runs[0]['eff']:.3g}, ompMC {refs[0]['eff']:.3g} 1/s"))
    return rows


def large_grid(n_photons: int = 200_000, device: str = "cpu") -> list[dict]:
    """Fixed costs on a full-resolution CT-sized grid: 200 x 512 x 512 voxels of 1 mm (52 M),
    20 media in stripes inside an elliptic body, one 120 kVp projection, air around.

    With few photons the run is dominated by what scales with the voxel count (tables, block
    majorant, tallies over the 1 GiB budget run one batch at a time, batch statistics, dose);
    prints the wall time of ``simulate`` (after a warm-up that compiles the kernels) and the
    peak memory of this process.
    """
    import resource

    from ctdose.materials import custom_medium

    nz, ny, nx = 200, 512, 512
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    ellipse = ((yy - ny / 2) / (ny * 0.4)) ** 2 + ((xx - nx / 2) / (nx * 0.45)) ** 2 < 1
    mi = np.where(ellipse, 1 + ((xx // 17 + yy // 23 + zz // 11) % 19), 0).astype(np.uint8)
    media = [get_medium("air")] + [custom_medium(f"tissue_{i}", 0.9 + 0.05 * i, {1: 0.1, 6: 0.2, 8: 0.68, 20: 0.02})
                                   for i in range(19)]
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    geo = VoxelGeometry(mi, rho, media, (1.0, 1.0, 1.0), (-(nz - 1) / 2, -(ny - 1) / 2, -(nx - 1) / 2))
    src = PointSource((0, -SOURCE_TO_AXIS_MM, 0), (0, 1, 0), spectrum=tg195_spectrum(),
                      half_angles_rad=(math.atan(nx / 2 / SOURCE_TO_AXIS_MM), math.atan(nz / 2 / SOURCE_TO_AXIS_MM)))
    air = get_medium("air")
    simulate(VoxelGeometry(mi[:8, :64, :64], rho[:8, :64, :64], media, (1.0, 1.0, 1.0), (-3.5, -31.5, -31.5)),
             src, 20_000, device=device, ambient=air)  # compile the kernels first
    res = simulate(geo, src, n_photons, device=device, ambient=air)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    balance = (res.deposited_energy_ev + res.escaped_energy_ev) / res.emitted_energy_ev
    return [dict(benchmark="simulate on a 52 M-voxel grid (200 x 512 x 512, 1 mm, 20 media)", value=round(res.wall_s, 1),
                 unit="s", note=f"{n_photons} photons; peak RSS {peak_gb:.2f} GB; energy balance {balance:.4f}")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--large", action="store_true", help="only the fixed costs of a 52 M-voxel grid")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of every configuration, each between two ompMC runs (median and range shown)")
    a = p.parse_args(argv)
    import pandas as pd

    rows = large_grid(device=a.device) if a.large else run(a.quick, a.device, 1 if a.quick else a.rounds)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_colwidth", 90)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
