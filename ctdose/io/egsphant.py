"""Read and write EGSnrc/DOSXYZnrc voxel phantoms (``.egsphant``).

Layout (DOSXYZnrc Users Manual, NRCC Report PIRS-794revB, section on CT phantoms /
ctcreate output), one item per line unless stated:

1. number of media ``nmed``
2. ``nmed`` lines, one medium name each (names of the PEGS4 data sets)
3. one line with ``nmed`` ESTEPE values (dummy; not used by DOSXYZnrc)
4. ``nx ny nz``
5. x voxel boundaries (``nx + 1`` values, cm), then y (``ny + 1``), then z (``nz + 1``);
   free format (here: each block on its own lines, at most :data:`VALUES_PER_LINE` per line)
6. the media array: for each z slice ``k``, for each row ``j``, one line of ``nx`` characters
   (the 1-based medium number of each voxel, x fastest), then a blank line after each slice
7. the density array (g/cm3): for each slice, for each row, ``nx`` values, then a blank line
   after each slice

Medium numbers are written as the character ``chr(ord('0') + m)`` (``'1'``...``'9'`` and the
following ASCII characters ``':'``, ``';'``, ... for m > 9), the convention of DOSXYZnrc's and
ompMC's readers (``char - '0'``); at most :data:`MAX_MEDIA` media.

Orientation: the file's x, y, z axes are ctdose's patient axes (+x patient left, +y posterior,
+z superior; right-handed like DOSXYZnrc's). Array ``vol[k, j, i]`` (ctdose ``[z, y, x]``) is
voxel (i, j, k) of the file; boundaries are ``(origin_mm + (index - 1/2) * spacing_mm) / 10``.
ctdose's voxel grids have one spacing per axis: :func:`read_egsphant` refuses a file whose
boundaries are not uniformly spaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_text
from ..errors import InputError

__all__ = ["EgsPhantom", "MAX_MEDIA", "egsphant_from_case", "read_egsphant", "write_egsphant"]

_ZERO = ord("0")
#: highest medium number representable by one printable ASCII character after '0'
MAX_MEDIA = ord("~") - _ZERO
VALUES_PER_LINE = 10
_MM_PER_CM = 10.0
#: Largest distance of a voxel boundary from the uniform grid through the first and last
#: boundary, in voxels, still read as uniform (rounding of the boundaries in the file).
_UNIFORM_TOLERANCE_VOXELS = 0.01


class BoundsGrid:
    """Mixin for EGSnrc grids given by voxel boundaries ``x/y/z_bounds_cm`` (cm)."""

    x_bounds_cm: np.ndarray
    y_bounds_cm: np.ndarray
    z_bounds_cm: np.ndarray

    def _bounds_zyx(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.z_bounds_cm, self.y_bounds_cm, self.x_bounds_cm

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(dz, dy, dx) in mm (mean voxel size when the grid is not uniform)."""
        return tuple(float(np.diff(b).mean() * _MM_PER_CM) for b in self._bounds_zyx())  # type: ignore[return-value]

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """Centre of voxel [0, 0, 0] as (z0, y0, x0) in mm."""
        return tuple(float((b[0] + b[1]) / 2 * _MM_PER_CM) for b in self._bounds_zyx())  # type: ignore[return-value]


@dataclass
class EgsPhantom(BoundsGrid):
    """Contents of an ``.egsphant`` file in ctdose orientation.

    Attributes
    ----------
    media : list of str
        Medium names in file order.
    estepe : ndarray, shape (nmed,)
    media_index : ndarray of uint8, shape (nz, ny, nx)
        0-based index into ``media`` (the file stores 1-based numbers).
    density_g_cm3 : ndarray of float32, shape (nz, ny, nx)
    x_bounds_cm, y_bounds_cm, z_bounds_cm : ndarray
        Voxel boundaries in cm (``n + 1`` values each).
    """

    media: list[str]
    estepe: np.ndarray
    media_index: np.ndarray
    density_g_cm3: np.ndarray
    x_bounds_cm: np.ndarray
    y_bounds_cm: np.ndarray
    z_bounds_cm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.media_index.shape)  # type: ignore[return-value]



def _bounds_cm(n: int, spacing_mm: float, origin_mm: float) -> np.ndarray:
    return (origin_mm + (np.arange(n + 1) - 0.5) * spacing_mm) / _MM_PER_CM


