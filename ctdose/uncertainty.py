"""Deep-ensemble uncertainty of dose predictions (paper section 2.3.2, eqs. 3-9).

An ensemble of ``M`` networks (five seeds in the paper) predicts, per member ``i`` and
voxel ``x``, a mean dose ``mu_i(x)`` and an aleatoric standard deviation ``sigma_i(x)``.

- eq. 3, dose: ``D(x) = 1/M sum_i mu_i(x)``
- eq. 4, epistemic variance: ``1/M sum_i (mu_i(x) - D(x))^2`` (population variance, 1/M)
- eq. 5, member aleatoric sigma with the MC floor: ``sigma_i^2 = sigma_tilde_i^2 + (0.055 mu_i)^2``
- eq. 6, aleatoric variance: ``1/M sum_i sigma_i^2(x)``
- eq. 7, total: ``sigma_tot(x) = sqrt(sigma_epi^2(x) + sigma_ale^2(x))``
- eq. 8, organ uncertainty under full voxel correlation:
  ``sigma_organ = 1/N sum_{x in organ} sigma(x)``, i.e. the organ mean of the voxel sigma.
  Applied separately to ``sigma_ale``, ``sigma_epi`` and ``sigma_tot`` (Table 3 lists all three).
  Under full correlation the organ total is *not* the quadrature sum of the organ
  components; by Minkowski's inequality it is at least as large.
- eq. 9, summed organ dose ``D_sum = sum_organs D_organ``; its uncertainty under the same
  full-correlation assumption is the sum of the organ sigmas.

Table 3 reports, per model, the maximum relative uncertainty of the summed organ dose over
the test set, each component maximised separately, and the expanded ``k = 2`` total,
which is checked against the IAEA TRS-457 limits (``ctdose/data/trs457_limits.csv``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._data import read_table
from .dosimetry import organ_mean_doses
from .errors import InputError

__all__ = [
    "MC_FLOOR_FRACTION",
    "VoxelUncertainty",
    "aleatoric_variance",
    "ensemble_mean",
    "epistemic_variance",
    "expanded",
    "floored_sigma",
    "max_relative_uncertainty",
    "organ_sigma",
    "organ_uncertainties",
    "summed_organ_dose",
    "total_sigma",
    "trs457_check",
    "trs457_limits",
    "voxel_uncertainty",
]

#: Relative standard uncertainty (k = 1) of the paper's MC reference doses, enforced as the
#: minimum aleatoric sigma of each member (eq. 5; Kuhlmann et al. 2026, section 2.3.2).
MC_FLOOR_FRACTION = 0.055

#: Coverage factor of the expanded uncertainties of Table 3 and TRS-457.
K_EXPANDED = 2.0


def _members(mu: np.ndarray, name: str = "mu") -> np.ndarray:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim < 1 or mu.shape[0] < 1:
        raise InputError(f"{name}: expected an array with a leading member axis, got shape {mu.shape}")
    return mu


def ensemble_mean(mu: np.ndarray) -> np.ndarray:
    """Ensemble dose ``D(x) = 1/M sum_i mu_i(x)`` (eq. 3).

    Parameters
    ----------
    mu : ndarray, shape (M, ...)
        Member mean doses (e.g. Gy per mAs), member axis first.

    Returns
    -------
    ndarray, shape (...)
    """
    return _members(mu).mean(axis=0)


def epistemic_variance(mu: np.ndarray) -> np.ndarray:
    """Epistemic variance ``1/M sum_i (mu_i - D)^2`` (eq. 4; population variance).

    Parameters
    ----------
    mu : ndarray, shape (M, ...)
        Member mean doses, member axis first.

    Returns
    -------
    ndarray, shape (...)
        Variance in dose units squared; zero for a single member.
    """
    return _members(mu).var(axis=0, ddof=0)


def floored_sigma(
    mu: np.ndarray, sigma_tilde_sq: np.ndarray, floor_fraction: float = MC_FLOOR_FRACTION
) -> np.ndarray:
    """Member aleatoric sigma with the MC floor, ``sqrt(sigma_tilde^2 + (f mu)^2)`` (eq. 5).

    Parameters
    ----------
    mu : ndarray
        Member mean dose.
    sigma_tilde_sq : ndarray
        The network's raw (non-negative) variance output, same unit squared as ``mu``.
    floor_fraction : float
        ``f``, the MC reference's relative uncertainty (paper: 0.055).

    Returns
    -------
    ndarray
        ``sigma_i`` in the unit of ``mu``.
    """
    mu = np.asarray(mu, dtype=np.float64)
    sigma_tilde_sq = np.asarray(sigma_tilde_sq, dtype=np.float64)
    if np.any(sigma_tilde_sq < 0):
        raise InputError("floored_sigma: sigma_tilde_sq must be non-negative (a variance)")
    return np.sqrt(sigma_tilde_sq + (floor_fraction * mu) ** 2)


def aleatoric_variance(sigma_members: np.ndarray) -> np.ndarray:
    """Aleatoric variance ``1/M sum_i sigma_i^2`` (eq. 6).

    Parameters
    ----------
    sigma_members : ndarray, shape (M, ...)
        Member aleatoric sigmas, eq. 5 floor already applied.
    """
    return (_members(sigma_members, "sigma_aleatoric") ** 2).mean(axis=0)


def total_sigma(var_epistemic: np.ndarray, var_aleatoric: np.ndarray) -> np.ndarray:
    """Total voxel sigma ``sqrt(sigma_epi^2 + sigma_ale^2)`` (eq. 7)."""
    return np.sqrt(np.asarray(var_epistemic, dtype=np.float64) + np.asarray(var_aleatoric, dtype=np.float64))


def expanded(sigma: np.ndarray | float, k: float = K_EXPANDED) -> np.ndarray | float:
    """Expanded uncertainty ``U = k sigma`` (k = 2 by default, as Table 3 and TRS-457)."""
    return k * sigma


@dataclass(frozen=True)
class VoxelUncertainty:
    """Per-voxel ensemble result (eqs. 3-7); arrays share the volume's shape, dose units.

    Attributes
    ----------
    dose : ensemble mean ``D`` (eq. 3)
    sigma_aleatoric : ``sqrt`` of eq. 6
    sigma_epistemic : ``sqrt`` of eq. 4
    sigma_total : eq. 7
    """

    dose: np.ndarray
    sigma_aleatoric: np.ndarray
    sigma_epistemic: np.ndarray
    sigma_total: np.ndarray


def voxel_uncertainty(
    mu: np.ndarray,
    sigma_aleatoric: np.ndarray | None = None,
    *,
    sigma_tilde_sq: np.ndarray | None = None,
    floor_fraction: float = MC_FLOOR_FRACTION,
) -> VoxelUncertainty:
    """Ensemble dose and its aleatoric, epistemic and total sigma per voxel (eqs. 3-7).

    Give either `sigma_aleatoric` (member sigmas with the eq. 5 floor applied, as stored
    in ``predictions/<model>/<case>``) or `sigma_tilde_sq` (the networks' raw variance
    output; the floor is then applied here).

    Parameters
    ----------
    mu : ndarray, shape (M, z, y, x)
        Member mean doses.
    sigma_aleatoric : ndarray, shape (M, z, y, x), optional
        Floored member sigmas (eq. 5).
    sigma_tilde_sq : ndarray, shape (M, z, y, x), optional
        Raw member variances.
    floor_fraction : float
        Floor of eq. 5 (used with `sigma_tilde_sq` only).

    Returns
    -------
    VoxelUncertainty
    """
    mu = _members(mu)
    if (sigma_aleatoric is None) == (sigma_tilde_sq is None):
        raise InputError("voxel_uncertainty: give exactly one of sigma_aleatoric or sigma_tilde_sq")
    sigma_i = (
        floored_sigma(mu, sigma_tilde_sq, floor_fraction)
        if sigma_tilde_sq is not None
        else np.asarray(sigma_aleatoric, dtype=np.float64)
    )
    if sigma_i.shape != mu.shape:
        raise InputError(f"voxel_uncertainty: sigma shape {sigma_i.shape} differs from mu shape {mu.shape}")
    var_epi = epistemic_variance(mu)
    var_ale = aleatoric_variance(sigma_i)
    return VoxelUncertainty(
        dose=ensemble_mean(mu),
        sigma_aleatoric=np.sqrt(var_ale),
        sigma_epistemic=np.sqrt(var_epi),
        sigma_total=total_sigma(var_epi, var_ale),
    )


def organ_sigma(
    sigma: np.ndarray, labels: np.ndarray, groups: Mapping[str, Iterable[int]]
) -> dict[str, float]:
    """Organ uncertainty under full voxel correlation (eq. 8).

    ``sigma_organ^2 = 1/N^2 sum_i sum_j sigma(i) sigma(j) = (1/N sum_i sigma(i))^2``, so
    ``sigma_organ`` is the organ mean of the voxel sigma.

    Parameters
    ----------
    sigma : ndarray, shape (z, y, x)
        Voxel standard uncertainty (any component).
    labels, groups
        As for :func:`ctdose.dosimetry.organ_mean_doses`.

    Returns
    -------
    dict of str to float
    """
    return organ_mean_doses(sigma, labels, groups)


def organ_uncertainties(
    result: VoxelUncertainty, labels: np.ndarray, groups: Mapping[str, Iterable[int]]
) -> pd.DataFrame:
    """Organ doses and their aleatoric, epistemic and total sigma (eqs. 3-8).

    Returns
    -------
    pandas.DataFrame
        One row per organ present: ``organ, dose, sigma_aleatoric, sigma_epistemic,
        sigma_tot`` (dose units), in the order of `groups`.
    """
    dose = organ_mean_doses(result.dose, labels, groups)
    ale = organ_sigma(result.sigma_aleatoric, labels, groups)
    epi = organ_sigma(result.sigma_epistemic, labels, groups)
    tot = organ_sigma(result.sigma_total, labels, groups)
    rows = [
        {"organ": g, "dose": dose[g], "sigma_aleatoric": ale[g], "sigma_epistemic": epi[g], "sigma_tot": tot[g]}
        for g in dose
    ]
    return pd.DataFrame(rows, columns=["organ", "dose", "sigma_aleatoric", "sigma_epistemic", "sigma_tot"])


def summed_organ_dose(
    organ_doses: Mapping[str, float], organ_sigmas: Mapping[str, float] | None = None
) -> tuple[float, float]:
    """Summed organ dose (eq. 9) and its sigma under full correlation (sum of organ sigmas).

    Parameters
    ----------
    organ_doses : mapping of str to float
        ``{organ: D_organ}``.
    organ_sigmas : mapping of str to float, optional
        ``{organ: sigma_organ}`` for the same organs (eq. 8).

    Returns
    -------
    (float, float)
        ``(D_sum, sigma_sum)``; ``sigma_sum`` is NaN without `organ_sigmas`.

    Raises
    ------
    InputError
        If `organ_sigmas` misses an organ of `organ_doses`.
    """
    d_sum = float(sum(float(v) for v in organ_doses.values()))
    if organ_sigmas is None:
        return d_sum, float("nan")
    missing = sorted(set(organ_doses) - set(organ_sigmas))
    if missing:
        raise InputError(f"summed_organ_dose: no sigma for organ(s) {', '.join(missing)}")
    return d_sum, float(sum(float(organ_sigmas[g]) for g in organ_doses))


def max_relative_uncertainty(
    summed: pd.DataFrame,
    by: str = "model_id",
    components: Iterable[str] = ("aleatoric", "epistemic", "tot"),
    k: float = K_EXPANDED,
    dose: str = "dose_sum",
) -> pd.DataFrame:
    """Maximum relative uncertainty of the summed organ dose over the test set (Table 3).

    Parameters
    ----------
    summed : DataFrame
        One row per (model, case) with the summed dose (column `dose`) and
        ``sigma_<component>_sum``.
    by : str
        Model column.
    dose : str
        Column of the summed (predicted) dose the sigmas are relative to.
    k : float
        Coverage factor of the expanded total.

    Returns
    -------
    pandas.DataFrame
        Per model: ``rel_<component>_percent`` (each maximised over cases separately, as the
        paper does), ``rel_tot_k2_percent = k * max rel_tot`` and ``n_cases``.
    """
    components = tuple(components)
    frame = summed.copy()
    cols = []
    for c in components:
        col = f"rel_{c}_percent"
        frame[col] = 100.0 * frame[f"sigma_{c}_sum"] / frame[dose]
        cols.append(col)
    out = frame.groupby(by, sort=True)[cols].max()
    if "tot" in components:
        out["rel_tot_k2_percent"] = k * out["rel_tot_percent"]
    out["n_cases"] = frame.groupby(by, sort=True).size()
    return out.reset_index()


def trs457_limits() -> pd.DataFrame:
    """TRS-457 acceptable expanded uncertainties (``ctdose/data/trs457_limits.csv``)."""
    return read_table("trs457_limits.csv")


def trs457_check(u_k2_percent: float, purpose: str = "adult") -> dict:
    """Compare an expanded (k = 2) relative uncertainty with the TRS-457 limit.

    Parameters
    ----------
    u_k2_percent : float
        Expanded relative uncertainty in percent.
    purpose : {"adult", "child", "comparative"}
        Row of ``trs457_limits.csv``.

    Returns
    -------
    dict
        ``{"purpose", "limit_percent", "u_k2_percent", "passes"}``.
    """
    table = trs457_limits()
    row = table[table["purpose"] == purpose]
    if row.empty:
        raise InputError(
            f"trs457_check: unknown purpose {purpose!r}; trs457_limits.csv has {', '.join(table['purpose'])}"
        )
    limit = float(row["limit_percent"].iloc[0])
    return {
        "purpose": purpose,
        "limit_percent": limit,
        "u_k2_percent": float(u_k2_percent),
        "passes": bool(float(u_k2_percent) <= limit),
    }
