"""Read and write DOSXYZnrc dose files (``.3ddose``).

Layout (DOSXYZnrc Users Manual, NRCC Report PIRS-794revB, "the .3ddose file"), six blocks:

1. ``nx ny nz`` (numbers of voxels)
2. x voxel boundaries in cm (``nx + 1`` values)
3. y voxel boundaries in cm (``ny + 1``)
4. z voxel boundaries in cm (``nz + 1``)
5. the dose of every voxel (``nx * ny * nz`` values; x fastest, then y, then z), in Gy per
   incident particle (or whatever normalisation the run used)
6. the relative (fractional) statistical uncertainty of every voxel, same order

DOSXYZnrc writes each block with list-directed output; readers in the wild expect one block
per line, which is what :func:`write_3ddose` writes. :func:`read_3ddose` reads the numbers
in order regardless of line breaks.

Orientation: the file's x, y, z are ctdose's patient axes; array ``vol[k, j, i]`` (ctdose
``[z, y, x]``) is voxel (i, j, k), so the C-order flattening of a ctdose array is the file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .._atomic import atomic_write_text
from .egsphant import BoundsGrid, _bounds_cm, _bounds_problem, _fortran_float, _grid_for_writing

__all__ = ["Dose3D", "read_3ddose", "write_3ddose"]


@dataclass
class Dose3D(BoundsGrid):
    """Contents of a ``.3ddose`` file in ctdose orientation.

    Attributes
    ----------
    dose : ndarray of float64, shape (nz, ny, nx)
    rel_uncertainty : ndarray of float64, shape (nz, ny, nx)
        Fractional (not percent) 1-sigma statistical uncertainty.
    x_bounds_cm, y_bounds_cm, z_bounds_cm : ndarray
    """

    dose: np.ndarray
    rel_uncertainty: np.ndarray
    x_bounds_cm: np.ndarray
    y_bounds_cm: np.ndarray
    z_bounds_cm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.dose.shape)  # type: ignore[return-value]


def write_3ddose(
    path: str | Path,
    dose: np.ndarray,
    rel_uncertainty: np.ndarray | None,
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
) -> Path:
    """Write a ``.3ddose`` file (atomically).

    Parameters
    ----------
    path : str or Path
        Target file; missing parent folders are created. An existing file is replaced only
        when the whole new file is written (it keeps its permission bits).
    dose : ndarray, shape (nz, ny, nx)
    rel_uncertainty : ndarray, shape (nz, ny, nx), optional
        Fractional uncertainty (zeros when None).
    spacing_mm : (dz, dy, dx)
    origin_mm : (z0, y0, x0)
        Centre of voxel [0, 0, 0].

    Returns
    -------
    Path

    Raises
    ------
    InputError
        Arrays of different or empty shapes, NaN or infinite dose or uncertainty, a negative
        uncertainty, a spacing that is not 3 finite numbers > 0 or an origin that is not 3
        finite numbers; nothing is written then.
    OutputError
        ``path`` is a folder, is write-protected (e.g. mode 0444) or lies under a file, or the
        system refuses the write (read-only folder, full disk); the message names ``path``, an
        existing file is unchanged and no temporary file is left.
    """
    path = Path(path)
    d = np.asarray(dose, dtype=np.float64)
    u = np.zeros_like(d) if rel_uncertainty is None else np.asarray(rel_uncertainty, dtype=np.float64)
    if d.ndim != 3 or d.size == 0 or u.shape != d.shape:
        raise InputError(f"{path}: dose and uncertainty must be 3-D arrays of the same shape")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(u))) or np.any(u < 0):
        raise InputError(f"{path}: dose and uncertainty must be finite, uncertainty >= 0")
    sp, og = _grid_for_writing(path, spacing_mm, origin_mm)
    nz, ny, nx = d.shape
    lines = [
        f"{nx:5d}{ny:5d}{nz:5d}",
        " ".join(f"{v:.6f}" for v in _bounds_cm(nx, sp[2], og[2])),
        " ".join(f"{v:.6f}" for v in _bounds_cm(ny, sp[1], og[1])),
        " ".join(f"{v:.6f}" for v in _bounds_cm(nz, sp[0], og[0])),
        " ".join(f"{v:.7E}" for v in d.ravel()),
        " ".join(f"{v:.7E}" for v in u.ravel()),
    ]
    return atomic_write_text(path, "\n".join(lines) + "\n", encoding="ascii")


def _fail(path: Path, what: str) -> InputError:
    return InputError(f"{path}: not a valid .3ddose file ({what})")


def read_3ddose(path: str | Path) -> Dose3D:
    """Read a ``.3ddose`` file.

    Raises
    ------
    InputError
        Missing file, wrong number of values, non-numeric values, NaN or non-increasing
        boundaries, NaN doses or negative uncertainties (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such .3ddose file")
    try:
        tokens = path.read_text(encoding="ascii").split()
    except UnicodeDecodeError:
        raise _fail(path, "not an ASCII text file") from None
    if len(tokens) < 3:
        raise _fail(path, "no voxel numbers")
    try:
        nx, ny, nz = (int(t) for t in tokens[:3])
    except ValueError:
        raise _fail(path, "first values are not the numbers of voxels") from None
    if min(nx, ny, nz) < 1:
        raise _fail(path, f"voxel numbers {nx} {ny} {nz}")
    n = nx * ny * nz
    need = 3 + (nx + ny + nz + 3) + 2 * n
    if len(tokens) != need:
        raise _fail(path, f"expected {need} values for {nx}x{ny}x{nz} voxels, found {len(tokens)}")
    try:
        vals = np.array([_fortran_float(t) for t in tokens[3:]], dtype=np.float64)
    except ValueError:
        raise _fail(path, "non-numeric value") from None
    xb = vals[: nx + 1]
    yb = vals[nx + 1 : nx + ny + 2]
    zb = vals[nx + ny + 2 : nx + ny + nz + 3]
    for name, b in (("x", xb), ("y", yb), ("z", zb)):
        problem = _bounds_problem(b)
        if problem:
            raise _fail(path, f"{name} boundaries {problem}")
    off = nx + ny + nz + 3
    dose = vals[off : off + n].reshape(nz, ny, nx)
    unc = vals[off + n :].reshape(nz, ny, nx)
    if not (np.all(np.isfinite(dose)) and np.all(np.isfinite(unc))):
        raise _fail(path, "NaN or infinite values")
    if np.any(unc < 0):
        raise _fail(path, f"negative relative uncertainty {unc.min():g}")
    return Dose3D(dose=dose, rel_uncertainty=unc, x_bounds_cm=xb.copy(), y_bounds_cm=yb.copy(), z_bounds_cm=zb.copy())
