"""CT scanner model and scan protocol after the paper (section 2.2, GE Optima CT 660).

Geometry convention (patient coordinates of ``docs/architecture.md``: +x patient left,
+y posterior, +z superior; isocentre at x = y = 0):

* The focal spot at gantry angle ``a`` (radians) sits at
  ``(x, y) = (D sin a, -D cos a)`` with ``D = source_to_isocentre_mm``; ``a = 0`` is anterior
  (above the supine patient, y negative) and ``a`` increases with time (rotation from anterior
  towards the patient's left, ``+x``).
* The central ray points from the focal spot through the isocentre:
  direction ``(-sin a, cos a, 0)``.
* The fan angle ``gamma`` is measured in the gantry plane from the central ray, positive
  towards the direction of rotation ``(cos a, sin a, 0)``. The fan covers the field of view
  ``fan_fov_mm`` at the isocentre: ``|gamma| <= asin(fan_fov_mm / 2 / D)``.
* The z collimation ``collimation_mm`` is the nominal beam width at the isocentre; the
  beam diverges in z from the focal spot: half-angle ``atan(collimation_mm / 2 / D)``.
* The bowtie filter is an aluminium-equivalent thickness vs ``|gamma|``; its transmission
  multiplies the fluence of the spectrum (which is the central-ray spectrum, flat filtration
  included).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._data import read_table
from ..config import as_int, number_from_text
from ..errors import ConfigError, InputError
from ..io.number_csv import read_number_columns
from ..materials import filter_medium
from .angular_modulation import DEFAULT_STRENGTH as ANGULAR_DEFAULT_STRENGTH
from .spectrum import Spectrum, spectrum_from_csv, spekpy_spectrum
from .xsection import default_energy_grid, mass_coefficients

__all__ = [
    "Bowtie",
    "CTScanner",
    "Protocol",
    "SourcePositions",
    "bowtie_from_csv",
    "case_protocol",
    "generic_body_bowtie",
    "protocol_for_case",
    "scanner_from_profile",
]

_MM_PER_CM = 10.0
_MM2_PER_M2 = 1.0e6
GENERIC_BOWTIE_TABLE = "bowtie_generic_body.csv"

#: scanner defaults (GE Optima CT 660 geometry; generic 120 kVp tube, see profiles)
DEFAULT_SCANNER = {
    "kvp": 120.0,
    "anode_angle_deg": 7.0,
    "filtration_mm_al": 7.0,
    "source_to_isocentre_mm": 541.0,
    "fan_fov_mm": 500.0,
    "collimation_mm": 40.0,
    "bowtie": "generic_body",
    "spectrum_file": None,
    "mode": "axial",
    "pitch": 1.0,
    "start_angle_deg": 0.0,
    "tube_current_ma": 200.0,
    "rotation_time_s": 1.0,
    "projections_per_rotation": 16,
    "rotation": "continuous",
    "tube_current_modulation": "none",
    "angular_modulation": "none",
    "angular_modulation_strength": ANGULAR_DEFAULT_STRENGTH,
    "angular_modulation_max_depth": None,
}

#: Values of the profile key ``scanner.angular_modulation``: ``none``, the current is constant
#: within each rotation; ``model``, it follows each case's own attenuation over the gantry
#: angle (:func:`ctdose.physics.angular_modulation.angular_modulation_from_geometry` with
#: ``angular_modulation_strength`` and ``angular_modulation_max_depth``), at the same mAs.
ANGULAR_MODULATIONS = ("none", "model")

#: Values of the profile key ``scanner.tube_current_modulation``: ``none``, a constant
#: ``tube_current_ma`` for every case (the paper's normalisation); ``ct``, each case that
#: carries its CT's tube-current record (:mod:`ctdose.physics.tube_current`) follows it.
TUBE_CURRENT_MODULATIONS = ("none", "ct")
#: How :func:`case_protocol` begins its line for a case that follows its own record (the case
#: attribute ``mc_tube_current``; figure captions look for it).
MODULATED_TUBE_CURRENT = "the case's tube-current modulation"


# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Bowtie:
    """Bowtie filter as aluminium-equivalent thickness vs fan angle (symmetric in ``gamma``).

    Parameters
    ----------
    fan_angle_rad : ndarray, shape (n,)
        Increasing fan angles >= 0 (radians) where the thickness is given.
    al_thickness_mm : ndarray, shape (n,)
        Aluminium-equivalent thickness in mm (>= 0). Linear interpolation in between;
        beyond the last angle the last value.
    description : str
    """

    fan_angle_rad: np.ndarray
    al_thickness_mm: np.ndarray
    description: str = ""
    _mu_al_per_mm: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = np.asarray(self.fan_angle_rad, dtype=np.float64).ravel()
        t = np.asarray(self.al_thickness_mm, dtype=np.float64).ravel()
        where = f" ({self.description})" if self.description else ""
        if a.size == 0:
            raise InputError(f"bowtie{where}: no fan angles (an empty profile)")
        if a.shape != t.shape:
            raise InputError(f"bowtie{where}: angle and thickness must be 1-D arrays of equal length")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(t))):
            raise InputError(f"bowtie{where}: NaN or infinite values")
        if np.any(a < 0) or np.any(np.diff(a) <= 0):
            raise InputError(f"bowtie{where}: fan angles must be >= 0 and strictly increasing")
        if a.max() >= math.pi / 2:
            raise InputError(f"bowtie{where}: fan angles must be below 90 degrees (got up to "
                             f"{math.degrees(a.max()):g}; a fan angle is measured from the central ray)")
        if np.any(t < 0):
            raise InputError(f"bowtie{where}: negative thickness")
        self.fan_angle_rad, self.al_thickness_mm = a, t

    @classmethod
    def flat(cls) -> Bowtie:
        """No bowtie (zero thickness everywhere)."""
        return cls(np.array([0.0]), np.array([0.0]), "none")

    def thickness_mm(self, angle_rad: np.ndarray | float) -> np.ndarray:
        """Aluminium-equivalent thickness (mm) at fan angle(s) ``angle_rad`` (sign ignored)."""
        g = np.abs(np.asarray(angle_rad, dtype=np.float64))
        if self.fan_angle_rad.size == 1:
            return np.full_like(g, self.al_thickness_mm[0])
        return np.interp(g, self.fan_angle_rad, self.al_thickness_mm)

    def _mu_table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._mu_al_per_mm is None:
            al = filter_medium("aluminium")
            e = default_energy_grid()
            self._mu_al_per_mm = mass_coefficients(al, e)["total"] * al.density_g_cm3 / _MM_PER_CM
        return default_energy_grid(), self._mu_al_per_mm

    def mu_al_per_mm(self, energy_kev: np.ndarray | float) -> np.ndarray:
        """Linear attenuation coefficient of aluminium (1/mm), log-log interpolated."""
        grid, mu = self._mu_table()
        e = np.asarray(energy_kev, dtype=np.float64)
        return np.exp(np.interp(np.log(e), np.log(grid), np.log(mu)))

    def transmission(self, energy_kev: np.ndarray | float, angle_rad: np.ndarray | float) -> np.ndarray:
        """Primary transmission exp(-mu_Al(E) t(gamma)); arguments broadcast elementwise.

        Use ``energy_kev[:, None], angle_rad[None, :]`` for an (energy x angle) table.
        """
        return np.exp(-self.mu_al_per_mm(energy_kev) * self.thickness_mm(angle_rad))


def bowtie_from_csv(path: str | Path) -> Bowtie:
    """Read a bowtie profile: CSV columns ``fan_angle_deg, al_thickness_mm`` (``#`` comments).

    Negative angles are allowed if the profile is symmetric; only ``|angle|`` is used.
    """
    path = Path(path)
    values = read_number_columns(path, _BOWTIE_COLUMNS, "bowtie")
    return _bowtie_from_columns(values[_BOWTIE_COLUMNS[0]], values[_BOWTIE_COLUMNS[1]], f"file {path}")


#: Columns of a bowtie profile: fan angle (degrees) and aluminium-equivalent thickness (mm).
_BOWTIE_COLUMNS = ("fan_angle_deg", "al_thickness_mm")


def _bowtie_from_columns(a: np.ndarray, t: np.ndarray, where: str) -> Bowtie:
    """A bowtie from fan angles ``a`` (degrees) and thicknesses ``t`` (mm); ``where`` names
    the source in messages."""
    if np.any(a < 0):
        neg, pos = a < 0, a >= 0
        if not np.any(pos):
            raise InputError(f"bowtie {where}: no fan angle >= 0 (negative angles only mirror the profile at >= 0)")
        if not np.allclose(np.interp(-a[neg], a[pos], t[pos]), t[neg], atol=1e-3):
            raise InputError(f"bowtie {where}: asymmetric profiles are not supported")
        a, t = a[pos], t[pos]
    order = np.argsort(a)
    return Bowtie(np.deg2rad(a[order]), t[order], where)


def generic_body_bowtie() -> Bowtie:
    """The generic body bowtie shipped in ``ctdose/data/bowtie_generic_body.csv``."""
    table = read_table(GENERIC_BOWTIE_TABLE)
    return _bowtie_from_columns(*(table[c].to_numpy(np.float64) for c in _BOWTIE_COLUMNS),
                                f"ctdose/data/{GENERIC_BOWTIE_TABLE}")


# ---------------------------------------------------------------------------------------------
#: Longest scan a :class:`Protocol` takes (mm): a whole-body scan is about 2 m; beyond this the
#: source positions alone would not fit in memory at small pitches.
MAX_SCAN_LENGTH_MM = 5000.0

#: Most source positions per rotation a :class:`Protocol` takes (a real scanner reads about
#: 1000-5000 views per rotation; the discretisation needs far fewer, see ``projections_per_rotation``).
MAX_PROJECTIONS_PER_ROTATION = 100_000


@dataclass
class CTScanner:
    """Geometry, spectrum and bowtie of a CT scanner.

    Parameters
    ----------
    spectrum : Spectrum
        Central-ray spectrum per mAs at 1 m (flat filtration included, bowtie excluded).
    bowtie : Bowtie
    source_to_isocentre_mm : float
        Focal spot to isocentre distance (GE Optima CT 660: 541 mm).
    fan_fov_mm : float
        Diameter of the field of view covered by the fan at the isocentre. A fan given by its
        half-angle ``gamma`` (a field of half-width ``D tan(gamma)`` on the plane through the
        isocentre) has ``fan_fov_mm = 2 D sin(gamma)``.
    collimation_mm : float
        Nominal total beam width in z at the isocentre.
    """

    spectrum: Spectrum
    bowtie: Bowtie = field(default_factory=Bowtie.flat)
    source_to_isocentre_mm: float = 541.0
    fan_fov_mm: float = 500.0
    collimation_mm: float = 40.0

    def __post_init__(self) -> None:
        d, fov, col = self.source_to_isocentre_mm, self.fan_fov_mm, self.collimation_mm
        for name, v in (("source_to_isocentre_mm", d), ("fan_fov_mm", fov), ("collimation_mm", col)):
            if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise InputError(f"CTScanner: {name} must be a positive number, got {v!r}")
            if not isinstance(v, (int, float)):  # a numpy scalar: its precision would carry into the geometry
                setattr(self, name, float(v))
        d, fov, col = self.source_to_isocentre_mm, self.fan_fov_mm, self.collimation_mm
        if fov / 2 >= d:
            raise InputError(f"CTScanner: fan_fov_mm/2 = {fov / 2} must be below the source distance {d}")
        if col / 2 >= d:  # a cone of 45 degrees or more in z: no CT scanner, and no sampler for it
            raise InputError(f"CTScanner: collimation_mm/2 = {col / 2} must be below the source distance {d}")

    def fan_half_angle_rad(self) -> float:
        """In-plane half-angle of the fan, asin(FOV/2 / D)."""
        return math.asin(self.fan_fov_mm / 2.0 / self.source_to_isocentre_mm)

    def z_half_angle_rad(self) -> float:
        """Half-angle of the beam divergence in z, atan(collimation/2 / D)."""
        return math.atan(self.collimation_mm / 2.0 / self.source_to_isocentre_mm)

    def source_xy_mm(self, angle_rad: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Focal spot (x, y) in mm at gantry angle(s): (D sin a, -D cos a)."""
        a = np.asarray(angle_rad, dtype=np.float64)
        d = self.source_to_isocentre_mm
        return d * np.sin(a), -d * np.cos(a)

    def photons_per_mas_per_sr(self) -> float:
        """Photons emitted per mAs per steradian on the central ray (before the bowtie).

        Fluence at 1 m per mm^2 times (1000 mm)^2 per steradian; requires an absolute spectrum.
        """
        return self.spectrum.total_fluence_per_mas_per_mm2_at_1m * _MM2_PER_M2

    def air_kerma_gy_per_mas_at_isocentre(self, fan_angle_rad: float = 0.0) -> float:
        """Free-in-air kerma per mAs at the isocentre distance on the ray at ``fan_angle_rad``.

        Counts the bowtie and the inverse-square law along the ray (distance D / cos(gamma)
        to the plane through the isocentre, i.e. the fluence at distance D on the ray).
        """
        t = self.bowtie.transmission(self.spectrum.energy_kev, fan_angle_rad)
        filtered = Spectrum(
            self.spectrum.energy_kev,
            self.spectrum.fluence_per_mas_per_mm2_at_1m * t,
            self.spectrum.description,
            self.spectrum.absolute,
        )
        return filtered.air_kerma_gy_per_mas(self.source_to_isocentre_mm)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SourcePositions:
    """Discretised source trajectory: one entry per source position.

    Attributes
    ----------
    angle_rad : ndarray, shape (n,)
        Gantry angle (see the module docstring for the convention).
    z_mm : ndarray, shape (n,)
        z of the focal spot (= centre of the beam in z), mm.
    mas : ndarray, shape (n,)
        Tube load (mAs) attributed to the position; sums to the protocol's total mAs.
    angle_width_rad, z_width_mm : ndarray, shape (n,), optional
        Continuous rotation: the gantry-angle interval (rad) and the z travel (mm) that the
        position stands for, centred on it; the tube emits uniformly over the interval.
        None (default) or zeros: a point projection at exactly ``angle_rad``, ``z_mm``.
    """

    angle_rad: np.ndarray
    z_mm: np.ndarray
    mas: np.ndarray
    angle_width_rad: np.ndarray | None = None
    z_width_mm: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.angle_rad.size)

    @property
    def total_mas(self) -> float:
        return float(self.mas.sum())

    def source_xyz_mm(self, scanner: CTScanner) -> np.ndarray:
        """Focal spot positions, shape (n, 3), columns (x, y, z) in mm."""
        x, y = scanner.source_xy_mm(self.angle_rad)
        return np.stack([x, y, self.z_mm], axis=1)


