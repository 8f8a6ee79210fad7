"""XCAT phantom reader: ``<name>_act_1.bin`` label volume + ``<name>_log`` -> ctdose labels.

Layout accepted (see ``/shared/reference/phantom_cohort_notes.md`` section A)
---------------------------------------------------------------------------
- ``<name>_act_1.bin``: raw little-endian float32, no header, x fastest, then y, then slice:
  C-order shape ``(n_slices, ny, nx)``. It must be a *label* map: every structure carries a
  unique value (``color_code = 1``, or every ``<structure>_activity`` set to a unique
  integer, the usual way to obtain XCAT label maps).
- ``<name>_log`` (text): ``pixel width = <cm>``, ``slice width = <cm>``, ``array_size = <n>``
  (or ``x_array_size``/``y_array_size``), optionally ``startslice``/``endslice``, and one
  ``<structure>_activity = <value>`` line per structure (the echoed parameters); the value
  is the structure's id in the ``.bin`` file. Units of widths: cm (XCAT convention).
- The number of slices is ``endslice - startslice + 1`` if given, else file size /
  (4 nx ny); a file of the wrong size is refused as truncated.
- Structure -> ctdose label: ``ctdose/data/xcat_map.csv`` (data). Unknown structures become
  ``other_soft_tissue`` (with a warning); ids in the volume without a structure are refused.
- Orientation: XCAT does not state its axis directions in the log, so they are fixed from
  the anatomy: slices are ordered so that the lungs lie superior to the kidneys, rows so that
  the spine lies posterior of the body centre, columns so that the liver lies on the
  patient's right of the spleen (LPS, ``docs/architecture.md``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .._data import read_table
from ..errors import InputError

__all__ = ["read_xcat_log", "read_xcat", "xcat_phantoms", "load_xcat_case"]

_MM_PER_CM = 10.0
_NUM = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _find(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
    return m.group(1) if m else None


def read_xcat_log(log_path: str | Path) -> dict[str, Any]:
    """Parse an XCAT log: pixel and slice width (mm), array sizes, slice range, structure ids.

    Returns
    -------
    dict
        ``pixel_mm, slice_mm, nx, ny, n_slices`` (or None) and ``structures``
        ``{structure name: id}``.
    """
    log_path = Path(log_path)
    if not log_path.is_file():
        raise InputError(f"{log_path}: XCAT log not found")
    text = log_path.read_text(errors="replace")
    pixel = _find(rf"^\s*pixel[ _]width\s*=\s*{_NUM}", text)
    slice_w = _find(rf"^\s*slice[ _]width\s*=\s*{_NUM}", text)
    if pixel is None or slice_w is None:
        raise InputError(f"{log_path}: no 'pixel width = ...' or 'slice width = ...' line")
    n = _find(r"^\s*array[ _]size\s*=\s*(\d+)", text)
    nx = _find(r"^\s*x[ _]array[ _]size\s*=\s*(\d+)", text) or n
    ny = _find(r"^\s*y[ _]array[ _]size\s*=\s*(\d+)", text) or n
    if nx is None or ny is None:
        raise InputError(f"{log_path}: no 'array_size = ...' line")
    start = _find(r"^\s*start[ _]?slice\s*=\s*(\d+)", text)
    end = _find(r"^\s*end[ _]?slice\s*=\s*(\d+)", text)
    structures = {}
    for m in re.finditer(rf"^\s*([A-Za-z][\w]*?)_activity\s*=\s*{_NUM}", text, flags=re.MULTILINE):
        structures[m.group(1)] = float(m.group(2))
    if not structures:
        raise InputError(f"{log_path}: no '<structure>_activity = <id>' lines; cannot name the labels")
    info = {
        "pixel_mm": float(pixel) * _MM_PER_CM,
        "slice_mm": float(slice_w) * _MM_PER_CM,
        "nx": int(nx),
        "ny": int(ny),
        "n_slices": int(end) - int(start) + 1 if start and end else None,
        "structures": structures,
    }
    if info["pixel_mm"] <= 0 or info["slice_mm"] <= 0 or info["nx"] < 1 or info["ny"] < 1:
        raise InputError(f"{log_path}: non-positive pixel/slice width or array size")
    return info


def _centroid(mask: np.ndarray, axis: int) -> float | None:
    if not mask.any():
        return None
    other = tuple(a for a in range(3) if a != axis)
    prof = mask.sum(axis=other)
    return float((prof * np.arange(prof.size)).sum() / prof.sum())


def read_xcat(bin_path: str | Path, log_path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read an XCAT label phantom into ctdose labels ``[z, y, x]`` (LPS) and its spacing (mm)."""
    from ..anatomy.organs import label_id

    bin_path = Path(bin_path)
    info = read_xcat_log(log_path)
    if not bin_path.is_file():
        raise InputError(f"{bin_path}: XCAT .bin file not found")
    nbytes = bin_path.stat().st_size
    plane = 4 * info["nx"] * info["ny"]
    n_slices = info["n_slices"] if info["n_slices"] is not None else nbytes // plane
    if n_slices < 1 or nbytes != n_slices * plane:
        raise InputError(
            f"{bin_path}: {nbytes} bytes, expected {max(n_slices, 1) * plane} for {max(n_slices, 1)} slices of "
            f"{info['ny']}x{info['nx']} float32 (truncated or wrong array size in {log_path})"
        )
    if n_slices < 2:
        raise InputError(f"{bin_path}: a single slice is a 2D image, need a 3D phantom")
    raw = np.fromfile(bin_path, dtype="<f4").reshape(n_slices, info["ny"], info["nx"])
    if not np.all(np.isfinite(raw)):
        raise InputError(f"{bin_path}: contains NaN/inf values")
    table = read_table("xcat_map.csv")
    name_to_label = dict(zip(table["xcat_name"], table["label"]))
    by_value: dict[float, list[str]] = {}
    for name, value in info["structures"].items():
        if value != 0:
            by_value.setdefault(value, []).append(name)
    shared = {v: n for v, n in by_value.items() if len(n) > 1}
    if shared:
        v, names = next(iter(shared.items()))
        raise InputError(f"{log_path}: structures {names} share the value {v}; the .bin file is not a label map "
                         "(set color_code = 1 or give every structure a unique activity)")
    lut: dict[float, int] = {0.0: 0}
    for name, value in info["structures"].items():
        if value == 0:
            continue
        if name not in name_to_label:
            warnings.warn(f"{log_path}: XCAT structure {name!r} not in xcat_map.csv, labelled other_soft_tissue",
                          stacklevel=2)
        lut[value] = label_id(name_to_label.get(name, "other_soft_tissue"))
    values, inverse = np.unique(raw, return_inverse=True)
    unknown = [float(v) for v in values if float(v) not in lut]
    if unknown:
        raise InputError(f"{bin_path}: voxel values {unknown[:10]} belong to no structure of {log_path}")
    labels = np.array([lut[float(v)] for v in values], np.uint8)[inverse.reshape(raw.shape)]
    labels = _orient(labels, bin_path)
    return labels, (info["slice_mm"], info["pixel_mm"], info["pixel_mm"])


