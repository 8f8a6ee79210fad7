"""Rows of the transport tables: the uniform energy grid's steps, split at absorption edges.

The transport looks every coefficient up in tables on a uniform energy grid
(:func:`ctdose.physics.xsection.default_energy_grid`, 0.25 keV steps) and interpolates
linearly within a step: one multiply-add, the step found in O(1). A photoelectric edge inside
a step would be smeared over it: in 2 % iodinated water mu/rho would be 51 % too high at
33.10 keV, between the grid point 33.00 keV and iodine's K edge at 33.17 keV. So a step that
holds an edge of one of the media's elements is split there into pieces, each a row of the
tables of its own whose value and slope are fitted to the coefficients just inside its two
ends. The tables are then exact at the grid points and on both sides of every edge, and
linear in between, as on a step without an edge.

A photon finds its row from its step ``i`` and its fraction ``f`` of the step:
``row = base[i] + sum_k (f >= split[i, k])`` (at most :data:`MAX_SPLITS_PER_STEP` splits per
step; unused split slots hold 2, which no fraction reaches). Every row keeps the step's
fraction as its interpolation variable: ``value(E) = a[row] + f b[row]``.

An edge within :data:`SNAP_FRACTION` of a step of a grid point is not split off (its piece
would be narrower than float32 fractions resolve); the grid point takes the values below the
edge as the end of the step before it and those above the edge as the start of the step after
it. Where a step holds more edges than :data:`MAX_SPLITS_PER_STEP`, those that change the media's
photoelectric coefficient most are split; the others stay smeared over their piece.

Where the edges are: xraylib's photoelectric data jump within a few eV of its tabulated edge
energies (iodine K: ``EdgeEnergy`` 33.1694 keV, ``CS_Photo`` jumps at 33.1697 keV; gadolinium
K: 50.2391 and 50.2366 keV), and the fluorescence probabilities
(``CS_FluorLine_Kissel_no_Cascade``) start at the tabulated edge. So each edge is located in
the photoelectric data by bisection, the step is split there, and the pieces' ends are
evaluated outside the interval between the two energies (:data:`EDGE_SIDE_KEV` beyond it),
where both data are on the same side of the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "EDGE_SIDE_KEV",
    "MAX_SPLITS_PER_STEP",
    "SNAP_FRACTION",
    "Edge",
    "EnergyRows",
    "absorption_edges",
    "energy_rows",
]

#: Most pieces a step is split into, less one (a step with both L2 and L3 edges of an element).
MAX_SPLITS_PER_STEP = 2

#: An edge closer than this fraction of a step to a grid point is moved onto the grid point.
SNAP_FRACTION = 1e-3

#: The coefficients just below and above an edge are evaluated this far (keV) outside the
#: interval between the tabulated edge energy and the jump of the photoelectric data.
EDGE_SIDE_KEV = 1e-7

#: xraylib's shells K, L1-L3, M1-M5 (its ``K_SHELL`` = 0 ... ``M5_SHELL`` = 8).
_SHELLS = range(9)

#: An edge's jump is searched within this many keV of its tabulated energy; a rise of the
#: photoelectric coefficient by more than ``_MIN_JUMP`` (relative) there is an edge.
_SEARCH_KEV = 0.01
_MIN_JUMP = 1e-3
_BISECTIONS = 40


@dataclass(frozen=True)
class Edge:
    """One absorption edge: the energies (keV) just below and just above it where coefficients
    are evaluated, where the tables split (``at_kev``, the jump of the photoelectric data), and
    how much it changes the media's photoelectric coefficient (``weight``, cm^2/g)."""

    below_kev: float
    above_kev: float
    at_kev: float
    weight: float


