"""Fluorescence transport in a contrast-enhanced thorax: what it changes and what it costs.

Usage::

    python benchmarks/bench_fluorescence.py          # 1e6 histories per run, 1 core
    python benchmarks/bench_fluorescence.py --quick  # 1e5

The demo thorax of ``bench_mc.py`` with its blood-filled media (heart and blood) given 1 %
iodine by mass (an arterial-phase contrast CT, about 10 mg iodine per ml), one 120 kVp
projection. Each estimator runs with iodine's K lines transported (the default,
``fluorescence_min_kev`` = 10 keV, :mod:`ctdose.physics.fluorescence`) and with every line
deposited at the absorption (``fluorescence_min_kev=None``), same seed. The table gives the
mean dose per photon in the iodinated media and in the rest of the body (with the batch
standard error) and the histories per second; a third run shows that the unenhanced thorax
(no line of 10 keV or more) gives the same numbers both ways.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.constants import electron_volt as EV_TO_J

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_mc  # noqa: E402

from ctdose.materials import custom_medium  # noqa: E402
from ctdose.physics.mc import simulate  # noqa: E402

#: Iodine mass fraction of the enhanced media (the rest scaled down in proportion).
IODINE_MASS_FRACTION = 0.01
#: The media that hold blood and take up the contrast.
ENHANCED_MEDIA = ("heart", "blood")


def _enhance(medium):
    fractions = {z: w * (1.0 - IODINE_MASS_FRACTION) for z, w in medium.mass_fractions.items()}
    fractions[53] = fractions.get(53, 0.0) + IODINE_MASS_FRACTION
    return custom_medium(f"{medium.name} + 1 % iodine", medium.density_g_cm3, fractions)


def contrast_thorax():
    """The demo thorax with iodinated blood: geometry, body mask, mask of the enhanced voxels."""
    geo, body, name = bench_mc.demo_phantom()
    media = [(_enhance(m) if m.name in ENHANCED_MEDIA else m) for m in geo.media]
    enhanced_idx = [i for i, m in enumerate(geo.media) if m.name in ENHANCED_MEDIA]
    enhanced = np.isin(np.asarray(geo.media_index), enhanced_idx)
    if not enhanced.any():
        raise RuntimeError(f"the demo thorax has none of the media {ENHANCED_MEDIA}")
    return replace(geo, media=media), body, enhanced, name


def _dose(res, geo, mask):
    """Mean dose per photon (Gy) of the voxels ``mask`` (energy over mass) and its batch
    standard error."""
    energy_ev, sigma_ev = res.sum_with_sigma(mask)
    joule_per_ev_kg = EV_TO_J / float(geo.voxel_mass_kg()[mask].sum())
    return energy_ev * joule_per_ev_kg, sigma_ev * joule_per_ev_kg


def run(quick: bool = False) -> list[dict]:
    import torch

    n = 100_000 if quick else 1_000_000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        geo, body, enhanced, name = contrast_thorax()
        src = bench_mc.projection_source(geo)
        rest = body & ~enhanced
        for estimator in ("expected_track_length", "collision"):
            out = {}
            for label, threshold in (("K lines transported", 10.0), ("all lines local", None)):
                kw = dict(estimator=estimator, fluorescence_min_kev=threshold, keep_batches=True)
                simulate(geo, src, 20_000, **kw)  # warm-up: tables, compilation
                t0 = time.perf_counter()
                res = simulate(geo, src, n, seed=1, **kw)
                wall = time.perf_counter() - t0
                out[label] = (_dose(res, geo, enhanced), _dose(res, geo, rest), n / wall)
            for label, ((d_e, s_e), (d_r, s_r), hps) in out.items():
                (d_e0, _), (d_r0, _), hps0 = out["all lines local"]
                rows.append(dict(benchmark=f"{name} + iodinated blood, {estimator}: {label}",
                                 value=round(hps), unit="histories/s",
                                 note=f"iodinated media {d_e:.4g} +- {s_e:.2g} Gy/photon ({d_e / d_e0:.3f}x local), "
                                      f"rest of body {d_r:.4g} +- {s_r:.2g} ({d_r / d_r0:.3f}x local); "
                                      f"{n} histories, 1 core"))
        plain, _, _ = bench_mc.demo_phantom()
        a, b = (simulate(plain, src, 50_000, seed=2, fluorescence_min_kev=t) for t in (10.0, None))
        rows.append(dict(benchmark=f"{name} without contrast: transported = local", value=int(np.array_equal(
            a.energy_ev, b.energy_ev)), unit="(1: the same numbers)", note="no body element has a line >= 10 keV"))
    finally:
        torch.set_num_threads(threads)
    return rows


def main(argv=None) -> int:
    from _cli import quick_main

    return quick_main(run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