def _grid_for_writing(path: Path, spacing_mm: Sequence[float], origin_mm: Sequence[float]) -> tuple[list, list]:
    """``spacing_mm`` and ``origin_mm`` as 3 floats each, or InputError naming ``path`` (before writing)."""
    try:
        sp = [float(v) for v in spacing_mm]
        og = [float(v) for v in origin_mm]
    except (TypeError, ValueError):
        sp = og = []
    if (len(sp) != 3 or len(og) != 3 or not all(math.isfinite(v) and v > 0 for v in sp)
            or not all(math.isfinite(v) for v in og)):
        raise InputError(
            f"{path}: bad spacing_mm {spacing_mm!r} / origin_mm {origin_mm!r} (spacing: 3 finite numbers > 0, "
            "origin: 3 finite numbers)"
        )
    return sp, og


def _bounds_problem(b: np.ndarray) -> str | None:
    """What is wrong with one axis' voxel boundaries (cm) ("contain NaN ...", "are not increasing"), or None."""
    if not np.all(np.isfinite(b)):
        return "contain NaN or infinite values"
    if np.any(np.diff(b) <= 0):
        return "are not increasing"
    return None


def _format_block(values: np.ndarray, fmt: str) -> str:
    lines = []
    for s in range(0, values.size, VALUES_PER_LINE):
        lines.append(" ".join(fmt.format(v) for v in values[s : s + VALUES_PER_LINE]))
    return "\n".join(lines) + "\n"


def write_egsphant(
    path: str | Path,
    media_index: np.ndarray,
    density_g_cm3: np.ndarray,
    media_names: Sequence[str],
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
    estepe: float | Sequence[float] = 1.0,
) -> Path:
    """Write a DOSXYZnrc ``.egsphant`` file (atomically).

    Parameters
    ----------
    path : str or Path
        Target file; missing parent folders are created. An existing file is replaced only
        when the whole new file is written (it keeps its permission bits).
    media_index : ndarray of int, shape (nz, ny, nx)
        0-based index into ``media_names`` per voxel.
    density_g_cm3 : ndarray, shape (nz, ny, nx)
        Mass density per voxel (g/cm3, > 0).
    media_names : sequence of str
        Medium names (ASCII, no whitespace), at most :data:`MAX_MEDIA`.
    spacing_mm : (dz, dy, dx)
    origin_mm : (z0, y0, x0)
        Centre of voxel [0, 0, 0].
    estepe : float or sequence
        The (dummy) ESTEPE line.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        Arrays of different or empty shapes, bad media names or indices, densities that are
        not finite and > 0, a spacing that is not 3 finite numbers > 0 or an origin that is
        not 3 finite numbers; nothing is written then.
    OutputError
        ``path`` is a folder, is write-protected (e.g. mode 0444) or lies under a file, or the
        system refuses the write (read-only folder, full disk); the message names ``path``, an
        existing file is unchanged and no temporary file is left.
    """
    path = Path(path)
    idx = np.asarray(media_index)
    rho = np.asarray(density_g_cm3, dtype=np.float64)
    names = [str(n) for n in media_names]
    if idx.ndim != 3 or rho.shape != idx.shape or idx.size == 0:
        raise InputError(f"{path}: media_index and density must be 3-D arrays of the same shape")
    if not names or len(names) > MAX_MEDIA:
        raise InputError(f"{path}: need 1 to {MAX_MEDIA} media, got {len(names)}")
    if any((not n) or any(c.isspace() for c in n) for n in names):
        raise InputError(f"{path}: medium names must be non-empty without whitespace: {names}")
    if not all(n.isascii() for n in names):  # the format is ASCII text
        raise InputError(f"{path}: medium names must be ASCII, got {[n for n in names if not n.isascii()]}")
    if idx.dtype.kind not in "ui" or idx.min() < 0 or idx.max() >= len(names):
        raise InputError(f"{path}: media_index values must be 0..{len(names) - 1}")
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise InputError(f"{path}: densities must be finite and > 0 g/cm3")
    sp, og = _grid_for_writing(path, spacing_mm, origin_mm)
    est = np.broadcast_to(np.asarray(estepe, dtype=np.float64), (len(names),))
    nz, ny, nx = idx.shape

    parts = [f"{len(names):5d}\n"]
    parts += [f"{n}\n" for n in names]
    parts.append(" ".join(f"{v:.7g}" for v in est) + "\n")
    parts.append(f"{nx:5d}{ny:5d}{nz:5d}\n")
    for n, s, o in ((nx, sp[2], og[2]), (ny, sp[1], og[1]), (nz, sp[0], og[0])):
        parts.append(_format_block(_bounds_cm(n, s, o), "{:.6f}"))
    chars = np.frombuffer(bytes(range(256)), dtype=np.uint8)
    codes = (idx.astype(np.int64) + 1 + _ZERO).astype(np.uint8)
    for k in range(nz):
        rows = [chars[codes[k, j]].tobytes().decode("ascii") for j in range(ny)]
        parts.append("\n".join(rows) + "\n\n")
    for k in range(nz):
        rows = [" ".join(f"{v:.6g}" for v in rho[k, j]) for j in range(ny)]
        parts.append("\n".join(rows) + "\n\n")
    return atomic_write_text(path, "".join(parts), encoding="ascii")