def _photo_jump_kev(z: int, tabulated_kev: float) -> float | None:
    """Where element ``z``'s photoelectric coefficient jumps near ``tabulated_kev`` (the
    lowest energy above the jump, to 1e-12 keV), or None where it does not jump there."""
    import xraylib

    lo, hi = tabulated_kev - _SEARCH_KEV, tabulated_kev + _SEARCH_KEV
    try:
        f_lo, f_hi = xraylib.CS_Photo(z, lo), xraylib.CS_Photo(z, hi)
    except ValueError:
        return None
    if not f_hi > f_lo * (1.0 + _MIN_JUMP):
        return None
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if xraylib.CS_Photo(z, mid) > f_lo * (1.0 + _MIN_JUMP):
            hi = mid
        else:
            lo, f_lo = mid, xraylib.CS_Photo(z, mid)
    return hi


def absorption_edges(media: Sequence, lo_kev: float, hi_kev: float) -> list[Edge]:
    """The absorption edges of the media's elements strictly between ``lo_kev`` and ``hi_kev``,
    sorted by energy (one entry for an edge shared by several media).

    Parameters
    ----------
    media : sequence of ctdose.materials.Medium
    lo_kev, hi_kev : float
        Energy range (keV).

    Returns
    -------
    list of Edge
        ``weight`` is the largest jump of a medium's photoelectric mass coefficient there
        (mass fraction x the element's jump, cm^2/g).

    Examples
    --------
    >>> from ctdose.materials import custom_medium
    >>> iodine_water = custom_medium("iodine water", 1.03, {1: 0.11, 8: 0.87, 53: 0.02})
    >>> [round(e.at_kev, 2) for e in absorption_edges([iodine_water], 10.0, 150.0)]
    [33.17]
    """
    import xraylib

    fractions: dict[int, float] = {}
    for medium in media:
        for z, w in medium.mass_fractions.items():
            fractions[int(z)] = max(fractions.get(int(z), 0.0), float(w))
    edges = []
    for z, w in sorted(fractions.items()):
        for shell in _SHELLS:
            try:
                tabulated = float(xraylib.EdgeEnergy(z, shell))
            except ValueError:
                continue
            if not lo_kev < tabulated < hi_kev:
                continue
            jump = _photo_jump_kev(z, tabulated)
            if jump is None:
                continue
            below = min(tabulated, jump) - EDGE_SIDE_KEV
            above = max(tabulated, jump) + EDGE_SIDE_KEV
            weight = w * (xraylib.CS_Photo(z, above) - xraylib.CS_Photo(z, below))
            if lo_kev < below and above < hi_kev:
                edges.append(Edge(below, above, jump, weight))
    return sorted(edges, key=lambda e: e.at_kev)


