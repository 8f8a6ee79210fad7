"""X-ray spectra: from spekpy or from a CSV file, with filtration, air kerma and HVL.

A :class:`Spectrum` holds photon numbers per energy bin: ``fluence_per_mas_per_mm2_at_1m[i]``
is the number of photons per mm^2 per mAs at 1 m from the focal spot (free in air) in the bin
centred on ``energy_kev[i]``. spekpy returns a *differential* fluence in photons per cm^2 per
keV per mAs at 1 m (its defaults ``z = 100`` cm, ``mas = 1``), which is converted by
multiplying by the bin width and dividing by 100 mm^2/cm^2.

Bins: the edges lie halfway between neighbouring bin centres, the outer edges half a
neighbouring gap beyond the first and the last centre (:func:`bin_middle_and_width_kev`). For
uniformly spaced centres (spekpy's, the CSV spectra's) each bin is centred on its energy and
as wide as the spacing; for uneven centres a bin is not centred on its energy, but the bins
still tile the spectrum without overlap. Photons are drawn uniformly within their bin, so the
lowest edge of a bin with photons must not lie below the cross-section tables' 1 keV.

Air kerma per mAs (free in air, at distance d from the focal spot, inverse-square law)

.. math:: K = \\sum_i \\Phi_i(d)\\, E_i\\, (\\mu_{en}/\\rho)_{air}(E_i)

with :math:`\\mu_{en}/\\rho` of dry air from :mod:`ctdose.physics.xsection`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.constants import electron_volt
from scipy.optimize import brentq

from ..config import as_real
from ..errors import InputError
from ..io.number_csv import read_number_columns
from ..materials import Medium, filter_medium, get_medium
from .xsection import ENERGY_MAX_KEV, ENERGY_MIN_KEV, mass_coefficients

__all__ = ["Spectrum", "bin_middle_and_width_kev", "spectrum_from_csv", "spekpy_spectrum"]

_MM2_PER_CM2 = 100.0
_REFERENCE_DISTANCE_MM = 1000.0
_J_PER_KEV = 1e3 * electron_volt
_G_PER_KG = 1e3
_MM_PER_CM = 10.0

#: A bin whose centre lies off the middle of its edges by at most this fraction of its width
#: counts as centred on it (the centre is kept exactly): uniformly spaced centres whose spacings
#: differ only by rounding (spekpy's bins of 0.1 keV, say) keep their bins, and so their
#: sampled energies, bit for bit.
_CENTRED_BIN_TOLERANCE = 1e-9
#: Rounding allowed below the tables' lowest energy at a bin's lower edge, keV: spekpy's bins of
#: 0.1 keV start at 0.99999999999999 keV.
_EDGE_ROUNDING_KEV = 1e-9
#: Share of a spectrum's photons below the tables' 1 keV that is let pass: below the resolution of
#: the samplers' float64 uniform numbers (2^-53), so never drawn in practice. spekpy spectra
#: whose first bin (of fluence 1e-100 or less) is cut off from the rest by empty bins (dropped),
#: and so reaches below 1 keV, keep working.
_NEGLIGIBLE_SHARE = 2.0**-53
#: spekpy's anode materials and, for each, its range of tube voltages in kV (its default
#: physics model: tungsten 10-500 kV, the others 10-50 kV; spekpy.Spek's checks).
_SPEKPY_KVP_RANGE_KV = {
    "W": (10.0, 500.0),
    **{targ: (10.0, 50.0) for targ in ("Mo", "Rh", "Cr", "Cu", "Ag", "Au")},
}
#: Largest anode angle in degrees (between the anode surface and the central ray): beyond it
#: the beam would leave through the anode (spekpy then emits nothing).
_MAX_ANODE_ANGLE_DEG = 90.0
#: A spekpy spectrum has at least this many bins per tube voltage: ``bin_kev <= kvp / 4``
#: (spekpy fails with bins of half the tube voltage; its bins start about one width up).
_MIN_BINS_PER_KVP = 4


def _bin_geometry(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(middle, width) of the bins around the strictly increasing centres ``e`` (keV)."""
    if e.size == 1:
        return e.copy(), np.zeros(1)
    # (e[i+1] - e[i-1]) / 2 inside, the neighbouring gap at the two ends: the distance of the edges
    width = np.gradient(e)
    gap = np.diff(e)
    # middle of the edges less the centre: a quarter of (gap above - gap below)
    shift = (np.append(gap, gap[-1]) - np.insert(gap, 0, gap[0])) / 4.0
    shift[np.abs(shift) <= _CENTRED_BIN_TOLERANCE * width] = 0.0
    return e + shift, width


