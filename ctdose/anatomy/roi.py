"""Thorax region of interest (paper section 2.1.2).

Landmark rule (the same for every cohort)
-----------------------------------------
The paper selects "slices ranging from the cervical vertebrae to the adrenal gland", then
extends the ROI by 30 slices of 1 mm on each side. ctdose makes this exact as follows:

- superior landmark: the **most superior point of the vertebra C7** (the lowest cervical
  vertebra, i.e. the cervico-thoracic junction); ``superior="C1"`` instead takes the most
  superior point of any cervical vertebra;
- inferior landmark: the **most inferior point of the adrenal glands** (right or left,
  whichever lies lower);
- ROI (mm, z superior): ``[z_adrenal_lo - margin_mm, z_C7_hi + margin_mm]`` with
  ``margin_mm = cohort.roi_margin_mm`` (30 mm = the paper's 30 slices of 1 mm).

For voxel data a landmark's extent is that of the voxel centres carrying its label, so the
rule reads: from the lowest slice with adrenal voxels to the highest slice with C7 voxels,
plus the margin. For the analytic phantoms the extents come from the geometry.

Missing landmarks raise :class:`~ctdose.errors.InputError` naming the case. With
``fallback=True`` (used for XCAT, whose label maps have no vertebra levels) a documented
substitute is used: the lung apex (most superior lung point) for C7 and the upper pole of
the kidneys (most superior kidney point) for the adrenals.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError

__all__ = ["thorax_roi_z_mm", "landmark_extent_z_mm", "crop_z", "CERVICAL"]

CERVICAL = tuple(f"C{i}" for i in range(1, 8))
_FALLBACK = {"C7": "lung", "adrenal": "kidney"}


def thorax_roi_z_mm(
    landmarks_z_mm: Mapping[str, tuple[float, float]],
    margin_mm: float,
    case_id: str,
    superior: str = "C7",
    fallback: bool = False,
) -> tuple[float, float]:
    """Thorax ROI ``(z_lo, z_hi)`` in mm from landmark z extents.

    Parameters
    ----------
    landmarks_z_mm : mapping
        ``{"C7": (lo, hi), "C1": ..., "adrenal": (lo, hi), "lung": ..., "kidney": ...}``;
        only the landmarks the rule needs must be present.
    margin_mm : float
        Extension on each side (paper: 30 mm).
    case_id : str
        Named in error messages.
    superior : {"C7", "C1"}
        Superior landmark (see module docstring).
    fallback : bool
        Use the lung apex / kidney upper pole when C7 / adrenals are missing.

    Returns
    -------
    (float, float)
    """
    if superior not in ("C7", "C1"):
        raise InputError(f"case {case_id}: ROI superior landmark {superior!r}, expected 'C7' or 'C1'")
    if margin_mm < 0 or not np.isfinite(margin_mm):
        raise InputError(f"case {case_id}: roi_margin_mm={margin_mm} must be >= 0")

    def get(name: str) -> tuple[float, float]:
        if name in landmarks_z_mm:
            return landmarks_z_mm[name]
        if fallback and _FALLBACK.get(name) in landmarks_z_mm:
            return landmarks_z_mm[_FALLBACK[name]]
        need = name if not fallback else f"{name} (or fallback {_FALLBACK[name]})"
        raise InputError(
            f"case {case_id}: thorax ROI needs the landmark {need}, which is missing; "
            "the ROI runs from the cervical vertebra C7 to the adrenal glands (ctdose.anatomy.roi)"
        )

    if superior == "C1":
        tops = [landmarks_z_mm[c][1] for c in CERVICAL if c in landmarks_z_mm]
        top = max(tops) if tops else get("C7")[1]
    else:
        top = get("C7")[1]
    bottom = get("adrenal")[0]
    if not top > bottom:
        raise InputError(
            f"case {case_id}: C7 top (z={top:.1f} mm) is not above the adrenal bottom (z={bottom:.1f} mm); "
            "is the volume upside down?"
        )
    return (float(bottom - margin_mm), float(top + margin_mm))


def landmark_extent_z_mm(mask: np.ndarray, z_mm: np.ndarray) -> tuple[float, float] | None:
    """z extent (mm) of the voxel centres of a boolean mask ``[z, y, x]``; None if empty."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=(1, 2)))
    if rows.size == 0:
        return None
    zs = np.asarray(z_mm)[rows]
    return (float(zs.min()), float(zs.max()))


def crop_z(z_mm: np.ndarray, roi_z_mm: tuple[float, float]) -> slice:
    """Slice of the slices whose centres lie inside the ROI (z ascending)."""
    z = np.asarray(z_mm)
    idx = np.flatnonzero((z >= roi_z_mm[0] - 1e-6) & (z <= roi_z_mm[1] + 1e-6))
    if idx.size == 0:
        raise InputError(f"ROI {roi_z_mm} mm: no slice of the volume inside")
    return slice(int(idx[0]), int(idx[-1]) + 1)