@dataclass(frozen=True)
class EnergyRows:
    """The rows of the transport tables on a uniform grid with its edge steps split.

    Attributes
    ----------
    grid_kev : ndarray (n_e,)
        The uniform grid (keV).
    lookup : ndarray (n_e, 1 + MAX_SPLITS_PER_STEP) float32
        Per step its first row, then its split fractions (2 where unused): the table the
        kernels read (``row = lookup[i, 0] + sum_k (f >= lookup[i, 1 + k])``).
    f_start, f_end : ndarray (n_rows,)
        Each row's piece as fractions of its step.
    e_start_kev, e_end_kev : ndarray (n_rows,)
        Where each row's values are evaluated: just inside its piece's ends (keV).
    edges : list of Edge
        The edges the rows respect (split or snapped).
    """

    grid_kev: np.ndarray
    lookup: np.ndarray
    f_start: np.ndarray
    f_end: np.ndarray
    e_start_kev: np.ndarray
    e_end_kev: np.ndarray
    edges: list

    @property
    def n_rows(self) -> int:
        return int(self.f_start.size)

    @property
    def n_e(self) -> int:
        return int(self.grid_kev.size)

    def evaluation_energies(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct energies (keV) at which coefficients are needed, sorted, and the index
        of each row's start and end among them: evaluate once, then ``q[..., start]``."""
        energies, inverse = np.unique(np.concatenate([self.e_start_kev, self.e_end_kev]), return_inverse=True)
        return energies, inverse[: self.n_rows], inverse[self.n_rows:]

    def value_slope(self, at_start: np.ndarray, at_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Value ``a`` and slope ``b`` per row (``value = a + f b``, f the step's fraction) of a
        quantity given just inside each row's ends (arrays (..., n_rows), float64)."""
        at_start = np.asarray(at_start, np.float64)
        at_end = np.asarray(at_end, np.float64)
        slope = (at_end - at_start) / (self.f_end - self.f_start)
        return at_start - self.f_start * slope, slope

    def row_of(self, energy_kev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and step fraction of each energy (keV), as the kernels find them (float64
        reference; the kernels compute in float32)."""
        e = np.asarray(energy_kev, np.float64)
        step = self.grid_kev[1] - self.grid_kev[0]
        pe = np.clip((e - self.grid_kev[0]) / step, 0.0, self.n_e - 1)
        i = pe.astype(np.int64)
        f = pe - i
        row = self.lookup[i, 0].astype(np.int64)
        for k in range(MAX_SPLITS_PER_STEP):
            row += f >= self.lookup[i, 1 + k]
        return row, f


def energy_rows(grid_kev: np.ndarray, media: Sequence) -> EnergyRows:
    """The rows for ``media``'s tables on the uniform grid ``grid_kev`` (keV): one per step,
    and one more per edge split off inside a step (see the module docstring).

    Examples
    --------
    >>> from ctdose.materials import custom_medium
    >>> from ctdose.physics.xsection import default_energy_grid
    >>> water = custom_medium("water", 1.0, {1: 0.111894, 8: 0.888106})
    >>> energy_rows(default_energy_grid(), [water]).n_rows  # oxygen's K edge lies below 1 keV
    597
    """
    e = np.asarray(grid_kev, np.float64)
    n_e = e.size
    step = float(e[1] - e[0])
    # each grid point's values seen from the step before it (left) and after it (right)
    left, right = e.copy(), e.copy()
    splits: list[list[tuple[float, Edge]]] = [[] for _ in range(n_e)]
    kept_edges = []
    for edge in absorption_edges(media, float(e[0]), float(e[-1])):
        pe = (edge.at_kev - e[0]) / step
        i = int(np.floor(pe))
        f = pe - i
        if f < SNAP_FRACTION or f > 1.0 - SNAP_FRACTION:  # onto the nearest grid point
            j = i if f < SNAP_FRACTION else i + 1
            left[j], right[j] = edge.below_kev, edge.above_kev
            kept_edges.append(edge)
        else:
            splits[i].append((f, edge))
    f_start, f_end, e_start, e_end = [], [], [], []
    lookup = np.full((n_e, 1 + MAX_SPLITS_PER_STEP), 2.0)
    for i in range(n_e):
        lookup[i, 0] = len(f_start)
        if i == n_e - 1:  # the last grid point: a row of zero slope
            f_start.append(0.0)
            f_end.append(1.0)
            e_start.append(right[i])
            e_end.append(right[i])
            continue
        inner = sorted(splits[i], key=lambda fe: -fe[1].weight)[:MAX_SPLITS_PER_STEP]
        inner.sort(key=lambda fe: fe[0])
        bounds = [(0.0, right[i])]
        for k, (f, edge) in enumerate(inner):
            lookup[i, 1 + k] = f
            bounds.append((f, edge))
            kept_edges.append(edge)
        bounds.append((1.0, left[i + 1]))
        for (f0, b0), (f1, b1) in zip(bounds[:-1], bounds[1:]):
            f_start.append(f0)
            f_end.append(f1)
            e_start.append(b0.above_kev if isinstance(b0, Edge) else b0)
            e_end.append(b1.below_kev if isinstance(b1, Edge) else b1)
    return EnergyRows(
        grid_kev=e,
        lookup=lookup.astype(np.float32),
        f_start=np.asarray(f_start),
        f_end=np.asarray(f_end),
        e_start_kev=np.asarray(e_start),
        e_end_kev=np.asarray(e_end),
        edges=sorted(kept_edges, key=lambda x: x.at_kev),
    )
