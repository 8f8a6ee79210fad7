"""Anatomy benchmarks: one phantom at 2.5 mm, the 200-phantom paper cohort at demo spacing.

Goals (issue 3): one synthetic phantom's thorax ROI at 2.5 mm in < 2 s on one core; the
200-phantom synthetic cohort at 6 mm (voxelised, ROI, body mask, electron density, written
to a case store) in < 2 min on 2 cores. Run ``python benchmarks/bench_anatomy.py [--quick]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def _one_phantom(spacing_mm: float, repeats: int) -> tuple[float, float, tuple]:
    from ctdose.anatomy.phantom import build_phantom
    from ctdose.anatomy.roi import thorax_roi_z_mm
    from ctdose.anatomy.synthetic import sample_synthetic, synthetic_params

    rows = sample_synthetic(repeats, seed=1).to_dict("records")
    times, devs, shape = [], [], None
    for row in rows:
        t0 = time.perf_counter()
        ph = build_phantom(synthetic_params(row))
        roi = thorax_roi_z_mm(ph.landmarks_z_mm(), 30.0, row["case_id"])
        dev = ph.calibrate(spacing_mm)
        labels, _ = ph.voxelise(spacing_mm, roi)
        times.append(time.perf_counter() - t0)
        devs.append(max(abs(v) for v in dev.values() if np.isfinite(v)))
        shape = labels.shape
    return float(np.median(times)), float(max(devs)), shape


def _cohort(n: int, workers: int) -> float:
    from ctdose.anatomy.cohort import build_cohorts
    from ctdose.config import load_profile
    from ctdose.store import CaseStore

    cfg = load_profile("demo", {"cohort.n_synthetic": n, "cohort.n_surrogate": 0, "cohort.n_workers": workers})
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore.for_run(tmp)
        t0 = time.perf_counter()
        build_cohorts(cfg, store, progress=False)
        return time.perf_counter() - t0


def _cpu_per_case(n: int) -> float:
    """CPU seconds (this process) per synthetic case at 6 mm, build + density + store write, serial."""
    from ctdose.anatomy.cohort import build_cohorts
    from ctdose.config import load_profile
    from ctdose.store import CaseStore

    cfg = load_profile("demo", {"cohort.n_synthetic": n, "cohort.n_surrogate": 0, "cohort.n_workers": 1})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        build_cohorts(cfg, CaseStore.for_run(tmp), progress=False)
        return (time.process_time() - t0) / n


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (``benchmark, value, unit, note``)."""
    t_one, dev, shape = _one_phantom(2.5, 3 if quick else 7)
    rows = [{
        "benchmark": "anatomy: one synthetic phantom, thorax ROI at 2.5 mm (1 core)",
        "value": round(t_one, 3), "unit": "s",
        "note": f"median; build + volume calibration + ROI voxelisation, shape {shape}; goal < 2 s",
    }, {
        "benchmark": "anatomy: worst organ volume deviation after calibration at 2.5 mm",
        "value": round(100 * dev, 2), "unit": "%", "note": "max over calibrated organs; goal 3 % at 2 mm",
    }]
    cpu = _cpu_per_case(10 if quick else 40)
    rows.append({
        "benchmark": "anatomy: CPU time per synthetic case at 6 mm (serial)",
        "value": round(cpu, 3), "unit": "s",
        "note": f"process CPU time, independent of machine load; 200 cases on 2 idle cores ~ {200 * cpu / 2:.0f} s",
    })
    n = 20 if quick else 200
    t = _cohort(n, 2)
    rows.append({
        "benchmark": "anatomy: 200-phantom synthetic cohort at 6 mm (2 processes)",
        "value": round(t * 200 / n, 1), "unit": "s",
        "note": ("extrapolated from 20 phantoms; " if quick else "")
        + f"wall time, incl. density_e and store writes; load average {os.getloadavg()[0]:.1f}; goal < 120 s",
    })
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    results = run(quick)
    width = max(len(r["benchmark"]) for r in results)
    for r in results:
        print(f"{r['benchmark']:<{width}}  {r['value']:>8} {r['unit']:<3} {r['note']}")
