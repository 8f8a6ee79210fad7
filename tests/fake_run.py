"""A tiny, hand-made run directory for the evaluation, figure and report tests.

Every model predicts ``mu_i = dose_mc * (1 + bias) * (1 + delta_i)`` with member offsets
``delta = (-spread, 0, +spread)`` and ``sigma_i = 0.055 mu_i``, so the ensemble dose is
exactly ``(1 + bias) dose_mc`` and every organ deviates from MC by ``100 bias`` percent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ctdose.config import load_profile
from ctdose.store import CaseStore, make_case

GROUPS = {"muscle": [3], "lung": [4, 5], "heart": [6], "liver": [12], "fat": [2]}
SPACING_MM = (20.0, 20.0, 20.0)
SHAPE = (4, 14, 16)
MODELS = {"cylinder_mix000": (-0.2, 0.10), "cylinder_mix100": (0.05, 0.02)}  # bias, spread
DELTAS = (-1.0, 0.0, 1.0)
TABLE_LABEL = 39


def _case_arrays(scale: float):
    nz, ny, nx = SHAPE
    y = (np.arange(ny) - (ny - 1) / 2) * SPACING_MM[1]
    x = (np.arange(nx) - (nx - 1) / 2) * SPACING_MM[2]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    a_mm, b_mm = 130.0 * scale, 100.0 * scale
    body2d = (xx / a_mm) ** 2 + (yy / b_mm) ** 2 <= 1.0
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, body2d] = 3
    labels[:, ~body2d & (yy > b_mm) & (yy < b_mm + 25)] = TABLE_LABEL
    labels[:, 5:7, 3:6] = 4
    labels[:, 5:7, 10:13] = 5
    labels[1:3, 7:9, 7:9] = 6
    labels[2:, 8:10, 4:6] = 12
    labels[:, 3, 7] = 2
    body = np.isin(labels, [2, 3, 4, 5, 6, 12])
    zz = np.arange(nz)[:, None, None]
    dose = (1.0 + 0.1 * zz + 0.002 * (xx**2 + yy**2)[None] / 100.0) * 1e-4
    dose = np.where(body, dose, 1e-7).astype(np.float32)
    density = np.where(body, 3.4e29, 3.6e26).astype(np.float32)
    kerma = (dose * 1.3).astype(np.float32)
    return labels, body, dose, density, kerma


def fake_profile():
    """The smoke profile with the fake run's models: ``cylinder``, 0 and 100 % real."""
    return load_profile("smoke", {"inputs.kerma_modes": ["cylinder"], "train.mixes_percent_real": [0, 100]})


def make_fake_run(run_dir, n_test: int = 3, n_train: int = 4, models=MODELS, with_registry=True,
                  with_predictions=True, with_splits=True) -> CaseStore:
    store = CaseStore.for_run(run_dir)
    test_ids, train_ids = [], []
    for k in range(n_test + n_train):
        is_test = k < n_test
        labels, body, dose, density, kerma = _case_arrays(0.8 + 0.12 * k)
        case_id = f"{'sur' if is_test else 'syn'}{k:03d}"
        cohort = "surrogate" if is_test else "synthetic"
        ds = make_case(
            labels, SPACING_MM, (0.0, -130.0, -150.0),
            {"body_mask": body.astype(np.uint8), "dose_mc": dose, "density_e": density, "kerma_cylinder": kerma,
             "dose_mc_sigma": (0.02 * dose).astype(np.float32)},
            case_id=case_id, cohort=cohort, sex="F", height_m=1.7, roi_z_mm=[0.0, 60.0],
        )
        store.write_case(ds)
        (test_ids if is_test else train_ids).append(case_id)
    if with_splits:
        rows = []
        for percent in (0, 100):
            for c in test_ids:
                rows.append({"mix": f"mix{percent:03d}", "percent_real": percent, "case_id": c,
                             "cohort": "surrogate", "role": "test", "real_source": "surrogate"})
            for i, c in enumerate(train_ids):
                rows.append({"mix": f"mix{percent:03d}", "percent_real": percent, "case_id": c,
                             "cohort": "synthetic", "role": "train" if i else "val", "real_source": "surrogate"})
        store.write_table("splits", pd.DataFrame(rows))
    if with_registry:
        reg = []
        for model_id, _ in models.items():
            mode, percent = model_id.split("_mix")
            for m in range(len(DELTAS)):
                reg.append({"model_id": model_id, "kerma_mode": mode, "percent_real": int(percent),
                            "real_source": "surrogate", "member": m, "seed": m, "checkpoint": f"{model_id}/member{m}.pt"})
        (store.run_dir / "models").mkdir(exist_ok=True)
        pd.DataFrame(reg).to_csv(store.run_dir / "models" / "registry.csv", index=False)
    if with_predictions:
        for model_id, (bias, spread) in models.items():
            for c in test_ids:
                dose = store.read_case(c)["dose_mc"].values.astype(np.float64)
                mu = np.stack([dose * (1 + bias) * (1 + spread * d) for d in DELTAS]).astype(np.float32)
                pred = xr.Dataset({"mu": (("member", "z", "y", "x"), mu),
                                   "sigma_aleatoric": (("member", "z", "y", "x"), (0.055 * mu).astype(np.float32))})
                store.write_prediction(model_id, c, pred)
    return store
