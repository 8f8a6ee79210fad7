"""Media for radiation transport: elemental composition, mass density, electron density.

The media and their names are fixed by ``docs/architecture.md``; their data live in
``ctdose/data/media.csv`` (densities) and ``ctdose/data/media_compositions.csv`` (mass
fractions, long form ``medium,Z,mass_fraction``), each citing its source.

Two density sets are shipped:

``"paper"`` (default)
    The mass densities of Kuhlmann et al., Table 2 (used by the paper's MC).
``"icru46"``
    The ICRU Report 46 (1992) densities of the same compositions.

Note on the paper's Table 2: its electron-density column equals the ICRU 46 values *at the
ICRU 46 densities*, not at the densities of its own density column. For muscle the paper lists
1.04 g/cm3 and 3.48e29 m^-3, but 3.48e29 m^-3 needs 1.05 g/cm3 (1.04 g/cm3 gives 3.44e29 m^-3);
the same holds for fat (0.92 vs 0.95), lung (0.27 vs 0.26), brain (1.03 vs 1.04) and bone
(1.85 vs 1.92). ``electron_density_map(..., density_set="icru46")`` reproduces the paper's
electron-density column; ``density_set="paper"`` is consistent with the paper's MC densities.

The electron density of a medium is

.. math:: n_e = \\rho \\, N_A \\sum_i w_i Z_i / A_i

with :math:`\\rho` the mass density, :math:`w_i` the mass fraction, :math:`Z_i` the atomic
number and :math:`A_i` the standard atomic weight (g/mol, from xraylib) of element *i*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import xraylib
from scipy.constants import Avogadro

from ._data import read_table
from .errors import InputError

__all__ = [
    "DENSITY_SETS",
    "Medium",
    "check_composition",
    "custom_medium",
    "electron_density_map",
    "filter_medium",
    "get_medium",
    "media_list",
    "media_names",
    "medium_index_map",
    "medium_of_label",
]

#: density sets shipped in ``media.csv`` -> column name
DENSITY_SETS = {"paper": "density_paper_g_cm3", "icru46": "density_icru46_g_cm3"}

_CM3_PER_M3 = 1.0e6
_MAX_Z = 98  # xraylib covers Z = 1..98 for all cross sections used in ctdose
_FRACTION_TOLERANCE = 1.0e-6


def atomic_weight_g_mol(z: int) -> float:
    """Standard atomic weight of element ``z`` in g/mol (xraylib)."""
    return float(xraylib.AtomicWeight(int(z)))


@dataclass(frozen=True)
class Medium:
    """A homogeneous medium.

    Parameters
    ----------
    name : str
        Medium name (for example ``"muscle"``).
    density_g_cm3 : float
        Mass density in g/cm3.
    mass_fractions : Mapping[int, float]
        Atomic number Z -> mass fraction; fractions sum to 1.

    Use :func:`custom_medium` to build a validated medium from user input.
    """

    name: str
    density_g_cm3: float
    mass_fractions: Mapping[int, float] = field(hash=False, compare=True)

    def __hash__(self) -> int:
        return hash((self.name, self.density_g_cm3, tuple(sorted(self.mass_fractions.items()))))

    def z_over_a_mol_g(self) -> float:
        """Mean Z/A in mol/g: :math:`\\sum_i w_i Z_i / A_i`."""
        return float(sum(w * z / atomic_weight_g_mol(z) for z, w in self.mass_fractions.items()))

    def electron_density_m3(self) -> float:
        """Electron density in electrons per m^3 (:math:`\\rho N_A \\sum w_i Z_i/A_i`)."""
        return self.density_g_cm3 * _CM3_PER_M3 * Avogadro * self.z_over_a_mol_g()

    def with_density(self, density_g_cm3: float) -> Medium:
        """The same composition at another mass density (g/cm3)."""
        return custom_medium(self.name, density_g_cm3, self.mass_fractions)


def custom_medium(name: str, density_g_cm3: float, mass_fractions: Mapping[int, float]) -> Medium:
    """Build a validated medium.

    Parameters
    ----------
    name : str
        Medium name.
    density_g_cm3 : float
        Mass density in g/cm3, finite and > 0.
    mass_fractions : Mapping[int, float]
        Z -> mass fraction (w >= 0). Fractions summing to 1 within 1 % are renormalised
        to sum exactly 1; elements with w = 0 are dropped.

    Returns
    -------
    Medium

    Raises
    ------
    InputError
        Empty composition, Z outside 1..98, negative or non-finite fractions, fractions not
        summing to 1, or a density that is not finite and positive.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"medium {name!r}: the name must be a non-empty string")
    try:
        density = float(density_g_cm3)
    except (TypeError, ValueError):
        raise InputError(f"medium {name!r}: density {density_g_cm3!r} is not a number") from None
    if not math.isfinite(density) or density <= 0.0:
        raise InputError(f"medium {name!r}: density must be finite and > 0 g/cm3, got {density}")
    fractions = check_composition(name, mass_fractions)
    return Medium(name=name, density_g_cm3=density, mass_fractions=fractions)


