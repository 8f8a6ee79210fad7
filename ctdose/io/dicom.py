"""DICOM CT series -> HU volume with a RAS+ affine (same form as :func:`ctdose.io.nifti.read_nifti`).

Reads every file of a folder with pydicom (compressed transfer syntaxes such as JPEG 2000
are decoded by pylibjpeg + openjpeg), keeps one CT series, sorts the slices along the slice
normal, converts stored values to HU (RescaleSlope/RescaleIntercept) and builds the affine
from ImagePositionPatient, ImageOrientationPatient and PixelSpacing.

Only geometry and pixel values are read: no identifying header field (names, ids, dates,
UIDs, institution) is returned or copied anywhere. :func:`read_tube_current` reads the
per-slice tube current (XRayTubeCurrentInuA (0018,8151) or XRayTubeCurrent (0018,1151)), a
technical field, for the scan's tube-current modulation (:mod:`ctdose.physics.tube_current`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .nifti import check_volume

__all__ = ["read_dicom_series", "read_tube_current"]

_SLICE_TOL = 0.01  # relative tolerance of the slice spacing


#: A slice counts as transverse (its tube current belongs to one z) when its normal's z
#: component is at least this (a gantry tilt of up to about 25 degrees).
_TRANSVERSE_MIN_NORMAL_Z = 0.9
_UA_PER_MA = 1000.0


def _read(path: Path, pixels: bool = True):
    import pydicom

    try:
        return pydicom.dcmread(str(path), force=False, stop_before_pixels=not pixels)
    except Exception:
        return None


def _series_slices(folder: Path, pixels: bool) -> list:
    """``(path, dataset)`` of every image slice with a position in ``folder`` (file-name order),
    with the pixel data (``pixels``) or the headers only; InputError for a missing folder, no
    such slice, or several series."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such DICOM folder")
    image_tag = "PixelData" if pixels else "Rows"  # read without pixels, a slice has no PixelData
    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = _read(path, pixels=pixels)
        if ds is None or image_tag not in ds or "ImagePositionPatient" not in ds:
            continue
        slices.append((path, ds))
    if not slices:
        raise InputError(f"{folder}: no DICOM image slices with a position found")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise InputError(f"{folder}: {len(series)} DICOM series in one folder; put each series in its own folder")
    return slices


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a DICOM CT series from a folder.

    Parameters
    ----------
    folder : directory with the slice files (non-DICOM files are ignored)

    Returns
    -------
    hu : float32 array (i = column, j = row, k = slice), Hounsfield units
    affine : 4x4 voxel -> RAS+ world (mm)

    Raises
    ------
    InputError
        Missing folder, no CT slices, several series, inconsistent geometry, undecodable pixels.
    """
    folder = Path(folder)
    slices = _series_slices(folder, pixels=True)
    if len(slices) < 2:
        raise InputError(f"{folder}: a single DICOM slice is a 2D image, need a 3D series")
    orient = np.asarray(slices[0][1].ImageOrientationPatient, float)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in slices])
    order = np.argsort(pos @ normal)
    slices = [slices[i] for i in order]
    pos = pos[order]
    for path, ds in slices:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orient, atol=1e-4):
            raise InputError(f"{path}: ImageOrientationPatient differs from the rest of the series")
    dists = np.diff(pos @ normal)
    if np.any(dists <= 0):
        raise InputError(f"{folder}: two slices at the same position")
    step = float(np.median(dists))
    if np.any(np.abs(dists - step) > _SLICE_TOL * step):
        raise InputError(
            f"{folder}: slice spacing not uniform ({dists.min():.3f}-{dists.max():.3f} mm); missing slices?"
        )
    row_mm, col_mm = (float(v) for v in slices[0][1].PixelSpacing)  # between rows, between columns
    planes = []
    for path, ds in slices:
        try:
            px = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            raise InputError(f"{path}: cannot decode pixel data ({exc}); is pylibjpeg installed?") from None
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        planes.append(px * slope + intercept)
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise InputError(f"{folder}: slices of different sizes {sorted(shapes)}")
    # volume [row, col, slice] -> (i = column, j = row, k = slice)
    hu = np.stack(planes, axis=-1).transpose(1, 0, 2)
    hu = check_volume(hu, str(folder))
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm  # column index runs along the row direction
    lps[:3, 1] = col_dir * row_mm
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return np.ascontiguousarray(hu, dtype=np.float32), ras


def read_tube_current(folder: str | Path):
    """The tube current of every slice of a DICOM CT series: the scan's longitudinal
    tube-current modulation as the scanner recorded it.

    Reads the headers only: XRayTubeCurrentInuA (0018,8151, uA) where a slice has it, else
    XRayTubeCurrent (0018,1151, mA), and the slice position ``ImagePositionPatient[2]`` (mm,
    superior positive: the z of the case, see :mod:`ctdose.physics.tube_current`).

    Parameters
    ----------
    folder : directory with the slice files (non-DICOM files are ignored)

    Returns
    -------
    ctdose.physics.tube_current.TubeCurrentProfile or None
        Sorted by z; None when no slice records a tube current.

    Raises
    ------
    InputError
        No image slices, several series, slices that are not transverse, a slice without a
        current where others have one (the message names the file), or a profile that
        :class:`~ctdose.physics.tube_current.TubeCurrentProfile` refuses.
    """
    from ..physics.tube_current import TubeCurrentProfile

    folder = Path(folder)
    slices = _series_slices(folder, pixels=False)
    tags = [("XRayTubeCurrentInuA", 1.0 / _UA_PER_MA), ("XRayTubeCurrent", 1.0)]
    recorded = [any(ds.get(tag) is not None for tag, _ in tags) for _, ds in slices]
    if not any(recorded):
        return None
    z_mm, current_ma, used = [], [], set()
    for (path, ds), has in zip(slices, recorded):
        if not has:
            raise InputError(f"{path}: no tube current (XRayTubeCurrent) where the other slices of {folder} have one")
        if "ImageOrientationPatient" in ds:
            orient = np.asarray(ds.ImageOrientationPatient, float)
            normal = np.cross(orient[:3], orient[3:])
            if abs(normal[2]) < _TRANSVERSE_MIN_NORMAL_Z * np.linalg.norm(normal):
                raise InputError(f"{path}: not a transverse slice; a tube current per slice needs a transverse "
                                 "series")
        tag, factor = next((t, f) for t, f in tags if ds.get(t) is not None)
        try:
            current_ma.append(float(ds.get(tag)) * factor)
        except (TypeError, ValueError):
            raise InputError(f"{path}: {tag} {ds.get(tag)!r} is not a number") from None
        z_mm.append(float(ds.ImagePositionPatient[2]))
        used.add(tag)
    order = np.argsort(z_mm, kind="stable")
    return TubeCurrentProfile(np.asarray(z_mm)[order], np.asarray(current_ma)[order],
                              f"DICOM {' and '.join(sorted(used))} of {folder.name}/")
