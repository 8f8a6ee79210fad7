"""Size-specific dose estimates (AAPM Reports 204 and 220).

A scanner reports CTDIvol, the dose index of a 32 cm (body) or 16 cm (head) PMMA phantom. The
dose at the centre of a patient's scan range depends on the patient's size: AAPM Report 204
fitted the normalised dose coefficients of four independent groups (measurements and Monte
Carlo) with

.. math:: SSDE = f(D) \\, CTDI_{vol}, \\qquad f(D) = a \\, e^{-b D},

and AAPM Report 220 takes for D the water-equivalent diameter

.. math:: D_w = 2 \\sqrt{A_w / \\pi}, \\qquad A_w = \\sum_{\\text{pixels}} \\frac{\\mu(x, y)}{\\mu_w} A_{pixel},

(Report 220 writes ``mu / mu_w`` as ``CT / 1000 + 1`` of the image). For a voxel geometry the
attenuation ratio is taken at the beam's effective energy: the energy of a monoenergetic beam
with the spectrum's first half-value layer in aluminium.

The coefficients are ``ctdose/data/aapm204_ssde.csv``. An SSDE is an independent check of a
Monte Carlo dose's absolute scale and of its dependence on patient size
(:mod:`ctdose.physics.ssde_check`), against other groups' dosimetry rather than this code's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import brentq

from ._data import table_row, table_source
from .errors import InputError
from .materials import filter_medium, get_medium

if TYPE_CHECKING:
    from .physics.mc import VoxelGeometry
    from .physics.spectrum import Spectrum

__all__ = [
    "SSDECoefficients",
    "effective_energy_kev",
    "relative_attenuation",
    "size_specific_dose",
    "ssde_coefficients",
    "ssde_conversion_factor",
    "water_equivalent_diameter_cm",
]

_TABLE = "aapm204_ssde.csv"
_MM_PER_CM = 10.0
_MM2_PER_CM2 = 100.0
#: Energies (keV) searched for the effective energy of a spectrum.
_EFFECTIVE_ENERGY_BOUNDS_KEV = (10.0, 150.0)


@dataclass(frozen=True)
class SSDECoefficients:
    """The AAPM Report 204 fit ``f(D) = a exp(-b D)`` for one CTDIvol phantom.

    Attributes
    ----------
    phantom : str
        ``"body"`` (32 cm) or ``"head"`` (16 cm).
    a : float
    b_per_cm : float
        1/cm.
    d_min_cm, d_max_cm : float
        Patient diameters covered by the report's tables (cm).
    source : str
        The table's citation.
    """

    phantom: str
    a: float
    b_per_cm: float
    d_min_cm: float
    d_max_cm: float
    source: str


def ssde_coefficients(phantom: str = "body") -> SSDECoefficients:
    """The AAPM Report 204 coefficients for the CTDIvol ``phantom`` ("body" or "head").

    Examples
    --------
    >>> c = ssde_coefficients("body")
    >>> c.a, c.b_per_cm
    (3.704369, 0.03671937)
    """
    row = table_row(_TABLE, "phantom", phantom)
    return SSDECoefficients(phantom, float(row["a"]), float(row["b_per_cm"]), float(row["d_min_cm"]),
                            float(row["d_max_cm"]), table_source(_TABLE))


def ssde_conversion_factor(d_w_cm: float | np.ndarray, phantom: str = "body",
                           extrapolate: bool = False) -> float | np.ndarray:
    """AAPM Report 204's conversion factor ``f = a exp(-b D_w)`` (dimensionless).

    Parameters
    ----------
    d_w_cm : float or array_like
        Water-equivalent diameter (cm).
    phantom : {"body", "head"}
        The phantom of the CTDIvol the factor multiplies.
    extrapolate : bool
        Allow diameters outside the report's range (8-45 cm); refused by default.

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> round(ssde_conversion_factor(32.0), 3), round(ssde_conversion_factor(16.0), 3)
    (1.144, 2.059)
    """
    c = ssde_coefficients(phantom)
    d = np.asarray(d_w_cm, dtype=float)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise InputError(f"ssde_conversion_factor: diameters must be finite and > 0 cm, got {d_w_cm!r}")
    if not extrapolate and (np.any(d < c.d_min_cm) or np.any(d > c.d_max_cm)):
        raise InputError(f"ssde_conversion_factor: diameter(s) {np.round(d, 1).tolist()} cm outside AAPM Report "
                         f"204's range {c.d_min_cm:g}-{c.d_max_cm:g} cm (extrapolate=True to allow)")
    f = c.a * np.exp(-c.b_per_cm * d)
    return float(f) if f.ndim == 0 else f


def size_specific_dose(ctdivol: float | np.ndarray, d_w_cm: float | np.ndarray, phantom: str = "body",
                       extrapolate: bool = False) -> np.ndarray:
    """SSDE = f(D_w) CTDIvol, in the unit of ``ctdivol`` (AAPM Reports 204 and 220)."""
    return np.asarray(ctdivol, dtype=float) * ssde_conversion_factor(d_w_cm, phantom, extrapolate)


def effective_energy_kev(spectrum: "Spectrum") -> float:
    """The energy (keV) of the monoenergetic beam with the spectrum's first HVL in aluminium.

    Parameters
    ----------
    spectrum : ctdose.physics.spectrum.Spectrum

    Returns
    -------
    float
        keV; about 49 keV for a 120 kVp CT beam with a 6.8 mm Al HVL.
    """
    from .physics.xsection import mass_coefficients

    al = filter_medium("aluminium")
    mu_target_per_cm = math.log(2.0) / (spectrum.hvl_mm_al() / _MM_PER_CM)

    def excess(e_kev: float) -> float:
        return float(mass_coefficients(al, np.array([e_kev]))["total"][0] * al.density_g_cm3 - mu_target_per_cm)

    lo, hi = _EFFECTIVE_ENERGY_BOUNDS_KEV
    if excess(lo) < 0 or excess(hi) > 0:
        raise InputError(f"effective_energy_kev: the spectrum's HVL ({spectrum.hvl_mm_al():.3g} mm Al) has no "
                         f"effective energy within {lo:g}-{hi:g} keV")
    return float(brentq(excess, lo, hi, xtol=1e-4))


def relative_attenuation(geometry: "VoxelGeometry", energy_kev: float) -> np.ndarray:
    """Per voxel, the linear attenuation coefficient relative to water's, ``mu / mu_w``, at
    ``energy_kev``: the ``CT / 1000 + 1`` of an ideal CT image (AAPM Report 220).

    Parameters
    ----------
    geometry : ctdose.physics.mc.VoxelGeometry
    energy_kev : float

    Returns
    -------
    ndarray [z, y, x] float64
    """
    geometry.validate()
    mass_ratio = _mass_attenuation_over_water(geometry.media, energy_kev)
    return mass_ratio[np.asarray(geometry.media_index)] * np.asarray(geometry.density_g_cm3, dtype=np.float64)


def _mass_attenuation_over_water(media, energy_kev: float) -> np.ndarray:
    """Per medium, ``(mu/rho) / mu_w`` at ``energy_kev`` (cm^3/g): times a voxel's density, its
    ``mu / mu_w``."""
    from .physics.xsection import mass_coefficients

    e = np.array([float(energy_kev)])
    water = get_medium("water")
    mu_w = mass_coefficients(water, e)["total"][0] * water.density_g_cm3
    return np.array([mass_coefficients(m, e)["total"][0] for m in media]) / mu_w


def water_equivalent_diameter_cm(geometry: "VoxelGeometry", energy_kev: float,
                                 slices: slice | np.ndarray | None = None) -> np.ndarray:
    """AAPM Report 220's water-equivalent diameter of every axial slice (cm).

    ``D_w = 2 sqrt(A_w / pi)`` with ``A_w`` the slice's sum of ``mu / mu_w`` times the pixel
    area (:func:`relative_attenuation`). Air outside the patient adds about 0.1 % of its area
    per unit ``mu / mu_w`` (0.001); the report's patient contour leaves it out, so voxels below
    :data:`ctdose.physics.void.VOID_DENSITY_G_CM3` count as empty here.

    Parameters
    ----------
    geometry : ctdose.physics.mc.VoxelGeometry
    energy_kev : float
        The beam's effective energy (:func:`effective_energy_kev`). Only bone's ratio depends
        on it much (3.5 at 49 keV, 2.5 at 70 keV for the rib bone medium): a CT image's numbers
        reflect a beam hardened by the patient, above the effective energy of the tube's output,
        and in the smoke cohort's thoraxes D_w at 49 keV exceeds D_w at 70 keV by up to 4.5 %
        (0.1 % where the central slice holds little bone).
    slices : slice or index array, optional
        Which slices (default all).

    Returns
    -------
    ndarray (n_slices,)
        cm; 0 for a slice without matter.

    Examples
    --------
    A water cylinder of 20 cm diameter has D_w = 20 cm (up to its voxelisation):

    >>> from ctdose.physics.mc import VoxelGeometry
    >>> yy, xx = np.mgrid[-100:100:1.0, -100:100:1.0] + 0.5
    >>> disc = (xx**2 + yy**2 <= 100.0**2)[None]
    >>> geo = VoxelGeometry(disc.astype(np.uint8), disc.astype(np.float32), [get_medium("air"), get_medium("water")],
    ...                     (10.0, 1.0, 1.0), (0.0, -99.5, -99.5))
    >>> round(float(water_equivalent_diameter_cm(geo, 60.0)[0]), 2)
    20.0
    """
    from .physics.void import void_mask

    geometry.validate()
    index, rho = np.asarray(geometry.media_index), np.asarray(geometry.density_g_cm3, dtype=np.float64)
    if slices is not None:  # only the slices asked for
        index, rho = index[slices], rho[slices]
    ratio = _mass_attenuation_over_water(geometry.media, energy_kev)[index] * rho
    ratio[void_mask(rho)] = 0.0
    _, dy_mm, dx_mm = (float(v) for v in geometry.spacing_mm)
    area_cm2 = ratio.sum(axis=(1, 2)) * dy_mm * dx_mm / _MM2_PER_CM2
    return 2.0 * np.sqrt(area_cm2 / math.pi)
