"""The surrogate patient cohort: an open stand-in for the paper's 116 clinical CTs.

The paper trains on 200 XCAT phantoms (the *synthetic* design, :mod:`ctdose.anatomy.synthetic`)
and on segmented clinical CTs that are not public. ``surrogate`` is a second, independently
parameterised generator on the same analytic primitives (:mod:`ctdose.anatomy.phantom`)
whose cases are meant to differ from the synthetic ones the way patients differ from XCAT
phantoms. It is called *surrogate* everywhere: it is neither real nor clinical data.

How it differs from the synthetic design
----------------------------------------
============================  ==================================  =====================================
aspect                        synthetic (paper 2.1.1)             surrogate (this module)
============================  ==================================  =====================================
sex                           50 % / 50 %                         paper's clinical split (62 M of 116)
height                        uniform 1.50-2.10 m                 normal per sex (NHANES), 1.45-2.05 m
body habitus                  fat scale uniform 0.90-1.10         BMI log-normal per sex (NHANES): fat
                                                                  layers ~ (BMI - 15), lean trunk ~
                                                                  BMI^0.25, AP/lateral noise, visceral
                                                                  fat ~ (BMI - 18)^1.5, breast size
organ volumes                 uniform +-10 % of ICRP mean,        ICRP mean x (BSA or height ratio)^k x
                              independent of body size            log-normal (CV 10-45 %), one shared
                                                                  factor correlates organs (rho = 0.4)
organ positions               fixed layout (scaled)               jitter (sd 8 mm in z, 5 mm in-plane)
lungs                         fixed inflation                     inflation factor N(1, 0.1); the
                                                                  diaphragm moves with it
arms                          along the body                      raised in 80 % of cases
table                         none                                carbon-fibre table under the back
position                      body axis at the isocentre          offset N(+20, 15) mm posterior (below
                                                                  the isocentre), N(0, 10) mm lateral,
                                                                  clipped to +-50 mm
============================  ==================================  =====================================

All numbers are data: ``ctdose/data/surrogate_population.csv`` and
``ctdose/data/surrogate_organ_variation.csv`` (with their sources and assumptions).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._data import read_table
from ..errors import InputError
from .phantom import VOLUME_ORGANS, PhantomParams, params_from_design, reference_height_m, reference_organ_volumes_ml

__all__ = ["sample_surrogate", "surrogate_params", "population", "SHIFTED_ORGANS"]

#: organs whose position is jittered (keys of PhantomParams.organ_shift_mm)
SHIFTED_ORGANS = ("lungs", "heart", "liver", "gallbladder", "stomach", "spleen", "pancreas",
                  "kidneys", "adrenals", "colon", "small_intestine")
_CM_PER_M = 100.0


def population() -> dict[tuple[str, str], float]:
    """Population constants ``{(key, sex or ""): value}`` from surrogate_population.csv."""
    t = read_table("surrogate_population.csv")
    return {(k, "" if pd.isna(s) else str(s)): float(v) for k, s, v in zip(t["key"], t["sex"], t["value"])}


def _bsa_m2(height_m, mass_kg):
    """Body surface area, Mosteller formula (m^2)."""
    return np.sqrt(height_m * _CM_PER_M * mass_kg / 3600.0)


def sample_surrogate(n: int, seed: int, arms_raised_fraction: float | None = None,
                     prefix: str = "surrogate") -> pd.DataFrame:
    """Sample the surrogate cohort.

    Parameters
    ----------
    n : int
        Number of cases.
    seed : int
        Seed of ``numpy.random.default_rng``.
    arms_raised_fraction : float, optional
        Share of cases with raised arms (default from the data table).
    prefix : str
        Case ids ``f"{prefix}_{i:03d}"``.

    Returns
    -------
    pandas.DataFrame
        One row per case: ``case_id, sex, height_m, bmi, mass_kg, bsa_m2, fat_scale,
        trunk_scale_x, trunk_scale_y, visceral_fat_ml, breast_scale, lung_inflation,
        diaphragm_shift_mm, arms, offset_x_mm, offset_y_mm, vol_<organ>_ml`` and
        ``shift_<organ>_{z,y,x}_mm``.
    """
    if int(n) != n or n < 1:
        raise InputError(f"surrogate cohort: n={n} must be a positive integer")
    n = int(n)
    P = population()
    raised = P[("arms_raised_fraction", "")] if arms_raised_fraction is None else float(arms_raised_fraction)
    if not 0.0 <= raised <= 1.0:
        raise InputError(f"surrogate cohort: arms_raised_fraction={raised} outside [0, 1]")
    rng = np.random.default_rng(seed)
    n_m = int(round(n * P[("male_fraction", "")]))
    sex = rng.permutation(np.array(["M"] * n_m + ["F"] * (n - n_m)))
    g = lambda key: np.array([P[(key, s)] for s in sex])  # noqa: E731 - per-sex constant
    c = lambda key: P[(key, "")]  # noqa: E731

    height_m = np.clip(rng.normal(g("height_mean"), g("height_sd")), c("height_min"), c("height_max")) / _CM_PER_M
    # log-normal BMI with the table's mean and sd
    s2 = np.log1p((g("bmi_sd") / g("bmi_mean")) ** 2)
    bmi = np.clip(np.exp(rng.normal(np.log(g("bmi_mean")) - s2 / 2, np.sqrt(s2))), c("bmi_min"), c("bmi_max"))
    mass = bmi * height_m**2
    bsa = _bsa_m2(height_m, mass)
    lean = c("bmi_lean")
    fat_scale = (bmi - lean) / (g("bmi_ref") - lean) * np.exp(rng.normal(0, c("fat_scale_sd_log"), n))
    trunk = (bmi / g("bmi_ref")) ** c("trunk_bmi_exponent")
    tx = trunk * rng.normal(1.0, c("trunk_axis_sd"), n)
    ty = trunk * rng.normal(1.0, c("trunk_axis_sd"), n)
    vfat = g("visceral_fat_coef") * np.clip(bmi - c("visceral_fat_bmi_offset"), 0, None) ** c("visceral_fat_exponent")
    breast = (bmi / g("bmi_ref")) ** c("breast_bmi_exponent") * np.exp(rng.normal(0, c("breast_sd_log"), n))
    inflation = np.clip(rng.normal(1.0, c("lung_inflation_sd"), n), c("lung_inflation_min"), c("lung_inflation_max"))
    clip = c("offset_clip")
    table = pd.DataFrame({
        "case_id": [f"{prefix}_{i:03d}" for i in range(n)],
        "sex": sex,
        "height_m": height_m,
        "bmi": bmi,
        "mass_kg": mass,
        "bsa_m2": bsa,
        "fat_scale": fat_scale,
        "trunk_scale_x": tx,
        "trunk_scale_y": ty,
        "visceral_fat_ml": vfat,
        "breast_scale": np.where(sex == "F", breast, 1.0),
        "lung_inflation": inflation,
        "diaphragm_shift_mm": (inflation - 1.0) * c("diaphragm_mm_per_inflation"),
        "arms": np.where(rng.uniform(size=n) < raised, "raised", "down"),
        "offset_x_mm": np.clip(rng.normal(c("offset_x_mean"), c("offset_x_sd"), n), -clip, clip),
        "offset_y_mm": np.clip(rng.normal(c("offset_y_mean"), c("offset_y_sd"), n), -clip, clip),
    })
    # organ volumes: reference x size ratio ^ exponent x correlated log-normal
    var = read_table("surrogate_organ_variation.csv").set_index("organ")
    ref_h = {s: reference_height_m(s) for s in ("M", "F")}
    ref = {s: reference_organ_volumes_ml(s) for s in ("M", "F")}
    ref_bsa = np.array([_bsa_m2(ref_h[s], P[("bmi_ref", s)] * ref_h[s] ** 2) for s in sex])
    ref_height = np.array([ref_h[s] for s in sex])
    rho = c("organ_common_correlation")
    common = rng.normal(size=n)
    for organ in VOLUME_ORGANS:
        row = var.loc[organ]
        ratio = bsa / ref_bsa if row["size_variable"] == "bsa" else height_m / ref_height
        sigma = math.sqrt(math.log1p(row["cv"] ** 2))
        z = rho * common + math.sqrt(1 - rho**2) * rng.normal(size=n)
        vol = np.array([ref[s][organ] for s in sex]) * ratio ** row["exponent"] * np.exp(sigma * z - sigma**2 / 2)
        if organ == "lungs":
            vol = vol * inflation
        table[f"vol_{organ}_ml"] = vol
    lim = c("position_clip_sd")
    for organ in SHIFTED_ORGANS:
        for axis, sd in (("z", c("position_sd_z")), ("y", c("position_sd_xy")), ("x", c("position_sd_xy"))):
            table[f"shift_{organ}_{axis}_mm"] = np.clip(rng.normal(0, sd, n), -lim * sd, lim * sd)
    return table


def surrogate_params(row: pd.Series | dict) -> PhantomParams:
    """Phantom parameters of one row of :func:`sample_surrogate` (with table and offsets)."""
    row = dict(row)
    return params_from_design(
        row,
        trunk_scale_x=float(row["trunk_scale_x"]),
        trunk_scale_y=float(row["trunk_scale_y"]),
        arms=str(row["arms"]),
        offset_x_mm=float(row["offset_x_mm"]),
        offset_y_mm=float(row["offset_y_mm"]),
        table=True,
        organ_shift_mm={o: (float(row[f"shift_{o}_z_mm"]), float(row[f"shift_{o}_y_mm"]),
                            float(row[f"shift_{o}_x_mm"])) for o in SHIFTED_ORGANS},
        diaphragm_shift_mm=float(row["diaphragm_shift_mm"]),
        visceral_fat_ml=float(row["visceral_fat_ml"]),
        breast_scale=float(row["breast_scale"]),
    )
