"""Photon interaction coefficients of media (1-150 keV) from elemental xraylib data.

Per element, xraylib gives the photoelectric (``CS_Photo``), incoherent (``CS_Compt``, which
includes the incoherent scattering function) and coherent (``CS_Rayl``) cross sections in
cm^2/g. A medium's mass coefficient follows from the mixture rule

.. math:: (\\mu/\\rho)_{mix} = \\sum_i w_i (\\mu/\\rho)_i .

Mass energy-absorption coefficient
----------------------------------
xraylib's ``CS_Energy`` is wrong below about 60 keV (xraylib issues #176, #255), so
:math:`\\mu_{en}/\\rho` is computed here from its definition (Hubbell 1982; Seltzer 1993):

.. math::

    \\frac{\\mu_{en}}{\\rho} = \\sum_i w_i \\left[
        \\tau_i \\left(1 - \\frac{X_i(E)}{E}\\right) + \\sigma_{inc,i} \\frac{\\langle T \\rangle_i}{E}
    \\right] (1 - g)

* :math:`\\tau_i`: photoelectric cross section; :math:`X_i(E)` the mean fluorescence energy
  emitted per photo-absorption, summed over all K, L and M lines with xraylib's
  ``CS_FluorLine_Kissel_Cascade`` (cascades included).
* :math:`\\sigma_{inc,i} \\langle T \\rangle_i/E`: incoherent scattering times the mean
  fraction of the photon energy given to the electron, with the Klein-Nishina cross section
  weighted by the incoherent scattering function :math:`S_i(x)` and integrated numerically
  over the scattering angle (Gauss-Legendre in :math:`\\cos\\theta`).
* :math:`g`, the fraction of the electrons' energy lost to bremsstrahlung, is below 1e-3 for
  electrons under 150 keV in tissue and is neglected (:math:`g = 0`).
* Coherent scattering transfers no energy.

The momentum-transfer variable is :math:`x = \\sin(\\theta/2)/\\lambda` in 1/Angstrom, as in
xraylib's ``FF_Rayl`` and ``SF_Compt``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xraylib
import xraylib_np
from scipy.constants import physical_constants

from ..errors import InputError
from ..materials import Medium

__all__ = [
    "AttenuationTable",
    "DEFAULT_ENERGY_KEV",
    "attenuation_table",
    "default_energy_grid",
    "form_factor_sq",
    "incoherent_sf",
    "mass_coefficients",
    "momentum_transfer_inv_angstrom",
]

#: electron rest energy in keV (CODATA)
ELECTRON_REST_ENERGY_KEV = physical_constants["electron mass energy equivalent in MeV"][0] * 1e3
#: h c in keV Angstrom (CODATA): lambda[A] = HC_KEV_ANGSTROM / E[keV]
HC_KEV_ANGSTROM = (
    physical_constants["Planck constant in eV/Hz"][0] * physical_constants["speed of light in vacuum"][0]
) * 1e7  # eV m -> keV Angstrom: 1e-3 keV/eV * 1e10 A/m

#: energy range of the tables (keV); xraylib's data start at 1 keV
ENERGY_MIN_KEV = 1.0
ENERGY_MAX_KEV = 150.0
ENERGY_STEP_KEV = 0.25

#: Gauss-Legendre points in cos(theta) for the incoherent energy-transfer integral
_N_ANGLE = 256
#: x grid (1/Angstrom) on which S(x) is tabulated per element before interpolation
_X_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 50.0, 800)])

_LINE_PATTERN = re.compile(r"^(K|L1|L2|L3|M1|M2|M3|M4|M5)([KLMNOPQ]\d)_LINE$")
_FLUOR_LINES = np.array(
    sorted(getattr(xraylib, n) for n in dir(xraylib) if _LINE_PATTERN.match(n)), dtype=np.int64
)


def default_energy_grid() -> np.ndarray:
    """Uniform energy grid 1-150 keV in 0.25 keV steps (597 points), float64, keV."""
    n = int(round((ENERGY_MAX_KEV - ENERGY_MIN_KEV) / ENERGY_STEP_KEV)) + 1
    return ENERGY_MIN_KEV + ENERGY_STEP_KEV * np.arange(n, dtype=np.float64)


DEFAULT_ENERGY_KEV = default_energy_grid()


def momentum_transfer_inv_angstrom(energy_kev: np.ndarray, cos_theta: np.ndarray) -> np.ndarray:
    """Momentum-transfer variable x = sin(theta/2)/lambda in 1/Angstrom."""
    energy_kev = np.asarray(energy_kev, dtype=np.float64)
    sin_half = np.sqrt(np.clip((1.0 - np.asarray(cos_theta, dtype=np.float64)) / 2.0, 0.0, 1.0))
    return sin_half * energy_kev / HC_KEV_ANGSTROM


def _check_energy(energy_kev: np.ndarray) -> np.ndarray:
    e = np.atleast_1d(np.asarray(energy_kev, dtype=np.float64))
    if e.ndim != 1 or e.size == 0:
        raise InputError("energy_kev: expected a non-empty 1-D array")
    if not np.all(np.isfinite(e)) or e.min() < ENERGY_MIN_KEV or e.max() > 1000.0:
        raise InputError(
            f"energy_kev: values must be finite and within {ENERGY_MIN_KEV}-1000 keV "
            f"(got {e.min()}-{e.max()})"
        )
    return e


@lru_cache(maxsize=256)
def _element_arrays(z: int, energies: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Per-element mass coefficients (cm^2/g) on an energy grid."""
    e = np.asarray(energies, dtype=np.float64)
    zz = np.array([z], dtype=np.int64)
    photo = xraylib_np.CS_Photo(zz, e)[0]
    incoh = xraylib_np.CS_Compt(zz, e)[0]
    coh = xraylib_np.CS_Rayl(zz, e)[0]
    # fluorescence energy emitted per unit mass attenuation: sum over lines of
    # sigma_line(E) * E_line (cm^2/g * keV)
    fl_cs = xraylib_np.CS_FluorLine_Kissel_Cascade(zz, _FLUOR_LINES, e)[0]  # (n_line, n_e)
    fl_e = xraylib_np.LineEnergy(zz, _FLUOR_LINES)[0]  # (n_line,)
    fluor_energy = np.nan_to_num(fl_cs).T @ np.nan_to_num(fl_e)
    photo_en = np.clip(photo - fluor_energy / e, 0.0, None)
    incoh_en = incoh * _incoherent_transfer_fraction(z, e)
    return {"photo": photo, "incoh": incoh, "coh": coh, "photo_en": photo_en, "incoh_en": incoh_en}