def bin_middle_and_width_kev(energy_kev, weights, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Middle and width (keV) of a spectrum's bins, refusing photons below the tables' 1 keV.

    The bin edges lie halfway between neighbouring centres, the outer edges half a
    neighbouring gap beyond the first and the last centre: for uniformly spaced centres each
    bin is centred on its energy (its middle is its energy, exactly) and as wide as the
    spacing; uneven centres give bins that tile the spectrum without overlap.

    Parameters
    ----------
    energy_kev : ndarray, shape (n,)
        Bin centres in keV, strictly increasing, finite (checked by the caller).
    weights : ndarray, shape (n,)
        Photons per bin (>= 0, finite sum).
    what : str
        The spectrum, for the message.

    Returns
    -------
    middle, width : ndarray, shape (n,)
        Middle of each bin's edges and its width in keV (one centre: a line of width 0).

    Raises
    ------
    InputError
        The lowest bin reaches below 1 keV (where the cross-section tables start) with more
        than a negligible share (2^-53) of the photons.

    Examples
    --------
    >>> middle, width = bin_middle_and_width_kev(np.array([30.0, 40.0, 200.0]), np.ones(3), "s")
    >>> (middle - width / 2).tolist(), (middle + width / 2).tolist()
    ([25.0, 35.0, 120.0], [35.0, 120.0, 280.0])
    """
    e = np.asarray(energy_kev, dtype=np.float64)
    f = np.asarray(weights, dtype=np.float64)
    middle, width = _bin_geometry(e)
    # only the first bin can reach below its centre's 1 keV (the others' lower edges are midpoints)
    low = middle[0] - 0.5 * width[0]
    if low < ENERGY_MIN_KEV - _EDGE_ROUNDING_KEV:
        share = f[0] / f.sum() * min(1.0, (ENERGY_MIN_KEV - low) / width[0])
        if share > _NEGLIGIBLE_SHARE:
            raise InputError(
                f"{what}: the lowest bin, at {e[0]:g} keV, reaches down to {low:g} keV, below the cross-section "
                f"tables' {ENERGY_MIN_KEV:g} keV: {share:.3g} of the photons would start below {ENERGY_MIN_KEV:g} keV "
                f"(bin edges lie halfway between neighbouring energies, the lowest half the first gap, "
                f"{e[1] - e[0]:g} keV, below the first energy); start the spectrum higher or drop its lowest bins"
            )
    return middle, width


@dataclass(frozen=True, eq=False)
class Spectrum:
    """Photon spectrum of an x-ray tube, per mAs, free in air at 1 m.

    Parameters
    ----------
    energy_kev : ndarray, shape (n,)
        Bin centres in keV, strictly increasing, >= 1 keV.
    fluence_per_mas_per_mm2_at_1m : ndarray, shape (n,)
        Photons per mm^2 per mAs at 1 m in each bin (>= 0, finite, not all zero).
    description : str
        Provenance (for example the spekpy parameters or the CSV file).
    absolute : bool
        False when the fluence is only relative (a CSV of weights without a kerma
        normalisation): then air kerma and dose per mAs are in arbitrary units.
    """

    energy_kev: np.ndarray
    fluence_per_mas_per_mm2_at_1m: np.ndarray
    description: str = ""
    absolute: bool = True
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        e = np.asarray(self.energy_kev, dtype=np.float64).ravel()
        f = np.asarray(self.fluence_per_mas_per_mm2_at_1m, dtype=np.float64).ravel()
        where = f" ({self.description})" if self.description else ""
        if e.size == 0 or e.shape != f.shape:
            raise InputError(f"spectrum{where}: energy and fluence must be 1-D arrays of equal, non-zero length")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(f))):
            raise InputError(f"spectrum{where}: NaN or infinite values in energy or fluence")
        if np.any(f < 0) or not np.any(f > 0):
            raise InputError(f"spectrum{where}: fluence must be >= 0 and not all zero")
        with np.errstate(over="ignore"):
            total = f.sum()
        if not np.isfinite(total):
            raise InputError(f"spectrum{where}: the total fluence overflows (sum of {f.size} values up to "
                             f"{f.max():g}); scale the fluence down")
        if e.min() < ENERGY_MIN_KEV or (e.size > 1 and np.any(np.diff(e) <= 0)):
            raise InputError(f"spectrum{where}: energies must be >= {ENERGY_MIN_KEV:g} keV and strictly increasing")
        bin_middle_and_width_kev(e, f, f"spectrum{where}")
        object.__setattr__(self, "energy_kev", e)
        object.__setattr__(self, "fluence_per_mas_per_mm2_at_1m", f)

    # -- basic properties -------------------------------------------------------------------
    @property
    def bin_width_kev(self) -> np.ndarray:
        """Width of each bin in keV: the distance of its edges, halfway to the neighbouring centres
        (at the ends: the gap to the one neighbour); 0 for a single line."""
        if self.energy_kev.size == 1:
            return np.zeros(1)
        return np.gradient(self.energy_kev)

    @property
    def bin_middle_kev(self) -> np.ndarray:
        """Middle of each bin's edges in keV: its energy where the centres are uniformly spaced."""
        return _bin_geometry(self.energy_kev)[0]

    @property
    def max_energy_kev(self) -> float:
        """Upper edge (keV) of the highest bin with photons: the highest energy a photon can have."""
        middle, width = _bin_geometry(self.energy_kev)
        return float(np.max((middle + 0.5 * width)[self.fluence_per_mas_per_mm2_at_1m > 0]))

    @property
    def total_fluence_per_mas_per_mm2_at_1m(self) -> float:
        return float(self.fluence_per_mas_per_mm2_at_1m.sum())

    @property
    def mean_energy_kev(self) -> float:
        """Fluence-weighted mean energy in keV."""
        f = self.fluence_per_mas_per_mm2_at_1m
        return float((f * self.energy_kev).sum() / f.sum())

    def probabilities(self) -> np.ndarray:
        """Probability of each bin (sums to 1), for sampling photon energies."""
        f = self.fluence_per_mas_per_mm2_at_1m
        return f / f.sum()

    def normalised(self) -> Spectrum:
        """The same spectrum scaled to a total fluence of 1 (relative, ``absolute=False``)."""
        return Spectrum(self.energy_kev, self.probabilities(), self.description, absolute=False)

    def fluence_per_mas_per_mm2(self, distance_mm: float) -> np.ndarray:
        """Photons per mm^2 per mAs per bin at ``distance_mm`` from the focal spot (in air)."""
        if not distance_mm > 0:
            raise InputError(f"distance_mm must be > 0, got {distance_mm}")
        return self.fluence_per_mas_per_mm2_at_1m * (_REFERENCE_DISTANCE_MM / distance_mm) ** 2

    def sample_energy_kev(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` photon energies (keV): a bin by its probability, uniform within the bin."""
        idx = rng.choice(self.energy_kev.size, size=int(n), p=self.probabilities())
        half = 0.5 * self.bin_width_kev[idx]
        return self.bin_middle_kev[idx] + (rng.random(int(n)) * 2.0 - 1.0) * half

    # -- filtration, kerma, HVL -------------------------------------------------------------
    def transmission(self, medium: Medium, thickness_mm: float) -> np.ndarray:
        """Narrow-beam transmission exp(-mu t) per bin through ``thickness_mm`` of ``medium``."""
        if not math.isfinite(thickness_mm) or thickness_mm < 0:
            raise InputError(f"filter thickness must be finite and >= 0 mm, got {thickness_mm}")
        mu = mass_coefficients(medium, self.energy_kev)["total"] * medium.density_g_cm3
        return np.exp(-mu * thickness_mm / _MM_PER_CM)

    def filtered(self, medium: Medium | str, thickness_mm: float) -> Spectrum:
        """The spectrum behind ``thickness_mm`` of ``medium`` (a Medium or a filter name)."""
        if isinstance(medium, str):
            medium = filter_medium(medium)
        f = self.fluence_per_mas_per_mm2_at_1m * self.transmission(medium, thickness_mm)
        desc = f"{self.description} + {thickness_mm:g} mm {medium.name}".strip(" +")
        return Spectrum(self.energy_kev, f, desc, self.absolute)

    def _air_en(self) -> np.ndarray:
        if "air_en" not in self._cache:
            self._cache["air_en"] = mass_coefficients(get_medium("air"), self.energy_kev)["en"]
        return self._cache["air_en"]

    def air_kerma_gy_per_mas(self, distance_mm: float = _REFERENCE_DISTANCE_MM) -> float:
        """Air kerma free in air in Gy per mAs at ``distance_mm`` from the focal spot."""
        fluence_cm2 = self.fluence_per_mas_per_mm2(distance_mm) * _MM2_PER_CM2
        return float(
            (fluence_cm2 * self.energy_kev * self._air_en()).sum() * _J_PER_KEV * _G_PER_KG
        )

    def kerma_per_photon_weights(self) -> np.ndarray:
        """Air kerma per unit fluence per bin, E (mu_en/rho)_air in keV cm^2/g."""
        return self.energy_kev * self._air_en()

    def hvl_mm(self, medium: Medium | str = "aluminium", fraction: float = 0.5) -> float:
        """Thickness (mm) of ``medium`` that reduces the air kerma to ``fraction`` (narrow beam)."""
        if isinstance(medium, str):
            medium = filter_medium(medium)
        if not 0.0 < fraction < 1.0:
            raise InputError(f"fraction must be in (0, 1), got {fraction}")
        w = self.fluence_per_mas_per_mm2_at_1m * self.kerma_per_photon_weights()
        mu_mm = mass_coefficients(medium, self.energy_kev)["total"] * medium.density_g_cm3 / _MM_PER_CM
        k0 = w.sum()

        def excess(t: float) -> float:
            return float((w * np.exp(-mu_mm * t)).sum() / k0 - fraction)

        hi = 1.0
        while excess(hi) > 0:
            hi *= 2.0
            if hi > 1e5:
                raise InputError("spectrum: no finite HVL (no attenuation?)")
        return float(brentq(excess, 0.0, hi, xtol=1e-6))

    def hvl_mm_al(self) -> float:
        """First half-value layer in mm aluminium (air-kerma weighted, narrow beam)."""
        return self.hvl_mm("aluminium", 0.5)


def spekpy_spectrum(
    kvp: float,
    anode_angle_deg: float = 7.0,
    filtration_mm_al: float = 7.0,
    bin_kev: float = 0.5,
    filtration_mm_cu: float = 0.0,
    target: str = "W",
) -> Spectrum:
    """A tube spectrum from spekpy (runs offline: its data ship with the package).

    Parameters
    ----------
    kvp : float
        Tube voltage in kV: 10-500 kV for a tungsten anode, 10-50 kV for the others (spekpy's
        range). The Monte Carlo's cross-section tables stop at 150 keV, so it refuses the
        spectra of more than 150 kV (they still serve for air kerma and HVL).
    anode_angle_deg : float
        Anode (target) angle in degrees, in (0, 90].
    filtration_mm_al, filtration_mm_cu : float
        Total added filtration in mm Al and mm Cu (>= 0).
    bin_kev : float
        Energy bin width in keV, > 0 and at most ``kvp / 4``.
    target : str
        Anode material (spekpy ``targ``: ``"W"``, ``"Mo"``, ``"Rh"``, ``"Cr"``, ``"Cu"``,
        ``"Ag"``, ``"Au"``).

    Returns
    -------
    Spectrum
        Absolute fluence per mAs per mm^2 at 1 m.

    Raises
    ------
    InputError
        An argument that is not a number or out of its range, or anything spekpy refuses (the
        message names the arguments).
    """
    import spekpy

    for name, value in (("kvp", kvp), ("anode_angle_deg", anode_angle_deg), ("bin_kev", bin_kev)):
        if not ((v := as_real(value)) is not None and v > 0):
            raise InputError(f"spekpy_spectrum: {name} must be a positive number, got {value!r}")
    for name, value in (("filtration_mm_al", filtration_mm_al), ("filtration_mm_cu", filtration_mm_cu)):
        if not ((v := as_real(value)) is not None and v >= 0):
            raise InputError(f"spekpy_spectrum: {name} must be a number >= 0 (mm), got {value!r}")
    if not isinstance(target, str) or target not in _SPEKPY_KVP_RANGE_KV:
        raise InputError(f"spekpy_spectrum: target must be one of {', '.join(_SPEKPY_KVP_RANGE_KV)}, got {target!r}")
    kvp_min, kvp_max = _SPEKPY_KVP_RANGE_KV[target]
    if not kvp_min <= kvp <= kvp_max:
        raise InputError(
            f"spekpy_spectrum: kvp must be within {kvp_min:g}-{kvp_max:g} kV for a {target} anode (spekpy's range), "
            f"got {kvp!r}" + (f"; note that the Monte Carlo's cross-section tables stop at {ENERGY_MAX_KEV:g} keV"
                              if kvp > ENERGY_MAX_KEV else "")
        )
    if anode_angle_deg > _MAX_ANODE_ANGLE_DEG:
        raise InputError(f"spekpy_spectrum: anode_angle_deg must be in (0, {_MAX_ANODE_ANGLE_DEG:g}] degrees, "
                         f"got {anode_angle_deg!r}")
    if bin_kev > kvp / _MIN_BINS_PER_KVP:
        raise InputError(f"spekpy_spectrum: bin_kev must be at most kvp / {_MIN_BINS_PER_KVP} = "
                         f"{kvp / _MIN_BINS_PER_KVP:g} keV (a spectrum of a few bins at least), got {bin_kev!r}")
    desc = (
        f"spekpy {target} {kvp:g} kVp, anode {anode_angle_deg:g} deg, "
        f"{filtration_mm_al:g} mm Al + {filtration_mm_cu:g} mm Cu, {bin_kev:g} keV bins"
    )
    try:
        spek = spekpy.Spek(kvp=float(kvp), th=float(anode_angle_deg), dk=float(bin_kev), targ=target)
        if filtration_mm_al > 0:
            spek.filter("Al", float(filtration_mm_al))
        if filtration_mm_cu > 0:
            spek.filter("Cu", float(filtration_mm_cu))
        k, phi = spek.get_spectrum(edges=False, flu=True, diff=False)  # photons/cm^2 per bin, 1 mAs, 1 m
    except Exception as exc:  # spekpy raises bare Exceptions (and IndexErrors) on what it cannot do
        raise InputError(f"spekpy_spectrum ({desc}): spekpy failed: {type(exc).__name__}: {exc}") from exc
    # the bins from the lowest to the highest with photons, those without photons between them
    # included: spekpy's fluence underflows to 0 in the first few keV under a thick filter, and
    # dropping those bins would leave a lone bin and a gap (an uneven grid, whose bins next to
    # the gap are wide)
    with_photons = np.flatnonzero((k >= ENERGY_MIN_KEV) & (phi > 0))
    if with_photons.size == 0:
        raise InputError(f"spekpy_spectrum ({desc}): no photons above {ENERGY_MIN_KEV:g} keV get through")
    keep = slice(with_photons[0], with_photons[-1] + 1)
    return Spectrum(k[keep], np.maximum(phi[keep], 0.0) / _MM2_PER_CM2, desc, absolute=True)


def spectrum_from_csv(path: str | Path, air_kerma_gy_per_mas_at_1m: float | None = None) -> Spectrum:
    """Read a spectrum from a CSV file with columns ``energy_kev, weight``.

    Lines starting with ``#`` are comments. Column names are matched case-insensitively
    (``energy_keV`` works). Energies are bin centres in keV.

    Parameters
    ----------
    path : str or Path
    air_kerma_gy_per_mas_at_1m : float, optional
        If given, the weights are scaled so that the spectrum has this air kerma per mAs at
        1 m (an absolute spectrum); otherwise the weights are taken as photons per mm^2 per
        mAs at 1 m only in relative terms (``absolute=False``).

    Raises
    ------
    InputError
        Missing file or columns, rows of the wrong length, NaN, negative weights,
        non-increasing energies, a lowest bin reaching below 1 keV, energies beyond the air
        coefficients' range when scaling to an air kerma; the message names the file (full path).
    """
    path = Path(path)
    values = read_number_columns(path, ("energy_kev", "weight"), "spectrum")
    e, w = values["energy_kev"], values["weight"]
    spec = Spectrum(e, w, f"file {path}", absolute=False)
    if air_kerma_gy_per_mas_at_1m is not None:
        kerma = air_kerma_gy_per_mas_at_1m
        if not ((v := as_real(kerma)) is not None and v > 0):
            raise InputError(f"{path}: air_kerma_gy_per_mas_at_1m must be a number > 0, got {kerma!r}")
        try:
            own = spec.air_kerma_gy_per_mas(_REFERENCE_DISTANCE_MM)
        except InputError as exc:
            raise InputError(f"{path}: cannot compute the spectrum's air kerma to scale it to {kerma:g} Gy/mAs "
                             f"({exc}); are the energies in keV?") from None
        spec = Spectrum(e, w * (kerma / own), f"file {path}", absolute=True)
    return spec
