"""NIfTI volumes (CT in HU, label maps) and the canonical ctdose orientation.

ctdose arrays are indexed ``[z, y, x]`` in DICOM LPS patient coordinates: +x to the
patient's left, +y posterior, +z superior (``docs/architecture.md``). NIfTI stores a voxel
array with an affine to RAS+ world coordinates; :func:`to_canonical` reorients any
axis-aligned NIfTI (or DICOM-derived) volume by flips and transposes only (no resampling),
so values are untouched. Oblique affines are reoriented to the nearest axes (their shear is
ignored; a warning says so).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError

__all__ = ["read_nifti", "to_canonical", "CanonicalVolume", "check_volume"]

_LPS = ("L", "P", "S")
_OBLIQUE_TOL = 1e-3


class CanonicalVolume:
    """A volume ``[z, y, x]`` in LPS with ``spacing_mm`` and ``origin_mm`` (voxel centre [0,0,0])."""

    def __init__(self, array: np.ndarray, spacing_mm, origin_mm, source: str = ""):
        self.array = array
        self.spacing_mm = tuple(float(s) for s in spacing_mm)
        self.origin_mm = tuple(float(o) for o in origin_mm)
        self.source = source

    def axis_mm(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates (mm) along ``axis`` (0 = z, 1 = y, 2 = x)."""
        return self.origin_mm[axis] + self.spacing_mm[axis] * np.arange(self.array.shape[axis])

    def same_grid(self, other: "CanonicalVolume", tol_mm: float = 0.01) -> bool:
        return (self.array.shape == other.array.shape
                and np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm)
                and np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm))

    def __repr__(self) -> str:
        return f"CanonicalVolume(shape={self.array.shape}, spacing_mm={self.spacing_mm}, origin_mm={self.origin_mm})"


def check_volume(array: np.ndarray, where: str, integer: bool = False) -> np.ndarray:
    """Validate a 3D volume: 3D (a trailing axis of length 1 is dropped), non-empty, finite.

    Raises ``InputError`` naming ``where`` (the file) and the problem.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        raise InputError(f"{where}: empty volume (shape {arr.shape})")
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{where}: expected a 3D volume, got {arr.ndim}D with shape {arr.shape}")
    if arr.size == 0 or min(arr.shape) < 1:
        raise InputError(f"{where}: empty volume (shape {arr.shape})")
    if min(arr.shape) < 2:
        raise InputError(f"{where}: a single slice (shape {arr.shape}) is a 2D image, need a 3D volume")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{where}: contains {int(np.count_nonzero(~np.isfinite(arr)))} NaN/inf values")
    if integer and arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{where}: label map has non-integer values")
    return arr


def read_nifti(path: str | Path, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file.

    Parameters
    ----------
    path : path to ``.nii`` / ``.nii.gz``
    integer : bool
        The file is a label map (values must be integers).

    Returns
    -------
    array : the voxel array in file order (scaled to float for CT)
    affine : 4x4 voxel -> RAS+ world (mm)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        if integer:
            arr = np.asanyarray(img.dataobj)
        else:
            arr = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from None
    arr = check_volume(arr, str(path), integer=integer)
    affine = np.asarray(img.affine, float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: invalid affine {affine.tolist()}")
    return arr, affine


def to_canonical(array: np.ndarray, affine_ras: np.ndarray, source: str = "") -> CanonicalVolume:
    """Reorient a voxel array with a RAS+ affine into ctdose's ``[z, y, x]`` LPS layout.

    Parameters
    ----------
    array : 3D array in file order (i, j, k)
    affine_ras : 4x4 affine voxel (i, j, k) -> RAS+ mm
    source : file name for messages

    Returns
    -------
    CanonicalVolume
    """
    arr = check_volume(array, source or "volume")
    ornt = nib.io_orientation(affine_ras)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(_LPS))
    data = nib.orientations.apply_orientation(arr, transform)
    aff = affine_ras @ nib.orientations.inv_ornt_aff(transform, arr.shape)
    rot = aff[:3, :3]
    spacing = np.linalg.norm(rot, axis=0)
    off_diag = rot - np.diag(np.diag(rot))
    if np.abs(off_diag).max() > _OBLIQUE_TOL * spacing.max():
        warnings.warn(f"{source}: oblique affine, reoriented to the nearest axes (shear ignored)", stacklevel=2)
    ras0 = aff[:3, 3]
    lps0 = (-ras0[0], -ras0[1], ras0[2])
    vol = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return CanonicalVolume(vol, (spacing[2], spacing[1], spacing[0]), (lps0[2], lps0[1], lps0[0]), source)