def _fortran_float(token: str) -> float:
    """A number as Fortran may write it (``1.0D0``: a 'D' exponent), as :func:`float` reads it."""
    return float(token.replace("D", "E").replace("d", "e"))


def _fail(path: Path, what: str) -> InputError:
    return InputError(f"{path}: not a valid .egsphant file ({what})")


def read_egsphant(path: str | Path) -> EgsPhantom:
    """Read a DOSXYZnrc ``.egsphant`` file into ctdose orientation.

    Raises
    ------
    InputError
        Missing file, truncated or malformed content, NaN or negative densities, NaN or
        non-increasing voxel boundaries, or non-uniformly spaced boundaries (ctdose's voxel
        grids are uniform); the message names the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such .egsphant file")
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError:
        raise _fail(path, "not an ASCII text file") from None
    pos = 0

    def next_line(what: str) -> str:
        nonlocal pos
        if pos >= len(lines):
            raise _fail(path, f"ends before the {what}")
        pos += 1
        return lines[pos - 1]

    try:
        nmed = int(next_line("number of media").split()[0])
    except (ValueError, IndexError):
        raise _fail(path, "first line is not the number of media") from None
    if not 1 <= nmed <= MAX_MEDIA:
        raise _fail(path, f"number of media {nmed} outside 1..{MAX_MEDIA}")
    media = [next_line("media names").strip() for _ in range(nmed)]
    if any(not m for m in media):
        raise _fail(path, "empty medium name")
    for i, m in enumerate(media):
        if any(c.isspace() for c in m):  # most likely the ESTEPE line: fewer names than nmed
            raise _fail(path, f"expected {nmed} medium names, but line {i + 2} is {m!r}, not a medium name")
    estepe_line = next_line("ESTEPE line")
    try:
        estepe = np.array([_fortran_float(v) for v in estepe_line.split()])
    except ValueError:
        estepe = None
    if estepe is None or estepe.size != nmed:
        raise _fail(path, f"bad ESTEPE line {estepe_line.strip()!r} (line {pos}; expected {nmed} numbers)")
    voxel_line = next_line("voxel numbers")
    try:
        nx, ny, nz = (int(v) for v in voxel_line.split())
    except ValueError:
        raise _fail(path, f"bad voxel-number line {voxel_line.strip()!r} (line {pos}; expected nx ny nz)") from None
    if min(nx, ny, nz) < 1:
        raise _fail(path, f"voxel numbers {nx} {ny} {nz}")

    # boundaries: free format, nx+1 + ny+1 + nz+1 numbers
    need = nx + ny + nz + 3
    vals: list[float] = []
    while len(vals) < need:
        line = next_line("voxel boundaries")  # its own error: the file ends too soon
        try:
            vals += [_fortran_float(v) for v in line.split()]
        except ValueError:
            raise _fail(path, f"non-numeric voxel boundary in line {pos}: {line.strip()!r}") from None
    if len(vals) != need:
        raise _fail(path, f"expected {need} voxel boundaries, found {len(vals)} on their lines")
    xb = np.array(vals[: nx + 1])
    yb = np.array(vals[nx + 1 : nx + ny + 2])
    zb = np.array(vals[nx + ny + 2 :])
    for name, b in (("x", xb), ("y", yb), ("z", zb)):
        problem = _bounds_problem(b)
        if problem == "are not increasing":
            raise _fail(path, f"{name} boundaries are not increasing (do the voxel numbers {nx} {ny} {nz} match "
                              "the boundary lines?)")
        if problem:
            raise _fail(path, f"{name} boundaries {problem}")
        d = (b[-1] - b[0]) / (b.size - 1)
        if np.max(np.abs(b - (b[0] + d * np.arange(b.size)))) > _UNIFORM_TOLERANCE_VOXELS * d:
            w = np.diff(b)
            raise InputError(
                f"{path}: non-uniform {name} voxel boundaries (voxel widths {w.min():g} to {w.max():g} cm) are not "
                "supported: ctdose needs a uniform voxel grid"
            )
    if len(lines) - pos < ny * nz:  # before allocating nx*ny*nz voxels
        raise _fail(path, f"expected {ny * nz} media rows for {nx}x{ny}x{nz} voxels, found {len(lines) - pos} lines")

    idx = np.empty((nz, ny, nx), dtype=np.uint8)
    for k in range(nz):
        for j in range(ny):
            row = next_line("media array")
            if k > 0 and j == 0 and row.strip() == "":
                row = next_line("media array")
            if len(row.rstrip()) != nx:
                raise _fail(path, f"media row (j={j}, k={k}) has {len(row.rstrip())} characters, expected {nx}")
            codes = np.frombuffer(row[:nx].encode("ascii"), dtype=np.uint8).astype(np.int64) - _ZERO
            if codes.min() < 1 or codes.max() > nmed:
                raise _fail(path, f"medium number outside 1..{nmed} in row (j={j}, k={k})")
            idx[k, j] = codes - 1
    # densities: free format after the media block
    rest = " ".join(lines[pos:]).split()
    if len(rest) < nx * ny * nz:
        raise _fail(path, f"expected {nx * ny * nz} densities, found {len(rest)}")
    try:
        rho = np.array(rest[: nx * ny * nz], dtype=np.float64)
    except ValueError:  # 'D' exponents, or not numbers
        try:
            rho = np.array([_fortran_float(v) for v in rest[: nx * ny * nz]], dtype=np.float64)
        except ValueError:
            raise _fail(path, "non-numeric density") from None
    if len(rest) > nx * ny * nz:
        raise _fail(path, f"{len(rest) - nx * ny * nz} values after the density array")
    rho = rho.reshape(nz, ny, nx).astype(np.float32)
    if not np.all(np.isfinite(rho)):
        k, j, i = np.argwhere(~np.isfinite(rho))[0]
        raise _fail(path, f"density {rho[k, j, i]} at voxel (i={i}, j={j}, k={k}); densities must be finite")
    if rho.min() < 0:
        k, j, i = np.argwhere(rho < 0)[0]
        raise _fail(path, f"negative density {rho[k, j, i]:g} g/cm3 at voxel (i={i}, j={j}, k={k})")
    return EgsPhantom(
        media=media,
        estepe=estepe,
        media_index=idx,
        density_g_cm3=rho,
        x_bounds_cm=xb,
        y_bounds_cm=yb,
        z_bounds_cm=zb,
    )


def egsphant_from_case(
    case,
    path: str | Path,
    density_set: str = "paper",
    medium_of_label: Sequence[str] | None = None,
    pegs_names: dict[str, str] | None = None,
) -> Path:
    """Write a store case (``labels`` + ``spacing_mm``/``origin_mm``) as ``.egsphant``.

    Media are those of the labels present (``ctdose/data/organs.csv``), with the densities of
    ``density_set``. ``pegs_names`` optionally renames media to the user's PEGS4 data sets
    (for example ``{"muscle": "MUSCLE_SKELETAL_ICRP"}``).
    """
    from ..materials import get_medium, medium_index_map
    from ..materials import medium_of_label as organs_medium_of_label

    labels = np.asarray(case["labels"].values)
    lut = list(medium_of_label) if medium_of_label is not None else organs_medium_of_label()
    present = sorted({int(v) for v in np.unique(labels)})
    bad = [v for v in present if v >= len(lut) or not lut[v]]
    if bad:
        raise InputError(f"case {case.attrs.get('case_id', '?')}: label ids {bad} have no medium")
    names = sorted({lut[v] for v in present})
    idx = medium_index_map(labels, names, lut)
    dens = np.array([get_medium(n, density_set).density_g_cm3 for n in names])[idx]
    out_names = [(pegs_names or {}).get(n, n) for n in names]
    return write_egsphant(path, idx, dens, out_names, case.attrs["spacing_mm"], case.attrs["origin_mm"])
