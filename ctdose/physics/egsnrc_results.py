"""EGSnrc (DOSXYZnrc) dose results as a case's Monte Carlo ground truth.

The paper's ground truth is EGSnrc with a validated CT source. A user who has such results
puts them beside the cohort as ``<mc.egsnrc_dir>/<case_id>.3ddose``, each computed on the grid
of the case's ``.egsphant`` (:func:`ctdose.io.egsphant.egsphant_from_case`, notebook 02), and
the cohort run (:func:`ctdose.physics.cohort_mc.run_cohort_mc`) stores that dose as the case's
``dose_mc`` instead of running the compendium's own Monte Carlo; cases without a file run the
compendium's Monte Carlo as before, and the case attribute ``mc_engine`` says which gave the
dose.

Units. DOSXYZnrc gives dose per incident particle (Gy). With ``mc.egsnrc_particles_per_mas``,
the number of photons per mAs that the EGSnrc source's particles stand for (the calibration
of the user's source model, for instance from a measured air kerma), the dose per mAs of one
rotation that the store holds is

    D [Gy / mAs of one rotation] = D_file [Gy / particle] x particles per mAs
                                   x (total mAs of the scan) / (mAs of one rotation),

the same normalisation as :class:`ctdose.physics.sources.CTSource` applies to its own photons,
with the scan of the case's protocol (:func:`ctdose.physics.scanner.case_protocol`). With
``mc.egsnrc_particles_per_mas: null`` the files are taken to hold Gy per mAs of one rotation
already. The files' relative uncertainties become ``dose_mc_sigma``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import as_real, number_from_text
from ..errors import ConfigError, InputError
from ..io.egsphant import _bounds_cm
from ..io.threeddose import read_3ddose

__all__ = ["EGSNRC_ENGINE", "EGSNRC_FILE_ATTR", "case_dose_from_3ddose", "egsnrc_file", "egsnrc_settings",
           "gy_per_mas_per_unit"]

#: How the case attribute ``mc_engine`` begins for a dose read from EGSnrc (figure captions
#: count these cases).
EGSNRC_ENGINE = "EGSnrc"

#: Case attribute with the record of the ``.3ddose`` a dose was read from
#: (:func:`ctdose.provenance.recorded_file_digest`: digests of its size and time and of its
#: bytes), so that a re-run does not read an unchanged file again to tell. Its ``mc_`` prefix
#: makes a dose computed again drop it with the other MC attributes.
EGSNRC_FILE_ATTR = "mc_egsnrc_file_record"

#: Largest difference (cm) between a file's voxel boundaries and the case's: the precision
#: with which DOSXYZnrc echoes the phantom's boundaries, far below a voxel.
_BOUNDS_TOLERANCE_CM = 1e-3


def egsnrc_settings(cfg: Mapping[str, Any]) -> tuple[Path | None, float | None]:
    """The profile's ``mc.egsnrc_dir`` (null: none) and ``mc.egsnrc_particles_per_mas`` (null:
    the files hold Gy per mAs of one rotation), checked.

    Raises
    ------
    ConfigError
        A folder that does not exist, or particles per mAs that is not a number > 0; the
        message names the profile and the key.
    """
    mc = cfg.get("mc", {}) or {}
    where = f"profile {cfg['name']!r}: mc." if cfg.get("name") else "mc."
    folder = mc.get("egsnrc_dir")
    path = None
    if folder not in (None, ""):
        if not isinstance(folder, (str, Path)):
            raise ConfigError(f"{where}egsnrc_dir must be a folder or null, got {folder!r}")
        path = Path(folder)
        if not path.is_dir():
            raise ConfigError(f"{where}egsnrc_dir: no such folder {str(path)!r}")
    raw = mc.get("egsnrc_particles_per_mas")
    value = number_from_text(raw)
    particles = None if value is None else as_real(value)
    if value is not None and (particles is None or particles <= 0):
        raise ConfigError(f"{where}egsnrc_particles_per_mas must be a number > 0 or null, got {raw!r}")
    return path, particles


def egsnrc_file(folder: Path | None, case_id: str) -> Path | None:
    """``<folder>/<case_id>.3ddose`` where it exists, else None."""
    if folder is None:
        return None
    path = Path(folder) / f"{case_id}.3ddose"
    return path if path.is_file() else None


def gy_per_mas_per_unit(particles_per_mas: float | None, total_mas: float, mas_per_rotation: float) -> float:
    """Factor from a ``.3ddose``'s unit to Gy per mAs of one rotation (module docstring): 1 when
    ``particles_per_mas`` is None (the file holds that unit already)."""
    if particles_per_mas is None:
        return 1.0
    return float(particles_per_mas) * float(total_mas) / float(mas_per_rotation)


def case_dose_from_3ddose(
    path: str | Path,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
    gy_per_mas_per_unit: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``.3ddose`` on a case's grid as (dose, 1 sd), both float32 ``[z, y, x]`` in Gy per mAs.

    Parameters
    ----------
    path : the file
    shape : (nz, ny, nx) of the case
    spacing_mm, origin_mm : the case's voxel size and the centre of voxel [0, 0, 0] (z, y, x), mm
    gy_per_mas_per_unit : factor from the file's unit (:func:`gy_per_mas_per_unit`)

    Raises
    ------
    InputError
        A file :func:`ctdose.io.threeddose.read_3ddose` refuses, a negative dose, or a grid
        that is not the case's (other numbers of voxels, or boundaries more than
        ``_BOUNDS_TOLERANCE_CM`` apart); the message names the file.
    """
    path = Path(path)
    result = read_3ddose(path)
    if tuple(result.shape) != tuple(int(n) for n in shape):
        nz, ny, nx = result.shape
        cz, cy, cx = (int(n) for n in shape)
        raise InputError(f"{path}: {nx} x {ny} x {nz} voxels (x, y, z), the case has {cx} x {cy} x {cz}; run "
                         "DOSXYZnrc on the case's .egsphant (ctdose.io.egsphant.egsphant_from_case)")
    for axis, bounds, n, spacing, origin in zip("zyx", result._bounds_zyx(), shape, spacing_mm, origin_mm):
        case_bounds = _bounds_cm(int(n), float(spacing), float(origin))
        off = float(np.max(np.abs(bounds - case_bounds)))
        if off > _BOUNDS_TOLERANCE_CM:
            raise InputError(f"{path}: {axis} voxel boundaries differ from the case's by up to {off:.4g} cm; run "
                             "DOSXYZnrc on the case's .egsphant (ctdose.io.egsphant.egsphant_from_case)")
    if np.any(result.dose < 0):
        raise InputError(f"{path}: negative dose {result.dose.min():g}")
    dose = result.dose * float(gy_per_mas_per_unit)
    return dose.astype(np.float32), (dose * result.rel_uncertainty).astype(np.float32)