@lru_cache(maxsize=128)
def _sf_table(z: int) -> np.ndarray:
    return xraylib_np.SF_Compt(np.array([z], dtype=np.int64), _X_GRID)[0]


@lru_cache(maxsize=128)
def _ff_table(z: int) -> np.ndarray:
    return xraylib_np.FF_Rayl(np.array([z], dtype=np.int64), _X_GRID)[0]


def _interp_x(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if np.any(~np.isfinite(x)) or np.any(x < 0):
        raise InputError("x_inv_angstrom: values must be finite and >= 0")
    return np.interp(x, _X_GRID, table, right=table[-1])


def _incoherent_transfer_fraction(z: int, energy_kev: np.ndarray) -> np.ndarray:
    """Mean fraction <T>/E of the photon energy given to the electron in incoherent scattering.

    Klein-Nishina weighted by S(x, Z), integrated over cos(theta) by Gauss-Legendre.
    """
    mu, weight = np.polynomial.legendre.leggauss(_N_ANGLE)
    e = energy_kev[:, None]
    kappa = e / ELECTRON_REST_ENERGY_KEV
    ratio = 1.0 / (1.0 + kappa * (1.0 - mu[None, :]))  # k'/k
    kn = ratio**2 * (ratio + 1.0 / ratio - (1.0 - mu[None, :] ** 2))
    s = np.interp(momentum_transfer_inv_angstrom(e, mu[None, :]), _X_GRID, _sf_table(z))
    w = kn * s * weight[None, :]
    total = w.sum(axis=1)
    transfer = (w * (1.0 - ratio)).sum(axis=1)
    return np.divide(transfer, total, out=np.zeros_like(transfer), where=total > 0)


def mass_coefficients(medium: Medium, energy_kev: np.ndarray) -> dict[str, np.ndarray]:
    """Mass coefficients of one medium (cm^2/g) at the given energies (keV).

    Returns
    -------
    dict of ndarray
        ``photo``, ``incoh``, ``coh``, ``total`` (attenuation) and ``en``
        (energy absorption, see the module docstring), each shaped like ``energy_kev``.
    """
    e = _check_energy(energy_kev)
    if not medium.mass_fractions:
        raise InputError(f"medium {medium.name!r}: no elemental composition")
    key = tuple(float(v) for v in e)
    out = {k: np.zeros_like(e) for k in ("photo", "incoh", "coh", "en")}
    for z, w in medium.mass_fractions.items():
        el = _element_arrays(int(z), key)
        out["photo"] += w * el["photo"]
        out["incoh"] += w * el["incoh"]
        out["coh"] += w * el["coh"]
        out["en"] += w * (el["photo_en"] + el["incoh_en"])
    out["total"] = out["photo"] + out["incoh"] + out["coh"]
    return out


@dataclass
class AttenuationTable:
    """Mass interaction coefficients of several media on one energy grid.

    All coefficient arrays are float64 with shape ``(n_media, n_energy)`` in cm^2/g.

    Attributes
    ----------
    energy_kev : ndarray, shape (n_energy,)
        Energy grid in keV.
    media : list of Medium
    photo_cm2_g, incoh_cm2_g, coh_cm2_g, total_cm2_g : ndarray
        Photoelectric, incoherent, coherent and total mass attenuation coefficients.
    en_cm2_g : ndarray
        Mass energy-absorption coefficient mu_en/rho.
    density_g_cm3 : ndarray, shape (n_media,)
    """

    energy_kev: np.ndarray
    media: list[Medium]
    photo_cm2_g: np.ndarray
    incoh_cm2_g: np.ndarray
    coh_cm2_g: np.ndarray
    total_cm2_g: np.ndarray
    en_cm2_g: np.ndarray
    density_g_cm3: np.ndarray

    @property
    def media_names(self) -> list[str]:
        return [m.name for m in self.media]

    def mu_total_per_cm(self) -> np.ndarray:
        """Linear attenuation coefficient in 1/cm, shape (n_media, n_energy)."""
        return self.total_cm2_g * self.density_g_cm3[:, None]

    def mu_en_per_cm(self) -> np.ndarray:
        """Linear energy-absorption coefficient in 1/cm, shape (n_media, n_energy)."""
        return self.en_cm2_g * self.density_g_cm3[:, None]

    def interp(self, name: str, energy_kev: np.ndarray, quantity: str = "total") -> np.ndarray:
        """Log-log interpolation of one medium's coefficient (cm^2/g) at ``energy_kev``."""
        if name not in self.media_names:
            raise InputError(f"medium {name!r} is not in this table ({self.media_names})")
        table = getattr(self, f"{quantity}_cm2_g")[self.media_names.index(name)]
        e = np.asarray(energy_kev, dtype=np.float64)
        return np.exp(np.interp(np.log(e), np.log(self.energy_kev), np.log(np.maximum(table, 1e-300))))


def attenuation_table(
    media: Sequence[Medium], energy_kev: np.ndarray | None = None
) -> AttenuationTable:
    """Interaction coefficients of ``media`` on an energy grid.

    Parameters
    ----------
    media : sequence of Medium
    energy_kev : ndarray, optional
        Energies in keV (default :func:`default_energy_grid`, 1-150 keV in 0.25 keV steps;
        on that grid every element edge above 1 keV falls between two points: coefficients are
        exact at the points; the transport tables split a step at an edge,
        :mod:`ctdose.physics.energy_rows`).

    Returns
    -------
    AttenuationTable

    Raises
    ------
    InputError
        No media, a medium without composition, or energies outside 1-1000 keV.
    """
    media = list(media)
    if not media:
        raise InputError("attenuation_table: no media given")
    e = default_energy_grid() if energy_kev is None else _check_energy(energy_kev)
    rows = [mass_coefficients(m, e) for m in media]
    stack = {k: np.stack([r[k] for r in rows]) for k in ("photo", "incoh", "coh", "total", "en")}
    return AttenuationTable(
        energy_kev=e.copy(),
        media=media,
        photo_cm2_g=stack["photo"],
        incoh_cm2_g=stack["incoh"],
        coh_cm2_g=stack["coh"],
        total_cm2_g=stack["total"],
        en_cm2_g=stack["en"],
        density_g_cm3=np.array([m.density_g_cm3 for m in media], dtype=np.float64),
    )


def mixture_weights_mol_g(medium: Medium) -> dict[int, float]:
    r"""Moles of atoms of each element per gram of ``medium``, :math:`w_i / A_i` (mol/g).

    The weights of the mixture rule for per-atom quantities (scattering functions, squared
    form factors): the mixture's value per gram is :math:`\sum_i (w_i/A_i) q_i`.
    """
    if not medium.mass_fractions:
        raise InputError(f"medium {medium.name!r}: no elemental composition")
    return {int(z): float(w) / xraylib.AtomicWeight(int(z)) for z, w in medium.mass_fractions.items()}


def element_incoherent_sf(z: int, x_inv_angstrom: np.ndarray) -> np.ndarray:
    """Incoherent scattering function S(x) of element ``z`` (per atom), x in 1/Angstrom."""
    return _interp_x(_sf_table(int(z)), np.asarray(x_inv_angstrom, dtype=np.float64))


def _mixture_over_a(medium: Medium, x: np.ndarray, table) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for z, coef in mixture_weights_mol_g(medium).items():
        out += coef * table(z, x)
    return out


def form_factor_sq(medium: Medium, x_inv_angstrom: np.ndarray) -> np.ndarray:
    """Squared atomic form factor of a mixture, :math:`\\sum_i (w_i/A_i) F_i(x)^2` (mol/g).

    Proportional to the coherent differential cross section per unit mass divided by the
    Thomson cross section; at x = 0 it equals :math:`\\sum_i w_i Z_i^2 / A_i`.

    Parameters
    ----------
    medium : Medium
    x_inv_angstrom : ndarray
        x = sin(theta/2)/lambda in 1/Angstrom (>= 0).
    """
    return _mixture_over_a(
        medium, x_inv_angstrom, lambda z, x: _interp_x(_ff_table(z), x) ** 2
    )


def incoherent_sf(medium: Medium, x_inv_angstrom: np.ndarray) -> np.ndarray:
    """Incoherent scattering function of a mixture, :math:`\\sum_i (w_i/A_i) S_i(x)` (mol/g).

    Tends to :math:`\\sum_i w_i Z_i / A_i` (electrons per gram / N_A) for large x.

    Parameters
    ----------
    medium : Medium
    x_inv_angstrom : ndarray
        x = sin(theta/2)/lambda in 1/Angstrom (>= 0).
    """
    return _mixture_over_a(medium, x_inv_angstrom, element_incoherent_sf)
