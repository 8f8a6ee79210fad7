"""Angular tube-current modulation: the tube current over the gantry angle.

Besides following the patient along z (:mod:`ctdose.physics.tube_current`), automatic exposure
control varies the current within each rotation: more where the patient is thick (lateral
projections through the shoulders and pelvis), less where it is thin (anterior-posterior).
The image header records only the mean over a rotation, so the angular part has to be given
(a scanner's log or raw data, as a table) or modelled.

:class:`AngularModulation` holds relative currents on a grid of gantry angles for each z, with
mean 1 over every rotation; :class:`ctdose.physics.sources.CTSource` multiplies the tube load of
each source position with it at the same total mAs, so doses stay per mAs of one rotation at
the protocol's reference current.

:func:`angular_modulation_from_geometry` models it from the patient's own attenuation: the
current at gantry angle ``a`` and position ``z`` is proportional to ``exp(k p(a, z))``, where
``p`` is the line integral of the linear attenuation coefficient at ``energy_kev`` along the
central ray through the isocentre. ``k = 1/2`` (the default) makes the current proportional to
the square root of the attenuation, the modulation that minimises the image noise for a given
mAs (M. Gies, W. A. Kalender, H. Wolf, C. Suess, Med. Phys. 26 (1999) 2235); ``k = 0`` is no
modulation. Scanners implement their own variants (with limits on the modulation depth); the
model is not any vendor's.

Gantry angles follow :mod:`ctdose.physics.scanner`: the focal spot at ``(D sin a, -D cos a)``,
the central ray along ``(-sin a, cos a, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.number_csv import read_number_columns

__all__ = ["AngularModulation", "DEFAULT_STRENGTH", "angular_modulation_from_geometry", "read_angular_modulation_csv"]

#: Exponent ``k`` of :func:`angular_modulation_from_geometry`: current proportional to the
#: attenuation to the power 1/2 (Gies et al. 1999).
DEFAULT_STRENGTH = 0.5
#: Effective photon energy (keV) of the attenuation model: about the mean energy of a 120 kVp
#: CT spectrum behind its filtration.
DEFAULT_ENERGY_KEV = 60.0
#: Gantry angles per rotation of a modelled modulation.
DEFAULT_ANGLES = 72


@dataclass(frozen=True, eq=False)
class AngularModulation:
    """Relative tube current over the gantry angle at positions along z.

    Parameters
    ----------
    z_mm : array (n_z,)
        Positions along the table (mm), strictly increasing; beyond the ends the first or last
        row holds.
    factor : array (n_z, n_a)
        Relative current at the gantry angles ``2 pi j / n_a`` (j = 0 .. n_a - 1), >= 0;
        each row is scaled to mean 1 (a row of zeros is refused).
    source : str
        Where the numbers come from.

    Examples
    --------
    >>> m = AngularModulation([0.0], [[1.0, 3.0]], "example")
    >>> m.factor.tolist()
    [[0.5, 1.5]]
    >>> float(m(np.array([np.pi / 2]), np.array([0.0]))[0])  # halfway between the two angles
    1.0
    """

    z_mm: np.ndarray
    factor: np.ndarray
    source: str

    def __post_init__(self) -> None:
        z = np.atleast_1d(np.asarray(self.z_mm, dtype=np.float64))
        f = np.asarray(self.factor, dtype=np.float64)
        where = f"angular modulation ({self.source})"
        if z.ndim != 1 or f.ndim != 2 or f.shape[0] != z.size or f.shape[1] < 2:
            raise InputError(f"{where}: factor must be (n_z, n_angles) with n_angles >= 2 and one row per z "
                             f"(got z {z.shape}, factor {f.shape})")
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(f))):
            raise InputError(f"{where}: positions and factors must be finite numbers")
        if np.any(np.diff(z) <= 0):
            raise InputError(f"{where}: z_mm must be strictly increasing")
        if np.any(f < 0) or np.any(f.max(axis=1) <= 0):
            raise InputError(f"{where}: factors must be >= 0 with a positive one at every z")
        object.__setattr__(self, "z_mm", z)
        object.__setattr__(self, "factor", f / f.mean(axis=1, keepdims=True))

    @property
    def n_angles(self) -> int:
        return int(self.factor.shape[1])

    def apply(self, positions):
        """``positions`` (:class:`ctdose.physics.scanner.SourcePositions`) with each tube load
        multiplied by the factor at its angle and z, then all scaled back to the same total
        mAs (doses stay per mAs of one rotation at the protocol's reference current).

        Raises
        ------
        InputError
            The factor is zero at every position with a load.
        """
        mas = np.asarray(positions.mas, dtype=np.float64)
        if not mas.sum() > 0:  # no load to shape (the caller names that)
            return positions
        modulated = mas * self(np.asarray(positions.angle_rad), np.asarray(positions.z_mm))
        if not modulated.sum() > 0:
            raise InputError(f"angular modulation ({self.source}): zero at every source position of the scan")
        return replace(positions, mas=modulated * (mas.sum() / modulated.sum()))

    def __call__(self, angle_rad: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Relative current at gantry angles ``angle_rad`` and positions ``z_mm`` (arrays of one
        shape): linear in the angle (periodic) and in z (constant beyond the ends)."""
        a = np.asarray(angle_rad, dtype=np.float64)
        z = np.asarray(z_mm, dtype=np.float64)
        n_a = self.n_angles
        pa = np.mod(a, 2.0 * math.pi) * (n_a / (2.0 * math.pi))
        ja = np.floor(pa).astype(np.int64) % n_a
        fa = pa - np.floor(pa)
        ja1 = (ja + 1) % n_a
        if self.z_mm.size == 1:
            row = self.factor[0]
            return row[ja] * (1.0 - fa) + row[ja1] * fa
        pz = np.interp(z, self.z_mm, np.arange(self.z_mm.size, dtype=np.float64))
        jz = np.minimum(np.floor(pz).astype(np.int64), self.z_mm.size - 2)
        fz = pz - jz
        at = (lambda jz_: self.factor[jz_, ja] * (1.0 - fa) + self.factor[jz_, ja1] * fa)
        return at(jz) * (1.0 - fz) + at(jz + 1) * fz


def angular_modulation_from_geometry(
    geometry, strength: float = DEFAULT_STRENGTH, energy_kev: float = DEFAULT_ENERGY_KEV,
    n_angles: int = DEFAULT_ANGLES, max_depth: float | None = None,
) -> AngularModulation:
    """Angular modulation that follows a voxel geometry's attenuation (see the module docstring).

    Parameters
    ----------
    geometry : ctdose.physics.mc.VoxelGeometry
        The patient; the gantry's axis is z through x = y = 0 (the isocentre).
    strength : float
        Exponent ``k`` (>= 0): current proportional to ``exp(k p)``.
    energy_kev : float
        Energy of the linear attenuation coefficients (keV).
    n_angles : int
        Gantry angles per rotation (>= 4).
    max_depth : float, optional
        Largest ratio of the highest to the lowest current within a rotation (>= 1), as
        scanners limit it: lower currents are raised to ``1/max_depth`` of the highest. None:
        no limit (through shoulders and arms the model's ratio reaches tens).

    Returns
    -------
    AngularModulation
        One row per slice of the geometry (its voxel centres in z).

    Raises
    ------
    InputError
        A negative or non-finite strength, fewer than 4 angles, a depth limit below 1, an
        energy outside the tables.

    Examples
    --------
    A water ellipse twice as wide as deep gets most current from the side (a = 90 degrees):

    >>> from ctdose.materials import get_medium
    >>> from ctdose.physics.mc import VoxelGeometry
    >>> y, x = np.mgrid[-20:20, -40:40] * 5.0 + 2.5
    >>> body = ((x / 150.0) ** 2 + (y / 75.0) ** 2 <= 1.0)[None].astype(np.uint8)
    >>> geo = VoxelGeometry(body, body.astype(np.float32), [get_medium("air"), get_medium("water")],
    ...                     (5.0, 5.0, 5.0), (0.0, -97.5, -197.5))
    >>> m = angular_modulation_from_geometry(geo, n_angles=4)
    >>> int(np.argmax(m.factor[0]))  # angles 0, 90, 180, 270 degrees
    1
    """
    from scipy.ndimage import map_coordinates

    from .xsection import mass_coefficients

    k = float(strength)
    if not (math.isfinite(k) and k >= 0):
        raise InputError(f"angular modulation: strength must be a finite number >= 0, got {strength!r}")
    if int(n_angles) != n_angles or n_angles < 4:
        raise InputError(f"angular modulation: n_angles must be an integer >= 4, got {n_angles!r}")
    n_angles = int(n_angles)
    if max_depth is not None and not (math.isfinite(float(max_depth)) and float(max_depth) >= 1.0):
        raise InputError(f"angular modulation: max_depth must be a number >= 1 or None, got {max_depth!r}")
    mu_rho = np.array([mass_coefficients(m, np.array([float(energy_kev)]))["total"][0] for m in geometry.media])
    mu_per_mm = (mu_rho[np.asarray(geometry.media_index)] * np.asarray(geometry.density_g_cm3, np.float64)
                 / 10.0)  # (z, y, x); cm^2/g x g/cm^3 = 1/cm
    dz, dy, dx = (float(v) for v in geometry.spacing_mm)
    z0, y0, x0 = (float(v) for v in geometry.origin_mm)
    nz, ny, nx = mu_per_mm.shape
    # the central ray through (0, 0): t along (-sin a, cos a), sampled at half the smallest edge
    # over the grid's largest distance from the axis
    corners_x = np.array([x0 - dx / 2, x0 + (nx - 0.5) * dx])
    corners_y = np.array([y0 - dy / 2, y0 + (ny - 0.5) * dy])
    reach = float(np.sqrt(np.max(np.abs(corners_x)) ** 2 + np.max(np.abs(corners_y)) ** 2))
    step = 0.5 * min(dx, dy)
    t = np.arange(-reach, reach + step, step)
    a = 2.0 * math.pi * np.arange(n_angles) / n_angles
    px = -np.sin(a)[:, None] * t[None, :]  # (n_a, n_t)
    py = np.cos(a)[:, None] * t[None, :]
    ix = np.broadcast_to((px - x0) / dx, (nz,) + px.shape)
    iy = np.broadcast_to((py - y0) / dy, (nz,) + px.shape)
    iz = np.broadcast_to(np.arange(nz, dtype=np.float64)[:, None, None], ix.shape)
    values = map_coordinates(mu_per_mm, [iz, iy, ix], order=0, mode="constant", cval=0.0)
    p = values.sum(axis=2) * step  # (n_z, n_a): line integrals
    log_f = k * (p - p.max(axis=1, keepdims=True))  # exp(k p), scaled against overflow
    limit = ""
    if max_depth is not None:
        log_f = np.maximum(log_f, -math.log(float(max_depth)))
        limit = f", depth at most {float(max_depth):g}"
    z = z0 + dz * np.arange(nz)
    return AngularModulation(z, np.exp(log_f), f"attenuation model, strength {k:g} at {energy_kev:g} keV{limit}")


#: Columns of an angular-modulation CSV file (:func:`read_angular_modulation_csv`).
CSV_COLUMNS = ("z_mm", "angle_deg", "tube_current_ma")


def read_angular_modulation_csv(path: str | Path) -> AngularModulation:
    """Read an angular modulation from a CSV file with columns ``z_mm``, ``angle_deg`` and
    ``tube_current_ma`` (one row per view, as a scanner's log or raw data give it; ``#`` lines
    are comments; any order).

    Gantry angles follow :mod:`ctdose.physics.scanner` (degrees, any range: taken modulo 360).
    At each z the currents are interpolated periodically in the angle onto as many equally
    spaced angles as that z has views at most; only their shape is used (each z is scaled to
    mean 1).

    Raises
    ------
    InputError
        Missing file or column, text that is not a number, a z with fewer than two distinct
        angles, or a table :class:`AngularModulation` refuses; the message names the file.
    """
    path = Path(path)
    values = read_number_columns(path, CSV_COLUMNS, "angular-modulation")
    z_all, angle_all, current_all = (values[c] for c in CSV_COLUMNS)
    if z_all.size == 0 or not all(np.all(np.isfinite(v)) for v in values.values()):
        raise InputError(f"{path}: no rows, or values that are not finite numbers")
    z_values = np.unique(z_all)
    per_z = []
    for z in z_values:
        sel = z_all == z
        angle = np.mod(angle_all[sel], 360.0)
        angle, first = np.unique(angle, return_index=True)
        if angle.size < 2:
            raise InputError(f"{path}: z = {z:g} mm has fewer than two distinct gantry angles")
        per_z.append((angle, current_all[sel][first]))
    n_angles = max(a.size for a, _ in per_z)
    grid = 360.0 * np.arange(n_angles) / n_angles
    factor = np.array([np.interp(grid, a, c, period=360.0) for a, c in per_z])
    return AngularModulation(z_values, factor, path.name)
