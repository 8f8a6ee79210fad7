"""Accuracy of a discretised gantry rotation: organ doses of point projections vs continuous.

Usage::

    python benchmarks/bench_rotation.py            # 4e6 photons per run
    python benchmarks/bench_rotation.py --quick    # 4e5

A CT tube emits throughout the rotation. ``Protocol(rotation="discrete")`` replaces that by
point projections at ``projections_per_rotation`` angles (how the compendium ran before
``rotation="continuous"`` became the default). This benchmark runs one synthetic thorax of
the demo profile (6 mm voxels) with the demo scanner and its axial protocol over the thorax
ROI: continuous rotation as the reference, then 8 (smoke profile), 16 (demo) and 36 (paper)
point projections, each at two start angles (0 and half a projection step). It prints each
Table-4 organ's dose per 100 mAs and the deviation of every discrete run from the continuous
one, with the 1-sd batch uncertainty of the difference. Every run has its own seed; the
reference runs twice the photons, and its noise is common to all columns.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_mc's phantom

REFERENCE_MAS = 100.0
MGY_PER_GY = 1e3
PROJECTIONS = (8, 16, 36)


def _thorax():
    from bench_mc import profile_case

    from ctdose.physics.cohort_mc import _roi_of
    from ctdose.physics.mc import geometry_from_case

    cfg, ds = profile_case("demo")
    labels = np.asarray(ds["labels"].values)
    roi = _roi_of(ds.attrs, labels.shape, ds.attrs["spacing_mm"], ds.attrs["origin_mm"])
    return cfg, geometry_from_case(ds), labels, roi


def _organ_doses(res, labels, groups) -> dict[str, tuple[float, float]]:
    """Organ mean dose and its 1-sd batch uncertainty, mGy per 100 mAs."""
    out = {}
    scale = REFERENCE_MAS * MGY_PER_GY
    for name, ids in groups.items():
        mask = np.isin(labels, ids)
        if mask.any():
            v, s = res.sum_with_sigma(mask / mask.sum(), quantity="dose_gy")
            out[name] = (v * scale, s * scale)
    return out


def run(quick: bool = False) -> list[dict]:
    from ctdose.dosimetry import TABLE4_ORGANS
    from ctdose.anatomy.organs import dose_groups
    from ctdose.physics.mc import simulate
    from ctdose.physics.scanner import protocol_for_case, scanner_from_profile
    from ctdose.physics.sources import CTSource

    n = 400_000 if quick else 4_000_000
    cfg, geo, labels, roi = _thorax()
    scanner = scanner_from_profile(cfg)
    base = protocol_for_case(cfg, roi)
    all_groups = dose_groups()
    groups = {g: all_groups[g] for g in TABLE4_ORGANS if g in all_groups}
    seed = int(cfg["seed"])

    runs = iter(range(1000))

    def doses(n_photons, **protocol_kw):
        from dataclasses import replace

        protocol = replace(base, **protocol_kw)
        res = simulate(geo, CTSource(scanner, protocol), n_photons, seed=seed + next(runs), keep_batches=True,
                       ambient=cfg["mc"]["ambient"])
        return _organ_doses(res, labels, groups), res.wall_s

    ref, t_ref = doses(2 * n, rotation="continuous")
    print(f"continuous rotation: {2 * n:.0e} photons, {t_ref:.1f} s; organ doses mGy per 100 mAs; "
          f"discrete runs {n:.0e} photons each")
    rows = []
    header = f"{'organ':<16}{'continuous':>16}" + "".join(f"{f'{k} proj, start {s}':>22}" for k in PROJECTIONS
                                                         for s in ("0", "1/2"))
    table = {o: f"{o:<16}{ref[o][0]:>9.3f} +- {ref[o][1]:<4.3f}" for o in ref}
    worst = {}
    for k in PROJECTIONS:
        step_deg = 360.0 / k
        for start_label, start in (("0", 0.0), ("1/2", step_deg / 2)):
            got, _ = doses(n, rotation="discrete", projections_per_rotation=k, start_angle_deg=start)
            for organ, (v, s) in got.items():
                r, rs = ref[organ]
                dev = (v / r - 1.0) * 100.0
                sd = math.hypot(s / r, v * rs / r**2) * 100.0
                table[organ] += f"{dev:>+14.2f} +- {sd:<4.2f}"
                worst[(k, start_label)] = max(worst.get((k, start_label), (0.0, "", 0.0)), (abs(dev), organ, sd))
    print(header)
    for line in table.values():
        print(line)
    for (k, start_label), (dev, organ, sd) in worst.items():
        rows.append(dict(benchmark=f"discrete rotation, {k} projections (start {start_label} step), largest organ "
                                   f"deviation from continuous", value=round(dev, 2), unit="%",
                         note=f"{organ}, 1 sd {sd:.2f} %; demo thorax 6 mm, {n:.0e} photons"))
    return rows


def main(argv=None) -> int:
    from _cli import quick_main

    return quick_main(run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
