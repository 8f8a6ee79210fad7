"""X-ray spectra: from spekpy or from a CSV file, with filtration, air kerma and HVL.

A :class:`Spectrum` holds photon numbers per energy bin: ``fluence_per_mas_per_mm2_at_1m[i]``
is the number of photons per mm^2 per mAs at 1 m from the focal spot (free in air) in the bin
centred on ``energy_kev[i]``. spekpy returns a *differential* fluence in photons per cm^2 per
keV per mAs at 1 m (its defaults ``z = 100`` cm, ``mas = 1``), which is converted by
multiplying by the bin width and dividing by 100 mm^2/cm^2.

Air kerma per mAs (free in air, at distance d from the focal spot, inverse-square law)

.. math:: K = \\sum_i \\Phi_i(d)\\, E_i\\, (\\mu_{en}/\\rho)_{air}(E_i)

with :math:`\\mu_{en}/\\rho` of dry air from :mod:`ctdose.physics.xsection`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.constants import electron_volt
from scipy.optimize import brentq

from ..errors import InputError
from ..io.number_csv import read_number_columns
from ..materials import Medium, filter_medium, get_medium
from .xsection import mass_coefficients

__all__ = ["Spectrum", "spectrum_from_csv", "spekpy_spectrum"]

_MM2_PER_CM2 = 100.0
_REFERENCE_DISTANCE_MM = 1000.0
_J_PER_KEV = 1e3 * electron_volt
_G_PER_KG = 1e3
_MM_PER_CM = 10.0


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
        if e.min() < 1.0 or (e.size > 1 and np.any(np.diff(e) <= 0)):
            raise InputError(f"spectrum{where}: energies must be >= 1 keV and strictly increasing")
        object.__setattr__(self, "energy_kev", e)
        object.__setattr__(self, "fluence_per_mas_per_mm2_at_1m", f)

    # -- basic properties -------------------------------------------------------------------
    @property
    def bin_width_kev(self) -> np.ndarray:
        """Width of each bin in keV (from the spacing of the bin centres)."""
        if self.energy_kev.size == 1:
            return np.zeros(1)
        return np.gradient(self.energy_kev)

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
        return self.energy_kev[idx] + (rng.random(int(n)) * 2.0 - 1.0) * half

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
        Tube voltage in kV.
    anode_angle_deg : float
        Anode (target) angle in degrees.
    filtration_mm_al, filtration_mm_cu : float
        Total added filtration in mm Al and mm Cu.
    bin_kev : float
        Energy bin width in keV.
    target : str
        Anode material (spekpy ``targ``: ``"W"``, ``"Mo"``, ``"Rh"``).

    Returns
    -------
    Spectrum
        Absolute fluence per mAs per mm^2 at 1 m.
    """
    import spekpy

    for name, value in (("kvp", kvp), ("anode_angle_deg", anode_angle_deg), ("bin_kev", bin_kev)):
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise InputError(f"spekpy_spectrum: {name} must be a positive number, got {value!r}")
    for name, value in (("filtration_mm_al", filtration_mm_al), ("filtration_mm_cu", filtration_mm_cu)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"spekpy_spectrum: {name} must be >= 0, got {value!r}")
    spek = spekpy.Spek(kvp=float(kvp), th=float(anode_angle_deg), dk=float(bin_kev), targ=target)
    if filtration_mm_al > 0:
        spek.filter("Al", float(filtration_mm_al))
    if filtration_mm_cu > 0:
        spek.filter("Cu", float(filtration_mm_cu))
    k, phi = spek.get_spectrum(edges=False, flu=True, diff=False)  # photons/cm^2 per bin, 1 mAs, 1 m
    keep = (k >= 1.0) & (phi > 0)
    desc = (
        f"spekpy {target} {kvp:g} kVp, anode {anode_angle_deg:g} deg, "
        f"{filtration_mm_al:g} mm Al + {filtration_mm_cu:g} mm Cu, {bin_kev:g} keV bins"
    )
    return Spectrum(k[keep], phi[keep] / _MM2_PER_CM2, desc, absolute=True)


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
        Missing file or columns, NaN, negative weights, non-increasing energies.
    """
    path = Path(path)
    values = read_number_columns(path, ("energy_kev", "weight"), "spectrum")
    e, w = values["energy_kev"], values["weight"]
    spec = Spectrum(e, w, f"file {path.name}", absolute=False)
    if air_kerma_gy_per_mas_at_1m is not None:
        if not (math.isfinite(air_kerma_gy_per_mas_at_1m) and air_kerma_gy_per_mas_at_1m > 0):
            raise InputError(f"air_kerma_gy_per_mas_at_1m must be > 0, got {air_kerma_gy_per_mas_at_1m}")
        scale = air_kerma_gy_per_mas_at_1m / spec.air_kerma_gy_per_mas(_REFERENCE_DISTANCE_MM)
        spec = Spectrum(e, w * scale, f"file {path.name}", absolute=True)
    return spec