def _orient(labels: np.ndarray, where: Path) -> np.ndarray:
    from ..anatomy.organs import label_id

    L = label_id
    lungs = np.isin(labels, [L("lung_right"), L("lung_left")])
    kidneys = np.isin(labels, [L("kidney_right"), L("kidney_left")])
    zl, zk = _centroid(lungs, 0), _centroid(kidneys, 0)
    if zl is not None and zk is not None and zl < zk:
        labels = labels[::-1]
    body = labels > 0
    spine = labels == L("spine_bone")
    yb, ys = _centroid(body, 1), _centroid(spine, 1)
    if yb is not None and ys is not None and ys < yb:
        labels = labels[:, ::-1]
    xl, xs = _centroid(labels == L("liver"), 2), _centroid(labels == L("spleen"), 2)
    if xl is not None and xs is not None and xl > xs:
        labels = labels[:, :, ::-1]
    if None in (zl, zk, ys, xl, xs):
        warnings.warn(f"{where}: orientation not fully checked (lungs/kidneys/spine/liver/spleen missing)",
                      stacklevel=3)
    # a single 'adrenal' structure: split into right/left at the body's centre
    ad = labels == L("adrenal_right")
    xc = _centroid(body, 2)
    if ad.any() and not (labels == L("adrenal_left")).any() and xc is not None:
        x = np.arange(labels.shape[2])[None, None, :]
        labels = np.ascontiguousarray(labels)
        labels[ad & (x > xc)] = L("adrenal_left")
    return np.ascontiguousarray(labels)