def check_composition(name: str, mass_fractions: Mapping[int, float]) -> dict[int, float]:
    """Check an elemental composition and return it renormalised to sum exactly 1.

    The composition checks of :func:`custom_medium`, for a :class:`Medium` built directly
    (``ctdose.physics.mc.VoxelGeometry.validate`` applies them to every medium).

    Parameters
    ----------
    name : str
        Medium name (for the messages).
    mass_fractions : Mapping[int, float]
        Z -> mass fraction (w >= 0), summing to 1 within 1 %.

    Returns
    -------
    dict[int, float]
        Z -> mass fraction, sorted by Z, without the elements of w = 0, summing to 1.

    Raises
    ------
    InputError
        Empty composition, Z outside 1..98, negative or non-finite fractions, or fractions
        not summing to 1 within 1 %.
    """
    if mass_fractions is not None and not hasattr(mass_fractions, "items"):
        raise InputError(f"medium {name!r}: the composition must map Z to a mass fraction, got {mass_fractions!r}")
    if mass_fractions is None or len(mass_fractions) == 0:
        raise InputError(f"medium {name!r}: no elemental composition given")
    clean: dict[int, float] = {}
    for z, w in mass_fractions.items():
        try:
            zi, wf = int(z), float(w)
        except (TypeError, ValueError):
            raise InputError(f"medium {name!r}: bad composition entry {z!r}: {w!r}") from None
        if zi != z or not 1 <= zi <= _MAX_Z:
            raise InputError(f"medium {name!r}: atomic number {z!r} outside 1..{_MAX_Z}")
        if not math.isfinite(wf) or wf < 0.0:
            raise InputError(f"medium {name!r}: mass fraction of Z={zi} is {w!r} (must be >= 0)")
        if wf > 0.0:
            clean[zi] = clean.get(zi, 0.0) + wf
    total = sum(clean.values())
    if total <= 0.0:
        raise InputError(f"medium {name!r}: all mass fractions are zero")
    if abs(total - 1.0) > 0.01:
        raise InputError(f"medium {name!r}: mass fractions sum to {total:.4f}, expected 1")
    return {z: w / total for z, w in sorted(clean.items())}


@lru_cache(maxsize=None)
def _compositions() -> dict[str, dict[int, float]]:
    table = read_table("media_compositions.csv")
    out: dict[str, dict[int, float]] = {}
    for row in table.itertuples(index=False):
        out.setdefault(str(row.medium), {})[int(row.Z)] = float(row.mass_fraction)
    return out


def media_names() -> list[str]:
    """Names of the shipped media, in the order of ``media.csv``."""
    return [str(n) for n in read_table("media.csv")["name"]]


def get_medium(name: str, density_set: str = "paper") -> Medium:
    """A shipped medium.

    Parameters
    ----------
    name : str
        One of :func:`media_names` (``air``, ``lung``, ``fat``, ``muscle``, ...).
    density_set : {"paper", "icru46"}
        Which mass densities to use (see the module docstring).

    Raises
    ------
    InputError
        Unknown medium, unknown density set, or a medium with no composition.
    """
    return _get_medium(str(name), str(density_set))


@lru_cache(maxsize=None)
def _get_medium(name: str, density_set: str) -> Medium:
    if density_set not in DENSITY_SETS:
        raise InputError(f"density_set {density_set!r}: choose one of {', '.join(DENSITY_SETS)}")
    table = read_table("media.csv").set_index("name")
    if name not in table.index:
        raise InputError(
            f"ctdose/data/media.csv: unknown medium {name!r}; known: {', '.join(table.index)}"
        )
    comp = _compositions().get(name)
    if not comp:
        raise InputError(f"ctdose/data/media_compositions.csv: medium {name!r} has no composition")
    return custom_medium(name, float(table.loc[name, DENSITY_SETS[density_set]]), comp)


