"""Tube-current modulation along z taken from a patient's own CT.

A CT scanner modulates its tube current along the patient (automatic exposure control) and
writes the current of each reconstructed slice into the image header: DICOM
XRayTubeCurrent (0018,1151) in mA, or XRayTubeCurrentInuA (0018,8151) in uA where the
scanner gives the finer one. That per-slice record is the longitudinal part of the
modulation (averaged over the rotation that made the slice; the angular part is not
recorded per slice). :class:`TubeCurrentProfile` holds it; :func:`modulated_protocol` lets a
scan protocol follow it.

The dose the compendium stores is per mAs of one rotation at a reference tube current
(``scanner.tube_current_ma``, 200 mA in the shipped profiles as in the paper's Figure 4).
With a patient's profile, :func:`modulated_protocol` keeps that reference: the profile's
shape is kept and its level scaled so that the scan's mean tube current over the source
positions equals the reference. Doses of modulated and unmodulated cases stay on one scale;
the patient's own mean current (returned, and recorded by the cohort run) converts back to
the patient's absolute dose.

z coordinates are patient coordinates along the table (superior positive): the DICOM slice
position ``ImagePositionPatient[2]``, the same z as the NIfTI world coordinates and the
case's ``z`` axis (:mod:`ctdose.anatomy.clinical`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import InputError
from ..io.number_csv import read_number_columns
from .scanner import Protocol

__all__ = ["TUBE_CURRENT_CSV", "TubeCurrentProfile", "modulated_protocol", "read_tube_current_csv"]

#: File name of a case's tube-current profile (columns ``z_mm``, ``tube_current_ma``) in a
#: clinical case folder (:mod:`ctdose.anatomy.clinical`).
TUBE_CURRENT_CSV = "tube_current.csv"

#: Case attributes that hold a profile (:meth:`TubeCurrentProfile.to_attrs`).
_ATTR_Z, _ATTR_MA, _ATTR_SOURCE = "tube_current_z_mm", "tube_current_ma", "tube_current_source"


@dataclass(frozen=True, eq=False)
class TubeCurrentProfile:
    """Tube current (mA) at positions along the patient (mm).

    Parameters
    ----------
    z_mm : array of float, shape (n,)
        Positions along the table axis (mm, superior positive), strictly increasing.
    current_ma : array of float, shape (n,)
        Tube current at each position (mA), finite and >= 0, not all zero. Between the
        positions the current is interpolated linearly; beyond the ends it is constant
        (:meth:`ctdose.physics.scanner.Protocol.current_ma`).
    source : str
        Where the numbers come from (``dicom XRayTubeCurrent``, a CSV file name, ...).

    Raises
    ------
    InputError
        Arrays of different length, empty, not finite, z not strictly increasing, a negative
        current or none above zero; the message names ``source``.

    Examples
    --------
    >>> p = TubeCurrentProfile([0.0, 100.0], [100.0, 300.0], "example")
    >>> p.mean_ma(0.0, 100.0)
    200.0
    """

    z_mm: np.ndarray
    current_ma: np.ndarray
    source: str

    def __post_init__(self) -> None:
        z = np.asarray(self.z_mm, dtype=np.float64)
        ma = np.asarray(self.current_ma, dtype=np.float64)
        where = f"tube-current profile ({self.source})"
        if z.ndim != 1 or z.shape != ma.shape or z.size == 0:
            raise InputError(f"{where}: z_mm and current_ma must be 1-D of equal, non-zero length "
                             f"(got shapes {z.shape} and {ma.shape})")
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(ma))):
            raise InputError(f"{where}: positions and currents must be finite numbers")
        if np.any(np.diff(z) <= 0):
            raise InputError(f"{where}: z_mm must be strictly increasing (two slices at one position?)")
        if np.any(ma < 0) or not np.any(ma > 0):
            raise InputError(f"{where}: tube currents must be >= 0 mA and not all zero")
        object.__setattr__(self, "z_mm", z)
        object.__setattr__(self, "current_ma", ma)

    def __len__(self) -> int:
        return int(self.z_mm.size)

    def mean_ma(self, z_lo_mm: float, z_hi_mm: float) -> float:
        """Mean tube current (mA) over ``[z_lo_mm, z_hi_mm]``: the exact integral of the
        piecewise-linear profile (constant beyond its ends) divided by the length; the
        current at ``z_lo_mm`` for an empty interval."""
        lo, hi = float(min(z_lo_mm, z_hi_mm)), float(max(z_lo_mm, z_hi_mm))
        if hi == lo:
            return float(np.interp(lo, self.z_mm, self.current_ma))
        knots = np.concatenate([[lo], self.z_mm[(self.z_mm > lo) & (self.z_mm < hi)], [hi]])
        values = np.interp(knots, self.z_mm, self.current_ma)
        return float(np.sum(0.5 * (values[1:] + values[:-1]) * np.diff(knots)) / (hi - lo))

    def to_attrs(self) -> dict[str, Any]:
        """The case attributes that store the profile (:meth:`from_attrs` reads them)."""
        return {_ATTR_Z: [float(v) for v in self.z_mm], _ATTR_MA: [float(v) for v in self.current_ma],
                _ATTR_SOURCE: str(self.source)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TubeCurrentProfile | None:
        """The profile stored in case attributes, or None when the case has none (synthetic,
        surrogate and XCAT cases; clinical cases without a record)."""
        if attrs.get(_ATTR_Z) is None:
            return None
        return cls(np.asarray(attrs[_ATTR_Z], float), np.asarray(attrs.get(_ATTR_MA, []), float),
                   str(attrs.get(_ATTR_SOURCE, "case attributes")))


def read_tube_current_csv(path: str | Path) -> TubeCurrentProfile:
    """Read a tube-current profile from a CSV file with columns ``z_mm`` and
    ``tube_current_ma`` (one row per slice or position; lines starting with ``#`` are
    comments; any row order).

    Raises
    ------
    InputError
        Missing file or column, text that is not a number, or a profile that
        :class:`TubeCurrentProfile` refuses; the message names the file.
    """
    path = Path(path)
    values = read_number_columns(path, ("z_mm", "tube_current_ma"), "tube-current")
    z, ma = values["z_mm"], values["tube_current_ma"]
    order = np.argsort(z, kind="stable")
    return TubeCurrentProfile(z[order], ma[order], path.name)


class _Collimation(NamedTuple):
    """What :meth:`ctdose.physics.scanner.Protocol.source_positions` reads of a scanner: the
    nominal beam width at the isocentre (mm)."""

    collimation_mm: float


def modulated_protocol(
    protocol: Protocol, profile: TubeCurrentProfile, collimation_mm: float
) -> tuple[Protocol, float]:
    """``protocol`` with the tube current following ``profile``, at the same total mAs.

    The current at each source position follows the profile's shape (linear between its
    positions, constant beyond); its level is scaled so that the total tube load (mAs) of the
    scan equals that of ``protocol`` at its constant ``tube_current_ma``. Doses per mAs of one
    rotation (:class:`ctdose.physics.sources.CTSource`) then stay per mAs at that reference
    current, and the patient's own scan follows from them with the returned mean current.

    Parameters
    ----------
    protocol : Protocol
        The unmodulated protocol (its ``tube_current_ma`` is the reference).
    profile : TubeCurrentProfile
    collimation_mm : float
        The scanner's nominal beam width at the isocentre (mm), which places the positions.

    Returns
    -------
    Protocol
        The modulated protocol.
    float
        The patient's mean tube current over the scan's source positions (mA), from the
        profile as recorded.

    Raises
    ------
    InputError
        The profile gives no current at any source position of the scan.
    """
    geometry = _Collimation(float(collimation_mm))
    constant = replace(protocol, current_profile_z_mm=None, current_profile_ma=None)
    reference_mas = constant.source_positions(geometry).total_mas
    recorded = replace(protocol, current_profile_z_mm=profile.z_mm, current_profile_ma=profile.current_ma)
    recorded_mas = recorded.source_positions(geometry).total_mas
    if not recorded_mas > 0:
        raise InputError(f"tube-current profile ({profile.source}): zero current over the whole scan "
                         f"{protocol.z_start_mm:g} to {protocol.z_end_mm:g} mm")
    scale = reference_mas / recorded_mas
    mean_ma = float(protocol.tube_current_ma) / scale
    return replace(protocol, current_profile_z_mm=profile.z_mm, current_profile_ma=profile.current_ma * scale), mean_ma