@dataclass
class Protocol:
    """A CT scan protocol.

    Parameters
    ----------
    mode : {"axial", "helical"}
        Axial: full rotations stepped by the collimation to cover ``[z_start_mm, z_end_mm]``
        (the rotation centres are placed symmetrically about the range centre). Helical: the
        beam centre travels continuously from ``z_start_mm`` to ``z_end_mm`` with a table feed
        of ``pitch * collimation`` per rotation.
    z_start_mm, z_end_mm : float
        Scan range (beam centre positions for helical; range to cover for axial).
    pitch : float
        Helical pitch (table feed per rotation / collimation).
    start_angle_deg : float
        Gantry angle of the first projection.
    tube_current_ma : float
    rotation_time_s : float
    projections_per_rotation : int
        Source positions per rotation (the discretisation of the rotation; with
        ``rotation="continuous"`` only the resolution of the tube-current and load bookkeeping).
    current_profile_z_mm, current_profile_ma : sequence of float, optional
        Tube-current modulation along z: mA at z positions (linear interpolation, constant
        beyond the ends). Replaces ``tube_current_ma`` where given.
    rotation : {"continuous", "discrete"}
        Continuous (default): the tube emits throughout the rotation; each photon's gantry
        angle (and, helical, its z) is uniform over its position's interval, as in a real scan.
        Discrete: point projections at the listed angles only (a step-and-shoot
        approximation whose result depends on how the projections fall on the anatomy).
    """

    mode: str = "axial"
    z_start_mm: float = 0.0
    z_end_mm: float = 0.0
    pitch: float = 1.0
    start_angle_deg: float = 0.0
    tube_current_ma: float = 200.0
    rotation_time_s: float = 1.0
    projections_per_rotation: int = 16
    current_profile_z_mm: Sequence[float] | None = None
    current_profile_ma: Sequence[float] | None = None
    rotation: str = "continuous"

    def __post_init__(self) -> None:
        if self.mode not in ("axial", "helical"):
            raise InputError(f"Protocol: mode must be 'axial' or 'helical', got {self.mode!r}")
        if self.rotation not in ("continuous", "discrete"):
            raise InputError(f"Protocol: rotation must be 'continuous' or 'discrete', got {self.rotation!r}")
        for name in ("z_start_mm", "z_end_mm", "start_angle_deg", "pitch", "tube_current_ma", "rotation_time_s",
                     "projections_per_rotation"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise InputError(f"Protocol: {name} must be a number, got {v!r}")
        for name in ("z_start_mm", "z_end_mm", "start_angle_deg", "projections_per_rotation"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise InputError(f"Protocol: {name} must be finite, got {v!r}")
        if self.z_end_mm < self.z_start_mm:
            raise InputError(f"Protocol: z_end_mm {self.z_end_mm} < z_start_mm {self.z_start_mm}")
        if self.z_end_mm - self.z_start_mm > MAX_SCAN_LENGTH_MM:
            raise InputError(f"Protocol: a scan of {self.z_end_mm - self.z_start_mm:g} mm (z_start_mm to z_end_mm) "
                             f"is longer than {MAX_SCAN_LENGTH_MM:g} mm")
        for name in ("pitch", "tube_current_ma", "rotation_time_s"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"Protocol: {name} must be > 0, got {v}")
        n = self.projections_per_rotation
        if int(n) != n or not 1 <= n <= MAX_PROJECTIONS_PER_ROTATION:
            raise InputError(f"Protocol: projections_per_rotation must be an integer from 1 to "
                             f"{MAX_PROJECTIONS_PER_ROTATION}, got {n!r}")
        if (self.current_profile_z_mm is None) != (self.current_profile_ma is None):
            raise InputError("Protocol: give both current_profile_z_mm and current_profile_ma or neither")
        if self.current_profile_z_mm is not None:
            z = np.asarray(self.current_profile_z_mm, dtype=np.float64)
            ma = np.asarray(self.current_profile_ma, dtype=np.float64)
            if z.ndim != 1 or z.shape != ma.shape or z.size == 0:
                raise InputError("Protocol: current profile arrays must be 1-D with equal length")
            if not (np.all(np.isfinite(z)) and np.all(np.isfinite(ma))) or np.any(ma < 0):
                raise InputError("Protocol: current profile must be finite with mA >= 0")
            if np.any(np.diff(z) <= 0):
                raise InputError("Protocol: current_profile_z_mm must be strictly increasing")

    def current_ma(self, z_mm: np.ndarray) -> np.ndarray:
        """Tube current (mA) at beam-centre positions ``z_mm``."""
        z = np.asarray(z_mm, dtype=np.float64)
        if self.current_profile_z_mm is None:
            return np.full_like(z, float(self.tube_current_ma))
        return np.interp(z, np.asarray(self.current_profile_z_mm, float), np.asarray(self.current_profile_ma, float))

    def rotation_centres_mm(self, scanner: CTScanner) -> np.ndarray:
        """Axial mode: z of each rotation's beam centre (mm)."""
        col = scanner.collimation_mm
        length = self.z_end_mm - self.z_start_mm
        n = max(1, math.ceil(length / col - 1e-9))
        centre = 0.5 * (self.z_start_mm + self.z_end_mm)
        return centre + (np.arange(n) - (n - 1) / 2.0) * col

    def source_positions(self, scanner: CTScanner) -> SourcePositions:
        """Discretise the trajectory into source positions with their tube load (mAs).

        Axial: ``projections_per_rotation`` equally spaced angles per rotation, the same
        angles at every step. Helical: positions at the centres of equal angular intervals
        along the helix; number of rotations ``(z_end - z_start) / (pitch * collimation)``
        (at least one position). Each position carries
        ``mA(z) * rotation_time / projections_per_rotation`` (scaled for a partial interval).
        With ``rotation="continuous"`` each position also carries the angular interval and the
        z travel it stands for (zero z travel for axial rotations).
        """
        n_proj = int(self.projections_per_rotation)
        a0 = math.radians(self.start_angle_deg)
        step = 2.0 * math.pi / n_proj
        mas_per_unit = self.rotation_time_s / n_proj  # s per position, times mA
        if self.mode == "axial":
            centres = self.rotation_centres_mm(scanner)
            angles = a0 + step * np.arange(n_proj)
            angle = np.tile(angles, centres.size)
            z = np.repeat(centres, n_proj)
            mas = self.current_ma(z) * mas_per_unit
            width = np.full(angle.shape, step)
            z_width = np.zeros(angle.shape)
        else:
            feed = self.pitch * scanner.collimation_mm
            n_steps = (self.z_end_mm - self.z_start_mm) / feed * n_proj  # projection intervals
            if n_steps <= 0:  # zero-length helix: one rotation at z_start (as axial)
                n_steps = float(n_proj)
                feed = 0.0
            n_pos = max(1, math.ceil(n_steps - 1e-9))
            frac = np.ones(n_pos)
            frac[-1] = n_steps - (n_pos - 1)  # partial last interval
            # interval k spans the phase [k, k + frac_k) in projection steps
            phase = np.arange(n_pos) + 0.5 * frac
            angle = a0 + step * phase
            z = self.z_start_mm + feed * phase / n_proj
            mas = self.current_ma(z) * mas_per_unit * frac
            width = step * frac
            z_width = feed * frac / n_proj
        continuous = self.rotation == "continuous"
        return SourcePositions(
            angle_rad=np.mod(angle, 2.0 * math.pi), z_mm=np.asarray(z, float), mas=np.asarray(mas, float),
            angle_width_rad=np.asarray(width, float) if continuous else None,
            z_width_mm=np.asarray(z_width, float) if continuous else None,
        )


# ---------------------------------------------------------------------------------------------
def _scanner_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    if "scanner" not in cfg or not isinstance(cfg["scanner"], Mapping):
        raise ConfigError("profile: missing 'scanner' section")
    out = dict(DEFAULT_SCANNER)
    out.update({k: v for k, v in cfg["scanner"].items()})
    return out


def scanner_from_profile(cfg: Mapping[str, Any]) -> CTScanner:
    """Build the :class:`CTScanner` of a profile's ``scanner`` section.

    Keys used (defaults in :data:`DEFAULT_SCANNER`): ``kvp``, ``anode_angle_deg``,
    ``filtration_mm_al``, ``spectrum_file`` (CSV ``energy_kev,weight``; replaces spekpy),
    ``bowtie`` (``generic_body``, ``none`` or a CSV path), ``source_to_isocentre_mm``,
    ``fan_fov_mm``, ``collimation_mm``.

    Raises
    ------
    ConfigError
        A value that cannot be used (the message names the key).
    """
    s = _scanner_cfg(cfg)
    try:
        if s.get("spectrum_file"):
            spectrum = spectrum_from_csv(s["spectrum_file"])
        else:
            spectrum = spekpy_spectrum(
                float(s["kvp"]), float(s["anode_angle_deg"]), float(s["filtration_mm_al"])
            )
        bowtie_key = s.get("bowtie") or "none"
        if bowtie_key == "generic_body":
            bowtie = generic_body_bowtie()
        elif bowtie_key == "none":
            bowtie = Bowtie.flat()
        else:
            bowtie = bowtie_from_csv(bowtie_key)
        return CTScanner(
            spectrum=spectrum,
            bowtie=bowtie,
            source_to_isocentre_mm=float(s["source_to_isocentre_mm"]),
            fan_fov_mm=float(s["fan_fov_mm"]),
            collimation_mm=float(s["collimation_mm"]),
        )
    except InputError as exc:
        raise ConfigError(f"profile scanner section: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"profile scanner section: bad value ({exc})") from None


def protocol_for_case(cfg: Mapping[str, Any], roi_z_mm: Sequence[float], tube_current=None) -> Protocol:
    """The profile's protocol over a case's ROI ``(z_lo, z_hi)`` in mm (see :func:`case_protocol`)."""
    return case_protocol(cfg, roi_z_mm, tube_current)[0]


def case_protocol(cfg: Mapping[str, Any], roi_z_mm: Sequence[float], tube_current=None) -> tuple[Protocol, str]:
    """The profile's protocol over a case's ROI ``(z_lo, z_hi)`` in mm, and a line that says
    which tube current it runs.

    Keys used (defaults in :data:`DEFAULT_SCANNER`): ``mode``, ``pitch``, ``start_angle_deg``,
    ``tube_current_ma``, ``rotation_time_s``, ``projections_per_rotation``, ``rotation``,
    ``tube_current_modulation`` and, for the modulation, ``collimation_mm``.

    Parameters
    ----------
    cfg : Profile
    roi_z_mm : (float, float)
        The scan range (mm).
    tube_current : ctdose.physics.tube_current.TubeCurrentProfile, optional
        The case's own record (clinical cases). With ``tube_current_modulation: ct`` the
        protocol follows it at the same total mAs as the constant ``tube_current_ma``
        (:func:`ctdose.physics.tube_current.modulated_protocol`); otherwise it is not used.

    Raises
    ------
    ConfigError
        A value that cannot be used; the message names the key.
    """
    s = _scanner_cfg(cfg)
    try:
        lo, hi = (float(v) for v in roi_z_mm)
    except (TypeError, ValueError):
        raise InputError(f"roi_z_mm: expected (lo, hi) in mm, got {roi_z_mm!r}") from None
    modulation = s["tube_current_modulation"]
    if modulation not in TUBE_CURRENT_MODULATIONS:
        raise ConfigError(f"profile scanner section: tube_current_modulation must be one of "
                          f"{', '.join(TUBE_CURRENT_MODULATIONS)}, got {modulation!r}")
    try:
        protocol = Protocol(
            mode=str(s["mode"]),
            z_start_mm=min(lo, hi),
            z_end_mm=max(lo, hi),
            pitch=_profile_number(s, "pitch"),
            start_angle_deg=_profile_number(s, "start_angle_deg"),
            tube_current_ma=_profile_number(s, "tube_current_ma"),
            rotation_time_s=_profile_number(s, "rotation_time_s"),
            projections_per_rotation=_profile_count(s, "projections_per_rotation"),
            rotation=str(s["rotation"]),
        )
    except InputError as exc:
        raise ConfigError(f"profile scanner section: {exc}") from None
    constant = f"constant {protocol.tube_current_ma:g} mA"
    if modulation == "none" or tube_current is None:
        return protocol, constant + (" (the case's tube-current record not used)" if tube_current is not None else "")
    from .tube_current import modulated_protocol

    modulated, mean_ma = modulated_protocol(protocol, tube_current, _profile_number(s, "collimation_mm"))
    return modulated, (f"{MODULATED_TUBE_CURRENT} ({tube_current.source}; mean {mean_ma:.4g} mA "
                       f"over the scan), scaled to a mean of {protocol.tube_current_ma:g} mA")


def check_protocol_profile(cfg: Mapping[str, Any]) -> None:
    """Check a profile's protocol keys before any work (``ctdose run``, ``ctdose profile``):
    :func:`protocol_for_case` over an empty ROI and :func:`angular_modulation_settings`.
    Raises ConfigError naming the key."""
    protocol_for_case(cfg, (0.0, 0.0))
    angular_modulation_settings(cfg)


def angular_modulation_settings(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The profile's angular tube-current modulation: None for ``scanner.angular_modulation:
    none`` (the default), else ``{"mode": "model", "strength": ..., "max_depth": ...}``
    (keys ``angular_modulation_strength`` >= 0, ``angular_modulation_max_depth`` null or
    >= 1).

    Raises
    ------
    ConfigError
        A value that cannot be used; the message names the key.
    """
    s = _scanner_cfg(cfg)
    mode = s["angular_modulation"]
    if mode not in ANGULAR_MODULATIONS:
        raise ConfigError(f"profile scanner section: angular_modulation must be one of "
                          f"{', '.join(ANGULAR_MODULATIONS)}, got {mode!r}")
    if mode == "none":
        return None
    strength = _profile_number(s, "angular_modulation_strength")
    if not (math.isfinite(strength) and strength >= 0):
        raise ConfigError(f"profile scanner section: angular_modulation_strength must be a number >= 0, "
                          f"got {s['angular_modulation_strength']!r}")
    depth = s["angular_modulation_max_depth"]
    if depth is not None:
        depth = _profile_number(s, "angular_modulation_max_depth")
        if not (math.isfinite(depth) and depth >= 1):
            raise ConfigError(f"profile scanner section: angular_modulation_max_depth must be null or a number "
                              f">= 1, got {s['angular_modulation_max_depth']!r}")
    return {"mode": mode, "strength": strength, "max_depth": depth}


def case_angular_modulation(cfg: Mapping[str, Any], geometry):
    """The angular modulation of a case with the profile's settings
    (:func:`angular_modulation_settings`), modelled from its ``geometry``
    (:class:`ctdose.physics.mc.VoxelGeometry`); None where the profile has none."""
    settings = angular_modulation_settings(cfg)
    if settings is None:
        return None
    from .angular_modulation import angular_modulation_from_geometry

    return angular_modulation_from_geometry(geometry, settings["strength"], max_depth=settings["max_depth"])


def _profile_number(s: Mapping[str, Any], key: str) -> float:
    """``s[key]`` as a float (numbers written as text too); ConfigError naming the key."""
    value = number_from_text(s[key])
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"profile scanner section: {key} must be a number, got {s[key]!r}")
    return float(value)


def _profile_count(s: Mapping[str, Any], key: str) -> int:
    """``s[key]`` as a positive int (16, 16.0 or "16"; not 16.5); ConfigError naming the key."""
    value = as_int(_profile_number(s, key))
    if value is None or value < 1:
        raise ConfigError(f"profile scanner section: {key} must be a positive integer, got {s[key]!r}")
    return value
