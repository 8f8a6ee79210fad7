"""Fluorescence photons after photoabsorption: which lines the Monte Carlo transports.

After a photoelectric absorption in shell s of element Z, the vacancy is filled either by an
Auger electron or by a fluorescence photon of one of the shell's lines (fluorescence yield
omega_s, radiative rates of the lines). For the elements of the body (Z <= 20: the K lines of
calcium at 3.7 keV and below) the photon's mean free path is far below a voxel and the engine
deposits it where the absorption happened. For heavier elements a user may put into a
geometry (iodine or barium contrast, gadolinium, tin, tungsten, gold, lead) the K lines
(28.6 keV for iodine, 75 keV for lead) travel millimetres to centimetres: depositing them
locally overestimates the dose where the heavy element is and misses the dose around it.

Every line of at least ``FLUORESCENCE_MIN_KEV`` is therefore transported as a new photon,
emitted isotropically from the absorption site (the absorbed photon becomes the fluorescence
photon: same history, same weight); weaker lines and the cascades that follow the first
emission (an L line after a K line, Auger electrons) stay local. At 10 keV a photon's mean
free path in soft tissue is 1.9 mm (water: mu/rho = 5.33 cm^2/g, NIST XCOM), below or at the
size of a CT voxel; the K lines of iron (6.4 keV, in blood) and of lighter elements are
below the threshold, so the media of the compendium's phantoms transport no line and their
results are unchanged.

Per medium and energy the probability of each line per photoabsorption is

.. math:: P_l(E) = \\frac{\\sum_i w_i\\, \\sigma_{l,i}(E)}{\\sum_i w_i\\, \\tau_i(E)}

with :math:`\\sigma_{l,i}` xraylib's ``CS_FluorLine_Kissel_no_Cascade`` (the partial
photoelectric cross section of the line's shell times its fluorescence yield and radiative
rate, without cascades: one photon per absorption at most) and :math:`\\tau_i` ``CS_Photo``,
the cross section the transport samples photoabsorption with. The energy the absorption
transfers to electrons is then :math:`E - \\sum_l P_l E_l`, which the kerma estimators score
(:func:`ctdose.physics.transport.build_tables`), so that the kerma scored at the absorption
and the dose the fluorescence photon deposits later add up to the photon's energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xraylib_np

from .xsection import _FLUOR_LINES

__all__ = ["FLUORESCENCE_MIN_KEV", "FLUORESCENCE_MAX_LINES", "FluorescenceTable", "fluorescence_table"]

#: Lines of this energy (keV) and above are transported as photons; weaker ones are deposited
#: at the absorption site (mean free path in soft tissue at 10 keV: 1.9 mm).
FLUORESCENCE_MIN_KEV = 10.0
#: At most this many lines per medium (the most probable ones: for one heavy element, its
#: K alpha 1, K alpha 2, K beta 1, K beta 3, K beta 2 lines and its strongest L lines); the others
#: stay local, and the scored energy transfer counts them as local (consistent).
FLUORESCENCE_MAX_LINES = 8


@dataclass(frozen=True)
class FluorescenceTable:
    """Lines transported after photoabsorption, per medium.

    Attributes
    ----------
    line_kev : ndarray (n_media, L) float64
        Line energies (keV); 0 in the unused slots of a medium with fewer than L lines.
    probability : ndarray (n_media, L, n_e) float64
        Probability of each line per photoabsorption in the medium at each grid energy
        (0 below the shell's edge and in unused slots); the sum over lines is at most 1.
    energy_kev : ndarray (n_e,)
        The energy grid (keV).
    """

    line_kev: np.ndarray
    probability: np.ndarray
    energy_kev: np.ndarray

    @property
    def n_lines(self) -> int:
        """Line slots per medium (L)."""
        return int(self.line_kev.shape[1])

    def emitted_fraction(self) -> np.ndarray:
        """Mean energy carried away by transported lines per photoabsorption, as a fraction of
        the absorbed photon's energy: sum_l P_l(E) E_l / E, (n_media, n_e)."""
        return (self.probability * self.line_kev[:, :, None]).sum(axis=1) / self.energy_kev[None, :]


def _line_energies_kev(z: int) -> np.ndarray:
    """Energies (keV) of xraylib's lines of element ``z`` (0 where xraylib has none)."""
    return np.nan_to_num(xraylib_np.LineEnergy(np.array([z], dtype=np.int64), _FLUOR_LINES)[0])


def fluorescence_table(
    media: Sequence, energy_kev: np.ndarray, min_line_kev: float = FLUORESCENCE_MIN_KEV,
    max_lines: int = FLUORESCENCE_MAX_LINES,
) -> FluorescenceTable | None:
    """The lines of at least ``min_line_kev`` of every medium, with their probabilities.

    Parameters
    ----------
    media : sequence of ctdose.materials.Medium
    energy_kev : ndarray (n_e,)
        Energy grid (keV), that of the transport tables.
    min_line_kev : float
        Lines below this energy are not transported.
    max_lines : int
        Line slots per medium: a medium's lines are ranked by their largest probability over
        the grid and the first ``max_lines`` kept.

    Returns
    -------
    FluorescenceTable or None
        None when no medium has a line to transport (the transport then needs no
        fluorescence step at all).

    Examples
    --------
    >>> from ctdose.materials import custom_medium, get_medium
    >>> from ctdose.physics.xsection import default_energy_grid
    >>> fluorescence_table([get_medium("soft_tissue")], default_energy_grid()) is None
    True
    >>> iodine = custom_medium("iodinated water", 1.05, {1: 0.106, 8: 0.844, 53: 0.05})
    >>> tab = fluorescence_table([iodine], default_energy_grid())
    >>> round(float(tab.line_kev[0, 0]), 2)  # iodine K alpha 1
    28.61
    """
    e = np.asarray(energy_kev, dtype=np.float64)
    per_medium: list[list[tuple[float, np.ndarray]]] = []
    for medium in media:
        photo = np.zeros_like(e)
        lines: list[tuple[float, np.ndarray]] = []
        for z, w in sorted(medium.mass_fractions.items()):
            zz = np.array([int(z)], dtype=np.int64)
            photo += w * xraylib_np.CS_Photo(zz, e)[0]
            energy = _line_energies_kev(int(z))
            keep = energy >= float(min_line_kev)
            if not keep.any():
                continue
            sigma = np.nan_to_num(xraylib_np.CS_FluorLine_Kissel_no_Cascade(zz, _FLUOR_LINES[keep], e)[0])
            lines += [(float(el), w * s) for el, s in zip(energy[keep], sigma) if s.max() > 0]
        merged: dict[float, np.ndarray] = {}  # lines of one energy (xraylib's K N2 and K N3): one slot
        for el, s in lines:
            merged[el] = merged.get(el, 0.0) + s
        prob = [(el, np.divide(s, photo, out=np.zeros_like(s), where=photo > 0)) for el, s in merged.items()]
        prob.sort(key=lambda item: -float(item[1].max()))
        per_medium.append(prob[: int(max_lines)])
    n_lines = max((len(p) for p in per_medium), default=0)
    if n_lines == 0:
        return None
    line_kev = np.zeros((len(per_medium), n_lines))
    probability = np.zeros((len(per_medium), n_lines, e.size))
    for m, prob in enumerate(per_medium):
        for j, (el, p) in enumerate(prob):
            line_kev[m, j] = el
            probability[m, j] = np.where(el < e, p, 0.0)  # a line lies below its edge
        total = probability[m].sum(axis=0)
        over = total > 1.0  # the partial cross sections' data against CS_Photo: rescale
        probability[m][:, over] /= total[over]
    return FluorescenceTable(line_kev=line_kev, probability=probability, energy_kev=e)
