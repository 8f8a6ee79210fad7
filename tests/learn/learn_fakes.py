"""A tiny fake run for the learning tests: cases with learnable inputs and doses.

Each case is an elliptic body in air on a 16 x 20 x 20 grid of 20 mm voxels, with lungs,
heart and liver labels. The "kerma map" rises quadratically towards the periphery and the
"MC dose" is ``kerma * sqrt(rho_e / rho_water)`` with 2 % noise, so a network can learn it.
"""

from __future__ import annotations

import numpy as np
from ctdose.config import load_profile
from ctdose.store import CaseStore, make_case

GROUPS = {"muscle": [3], "lung": [4], "heart": [6], "liver": [12]}
SPACING_MM = (20.0, 20.0, 20.0)
SHAPE = (16, 20, 20)
RHO_WATER_M3 = 3.343e29
RHO_AIR_M3 = 3.6e26


def case_arrays(scale: float, seed: int):
    rng = np.random.default_rng(seed)
    nz, ny, nx = SHAPE
    y = (np.arange(ny) - (ny - 1) / 2) * SPACING_MM[1]
    x = (np.arange(nx) - (nx - 1) / 2) * SPACING_MM[2]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body2d = (xx / (150.0 * scale)) ** 2 + (yy / (110.0 * scale)) ** 2 <= 1.0
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:-2, body2d] = 3
    lung = body2d & (np.abs(xx) > 30 * scale) & (np.abs(xx) < 110 * scale) & (np.abs(yy) < 60 * scale)
    labels[3:10, lung] = 4
    labels[4:8, body2d & (np.abs(xx) < 30) & (np.abs(yy) < 40)] = 6
    labels[9:13, body2d & (xx < -20) & (np.abs(yy) < 70 * scale)] = 12
    body = labels > 0
    density = np.where(body, RHO_WATER_M3, RHO_AIR_M3)
    density = np.where(labels == 4, 0.26 * RHO_WATER_M3, density)
    r2 = (xx**2 + yy**2)[None] / 160.0**2
    kerma = np.broadcast_to(1e-4 * (0.4 + 0.6 * np.minimum(r2, 1.5)), SHAPE)
    dose = kerma * np.sqrt(density / RHO_WATER_M3) * (1 + 0.02 * rng.standard_normal(SHAPE))
    dose = np.where(body, dose, 0.2 * kerma)
    return labels, body, density.astype(np.float32), kerma.astype(np.float32), dose.astype(np.float32)


def make_learning_store(run_dir, n_synthetic: int = 4, n_surrogate: int = 4) -> CaseStore:
    store = CaseStore.for_run(run_dir)
    specs = [("synthetic", k) for k in range(n_synthetic)] + [("surrogate", k) for k in range(n_surrogate)]
    for i, (cohort, k) in enumerate(specs):
        labels, body, density, kerma, dose = case_arrays(0.8 + 0.08 * i, seed=i)
        case_id = f"{cohort[:3]}{k:03d}"
        ds = make_case(
            labels, SPACING_MM, (0.0, -190.0, -190.0),
            {"body_mask": body.astype(np.uint8), "density_e": density, "kerma_cylinder": kerma,
             "kerma_patient": (kerma * 0.9).astype(np.float32), "dose_mc": dose},
            case_id=case_id, cohort=cohort, sex="M", height_m=1.75,
        )
        store.write_case(ds)
    return store


def tiny_profile(**train):
    """The smoke profile shrunk to a tiny network and a few patches."""
    overrides = {
        "cohort.n_test": 1,
        "device": "cpu",
        "inputs.kerma_modes": ["cylinder"],
        "train.mixes_percent_real": [0, 100],
        "train.members": 1,
        "train.width": 2,
        "train.depth": 2,
        "train.patch_size": 8,
        "train.patches_per_epoch": 16,
        "train.batch_size": 8,
        "train.val_patches": 8,
        "train.epochs": 2,
        "train.checkpoint_every": 1,
    }
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return load_profile("smoke", overrides)