def xcat_phantoms(folder: str | Path) -> list[tuple[Path, Path]]:
    """``(bin, log)`` pairs of the XCAT phantoms in a folder (``<name>_act_1.bin`` + ``<name>_log``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: xcat_dir does not exist")
    pairs = []
    for b in sorted(folder.glob("*_act_1.bin")):
        log = folder / (b.name[: -len("_act_1.bin")] + "_log")
        if not log.is_file():
            raise InputError(f"{b}: no matching log file {log.name}")
        pairs.append((b, log))
    if not pairs:
        raise InputError(f"{folder}: no <name>_act_1.bin files")
    return pairs


def load_xcat_case(
    bin_path: str | Path,
    log_path: str | Path,
    spacing_mm: float,
    margin_mm: float,
    case_id: str | None = None,
    prov: Mapping[str, Any] | None = None,
    roi: bool = True,
) -> xr.Dataset:
    """XCAT phantom -> case Dataset (cohort ``xcat``), resampled and cropped to the thorax ROI.

    XCAT label maps have no vertebra levels: the ROI uses the documented fallback of
    :func:`ctdose.anatomy.roi.thorax_roi_z_mm` (lung apex for C7, kidney upper pole for the
    adrenals when the adrenals are missing). The volume is centred in-plane on the isocentre.
    """
    from ..anatomy.clinical import resample
    from ..anatomy.cohort import case_variables
    from ..anatomy.organs import label_id
    from ..anatomy.roi import crop_z, landmark_extent_z_mm, thorax_roi_z_mm
    from ..store import make_case
    from .nifti import CanonicalVolume

    bin_path = Path(bin_path)
    case_id = case_id or f"xcat_{bin_path.name[: -len('_act_1.bin')]}"
    labels, spacing = read_xcat(bin_path, log_path)
    shape = np.array(labels.shape)
    origin = (0.0, -(shape[1] - 1) * spacing[1] / 2.0, -(shape[2] - 1) * spacing[2] / 2.0)
    vol = CanonicalVolume(labels, spacing, origin, str(bin_path))
    roi_z = None
    if roi:
        z = vol.axis_mm(0)
        marks = {}
        for key, names in (("adrenal", ["adrenal_right", "adrenal_left"]), ("lung", ["lung_right", "lung_left"]),
                           ("kidney", ["kidney_right", "kidney_left"])):
            ext = landmark_extent_z_mm(np.isin(labels, [label_id(n) for n in names]), z)
            if ext is not None:
                marks[key] = ext
        roi_z = thorax_roi_z_mm(marks, margin_mm, case_id, fallback=True)
        sl = crop_z(z, roi_z)
        vol = CanonicalVolume(labels[sl], spacing, (float(z[sl][0]), origin[1], origin[2]), str(bin_path))
    out = resample(vol, spacing_mm, order=0)
    lab = out.array.astype(np.uint8)
    return make_case(
        lab, out.spacing_mm, out.origin_mm, variables=case_variables(lab),
        case_id=case_id, cohort="xcat", sex="", height_m=None, fat_scale=None,
        roi_z_mm=None if roi_z is None else list(roi_z),
        roi_rule="fallback: lung apex to adrenal (or kidney top) +- margin" if roi else "none",
        source="xcat", provenance=dict(prov or {}),
    )
