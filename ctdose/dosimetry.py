"""Organ doses, partial effective dose, effective diameter and calibration.

Organ dose in the paper (section 2.3.2) is the mean voxel dose over the voxels of an
organ (dose group). This module turns dose volumes and label maps into organ doses
and derived quantities; the ensemble statistics (eqs. 3-9) live in
:mod:`ctdose.uncertainty`.

Partial effective dose
----------------------
ICRP 103 defines ``E = sum_T w_T H_T`` over 14 weighted tissues, one of which, the
*remainder* (w = 0.12), takes the arithmetic mean equivalent dose of 13 remainder
tissues per sex (``ctdose/data/icrp103_tissue_weights.csv``). Our label scheme (like the
paper's TotalSegmentator segmentation) lacks several of them (breast, gonads, bladder,
thyroid, bone surface, salivary glands, skin, ...), so only a *partial* effective dose
can be formed, as in the paper's Table 4:

``E_partial = sum_{T specified, available} w_T D_T + w_remainder * mean_{R available} D_R``

- weights are **not renormalised** (the sum of the weights used is below 1; the value is
  not an effective dose and must not be compared with one; relative NN/MC deviations are
  unaffected by a common factor anyway);
- the remainder term uses the arithmetic mean over the remainder tissues **that are
  available** (adrenals, gallbladder, heart, kidneys, muscle, pancreas, spleen in our
  scheme) with the full remainder weight 0.12, and is left out when none is available;
- the radiation weighting factor of photons is 1, so ``H_T = D_T`` numerically; the
  result has the unit of the organ doses (Gy per mAs in -> Sv per mAs out);
- no sex averaging (each patient is evaluated as it is; the sex-specific remainder
  tissues prostate and uterus are not in the scheme).

Effective diameter
------------------
AAPM Report 204 (2011) defines the effective diameter of a patient cross-section as
``D_eff = sqrt(AP * LAT)``: the diameter of the circle whose area equals that of an
ellipse with the patient's antero-posterior and lateral dimensions. We measure AP and LAT
per axial slice as the extent of the body outline (``body_mask``) along y and x (voxel
count between the outermost body voxels, inclusive, times the spacing), and average
``D_eff`` over the slices of the ROI that contain body. The area-equivalent variant
``2 sqrt(A / pi)`` uses the body cross-section area ``A`` of each slice instead; both
agree for an elliptical outline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ._data import read_table

from .errors import InputError

__all__ = [
    "TABLE4_ORGANS",
    "calibration_table",
    "coverage_fraction",
    "effective_diameter_cm",
    "gaussian_coverage",
    "icrp103_weights",
    "mgy_per_rotation",
    "organ_mean_doses",
    "partial_effective_dose",
    "partial_effective_dose_weights",
    "reliability_curve",
    "slice_diameters_cm",
    "table4_organ_doses",
]

#: Dose groups of the paper's Table 4, in the paper's order.
TABLE4_ORGANS: tuple[str, ...] = (
    "muscle", "lung", "fat", "blood", "heart", "kidney", "liver", "pancreas", "brain",
    "spleen", "red_marrow", "stomach", "gallbladder", "adrenal", "colon", "oesophagus",
)

_MM_PER_CM = 10.0
_MGY_PER_GY = 1000.0

#: Nominal coverage levels of the reliability curve (the k = 1 and k = 2 levels are added).
DEFAULT_COVERAGE_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)


def gaussian_coverage(k: float) -> float:
    """Probability that a normal variable lies within ``+- k`` standard deviations."""
    return float(2.0 * stats.norm.cdf(k) - 1.0)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InputError(f"labels: expected an integer label map, got dtype {labels.dtype}")
    return labels


def organ_mean_doses(
    dose: np.ndarray,
    labels: np.ndarray,
    groups: Mapping[str, Iterable[int]],
) -> dict[str, float]:
    """Mean voxel dose per organ group (the paper's organ dose, section 2.3.2).

    Parameters
    ----------
    dose : ndarray, shape (z, y, x)
        Dose volume in any unit (typically ``dose_gy_per_mas``, Gy per mAs).
    labels : ndarray of int, shape (z, y, x)
        Label map on the same grid (label ids of ``ctdose/data/organs.csv``).
    groups : mapping of str to iterable of int
        ``{group: [label ids]}``, e.g. from ``ctdose.anatomy.organs.dose_groups()``.

    Returns
    -------
    dict of str to float
        ``{group: mean dose over all voxels whose label is in the group}``, in the unit of
        `dose`. Groups without any voxel in `labels` are left out (not NaN), so callers can
        tell "organ absent from this ROI" from a dose value.

    Raises
    ------
    InputError
        If `dose` and `labels` differ in shape, `labels` is not integer, or `dose` holds
        NaN or infinite values inside a group.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1, 2]]], dtype=np.uint8)
    >>> dose = np.array([[[9.0, 1.0, 3.0, 5.0]]])
    >>> organ_mean_doses(dose, labels, {"a": [1], "b": [2], "ab": [1, 2], "none": [7]})
    {'a': 2.0, 'b': 5.0, 'ab': 3.0}
    """
    dose = np.asarray(dose)
    labels = _as_labels(labels)
    if dose.shape != labels.shape:
        raise InputError(
            f"organ_mean_doses: dose shape {dose.shape} differs from labels shape {labels.shape}"
        )
    flat_labels = labels.ravel().astype(np.int64, copy=False)
    if flat_labels.size and flat_labels.min() < 0:
        raise InputError("organ_mean_doses: labels must be non-negative label ids")
    n_bins = int(flat_labels.max()) + 1 if flat_labels.size else 1
    flat_dose = dose.ravel().astype(np.float64, copy=False)
    sums = np.bincount(flat_labels, weights=flat_dose, minlength=n_bins)
    counts = np.bincount(flat_labels, minlength=n_bins)
    out: dict[str, float] = {}
    for name, ids in groups.items():
        ids = np.asarray([i for i in ids if 0 <= int(i) < n_bins], dtype=np.int64)
        n = int(counts[ids].sum()) if ids.size else 0
        if n == 0:
            continue
        total = float(sums[ids].sum())
        if not np.isfinite(total):
            raise InputError(f"organ_mean_doses: dose has NaN or infinite values in group {name!r}")
        out[str(name)] = total / n
    return out


def _default_groups() -> dict[str, list[int]]:
    from .anatomy.organs import dose_groups  # the anatomy engineer's label scheme

    return dose_groups()


def table4_organ_doses(
    dose: np.ndarray,
    labels: np.ndarray,
    groups: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, float]:
    """Organ doses of the paper's Table-4 organs, in Table-4 order.

    Parameters
    ----------
    dose : ndarray, shape (z, y, x)
        Dose volume (e.g. Gy per mAs).
    labels : ndarray of int, shape (z, y, x)
        Label map on the same grid.
    groups : mapping, optional
        ``{group: [label ids]}``; default ``ctdose.anatomy.organs.dose_groups()``.

    Returns
    -------
    dict of str to float
        Mean dose per Table-4 organ present in `labels` (absent organs are left out).
    """
    groups = _default_groups() if groups is None else groups
    doses = organ_mean_doses(dose, labels, {g: groups[g] for g in TABLE4_ORGANS if g in groups})
    return {g: doses[g] for g in TABLE4_ORGANS if g in doses}


def icrp103_weights() -> pd.DataFrame:
    """ICRP 103 tissue weighting factors and remainder tissues (``icrp103_tissue_weights.csv``).

    Returns
    -------
    pandas.DataFrame
        Columns ``tissue, w_t, remainder_member, sex, dose_group``; ``w_t`` is NaN for the
        remainder members, whose share is the ``remainder`` row's 0.12.
    """
    table = read_table("icrp103_tissue_weights.csv")
    table["remainder_member"] = table["remainder_member"].astype(str).str.lower() == "true"
    table["dose_group"] = table["dose_group"].fillna("").astype(str)
    table["sex"] = table["sex"].fillna("").astype(str)
    return table


def partial_effective_dose_weights(available: Iterable[str]) -> dict[str, float]:
    """Effective weight of each available dose group in the partial effective dose.

    A specified tissue contributes its ``w_T``; each of the ``n`` available remainder
    tissues contributes ``w_remainder / n`` (arithmetic mean of the remainder doses).
    See the module docstring for the rules.

    Parameters
    ----------
    available : iterable of str
        Dose groups for which an organ dose exists.

    Returns
    -------
    dict of str to float
        ``{dose_group: weight}`` for the groups that enter ``E_partial``; the weights sum
        to less than 1 unless every ICRP tissue is available.
    """
    available = set(available)
    table = icrp103_weights()
    specified = table[~table["remainder_member"] & (table["tissue"] != "remainder")]
    w_remainder = float(table.loc[table["tissue"] == "remainder", "w_t"].iloc[0])
    weights = {
        row.dose_group: float(row.w_t)
        for row in specified.itertuples()
        if row.dose_group and row.dose_group in available
    }
    members = [
        g for g in table.loc[table["remainder_member"], "dose_group"] if g and g in available
    ]
    for g in members:
        weights[g] = weights.get(g, 0.0) + w_remainder / len(members)
    return weights


def partial_effective_dose(organ_doses: Mapping[str, float]) -> float:
    """Partial effective dose from organ doses with ICRP 103 weights.

    ``E_partial = sum_T w_T D_T + w_remainder * mean(D_R)`` over the available tissues,
    without renormalising the weights (module docstring). Photons: ``w_R = 1``.

    Parameters
    ----------
    organ_doses : mapping of str to float
        ``{dose_group: organ dose}`` (e.g. Gy per mAs; result then in Sv per mAs).

    Returns
    -------
    float
        The partial effective dose; NaN when no ICRP tissue is available.
    """
    weights = partial_effective_dose_weights(
        g for g, v in organ_doses.items() if v is not None and np.isfinite(v)
    )
    if not weights:
        return float("nan")
    return float(sum(w * float(organ_doses[g]) for g, w in weights.items()))


def slice_diameters_cm(body_mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> pd.DataFrame:
    """AP, LAT and effective diameters of every axial slice that contains body.

    Parameters
    ----------
    body_mask : ndarray of bool or 0/1, shape (z, y, x)
        Body outline (without the patient table).
    spacing_mm : (dz, dy, dx)
        Voxel spacing in mm.

    Returns
    -------
    pandas.DataFrame
        One row per slice with body: ``slice`` (index k), ``ap_cm`` (extent along y),
        ``lat_cm`` (extent along x), ``area_cm2``, ``d_eff_cm = sqrt(ap * lat)``
        (AAPM Report 204) and ``d_area_cm = 2 sqrt(area / pi)``.
    """
    mask = np.asarray(body_mask).astype(bool)
    if mask.ndim != 3:
        raise InputError(f"body_mask: expected a 3D [z, y, x] array, got shape {mask.shape}")
    _, dy_mm, dx_mm = (float(v) for v in spacing_mm)
    rows = []
    for k in range(mask.shape[0]):
        sl = mask[k]
        ys = np.flatnonzero(sl.any(axis=1))
        xs = np.flatnonzero(sl.any(axis=0))
        if ys.size == 0:
            continue
        ap_cm = (ys[-1] - ys[0] + 1) * dy_mm / _MM_PER_CM
        lat_cm = (xs[-1] - xs[0] + 1) * dx_mm / _MM_PER_CM
        area_cm2 = sl.sum() * dy_mm * dx_mm / _MM_PER_CM**2
        rows.append(
            {
                "slice": k,
                "ap_cm": ap_cm,
                "lat_cm": lat_cm,
                "area_cm2": area_cm2,
                "d_eff_cm": float(np.sqrt(ap_cm * lat_cm)),
                "d_area_cm": float(2.0 * np.sqrt(area_cm2 / np.pi)),
            }
        )
    return pd.DataFrame(rows, columns=["slice", "ap_cm", "lat_cm", "area_cm2", "d_eff_cm", "d_area_cm"])


def effective_diameter_cm(
    body_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    method: str = "aapm204",
    slices: slice | np.ndarray | None = None,
) -> float:
    """Effective diameter of a patient, averaged over the ROI slices (AAPM Report 204).

    Parameters
    ----------
    body_mask : ndarray, shape (z, y, x)
        Body outline (without the table).
    spacing_mm : (dz, dy, dx)
        Voxel spacing in mm.
    method : {"aapm204", "area"}
        ``"aapm204"``: mean over slices of ``sqrt(AP * LAT)``; ``"area"``: mean over slices
        of the area-equivalent diameter ``2 sqrt(A / pi)``.
    slices : slice or index array, optional
        The ROI's slice indices (default: every slice; slices without body are skipped).

    Returns
    -------
    float
        Effective diameter in cm.

    Raises
    ------
    InputError
        No body voxel in the ROI, or an unknown method.
    """
    columns = {"aapm204": "d_eff_cm", "area": "d_area_cm"}
    if method not in columns:
        raise InputError(f"effective_diameter_cm: unknown method {method!r}; use 'aapm204' or 'area'")
    mask = np.asarray(body_mask)
    if slices is not None:
        mask = mask[slices]
    table = slice_diameters_cm(mask, spacing_mm)
    if table.empty:
        raise InputError("effective_diameter_cm: the body mask has no body voxel in the ROI")
    return float(table[columns[method]].mean())


def coverage_fraction(
    dose_nn: np.ndarray, dose_mc: np.ndarray, sigma: np.ndarray, k: float = 2.0
) -> float:
    """Fraction of predictions whose reference value lies within ``dose_nn +- k sigma``.

    Parameters
    ----------
    dose_nn, dose_mc, sigma : array_like, same shape
        Predicted doses, reference (MC) doses and predicted standard uncertainties (k = 1).
    k : float
        Coverage factor (2 for the expanded uncertainty).

    Returns
    -------
    float
        Observed coverage in [0, 1]; NaN for empty input.
    """
    dose_nn, dose_mc, sigma = (np.asarray(a, dtype=float) for a in (dose_nn, dose_mc, sigma))
    if dose_nn.size == 0:
        return float("nan")
    return float(np.mean(np.abs(dose_mc - dose_nn) <= k * sigma))


def reliability_curve(
    dose_nn: np.ndarray,
    dose_mc: np.ndarray,
    sigma: np.ndarray,
    levels: Iterable[float] = DEFAULT_COVERAGE_LEVELS,
) -> pd.DataFrame:
    """Observed vs nominal coverage of Gaussian intervals (a reliability curve).

    For each nominal level ``p`` the interval ``dose_nn +- k_p sigma`` with
    ``k_p = Phi^-1((1 + p) / 2)`` is formed and the fraction of reference values inside is
    counted. A calibrated predictor lies on the diagonal; below it the uncertainty is
    underestimated (over-confident).

    Returns
    -------
    pandas.DataFrame
        Columns ``nominal``, ``k``, ``observed``, ``n``.
    """
    rows = []
    n = int(np.asarray(dose_nn).size)
    for p in levels:
        k = float(stats.norm.ppf(0.5 * (1.0 + float(p))))
        rows.append({"nominal": float(p), "k": k, "observed": coverage_fraction(dose_nn, dose_mc, sigma, k), "n": n})
    return pd.DataFrame(rows, columns=["nominal", "k", "observed", "n"])


def calibration_table(
    organ_doses: pd.DataFrame,
    levels: Iterable[float] | None = None,
    by: str = "model_id",
    nn: str = "dose_nn",
    mc: str = "dose_mc",
    sigma: str = "sigma_tot",
) -> pd.DataFrame:
    """Reliability curves of organ doses per model (tidy, one row per model and level).

    Parameters
    ----------
    organ_doses : DataFrame
        One row per (model, case, organ) with columns `by`, `nn`, `mc`, `sigma`.
    levels : iterable of float, optional
        Nominal coverage levels; the default of :func:`reliability_curve` when omitted.
        The k = 1 (68.27 %) and k = 2 (95.45 %) levels are always included.

    Returns
    -------
    pandas.DataFrame
        Columns `by`, ``nominal``, ``k``, ``observed``, ``n``.
    """
    levels = DEFAULT_COVERAGE_LEVELS if levels is None else levels
    levels = sorted(set(float(v) for v in levels) | {gaussian_coverage(1.0), gaussian_coverage(2.0)})
    frames = []
    for key, part in organ_doses.groupby(by, sort=True):
        curve = reliability_curve(part[nn], part[mc], part[sigma], levels)
        curve.insert(0, by, key)
        frames.append(curve)
    if not frames:
        return pd.DataFrame(columns=[by, "nominal", "k", "observed", "n"])
    return pd.concat(frames, ignore_index=True)


def mgy_per_rotation(dose_gy_per_mas, tube_current_ma: float, rotation_time_s: float):
    """Dose per rotation in mGy from dose per mAs: ``D [Gy/mAs] x I [mA] x t [s] x 1000``.

    Figure 4 of the paper assumes a tube current of 200 mA (profile
    ``evaluate.tube_current_ma``) and the rotation time of the protocol
    (``scanner.rotation_time_s``).
    """
    return np.asarray(dose_gy_per_mas, dtype=float) * float(tube_current_ma) * float(rotation_time_s) * _MGY_PER_GY
