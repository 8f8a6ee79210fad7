"""Evaluation and figure timings on a synthetic finished run (no training, no MC).

Builds a run directory with demo-like sizes (6 mm thorax grid, 10 test cases, 2 kerma modes x
4 mixes, 3 members; ``--quick``: 2 cases, 2 models) whose predictions are random
perturbations of a smooth dose, then times

- ``evaluate_models`` (eqs. 3-9, organ doses, tables) with the predictions already stored,
- ``draw_all`` + ``write_comparison_page`` (what notebook 05 does; goal < 60 s).

Usage: ``python benchmarks/bench_evaluate.py [--quick]``
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import pandas as pd
import xarray as xr

from ctdose.anatomy.organs import dose_groups
from ctdose.config import load_profile
from ctdose.evaluate import evaluate_models
from ctdose.figures import draw_all
from ctdose.report import write_comparison_page
from ctdose.store import CaseStore, make_case

SPACING_MM = (6.0, 6.0, 6.0)
SHAPE = (50, 64, 88)  # about 30 x 38 x 53 cm
ORGAN_BOXES = {  # label id: (z, y, x) slices inside the trunk
    4: (slice(10, 45), slice(20, 40), slice(20, 38)),
    5: (slice(10, 45), slice(20, 40), slice(50, 68)),
    8: (slice(15, 30), slice(25, 38), slice(38, 50)),
    12: (slice(0, 15), slice(20, 42), slice(22, 45)),
    14: (slice(0, 12), slice(30, 40), slice(55, 62)),
    24: (slice(0, 50), slice(40, 44), slice(42, 46)),
}


def _case(rng, scale):
    nz, ny, nx = SHAPE
    y = (np.arange(ny) - (ny - 1) / 2) * SPACING_MM[1]
    x = (np.arange(nx) - (nx - 1) / 2) * SPACING_MM[2]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body2d = (xx / (230 * scale)) ** 2 + (yy / (160 * scale)) ** 2 <= 1
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, body2d] = 3
    for lab, box in ORGAN_BOXES.items():
        region = labels[box]
        region[region > 0] = lab
    dose = (np.exp(-((np.arange(nz)[:, None, None] - nz / 2) / 15.0) ** 2) * 1e-4 * np.ones(SHAPE)).astype(np.float32)
    dose = np.where(labels > 0, dose * rng.uniform(0.9, 1.1, SHAPE), 0).astype(np.float32)
    return labels, dose


def build_run(run_dir, n_test, models, members, seed=0):
    rng = np.random.default_rng(seed)
    store = CaseStore.for_run(run_dir)
    ids = []
    for k in range(n_test):
        labels, dose = _case(rng, rng.uniform(0.85, 1.15))
        cid = f"sur{k:03d}"
        store.write_case(make_case(labels, SPACING_MM, (0, -190, -260),
                                   {"body_mask": (labels > 0).astype(np.uint8), "dose_mc": dose,
                                    "density_e": np.where(labels > 0, 3.4e29, 3.6e26).astype(np.float32),
                                    "kerma_cylinder": dose, "kerma_patient": dose},
                                   case_id=cid, cohort="surrogate", roi_z_mm=[0, 294]))
        ids.append(cid)
    rows = [{"mix": f"mix{p:03d}", "percent_real": p, "case_id": c, "cohort": "surrogate", "role": "test",
             "real_source": "surrogate"} for p in sorted({int(m.split("_mix")[1]) for m in models}) for c in ids]
    store.write_table("splits", pd.DataFrame(rows))
    reg = [{"model_id": m, "kerma_mode": m.split("_mix")[0], "percent_real": int(m.split("_mix")[1]), "member": i}
           for m in models for i in range(members)]
    (store.run_dir / "models").mkdir(exist_ok=True)
    pd.DataFrame(reg).to_csv(store.run_dir / "models" / "registry.csv", index=False)
    for m in models:
        for c in ids:
            dose = store.read_case(c)["dose_mc"].values
            mu = np.stack([dose * rng.uniform(0.8, 1.2) for _ in range(members)]).astype(np.float32)
            dims = ("member", "z", "y", "x")
            store.write_prediction(m, c, xr.Dataset({"mu": (dims, mu), "sigma_aleatoric": (dims, 0.06 * mu)}))
    return store


def run(quick: bool) -> list[dict]:
    n_test, members = (2, 2) if quick else (10, 3)
    modes, mixes = (["cylinder"], [0, 100]) if quick else (["cylinder", "patient"], [0, 10, 20, 100])
    models = [f"{m}_mix{p:03d}" for m in modes for p in mixes]
    cfg = load_profile("demo")
    with tempfile.TemporaryDirectory() as tmp:
        store = build_run(f"{tmp}/run", n_test, models, members)
        voxels = int(np.prod(SHAPE))
        t0 = time.perf_counter()
        evaluate_models(cfg, store, progress=False, groups=dose_groups(), predict=False)
        t_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        draw_all(cfg, store, f"{tmp}/figures")
        write_comparison_page(cfg, store, f"{tmp}/figures")
        t_fig = time.perf_counter() - t0
    size = f"{n_test} cases x {len(models)} models x {members} members, grid {SHAPE} ({voxels / 1e6:.2f} Mvoxel)"
    return [
        {"benchmark": "evaluate_models (predictions stored)", "value": round(t_eval, 2), "unit": "s", "note": size},
        {"benchmark": "evaluate per case and model", "value": round(t_eval / (n_test * len(models)), 3), "unit": "s",
         "note": "eqs. 3-9, organ doses, effective diameter"},
        {"benchmark": "notebook 05: draw_all + comparison page", "value": round(t_fig, 2), "unit": "s",
         "goal": "< 60 s", "note": size},
    ]


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    print(pd.DataFrame(rows).to_string(index=False))
