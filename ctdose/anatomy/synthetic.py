"""The synthetic cohort: the paper's sampling design (section 2.1.1) on the open phantom.

Design, exactly as the paper describes it for XCAT:

- half male, half female adults (paper: 100 + 100; the count is the profile's
  ``cohort.n_synthetic``);
- every organ volume uniform within +-10 % of the ICRP reference mean of the phantom's sex
  (:func:`ctdose.anatomy.phantom.reference_organ_volumes_ml`);
- one fat-layer scale factor per phantom, uniform in [0.90, 1.10], applied to all fat layers;
- body height uniform in [1.50, 2.10] m;
- "for each parameter 200 values were sampled, and random combinations of these values were
  used": n values are drawn per parameter and each parameter's list is permuted
  independently before the lists are zipped into n phantoms.

The synthetic phantoms are centred on the isocentre, have their arms along the body and no
patient table (as XCAT phantoms). Everything is reproducible from the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .phantom import VOLUME_ORGANS, PhantomParams, params_from_design, reference_organ_volumes_ml

__all__ = ["SYNTHETIC_DESIGN", "sample_synthetic", "synthetic_params"]

#: the paper's ranges (section 2.1.1)
SYNTHETIC_DESIGN: dict[str, Any] = {
    "organ_volume_rel_range": (0.90, 1.10),
    "fat_scale_range": (0.90, 1.10),
    "height_m_range": (1.50, 2.10),
}


def sample_synthetic(n: int, seed: int, prefix: str = "synthetic") -> pd.DataFrame:
    """Sample the synthetic cohort design.

    Parameters
    ----------
    n : int
        Number of phantoms (``n // 2`` female, the rest male).
    seed : int
        Seed of ``numpy.random.default_rng``; same seed, same table.
    prefix : str
        Case ids are ``f"{prefix}_{i:03d}"``.

    Returns
    -------
    pandas.DataFrame
        One row per phantom: ``case_id, sex, height_m, fat_scale`` and ``vol_<organ>_ml``
        for every organ of :data:`ctdose.anatomy.phantom.VOLUME_ORGANS` (absolute target
        volumes) and ``rel_<organ>`` (the sampled factor on the ICRP mean).
    """
    if int(n) != n or n < 1:
        raise InputError(f"synthetic cohort: n={n} must be a positive integer")
    n = int(n)
    rng = np.random.default_rng(seed)
    d = SYNTHETIC_DESIGN

    def values(lo_hi: tuple[float, float]) -> np.ndarray:
        # n values of one parameter, then an independent random order (random combination)
        return rng.permutation(rng.uniform(lo_hi[0], lo_hi[1], size=n))

    sex = rng.permutation(np.array(["F"] * (n // 2) + ["M"] * (n - n // 2)))
    table = pd.DataFrame({
        "case_id": [f"{prefix}_{i:03d}" for i in range(n)],
        "sex": sex,
        "height_m": values(d["height_m_range"]),
        "fat_scale": values(d["fat_scale_range"]),
    })
    ref = {s: reference_organ_volumes_ml(s) for s in ("M", "F")}
    for organ in VOLUME_ORGANS:
        rel = values(d["organ_volume_rel_range"])
        table[f"rel_{organ}"] = rel
        table[f"vol_{organ}_ml"] = rel * np.array([ref[s][organ] for s in sex])
    return table


def synthetic_params(row: pd.Series | dict) -> PhantomParams:
    """Phantom parameters of one row of :func:`sample_synthetic` (centred, arms down, no table)."""
    return params_from_design(row, arms="down", table=False)