def filter_medium(name: str = "aluminium") -> Medium:
    """A pure-element beam-filter medium (``aluminium``, ``copper``, ``titanium``, ``tin``).

    Densities from ``ctdose/data/filter_media.csv`` (NIST).
    """
    table = read_table("filter_media.csv").set_index("name")
    key = {"al": "aluminium", "aluminum": "aluminium", "cu": "copper", "ti": "titanium", "sn": "tin"}.get(
        str(name).lower(), str(name).lower()
    )
    if key not in table.index:
        raise InputError(
            f"ctdose/data/filter_media.csv: unknown filter medium {name!r}; known: {', '.join(table.index)}"
        )
    return custom_medium(key, float(table.loc[key, "density_g_cm3"]), {int(table.loc[key, "Z"]): 1.0})


def media_list(names: Sequence[str] | None = None, density_set: str = "paper") -> list[Medium]:
    """Shipped media by name (all of them when ``names`` is None), in the given order."""
    if names is None:
        names = media_names()
    return [get_medium(n, density_set) for n in names]


def medium_of_label() -> list[str]:
    """Medium name per label id from ``ctdose/data/organs.csv`` (index = label id).

    Label ids missing from the table get ``""``.

    Raises
    ------
    InputError
        ``organs.csv`` is missing or names a medium that is not shipped.
    """
    return _organs_medium_of_label()


def _organs_medium_of_label() -> list[str]:
    table = read_table("organs.csv")
    if "id" not in table or "medium" not in table:
        raise InputError("ctdose/data/organs.csv: expected columns 'id' and 'medium'")
    known = set(media_names())
    out = [""] * (int(table["id"].max()) + 1)
    for lab, med in zip(table["id"], table["medium"]):
        med = str(med).strip()
        if med not in known:
            raise InputError(f"ctdose/data/organs.csv: label {lab} has unknown medium {med!r}")
        out[int(lab)] = med
    return out


def _label_lut(labels: np.ndarray, medium_of_label: Sequence[str] | None) -> list[str]:
    if medium_of_label is None:
        medium_of_label = _organs_medium_of_label()
    labels = np.asarray(labels)
    if labels.size and (labels.dtype.kind not in "ui" or labels.min() < 0):
        raise InputError("labels: expected a non-negative integer array")
    present = np.unique(labels)
    lut = list(medium_of_label)
    missing = [int(v) for v in present if v >= len(lut) or not lut[int(v)]]
    if missing:
        raise InputError(f"labels: ids {missing} have no medium (see ctdose/data/organs.csv)")
    return lut


def electron_density_map(
    labels: np.ndarray,
    medium_of_label: Sequence[str] | None = None,
    density_set: str = "paper",
) -> np.ndarray:
    """Electron density per voxel from a label volume.

    Parameters
    ----------
    labels : ndarray of int, shape (z, y, x)
        Label ids.
    medium_of_label : sequence of str, optional
        Medium name per label id; default: the ``medium`` column of ``ctdose/data/organs.csv``.
    density_set : {"paper", "icru46"}
        Density set (``"icru46"`` reproduces the paper's Table 2 electron-density column).

    Returns
    -------
    ndarray of float32, same shape as ``labels``
        Electrons per m^3.

    Raises
    ------
    InputError
        A label id without a medium, or an unknown medium.
    """
    labels = np.asarray(labels)
    lut = _label_lut(labels, medium_of_label)
    values = np.zeros(len(lut), dtype=np.float64)
    cache: dict[str, float] = {}
    for i, name in enumerate(lut):
        if name:
            if name not in cache:
                cache[name] = get_medium(name, density_set).electron_density_m3()
            values[i] = cache[name]
    return values[labels].astype(np.float32)


def medium_index_map(
    labels: np.ndarray,
    media_names: Sequence[str],
    medium_of_label: Sequence[str] | None = None,
) -> np.ndarray:
    """Index into ``media_names`` per voxel (for transport and ``.egsphant`` export).

    Parameters
    ----------
    labels : ndarray of int, shape (z, y, x)
    media_names : sequence of str
        The media of the geometry, in the order the indices refer to (at most 255).
    medium_of_label : sequence of str, optional
        Medium name per label id; default from ``ctdose/data/organs.csv``.

    Returns
    -------
    ndarray of uint8, same shape as ``labels``

    Raises
    ------
    InputError
        A label whose medium is not in ``media_names``.
    """
    names = list(media_names)
    if len(names) > 255:
        raise InputError(f"media_names: at most 255 media, got {len(names)}")
    labels = np.asarray(labels)
    lut = _label_lut(labels, medium_of_label)
    index = np.zeros(len(lut), dtype=np.uint8)
    present = set(int(v) for v in np.unique(labels))
    for i, name in enumerate(lut):
        if not name:
            continue
        if name not in names:
            if i in present:
                raise InputError(
                    f"labels: label {i} has medium {name!r}, which is not in media_names {names}"
                )
            continue
        index[i] = names.index(name)
    return index[labels]
