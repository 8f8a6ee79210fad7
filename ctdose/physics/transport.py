"""Woodcock (delta) tracking of photons in a voxel grid, vectorised over photons in PyTorch.

One code path runs on CPU and CUDA. The geometry is a box of voxels, each with a medium
index and a mass density; outside the box is vacuum (a photon leaving it has escaped).

Algorithm (per step, for all live photons at once):

1. a free path ``s = -ln(r) / mu_maj(E)`` with the majorant ``mu_maj(E) = max_m
   (mu/rho)_m(E) * rho_max,m`` over the grid's media (a table on the energy grid, its steps
   split at absorption edges; linear interpolation of the table is itself a majorant of every
   medium's interpolated mu);
2. move; a photon outside the box has escaped (its energy is tallied as escaped);
3. look up the voxel (flat index ``(k*ny + j)*nx + i``), its medium and density, and accept
   a real interaction with probability ``mu(E, voxel) / mu_maj(E)``; otherwise the collision
   is virtual and the photon flies on;
4. a real interaction is photoelectric, incoherent or coherent in proportion to the partial
   coefficients (see :mod:`ctdose.physics.interactions`);
5. a photon below the energy cutoff deposits its energy in its voxel and stops.

Electrons are not transported: at CT energies (below 150 keV) their CSDA range in tissue is
below 0.3 mm, shorter than a voxel, so their kinetic energy is deposited where they are set in
motion (the kerma approximation; the paper's EGSnrc set-up likewise scores dose where
electron transport does not matter at these voxel sizes).

Estimators
----------
``"expected_track_length"`` (default)
    No Woodcock tracking: every flight (from the grid entry or an interaction) is traversed
    voxel by voxel to the grid's exit (:mod:`ctdose.physics.ray_kernels`). Each voxel scores
    the photon's expected energy transfer there, ``w E mu_tr T (1 - exp(-mu l)) / mu`` with the
    transmission ``T`` to the voxel and the chord ``l`` (exact for voxels of one medium), and
    the real collision is placed where the optical depth reaches ``-ln U`` on the same
    traversal; beyond a transmission of 1e-3 the scoring continuation plays Russian roulette.
    The primary dose then has no noise of its own, and scattered photons score wherever they
    could go: about 3x less variance than ``"track_length"`` per history for about twice the
    work (the crossings to the exit), measured in ``benchmarks/bench_mc.py``.
``"track_length"``
    The track-length estimator of collision kerma: along every flight segment the photon
    scores ``int w E mu_tr(E, p(t)) dt`` with ``mu_tr = mu_photo (1 - sum_l P_l E_l / E) + mu_incoh
    <1 - E'/E>`` of the sampled models (collision kerma; the fluorescence lines ``l`` of 10 keV
    and more leave as photons, :mod:`ctdose.physics.fluorescence`, weaker ones are local),
    estimated by stratified
    (systematic) sampling at one point per voxel edge (at most ``_TRACK_MAX_SLOTS`` points per
    flight; :func:`ctdose.physics.kernels.segment_points`); every voxel a photon crosses gets
    its share. Real interactions then deposit nothing, except at the energy cutoff. The step
    runs as fused kernels compiled with :func:`torch.compile` (:mod:`ctdose.physics.kernels`):
    free flight, scoring, and the interactions, sampled with a fixed number of rejection
    proposals per photon and pass (the few photons with none accepted get another pass).
``"collision"``
    The expected-value estimator on the Woodcock collision sites: at *every* tentative
    collision (real or virtual) the photon scores ``w E mu_tr(E, voxel) / mu_maj(E)``. The
    sites form a Poisson process of rate mu_maj along the path, so the expectation is the
    same track-length integral, but only the voxels with a site score (noisier in small or
    thin voxels unless a majorant floor adds sites). Fused kernels as the track-length
    estimator's (:func:`ctdose.physics.kernels.advance_collision`), one site per step; where
    most sites are real (water-like phantoms) the interactions are sampled in the same kernel
    pass over the pool (:func:`ctdose.physics.kernels.collide_interact`), and where most are
    virtual (a thorax under a bone majorant) a photon flies through up to four sites per call
    (:func:`ctdose.physics.kernels.advance_collision_sites`), and through the air far from
    matter with the air's own majorant, without sites where that path is longer than the
    distance to the nearest matter (:mod:`ctdose.physics.void`).
``"analogue"``
    Energy is deposited at real interactions: the whole photon energy at photoabsorption,
    E - E' at incoherent scattering, the remaining energy at the cutoff. Eager PyTorch.

All four are unbiased; tests compare them region by region.

Statistics: photons run in ``n_batches`` independent batches; the per-voxel mean and its
standard error follow from the batch sums (the batch method). All batches share one pool of
photons in flight (each photon carries its batch's tally offset), so the pool stays full and
only one short tail of nearly empty steps remains at the very end.

When few photons are left in flight (the tail of a run, and small runs) an analogue step is
dispatch-bound; each photon then samples several successive free paths in one step
(``n_paths`` of :func:`_step`): the tentative sites lie on one ray, the first real collision
or exit ends the flight, and the sites before it are virtual. This is the same random process
as one path per step, with many fewer (larger) tensor operations.

The majorant can be local to blocks of voxels (:func:`build_block_majorant`): the free
path is sampled with the block's majorant and cut at the block face (exact by the memoryless
exponential law); a photon stopped at a face is put just past it along the exit axis, so it
always makes progress. In a thorax the global majorant is set by bone (several times soft
tissue at low energies); blocks without bone then need far fewer virtual collisions. It is the
default with the track-length estimator and validated against the global majorant.

Optional weight windows (``window`` of :func:`run_transport`, ``simulate(weight_window=True)``)
split and roulette the photons against target weights per block from a pilot run
(:mod:`ctdose.physics.weight_window`): unbiased, more photons where the fluence is low (the
far side of a thick phantom). The track-length estimator applies them after every step
(Woodcock flights are short); the expected-track-length estimator along its whole flights
(:func:`_step_expected_track_length_window`): its collisions follow the window voxel by voxel,
as the copies of a split photon would collide.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .energy_rows import MAX_SPLITS_PER_STEP, EnergyRows, energy_rows
from .fluorescence import FLUORESCENCE_MAX_LINES, FLUORESCENCE_MIN_KEV, FluorescenceTable, fluorescence_table
from .interactions import (
    ScatterTables,
    build_scatter_tables,
    incoherent_transfer_fractions,
    rotate_direction,
    sample_coherent,
    sample_incoherent,
)
from .kernels import fluorescence_line, shape_settings
from .weight_window import MAX_POOL_GROWTH, WeightWindow, apply_weight_window

__all__ = [
    "BlockMajorant",
    "build_block_majorant",
    "PhotonState",
    "TransportGrid",
    "TransportTables",
    "TransportTally",
    "build_tables",
    "void_voxel_table",
    "void_majorant",
    "prepare_transport",
    "TransportSetup",
    "attenuate_in_ambient",
    "enter_grid",
    "run_transport",
    "MM_PER_CM",
    "FUSED_ESTIMATORS",
    "WINDOW_ESTIMATORS",
]

#: The estimators that run as fused (compiled) kernels and need a :class:`TrackLengthSetup`.
FUSED_ESTIMATORS = ("expected_track_length", "track_length", "collision")
#: The estimators that take weight windows (:mod:`ctdose.physics.weight_window`).
WINDOW_ESTIMATORS = ("expected_track_length", "track_length")
#: mm per cm (mass coefficients cm^2/g times g/cm^3 give 1/cm; the engine works in mm).
MM_PER_CM = 10.0
#: Relative safety margin on the majorant (float32 rounding of the tables).
_MAJORANT_MARGIN = 1.0 + 1e-5
#: Tentative collision sites per step below which a small pool samples several free paths per
#: photon at once (:func:`_step` ``n_paths``); the tail of a run is dispatch-bound.
_PATH_SITES_PER_STEP = 1 << 16
#: Most free paths sampled per photon and step.
_MAX_PATHS_PER_STEP = 64
#: Distance (mm) a photon entering the box is moved inside past the boundary.
_ENTRY_EPS_MM = 1e-4
#: Track-length estimator: sample spacing along a flight as a fraction of the smallest voxel edge.
_TRACK_SPACING_PER_VOXEL = 1.0
#: Track-length estimator: most points per photon and step (longer flights get proportionally
#: wider spacing; with the block majorant flights end at block faces and rarely need more).
_TRACK_MAX_SLOTS = 64
#: Largest fractional index into a table of n entries is n minus this: linear interpolation
#: then always has the next entry.
_TABLE_INDEX_MARGIN = 1.001
#: Track-length estimator: most points per step (memory of the points' index and score arrays).
_TRACK_SITES_PER_STEP = {"cpu": 1 << 22, "cuda": 1 << 26}


@dataclass
class PhotonState:
    """Structure-of-arrays photon state (float32 tensors of one length).

    Positions in mm in patient coordinates (x, y, z); unit direction (u, v, w) along
    (x, y, z); energy in keV; statistical weight.
    """

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor
    energy_kev: torch.Tensor
    weight: torch.Tensor
    #: int64 offset of the photon's batch in the tally (batch index x voxels), or None
    offset: torch.Tensor | None = None

    _fields = ("x", "y", "z", "u", "v", "w", "energy_kev", "weight", "offset")

    def __len__(self) -> int:
        return int(self.x.numel())

    def _map(self, fn) -> "PhotonState":
        return PhotonState(*(None if getattr(self, f) is None else fn(getattr(self, f)) for f in self._fields))

    def select(self, idx: torch.Tensor) -> "PhotonState":
        return self._map(lambda t: t.index_select(0, idx))

    @staticmethod
    def cat(states: Sequence["PhotonState"]) -> "PhotonState":
        states = [s for s in states if s is not None and len(s) > 0]
        if len(states) == 1:
            return states[0]
        return PhotonState(
            *(
                None if getattr(states[0], f) is None else torch.cat([getattr(s, f) for s in states])
                for f in PhotonState._fields
            )
        )

    def to(self, device) -> "PhotonState":
        return self._map(lambda t: t.to(device))


@dataclass
class TransportGrid:
    """The voxel world on a device.

    Attributes
    ----------
    shape : (nz, ny, nx)
    lo_mm : (x, y, z) of the box corner (outer face of voxel [0, 0, 0])
    spacing_mm : (dx, dy, dz)
    media : uint8 tensor (n_vox,)
    density : float32 tensor (n_vox,) g/cm^3
    """

    shape: tuple[int, int, int]
    lo_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    media: torch.Tensor
    density: torch.Tensor
    #: (n_vox, 2) float32: medium index and density per voxel (one gather per lookup)
    voxel_table: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.voxel_table is None:
            self.voxel_table = torch.stack([self.media.to(torch.float32), self.density.to(torch.float32)], 1)

    @property
    def n_vox(self) -> int:
        nz, ny, nx = self.shape
        return nz * ny * nx

    @property
    def hi_mm(self) -> tuple[float, float, float]:
        nz, ny, nx = self.shape
        n = (nx, ny, nz)
        return tuple(self.lo_mm[i] + n[i] * self.spacing_mm[i] for i in range(3))

    @staticmethod
    def from_arrays(media_index, density_g_cm3, spacing_mm_zyx, origin_mm_zyx, device) -> "TransportGrid":
        media_index = np.ascontiguousarray(media_index, dtype=np.uint8)
        dens = np.ascontiguousarray(density_g_cm3, dtype=np.float32)
        dz, dy, dx = (float(s) for s in spacing_mm_zyx)
        z0, y0, x0 = (float(o) for o in origin_mm_zyx)
        return TransportGrid(
            shape=tuple(int(n) for n in media_index.shape),
            lo_mm=(x0 - dx / 2, y0 - dy / 2, z0 - dz / 2),
            spacing_mm=(dx, dy, dz),
            media=torch.from_numpy(media_index.reshape(-1)).to(device),
            density=torch.from_numpy(dens.reshape(-1)).to(device),
        )


@dataclass
class TransportTables:
    """Per-medium coefficient tables on a uniform energy grid (device tensors).

    Each table has one row per step of the grid, and one more per absorption edge inside a
    step (:mod:`ctdose.physics.energy_rows`); ``*_a`` are values and ``*_b`` slopes per step
    fraction (``value = a + f b``), flattened as ``medium * n_rows + row``; linear coefficients
    are per mm per (g/cm^3).
    """

    e0_kev: float
    de_kev: float
    n_e: int
    n_rows: int
    rows: EnergyRows
    #: (n_e, 1 + MAX_SPLITS_PER_STEP) float32: each step's first row and split fractions
    row_lookup: torch.Tensor
    #: (n_media, n_rows, 2) float64: mu/rho (per mm per g/cm^3) just inside each row's ends
    total_ends: np.ndarray
    total_a: torch.Tensor
    total_b: torch.Tensor
    photo_a: torch.Tensor
    photo_b: torch.Tensor
    incoh_a: torch.Tensor
    incoh_b: torch.Tensor
    tr_a: torch.Tensor
    tr_b: torch.Tensor
    maj_a: torch.Tensor
    maj_b: torch.Tensor
    #: (n_rows, 2) float64: the majorant (1/mm) at each row's ends
    maj_ends: np.ndarray
    scatter: ScatterTables
    #: (n_media * n_rows, 4): total_a, total_b, tr_a, tr_b side by side (one gather per lookup)
    total_tr_ab: torch.Tensor | None = None
    #: fluorescence lines transported after photoabsorption (:mod:`ctdose.physics.fluorescence`):
    #: each line's share of the photoelectric coefficient, P_l x tau (per mm per g/cm^3;
    #: n_media * n_rows, 2 L: values, then slopes per table row), and the line energies
    #: (n_media * L, keV), L = ``FLUORESCENCE_MAX_LINES``; None where no medium has a line
    fl_ab: torch.Tensor | None = None
    fl_e: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.total_tr_ab is None:
            self.total_tr_ab = torch.stack([self.total_a, self.total_b, self.tr_a, self.tr_b], 1)

    def energy_index(self, energy_kev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table row (int64) and step fraction of each energy (keV), as the kernels find them
        (:func:`ctdose.physics.kernels._energy_index`)."""
        pe = ((energy_kev - self.e0_kev) * (1.0 / self.de_kev)).clamp_(0.0, self.n_e - _TABLE_INDEX_MARGIN)
        ie = pe.to(torch.int64)
        fe = pe - ie
        look = self.row_lookup.index_select(0, ie)
        row = look[:, 0]
        for k in range(MAX_SPLITS_PER_STEP):
            row = row + (fe >= look[:, 1 + k]).to(pe.dtype)
        return row.to(torch.int64), fe

    def energy_f(self) -> torch.Tensor:
        """The kernels' ``energy_f``: first grid energy (keV), 1 / step (1/keV), the largest
        fractional step index, then :attr:`row_lookup` flattened (float32)."""
        head = torch.tensor([self.e0_kev, 1.0 / self.de_kev, self.n_e - _TABLE_INDEX_MARGIN],
                            dtype=torch.float32, device=self.row_lookup.device)
        return torch.cat([head, self.row_lookup.reshape(-1)])


@dataclass
class BlockMajorant:
    """Local majorants on a coarse grid of blocks (macro-voxels) of ``block_vox`` voxels.

    ``maj_a`` / ``maj_b``: value and slope per table row, flattened as
    ``block * n_rows + row`` (1/mm); ``n_blocks`` = (nbz, nby, nbx).
    """

    block_vox: int
    n_blocks: tuple[int, int, int]
    maj_a: torch.Tensor
    maj_b: torch.Tensor


def build_block_majorant(
    media_index: np.ndarray,
    density_g_cm3: np.ndarray,
    tab: TransportTables,
    block_vox: int = 8,
    majorant_floor_per_mm: float = 0.0,
) -> BlockMajorant:
    """Per-block majorants: max over the block's voxels of mu(E) (1/mm).

    A photon samples its free path with the majorant of the block it is in and stops at the
    block's face if the path would leave it (no collision there; the exponential law is
    memoryless, so restarting with the next block's majorant is exact). In air and in blocks
    without bone the majorant is far below the global one: fewer virtual collisions.
    """
    mi = np.asarray(media_index)
    rho = np.asarray(density_g_cm3, dtype=np.float32)
    nz, ny, nx = mi.shape
    b = int(block_vox)
    nb = tuple(-(-n // b) for n in (nz, ny, nx))
    n_blocks = nb[0] * nb[1] * nb[2]
    n_media = tab.total_ends.shape[0]
    # block of every voxel (block indices along each axis, broadcast), then the densest voxel
    # of each medium in each block: one grouped maximum over the grid
    bz, by, bx = (np.arange(n, dtype=np.int64) // b for n in (nz, ny, nx))
    block_of = (bz[:, None, None] * nb[1] + by[None, :, None]) * nb[2] + bx[None, None, :]
    rho_bm = np.zeros(n_blocks * n_media, dtype=np.float32)
    np.maximum.at(rho_bm, (block_of * n_media + mi.astype(np.int64)).ravel(), rho.ravel())
    rho_bm = rho_bm.reshape(n_blocks, n_media).astype(np.float64)
    ends = []
    for end in (0, 1):  # the rows' starts, then their ends
        total = tab.total_ends[:, :, end]
        maj = np.zeros((n_blocks, tab.n_rows), dtype=np.float64)
        for m in np.flatnonzero(rho_bm.max(axis=0) > 0):
            sel = np.flatnonzero(rho_bm[:, m] > 0)
            if 2 * sel.size > n_blocks:  # in most blocks: one pass over all of them
                np.maximum(maj, rho_bm[:, m, None] * total[m][None, :], out=maj)
            else:
                maj[sel] = np.maximum(maj[sel], rho_bm[sel, m, None] * total[m][None, :])
        ends.append(np.maximum(maj * _MAJORANT_MARGIN, max(float(majorant_floor_per_mm), 1e-12)))
    a, s = _value_slope(tab.rows, ends[0], ends[1], tab.total_a.device)
    return BlockMajorant(block_vox=b, n_blocks=nb, maj_a=a, maj_b=s)


def _fluorescence_tensors(fluor: FluorescenceTable | None, photo_per_mm: np.ndarray, rows: EnergyRows,
                          start: np.ndarray, end: np.ndarray, device) -> dict:
    """``fl_ab`` and ``fl_e`` of :class:`TransportTables` (empty where ``fluor`` is None): the
    lines' partial photoelectric coefficients P_l x tau (``photo_per_mm`` (n_media, n_u), per mm
    per g/cm^3, and ``fluor`` at the energies ``rows.evaluation_energies()``, whose indices
    ``start`` and ``end`` are each row's ends), the slots padded to ``FLUORESCENCE_MAX_LINES``
    (coefficient 0).

    Interpolated linearly in energy within a row as tau is, they split the interpolated tau
    exactly: the energy the interaction kernel takes away with the lines is the one the kerma
    estimators leave out of mu_tr there (to the row's variation of 1/E), where interpolating
    P_l and tau separately would not be (their product is not linear in energy)."""
    if fluor is None:
        return {}
    n_media, n_lines, n_u = fluor.probability.shape
    partial = np.zeros((n_media, FLUORESCENCE_MAX_LINES, n_u))
    partial[:, :n_lines] = fluor.probability * np.asarray(photo_per_mm)[:, None, :]
    shape = (n_media, FLUORESCENCE_MAX_LINES, rows.n_rows)
    value, slope = (t.view(shape) for t in _value_slope(rows, partial[..., start], partial[..., end], device))
    line_kev = np.zeros((n_media, FLUORESCENCE_MAX_LINES))
    line_kev[:, :n_lines] = fluor.line_kev
    return dict(
        fl_ab=torch.cat([value, slope], 1).permute(0, 2, 1).reshape(n_media * rows.n_rows, -1).contiguous(),
        fl_e=torch.tensor(line_kev.reshape(-1), dtype=torch.float32, device=device),
    )


def _value_slope(rows: EnergyRows, at_start: np.ndarray, at_end: np.ndarray,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and slope per table row (flattened float32 tensors) of a quantity given just inside
    each row's ends (arrays (..., n_rows)), see :meth:`EnergyRows.value_slope`."""
    a, b = rows.value_slope(at_start, at_end)
    return (
        torch.tensor(a.reshape(-1), dtype=torch.float32, device=device),
        torch.tensor(b.reshape(-1), dtype=torch.float32, device=device),
    )


_TABLE_CACHE: dict = {}
_TABLE_CACHE_SIZE = 16


def build_tables(
    media: Sequence,
    max_density_per_medium: np.ndarray,
    max_energy_kev: float,
    device,
    majorant_floor_per_mm: float = 0.0,
    fluorescence_min_kev: float | None = FLUORESCENCE_MIN_KEV,
) -> TransportTables:
    """Coefficient, majorant and angular tables for ``media``.

    Parameters
    ----------
    media : sequence of ctdose.materials.Medium
    max_density_per_medium : ndarray (n_media,)
        Largest mass density (g/cm^3) of each medium in the grid (0 where unused).
    max_energy_kev : float
        Highest source energy.
    device : torch device
    majorant_floor_per_mm : float
        Lower bound of the majorant (1/mm). Extra virtual collisions are always allowed in
        Woodcock tracking; they give the track-length estimator more scoring sites in
        low-density voxels (air cavities, ion chambers) at the cost of more steps.
    fluorescence_min_kev : float or None
        Fluorescence lines of at least this energy (keV) are transported after
        photoabsorption (:mod:`ctdose.physics.fluorescence`); None: all are deposited locally.

    The per-medium tables are cached (:func:`_medium_tables`); only the majorant depends on
    ``max_density_per_medium``.
    """
    tables = _medium_tables(media, max_energy_kev, device, fluorescence_min_kev)
    rho_max = np.asarray(max_density_per_medium, dtype=np.float64)
    maj_ends = _majorant(tables["total_ends"], rho_max, majorant_floor_per_mm)
    maj_a, maj_b = _value_slope(tables["rows"], maj_ends[:, 0], maj_ends[:, 1], device)
    return TransportTables(maj_a=maj_a, maj_b=maj_b, maj_ends=maj_ends, **tables)


def _majorant(total_ends: np.ndarray, rho_max: np.ndarray, majorant_floor_per_mm: float) -> np.ndarray:
    """max over media of (mu/rho)(E) x the medium's largest density at each table row's ends
    (1/mm; (n_media, n_rows, 2) and (n_media,) in, (n_rows, 2) out), with the float32 margin and
    at least the floor (and 1e-12). Linear within a row, the majorant is at least every medium's
    mu there, as it is at the row's ends."""
    maj = (np.asarray(total_ends, np.float64) * np.asarray(rho_max, np.float64)[:, None, None]).max(axis=0)
    return np.maximum(maj * _MAJORANT_MARGIN, max(float(majorant_floor_per_mm), 1e-12))


def _medium_tables(media: Sequence, max_energy_kev: float, device,
                   fluorescence_min_kev: float | None = FLUORESCENCE_MIN_KEV) -> dict:
    """The per-medium part of :func:`build_tables` (everything but the majorant), cached.

    Keyed by the media's names, densities and compositions, the device and the fluorescence
    threshold: a cohort whose cases share media but not their densest voxel builds these only
    once.
    """
    from .xsection import attenuation_table, default_energy_grid

    from ..errors import InputError

    e = default_energy_grid()
    if float(max_energy_kev) > float(e[-1]):
        raise InputError(
            f"source energies up to {max_energy_kev:.1f} keV exceed the tables' {e[-1]:.0f} keV"
        )
    key = (
        tuple((m.name, float(m.density_g_cm3), tuple(sorted(m.mass_fractions.items()))) for m in media),
        str(device),
        fluorescence_min_kev,
    )
    if key in _TABLE_CACHE:
        return _TABLE_CACHE[key]
    rows = energy_rows(e, media)
    # every coefficient once at the distinct energies of the rows' ends (the grid points and
    # both sides of each edge), then picked per row
    e_u, start, end = rows.evaluation_energies()
    tab = attenuation_table(media, e_u)
    frac = incoherent_transfer_fractions(media, e_u)
    fluor = None if fluorescence_min_kev is None else fluorescence_table(media, e_u, fluorescence_min_kev)
    # energy given to electrons: photoabsorption less the transported fluorescence lines
    # (weaker lines are deposited where the absorption happens), incoherent scattering's share
    photo_tr = tab.photo_cm2_g if fluor is None else tab.photo_cm2_g * (1.0 - fluor.emitted_fraction())
    tr = photo_tr + tab.incoh_cm2_g * frac
    per_mm = 1.0 / MM_PER_CM

    def ab(q):
        return _value_slope(rows, q[:, start], q[:, end], device)

    total_per_mm = tab.total_cm2_g * per_mm
    total_a, total_b = ab(total_per_mm)
    photo_a, photo_b = ab(tab.photo_cm2_g * per_mm)
    incoh_a, incoh_b = ab(tab.incoh_cm2_g * per_mm)
    tr_a, tr_b = ab(tr * per_mm)
    out = dict(
        e0_kev=float(e[0]),
        de_kev=float(e[1] - e[0]),
        n_e=int(e.size),
        n_rows=rows.n_rows,
        rows=rows,
        row_lookup=torch.tensor(rows.lookup, dtype=torch.float32, device=device),
        total_ends=np.stack([total_per_mm[:, start], total_per_mm[:, end]], -1),
        total_a=total_a,
        total_b=total_b,
        photo_a=photo_a,
        photo_b=photo_b,
        incoh_a=incoh_a,
        incoh_b=incoh_b,
        tr_a=tr_a,
        tr_b=tr_b,
        scatter=build_scatter_tables(media, float(e[-1]), device),
        total_tr_ab=torch.stack([total_a, total_b, tr_a, tr_b], 1),
        **_fluorescence_tensors(fluor, tab.photo_cm2_g * per_mm, rows, start, end, device),
    )
    if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
        _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
    _TABLE_CACHE[key] = out
    return out


@dataclass
class TransportTally:
    """Running sums of one batch (device tensors, float64)."""

    energy_kev: torch.Tensor  # (n_vox,) deposited energy, keV x weight
    escaped_kev: float = 0.0
    emitted_kev: float = 0.0
    n_steps: int = 0
    #: the fraction of the last Woodcock step's tentative sites that were real collisions (it
    #: picks the collision estimator's kernels, see ``_FUSED_INTERACTION_MIN_REAL`` and
    #: ``_SITES_PER_CALL_MAX_REAL``)
    real_fraction: float = 1.0


def enter_grid(state: PhotonState, grid: TransportGrid, with_distance: bool = False,
               setup: "TrackLengthSetup | None" = None):
    """Move photons that start outside the box to their entry point (slab method,
    :func:`ctdose.physics.kernels.grid_entry`; compiled with ``setup``'s kernels).

    Returns
    -------
    inside : PhotonState
        Photons on (just inside) the box.
    missed : Tensor (bool, n)
        Photons whose ray does not meet the box (they escape at once).
    distance_mm : Tensor (float, len(inside)), only with ``with_distance``
        Path from each photon's start to its entry point (0 for photons born inside).
    """
    from .kernels import MIN_COMPILED_PHOTONS, grid_entry

    if setup is not None and len(state) >= MIN_COMPILED_PHOTONS:
        entry, box_f = setup.kernels[6], setup.box_f
    else:
        entry, box_f = grid_entry, _box_tensor(grid)
    hit, t_in, x1, y1, z1 = entry(state.x, state.y, state.z, state.u, state.v, state.w, box_f)
    moved = PhotonState(x1, y1, z1, state.u, state.v, state.w, state.energy_kev, state.weight, state.offset)
    idx = hit.nonzero().squeeze(1)
    if with_distance:
        return moved.select(idx), ~hit, t_in.index_select(0, idx)
    return moved.select(idx), ~hit


def _box_tensor(grid: TransportGrid) -> torch.Tensor:
    """The box's corners (mm) and the entry offset, as :func:`ctdose.physics.kernels.grid_entry` takes them."""
    return torch.tensor([*grid.lo_mm, *grid.hi_mm, _ENTRY_EPS_MM], dtype=torch.float32, device=grid.density.device)


def attenuate_in_ambient(
    state: PhotonState, distance_mm: torch.Tensor, tab: "TransportTables", ambient: tuple[int, float], tally
) -> None:
    """Survival weighting over the path outside the grid: ``w *= exp(-mu(E) L)``.

    ``ambient`` is (index of the ambient medium in ``tab``, its density g/cm^3). The energy
    it removes (absorbed or scattered out of the ray in the ambient medium) is counted as
    escaped, so deposited + escaped = emitted still holds. Photons scattered in the ambient
    medium are not followed (validated in ``simulate``'s ``ambient``).
    """
    if distance_mm.numel() == 0:
        return
    index, density = ambient
    ie, fe = tab.energy_index(state.energy_kev)
    flat = ie + index * tab.n_rows
    mu_per_mm = _interp(tab.total_a, tab.total_b, flat, fe) * density
    survive = torch.exp(-mu_per_mm * distance_mm)
    lost = state.energy_kev * state.weight * (1.0 - survive)
    tally.escaped_kev += float(lost.sum(dtype=torch.float64))
    state.weight = state.weight * survive


def _interp(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(a.index_select(0, idx), frac, b.index_select(0, idx))


#: The collision estimator's kernels and the interaction kernel draw their own uniform numbers
#: from a key (:func:`ctdose.physics.kernels.counter_uniforms`) instead of reading an array
#: from ``torch.rand`` (whose 3 ns per number were 12 % of a demo-thorax run, with 67 numbers
#: per history). In-process A/B, 1 core, 1e6 histories, collision estimator: 1.10x the
#: histories/s in the demo thorax (medians of 4 rounds), 1.16x in the water cylinder (3),
#: 1.08x in the paper thorax (2), at the same sigma. False: the arrays (for comparison).
COUNTER_RNG = True


def _uniforms(gen: torch.Generator, rows: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """The random numbers of a kernel call: a key for the kernel's own counter-based numbers
    (``COUNTER_RNG``), or a ``(rows, n)`` array of uniform numbers."""
    if COUNTER_RNG:
        from .kernels import counter_key

        return counter_key(gen, like.device)
    return torch.rand((rows, n), generator=gen, device=like.device, dtype=like.dtype)


def _uniform(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype)


#: Distance (mm) a photon is moved past a block face (progress despite float rounding).
_BLOCK_EPS_MM = 1e-3


def _block_free_path(st, grid, tab, block, ie, fe, gen):
    """Free path with the local (block) majorant, cut at the block's exit face.

    Returns (majorant, distance to move, collision flag: True where a tentative collision is
    reached inside the block).
    """
    nbz, nby, nbx = block.n_blocks
    b = block.block_vox
    dx, dy, dz = grid.spacing_mm
    lox, loy, loz = grid.lo_mm
    bw = (b * dx, b * dy, b * dz)
    pos = (st.x, st.y, st.z)
    dirs = (st.u, st.v, st.w)
    los = (lox, loy, loz)
    counts = (nbx, nby, nbz)
    bi = []
    d_exit = None
    for a in range(3):
        k = ((pos[a] - los[a]) * (1.0 / bw[a])).floor_().clamp_(0, counts[a] - 1)
        bi.append(k)
        d = dirs[a]
        face = (k + (d > 0).to(k.dtype)).mul_(bw[a]).add_(los[a])
        t = torch.where(d.abs() > 1e-12, (face - pos[a]) / d, torch.full_like(d, float("inf")))
        d_exit = t if d_exit is None else torch.minimum(d_exit, t)
    d_exit = d_exit.clamp_min_(0.0)
    bidx = ((bi[2] * nby + bi[1]) * nbx + bi[0]).to(torch.int64)
    maj = _interp(block.maj_a, block.maj_b, bidx * tab.n_rows + ie, fe)
    s = _uniform(fe, gen).log_().neg_().div_(maj)
    coll = s < d_exit
    s = torch.where(coll, s, d_exit + _BLOCK_EPS_MM)
    return maj, s, coll


def _interact(ridx, r, mi, fe, rho, med, tflat, e, w8, u, v, w, alive, tab, tally, gen, cutoff_kev):
    """Real interactions of the photons ``ridx``: type, new energy and direction, local deposits.

    ``r`` is the rejection variate ``r_real * mu_maj`` (uniform on [0, mu) for a real
    collision, so it also picks photoelectric / incoherent / coherent in proportion to the
    partial coefficients). The analogue estimator's local deposits: the whole energy at
    photoabsorption (less a transported fluorescence line's, :mod:`ctdose.physics.fluorescence`,
    whose photon flies on isotropically), E - E' at incoherent scattering, the rest below the
    cutoff. Updates
    ``alive`` in place; returns the new ``e, u, v, w``.
    """
    if ridx.numel() == 0:
        return e, u, v, w
    r_r = r[ridx]
    mi_r, fe_r, rho_r = mi[ridx], fe[ridx], rho[ridx]
    ph = _interp(tab.photo_a, tab.photo_b, mi_r, fe_r) * rho_r
    is_photo = r_r < ph
    e_r = e[ridx]
    w_r = w8[ridx]
    flat_r = tflat[ridx]
    dep = torch.where(is_photo, e_r, torch.zeros_like(e_r))
    new_e = e_r.clone()
    absorbed = is_photo
    if tab.fl_ab is not None:  # a transported fluorescence line: the photon flies on with it
        pi = is_photo.nonzero().squeeze(1)
        line_kev = fluorescence_line(r_r[pi], rho_r[pi], mi_r[pi], med[ridx[pi]], fe_r[pi], tab.fl_ab, tab.fl_e)
        emit = (line_kev > 0.0) & (line_kev < e_r[pi])
        ei = pi[emit]
        if ei.numel() > 0:
            new_e[ei] = line_kev[emit]
            dep[ei] = e_r[ei] - line_kev[emit]
            absorbed = absorbed.index_put((ei,), torch.zeros_like(ei, dtype=torch.bool))
            cos_iso, phi = torch.rand((2, ei.numel()), generator=gen, device=e.device, dtype=e.dtype)
            cos_iso = 2.0 * cos_iso - 1.0
            sin_iso = (1.0 - cos_iso * cos_iso).clamp(min=0.0).sqrt()
            phi = phi * (2.0 * math.pi)
            gidx = ridx[ei]
            u = u.index_put((gidx,), sin_iso * torch.cos(phi))
            v = v.index_put((gidx,), sin_iso * torch.sin(phi))
            w = w.index_put((gidx,), cos_iso)
    sc = (~is_photo).nonzero().squeeze(1)
    if sc.numel() > 0:
        inc = _interp(tab.incoh_a, tab.incoh_b, mi_r[sc], fe_r[sc]) * rho_r[sc]
        inc_s = r_r[sc] < ph[sc] + inc
        e_s = e_r[sc]
        m_s = med[ridx[sc]]
        cos_s = torch.empty_like(e_s)
        ii = inc_s.nonzero().squeeze(1)
        if ii.numel() > 0:
            eps, c = sample_incoherent(e_s[ii], m_s[ii], tab.scatter, gen)
            cos_s[ii] = c
            new_e[sc[ii]] = e_s[ii] * eps
            dep[sc[ii]] = e_s[ii] * (1.0 - eps)
        ci = (~inc_s).nonzero().squeeze(1)
        if ci.numel() > 0:
            cos_s[ci] = sample_coherent(e_s[ci], m_s[ci], tab.scatter, gen)
        phi = torch.rand(sc.shape, generator=gen, device=e.device, dtype=e.dtype) * (2.0 * math.pi)
        gidx = ridx[sc]
        un, vn, wn = rotate_direction(u[gidx], v[gidx], w[gidx], cos_s, phi)
        u = u.index_put((gidx,), un)
        v = v.index_put((gidx,), vn)
        w = w.index_put((gidx,), wn)
    below = (~absorbed) & (new_e < cutoff_kev)
    dep = torch.where(below, dep + new_e, dep)
    tally.energy_kev.scatter_add_(0, flat_r, (dep * w_r).to(torch.float64))
    e = e.index_put((ridx,), new_e)
    alive.index_put_((ridx,), ~(absorbed | below))
    return e, u, v, w


def _step(
    st: PhotonState,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    block: BlockMajorant | None = None,
    n_paths: int = 1,
) -> PhotonState:
    """One Woodcock step of the analogue estimator for every photon of ``st``; returns the
    surviving photons (eager PyTorch).

    With ``n_paths`` = k > 1 (global majorant only) each photon samples k successive free
    paths at once (the energy and direction do not change at virtual collisions, so the k
    tentative sites lie on one ray at the cumulative distances) and stops at the first site
    that is a real collision or outside the box; the sites before it are virtual. The result
    is the same random process as k single steps; it only trades a little wasted work for k
    times fewer tensor operations, which pays when few photons are left (the tail,
    dispatch-bound).

    Memory traffic per step: a handful of fused-size elementwise passes, one gather each of
    the medium index and density (flat voxel index), two of the interpolated majorant and
    medium total coefficient; interaction sampling and state updates only touch the (fewer)
    photons with a real collision; the live pool is compacted once at the end.
    """
    nz, ny, nx = grid.shape
    dx, dy, dz = grid.spacing_mm
    lox, loy, loz = grid.lo_mm
    e = st.energy_kev
    n = e.numel()
    ie, fe = tab.energy_index(e)
    coll = None
    k_paths = int(n_paths) if block is None else 1
    if block is None:
        maj = _interp(tab.maj_a, tab.maj_b, ie, fe)
        # -ln(r): several times faster than Tensor.exponential_ on CPU
        s = torch.rand((n, k_paths), generator=gen, device=e.device, dtype=e.dtype).log_().neg_()
        s = s.div_(maj[:, None])
        if k_paths > 1:
            s = s.cumsum(1)
    else:
        maj, s, coll = _block_free_path(st, grid, tab, block, ie, fe, gen)
        s = s[:, None]
    x = torch.addcmul(st.x[:, None], s, st.u[:, None])
    y = torch.addcmul(st.y[:, None], s, st.v[:, None])
    z = torch.addcmul(st.z[:, None], s, st.w[:, None])
    fx = (x - lox).mul_(1.0 / dx)
    fy = (y - loy).mul_(1.0 / dy)
    fz = (z - loz).mul_(1.0 / dz)
    inside = (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny) & (fz >= 0) & (fz < nz)
    all_inside = bool(inside.all())
    if not all_inside:
        # sites outside get a valid (clamped) voxel; they are no real collisions
        fx = fx.clamp_(0.0, nx - 1)
        fy = fy.clamp_(0.0, ny - 1)
        fz = fz.clamp_(0.0, nz - 1)
    flat = (fz.to(torch.int64) * ny + fy.to(torch.int64)) * nx + fx.to(torch.int64)
    vox = grid.voxel_table.index_select(0, flat.view(-1)).view(n, k_paths, 2)
    med = vox[..., 0].to(torch.int64)
    rho = vox[..., 1]
    # tally index: the photon's batch block of the tally
    tflat = flat if st.offset is None else flat + st.offset[:, None]
    mi = med * tab.n_rows + ie[:, None]
    fe2 = fe[:, None]
    coef = tab.total_tr_ab.index_select(0, mi.view(-1)).view(n, k_paths, 4)
    mu = torch.addcmul(coef[..., 0], fe2, coef[..., 1]).mul_(rho)
    r = torch.rand((n, k_paths), generator=gen, device=e.device, dtype=e.dtype).mul_(maj[:, None])
    real = r < mu
    if coll is not None:
        real &= coll[:, None]
    if not all_inside:
        real &= inside
    # the first site that is a real collision or outside the box (k > 1)
    if k_paths > 1:
        stop = real if all_inside else (real | ~inside)
        has = stop.any(1)
        first = torch.argmax(stop.to(torch.uint8), dim=1)
        kst = torch.where(has, first, torch.full_like(first, k_paths - 1))
    w8 = st.weight
    # state at each photon's last site
    if k_paths > 1:
        g = kst[:, None]

        def pick(t):
            return t.gather(1, g).squeeze(1)
    else:

        def pick(t):
            return t[:, 0]

    x, y, z = pick(x), pick(y), pick(z)
    real = pick(real)
    r, mi, rho, med, tflat = pick(r), pick(mi), pick(rho), pick(med), pick(tflat)
    if not all_inside:
        inside = pick(inside)
        out = ~inside
        tally.escaped_kev += float((e * w8).masked_select(out).sum(dtype=torch.float64))
    ridx = real.nonzero().squeeze(1)
    alive = inside.clone() if not all_inside else torch.ones_like(real)
    e, u, v, w = _interact(ridx, r, mi, fe, rho, med, tflat, e, w8, st.u, st.v, st.w, alive, tab, tally, gen,
                           cutoff_kev=cutoff_kev)
    tally.n_steps += 1
    keep = alive.nonzero().squeeze(1)
    new = PhotonState(x, y, z, u, v, w, e, st.weight, st.offset)
    if keep.numel() == alive.numel():
        return new
    return new.select(keep)


@dataclass
class TrackLengthSetup:
    """Constants of the fused steps for one run (device tensors) and their kernels: the
    track-length, expected-track-length and collision estimators."""

    grid_f: torch.Tensor
    grid_i: torch.Tensor
    energy_f: torch.Tensor
    maj_ab: torch.Tensor
    h_mm: torch.Tensor
    h_value_mm: float
    #: most points per segment as 0-d float tensors, by value (index k holds k)
    slot_counts: tuple
    max_sites: int
    kernels: tuple
    #: interaction tables for :func:`ctdose.physics.kernels.interact`: photoelectric and
    #: incoherent coefficients (n_media * n_rows, 4), flattened scatter tables and their sizes
    xs_ab: torch.Tensor
    sf_ratio: torch.Tensor
    coh_x2_inv: torch.Tensor
    coh_frac: torch.Tensor
    scatter_f: torch.Tensor
    scatter_i: torch.Tensor
    #: transported fluorescence lines (:class:`TransportTables` ``fl_ab``, ``fl_e``), or None
    fl_ab: torch.Tensor | None
    fl_e: torch.Tensor | None
    #: voxel edges dx, dy, dz (mm) and the kernels of the expected-track-length flight
    #: (:mod:`ctdose.physics.ray_kernels`)
    cell_f: torch.Tensor | None = None
    ray_kernels: tuple = ()
    #: the box's corners (mm) and the entry offset (:func:`ctdose.physics.kernels.grid_entry`)
    box_f: torch.Tensor | None = None
    #: local majorant (``advance_block``): block_ab (n_blocks * n_e, 2), block_f (10,), block_i (3,)
    block_ab: torch.Tensor | None = None
    block_f: torch.Tensor | None = None
    block_i: torch.Tensor | None = None
    #: void flights of the collision estimator (:func:`ctdose.physics.kernels.advance_collision_sites`):
    #: the void voxels' majorant (n_e, 2) and the voxel table with the void distances
    #: (:func:`void_voxel_table`); None where the run has none (block majorant, other estimators)
    void_ab: torch.Tensor | None = None
    void_table: torch.Tensor | None = None

    @property
    def compiled(self) -> bool:
        """True when the kernels are the compiled ones (not the eager fallback)."""
        from .kernels import advance

        return self.kernels[0] is not advance

    @staticmethod
    def build(
        grid: TransportGrid,
        tab: TransportTables,
        spacing_mm: float | None,
        compile: bool | None,
        block: BlockMajorant | None = None,
        void_flights: bool = False,
        majorant_floor_per_mm: float = 0.0,
    ):
        """The constants and kernels for ``grid`` and ``tab``; ``block`` for the block majorant;
        ``void_flights``: the collision estimator's void flights (with the global majorant
        only), whose majorant is at least ``majorant_floor_per_mm`` as the global one is."""
        from .kernels import get_kernels
        from .ray_kernels import get_ray_kernels

        from ..errors import InputError

        dev = grid.density.device
        nz, ny, nx = grid.shape
        if nz * ny * nx >= _MAX_TRAVERSAL_VOXELS:
            raise InputError(f"voxel grid {nz} x {ny} x {nx}: the flights index voxels with 32-bit integers "
                             f"(fewer than {_MAX_TRAVERSAL_VOXELS} voxels)")
        dx, dy, dz = grid.spacing_mm
        h = float(spacing_mm) if spacing_mm else min(dx, dy, dz) * _TRACK_SPACING_PER_VOXEL
        f32 = dict(dtype=torch.float32, device=dev)
        n_sites = _TRACK_SITES_PER_STEP.get(dev.type, _TRACK_SITES_PER_STEP["cpu"])
        return TrackLengthSetup(
            grid_f=torch.tensor([*grid.lo_mm, 1.0 / dx, 1.0 / dy, 1.0 / dz, nx, ny, nz], **f32),
            grid_i=torch.tensor([nx, ny, nz, tab.n_rows], dtype=torch.int64, device=dev),
            energy_f=tab.energy_f(),
            maj_ab=torch.stack([tab.maj_a, tab.maj_b], 1).contiguous(),
            h_mm=torch.tensor(h, **f32),
            h_value_mm=h,
            slot_counts=tuple(torch.tensor(float(k), **f32) for k in range(_TRACK_MAX_SLOTS + 1)),
            max_sites=int(n_sites),
            kernels=get_kernels(dev, compile),
            cell_f=torch.tensor([dx, dy, dz], **f32),
            ray_kernels=get_ray_kernels(dev, compile),
            box_f=_box_tensor(grid),
            **_interaction_tensors(tab),
            **(_block_tensors(grid, block) if block is not None else {}),
            **(_void_tensors(grid, tab, majorant_floor_per_mm) if void_flights and block is None else {}),
        )


def _interaction_tensors(tab: TransportTables) -> dict:
    """Coefficient and scatter tables of :func:`ctdose.physics.kernels.interact` (see there)."""
    sc = tab.scatter
    dev = tab.photo_a.device
    n_x = int(sc.sf_ratio.shape[1])
    n_e = int(sc.coh_frac.shape[1])
    e_step = float(sc.coh_frac_energy_kev[1] - sc.coh_frac_energy_kev[0])
    n_u = sc.n_u
    top = _TABLE_INDEX_MARGIN
    return dict(
        xs_ab=torch.stack([tab.photo_a, tab.photo_b, tab.incoh_a, tab.incoh_b], 1).contiguous(),
        # flattened copies, not views: a view's base enters the compiled kernels' guards, and a
        # one-medium table's base (size 1) would compile them once more for that alone
        sf_ratio=sc.sf_ratio.reshape(-1).clone(),
        coh_x2_inv=sc.coh_x2_inv.reshape(-1).clone(),
        coh_frac=sc.coh_frac.reshape(-1).clone(),
        scatter_f=torch.tensor(
            [1.0 / sc.sf_x_step, n_x - top, 1.0 / e_step, n_e - top, n_u - 1, n_u - top], dtype=torch.float32,
            device=dev,
        ),
        scatter_i=torch.tensor([n_x, n_e, n_u], dtype=torch.int64, device=dev),
        fl_ab=tab.fl_ab,
        fl_e=tab.fl_e,
    )


def _block_tensors(grid: TransportGrid, block: BlockMajorant) -> dict:
    dev = grid.density.device
    b = block.block_vox
    bw = [b * d for d in grid.spacing_mm]
    nbz, nby, nbx = block.n_blocks
    f32 = dict(dtype=torch.float32, device=dev)
    return dict(
        block_ab=torch.stack([block.maj_a, block.maj_b], 1).contiguous(),
        block_f=torch.tensor([1.0 / bw[0], 1.0 / bw[1], 1.0 / bw[2], *bw, nbx, nby, nbz, _BLOCK_EPS_MM], **f32),
        block_i=torch.tensor([nbx, nby, nbz], dtype=torch.int64, device=dev),
    )


def void_voxel_table(grid: TransportGrid) -> torch.Tensor:
    """The grid's voxel table with each voxel's void distance (mm) beside it: (n_vox, 4) float32,
    ``[medium, density, distance, 0]`` (one gather reads all three; the fourth column aligns
    the rows). The distance is :func:`ctdose.physics.void.void_distance_mm`."""
    from .void import void_distance_mm

    nz, ny, nx = grid.shape
    dx, dy, dz = grid.spacing_mm
    rho = grid.density.detach().cpu().numpy().reshape(nz, ny, nx)
    dist = torch.from_numpy(void_distance_mm(rho, (dz, dy, dx)).reshape(-1)).to(grid.density.device)
    return torch.stack([grid.voxel_table[:, 0], grid.voxel_table[:, 1], dist, torch.zeros_like(dist)], 1).contiguous()


def void_majorant(grid: TransportGrid, tab: TransportTables, majorant_floor_per_mm: float = 0.0) -> np.ndarray:
    """Majorant of the void voxels (:func:`ctdose.physics.void.void_mask`) at each table row's
    ends ((n_rows, 2), 1/mm): per medium its densest void voxel, as :func:`build_tables` takes the global
    one, with the same margin; at least ``majorant_floor_per_mm`` and
    :data:`ctdose.physics.void.VOID_MAJORANT_MIN_FRACTION` of the global majorant."""
    from .void import VOID_MAJORANT_MIN_FRACTION, void_mask

    n_media = tab.total_ends.shape[0]
    rho = grid.density.detach().cpu().numpy()
    void = void_mask(rho)
    rho_max = np.zeros(n_media)
    np.maximum.at(rho_max, grid.media.detach().cpu().numpy()[void].astype(np.int64), rho[void].astype(np.float64))
    floor = VOID_MAJORANT_MIN_FRACTION * tab.maj_ends
    return np.maximum(_majorant(tab.total_ends, rho_max, majorant_floor_per_mm), floor)


def _void_tensors(grid: TransportGrid, tab: TransportTables, majorant_floor_per_mm: float) -> dict:
    ends = void_majorant(grid, tab, majorant_floor_per_mm)
    a, b = _value_slope(tab.rows, ends[:, 0], ends[:, 1], grid.density.device)
    return dict(void_ab=torch.stack([a, b], 1).contiguous(), void_table=void_voxel_table(grid))


def _step_track_length(
    st: PhotonState,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    setup: TrackLengthSetup,
) -> PhotonState:
    """One Woodcock step with the stratified track-length estimator; returns the survivors.

    The free flight, the collision test and the number of track-length points on the segment
    just flown (at most ``K`` = ``_TRACK_MAX_SLOTS``, fewer when the pool is large, spaced
    ``max(setup.h_value_mm, s / K)``) come from :func:`ctdose.physics.kernels.advance`; the
    points are scored by :func:`_score_track`; real interactions then deposit nothing except at
    the energy cutoff and are sampled by :func:`_interact_fixed`. ``st`` is consumed: its
    energy and direction tensors are updated in place.
    """
    from .kernels import EAGER_KERNELS, MIN_COMPILED_PHOTONS

    n = len(st)
    kernels = setup.kernels if n >= MIN_COMPILED_PHOTONS else EAGER_KERNELS
    e = st.energy_kev
    rnd = torch.rand((3, n), generator=gen, device=e.device, dtype=e.dtype)
    r_path = torch.sub(1.0, rnd[0])  # in (0, 1]: finite free paths
    n_slots = setup.slot_counts[max(2, min(_TRACK_MAX_SLOTS, setup.max_sites // n))]
    common = (st.x, st.y, st.z, st.u, st.v, st.w, e, r_path, rnd[1], rnd[2], n_slots, setup.h_mm, setup.grid_f,
              setup.grid_i, setup.energy_f)
    out = _fly(kernels, 0, 2, common, grid, tab, setup)
    _, x1, y1, z1, ie, fe, rr, real, inside, count, hi = out  # the path length is not needed here
    ew = e * st.weight
    offset = st.offset if st.offset is not None else torch.zeros_like(ie)
    _score_track(st, count, hi, ew, ie, fe, offset, rnd[2], grid, tab, tally, setup, kernels[1])
    return _end_step(st, ew, inside, real, x1, y1, z1, ie, fe, rr, offset, tally, gen, cutoff_kev, grid, setup, kernels)


def _fly(kernels: tuple, k_global: int, k_block: int, common: tuple, grid: TransportGrid, tab: TransportTables,
         setup: TrackLengthSetup) -> tuple:
    """Call the flight kernel ``kernels[k_global]`` (global majorant) or ``kernels[k_block]``
    (block majorant, when ``setup`` has one) with the per-photon arguments ``common``."""
    if setup.block_ab is None:
        return kernels[k_global](*common, setup.maj_ab, grid.voxel_table, tab.total_tr_ab)
    return kernels[k_block](*common, setup.block_ab, setup.block_f, setup.block_i, grid.voxel_table,
                            tab.total_tr_ab)


def _step_collision(
    st: PhotonState,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    setup: TrackLengthSetup,
) -> PhotonState:
    """One Woodcock step with the collision estimator; returns the survivors.

    The free flight, the score ``w E mu_tr / mu_maj`` at the tentative site and the collision
    test come from :func:`ctdose.physics.kernels.advance_collision` (or
    :func:`~ctdose.physics.kernels.advance_block_collision`); the scores are added into the
    tally with one serial ``scatter_add_`` (reproducible on any thread count), and real
    interactions are sampled by :func:`_interact_fixed` as in :func:`_step_track_length`.
    With the global majorant, while at least ``_FUSED_INTERACTION_MIN_REAL`` of the last
    step's sites were real (a water phantom, not a thorax under a bone majorant), the step is
    :func:`_step_collision_interact` instead: flight, score and interaction in one kernel.
    Below ``_SITES_PER_CALL_MAX_REAL`` real sites (a thorax under a bone majorant), each photon
    flies up to ``COLLISION_SITES_PER_CALL`` flights in one call instead, with void flights in
    the air far from matter (:func:`ctdose.physics.kernels.advance_collision_sites`; the global
    majorant, ``setup`` built with ``void_flights``). All are exact; their random streams
    differ. ``st`` is consumed.
    """
    from .kernels import COLLISION_SITES_PER_CALL, EAGER_KERNELS, MIN_COMPILED_PHOTONS

    n = len(st)
    kernels = setup.kernels if n >= MIN_COMPILED_PHOTONS else EAGER_KERNELS
    e = st.energy_kev
    ew = e * st.weight
    offset = st.offset if st.offset is not None else torch.zeros(n, dtype=torch.int64, device=e.device)
    if setup.block_ab is None and tally.real_fraction >= _FUSED_INTERACTION_MIN_REAL:
        return _step_collision_interact(st, ew, offset, grid, tab, tally, gen, cutoff_kev, setup, kernels)
    n_sites = None
    if setup.void_table is not None and tally.real_fraction < _SITES_PER_CALL_MAX_REAL:
        rnd = _uniforms(gen, 2 * COLLISION_SITES_PER_CALL, n, e)
        *flight, n_sites = kernels[8](st.x, st.y, st.z, st.u, st.v, st.w, e, ew, rnd, offset, setup.grid_f,
                                      setup.grid_i, setup.energy_f, setup.maj_ab, setup.void_ab, setup.void_table,
                                      tab.total_tr_ab)
    else:
        rnd = torch.rand((2, n), generator=gen, device=e.device, dtype=e.dtype)
        r_path = torch.sub(1.0, rnd[0])  # in (0, 1]: finite free paths
        common = (st.x, st.y, st.z, st.u, st.v, st.w, e, ew, r_path, rnd[1], offset, setup.grid_f, setup.grid_i,
                  setup.energy_f)
        flight = _fly(kernels, 4, 5, common, grid, tab, setup)
    x1, y1, z1, ie, fe, rr, real, inside, index, score = flight
    tally.energy_kev.scatter_add_(0, index.view(-1), score.view(-1))
    out = _end_step(st, ew, inside, real, x1, y1, z1, ie, fe, rr, offset, tally, gen, cutoff_kev, grid, setup, kernels)
    if n_sites is not None:  # _end_step counted real collisions per photon; the thresholds count per site
        tally.real_fraction *= n / max(int(n_sites.sum()), 1)
    return out


#: The collision estimator's step interacts in the same pass over the pool as its flight
#: (:func:`ctdose.physics.kernels.collide_interact`) while at least this fraction of the last
#: step's tentative sites were real collisions. The fused pass evaluates the samplers for every
#: photon (with the lean samplers, 8 instead of up to 12 random numbers per photon); the
#: separate interaction kernel gathers the interacting photons first. Whole runs on 1 core
#: (``benchmarks/bench_collision_step.py``, water cylinder with majorant floors, medians of 2
#: rounds): the fused step is 1.25x as fast at 63 % real sites, 1.18x at 49 %, 0.97x at 32 %,
#: 0.85x at 20 % and 0.69x in the demo thorax (12 %); the cross-over lies near 35 %.
_FUSED_INTERACTION_MIN_REAL = 0.4

#: Below this fraction of real sites in the last step, the collision estimator's step flies each
#: photon through up to ``COLLISION_SITES_PER_CALL`` virtual sites in one kernel call
#: (:func:`ctdose.physics.kernels.advance_collision_sites`); one flight per call at and above
#: it, and always with the block majorant (where several flights per call were slower in the
#: demo thorax: 3.5e5 histories/s with 4 and 4.6e5 with 2, against 5.0e5 with one, 1 core).
#: ``benchmarks/bench_collision_step.py`` (1 core, medians of 3 runs of 1e6 histories), several
#: flights against one per call: 1.35x in the demo thorax (12 % real sites), 1.17x at 20 %,
#: 1.03x at 32 %, 0.92x at 49 %, 0.81x at 63 % (water cylinder with majorant floors): the
#: other slots' work is wasted where a call's first flights end at real collisions. (The fused
#: step, against one flight per call: 0.66x, 0.83x, 0.93x, 1.15x, 1.20x.)
_SITES_PER_CALL_MAX_REAL = 0.35


def _step_collision_interact(
    st: PhotonState,
    ew: torch.Tensor,
    offset: torch.Tensor,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    setup: TrackLengthSetup,
    kernels: tuple,
) -> PhotonState:
    """:func:`_step_collision` with flight, score and interaction in one kernel call
    (:func:`ctdose.physics.kernels.collide_interact`, global majorant); the few real collisions
    none of whose proposals was accepted get the passes of :func:`_interact_fixed`."""
    from .kernels import interaction_uniforms

    n = len(st)
    e = st.energy_kev
    rnd = _uniforms(gen, 2 + interaction_uniforms(lean=True), n, e)
    cutoff = torch.full((), float(cutoff_kev), dtype=e.dtype, device=e.device)
    x1, y1, z1, ie, fe, rr, e1, u1, v1, w1, real, inside, alive, pending, index, score = kernels[7](
        st.x, st.y, st.z, st.u, st.v, st.w, e, ew, st.weight, offset, rnd, cutoff, setup.grid_f, setup.grid_i,
        setup.energy_f, setup.maj_ab, grid.voxel_table, tab.total_tr_ab, setup.xs_ab, setup.sf_ratio,
        setup.coh_x2_inv, setup.coh_frac, setup.scatter_f, setup.scatter_i, setup.fl_ab, setup.fl_e,
    )
    tally.energy_kev.scatter_add_(0, index, score)
    _tally_escape(tally, ew, inside)
    tally.real_fraction = int(real.count_nonzero()) / n
    _interact_fixed(_indices(pending), e1, u1, v1, w1, st.weight, x1, y1, z1, ie, fe, rr, offset, alive, tally, gen,
                    cutoff_kev, grid, setup, kernels)
    tally.n_steps += 1
    return _compact(PhotonState(x1, y1, z1, u1, v1, w1, e1, st.weight, st.offset), alive)


def _end_step(
    st: PhotonState,
    ew: torch.Tensor,
    inside: torch.Tensor,
    real: torch.Tensor,
    x1: torch.Tensor,
    y1: torch.Tensor,
    z1: torch.Tensor,
    ie: torch.Tensor,
    fe: torch.Tensor,
    rr: torch.Tensor,
    offset: torch.Tensor,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    grid: TransportGrid,
    setup: TrackLengthSetup,
    kernels: tuple,
) -> PhotonState:
    """The end of a step of either track-length estimator: photons no longer ``inside`` the grid
    escape (``ew`` = energy x weight is tallied), the ``real`` collisions at ``(x1, y1, z1)``
    interact (:func:`_interact_fixed`; energy and direction change in place, ``st`` is
    consumed), and the photons still alive are returned."""
    _tally_escape(tally, ew, inside)
    alive = inside.clone()
    idx = _indices(real)
    tally.real_fraction = idx.numel() / max(len(st), 1)
    _interact_fixed(idx, st.energy_kev, st.u, st.v, st.w, st.weight, x1, y1, z1, ie, fe, rr, offset, alive,
                    tally, gen, cutoff_kev, grid, setup, kernels)
    tally.n_steps += 1
    return _compact(PhotonState(x1, y1, z1, st.u, st.v, st.w, st.energy_kev, st.weight, st.offset), alive)


def _tally_escape(tally: TransportTally, ew: torch.Tensor, inside: torch.Tensor) -> None:
    """Add the energy x weight ``ew`` of the photons no longer ``inside`` the grid to the
    escaped energy."""
    out = ~inside
    if bool(out.any()):
        tally.escaped_kev += float(ew.masked_select(out).sum(dtype=torch.float64))


def _compact(state: PhotonState, alive: torch.Tensor) -> PhotonState:
    """The photons of ``state`` still ``alive`` (``state`` itself when all are)."""
    keep = alive.nonzero().squeeze(1)
    if keep.numel() == len(state):
        return state
    return state.select(keep)


#: The flights' voxel indices are 32-bit (the tally's, with the batch offset, 64-bit).
_MAX_TRAVERSAL_VOXELS = 2**31

#: Expected-track-length flights: a ray set is compacted when fewer than this fraction of its
#: rays are still in the grid (compaction costs a copy of the traversal state).
_RAY_COMPACT_FRACTION = 0.6
#: The same under a weight window, whose roulette ends rays all along their flights: there the
#: rays left in a set thin out call by call, and compacting sooner paid (paper thorax, one
#: projection, one core, in-process A/B: efficiency 1.00 / 1.04 / 1.09 / 1.11 / 1.07 at
#: 0.6 / 0.75 / 0.85 / 0.92 / 1.0; demo thorax +3 %, water +1 %; without a window 0.92
#: gained nothing, +1 % / -0.2 %).
_RAY_COMPACT_FRACTION_WINDOW = 0.92


def _ray_kernels(setup: TrackLengthSetup, m: int) -> tuple:
    """The ray kernels for ``m`` rays: compiled, or eager for a few (no compilation for sizes 0
    and 1). Only the traversal start uses the eager kernel for few rays; the chunks go through
    :func:`_ray_chunk`."""
    from .kernels import MIN_COMPILED_PHOTONS
    from .ray_kernels import EAGER_RAY_KERNELS

    return setup.ray_kernels if m >= MIN_COMPILED_PHOTONS else EAGER_RAY_KERNELS


def _ray_chunk(setup: TrackLengthSetup, k: int, per_ray: list, fixed: tuple) -> tuple:
    """Call chunk kernel ``k`` (1: ``ray_chunk``, 2: ``ray_chunk_split``) with the per-ray
    arguments ``per_ray`` and then ``fixed``.

    Fewer rays than the compiled kernels' smallest size (``MIN_COMPILED_PHOTONS``: one ray, at
    the end of a flight) are padded with copies of the last ray to that size, instead of
    running the eager kernel (some hundred tensor operations per call); the outputs are cut
    back to the ``m`` rays (the copies' scores and collisions are dropped), so they are the
    compiled kernel's for these rays.
    """
    from .kernels import MIN_COMPILED_PHOTONS

    m = per_ray[0].numel()
    kernel = setup.ray_kernels[k]
    if m >= MIN_COMPILED_PHOTONS or not setup.compiled:
        return kernel(*per_ray, *fixed)
    pad = MIN_COMPILED_PHOTONS - m
    out = kernel(*[torch.cat([a, a[-1:].expand(pad)]) for a in per_ray], *fixed)
    return tuple(a[:m] if a.dim() == 1 else a[:, :m].contiguous() for a in out)


def _ray_set(st: PhotonState, tab: TransportTables, setup: TrackLengthSetup):
    """Energy-table index and fraction, traversal start (``ray_start``, 13 tensors) and tally
    offset of every photon's ray."""
    ie, fe = tab.energy_index(st.energy_kev)
    trav = _ray_kernels(setup, len(st))[0](st.x, st.y, st.z, st.u, st.v, st.w, setup.grid_f, setup.grid_i,
                                           setup.cell_f)
    offset = st.offset if st.offset is not None else torch.zeros_like(ie)
    return ie, fe, list(trav), offset


def _compact_rays(live: torch.Tensor, rays: torch.Tensor | None, state: list, const: list):
    """Keep the ``live`` rays: their photon indices (``rays``, None for all in order), their
    traversal state and constants."""
    keep = _indices(live)
    rays = keep if rays is None else rays.index_select(0, keep)
    return rays, [a.index_select(0, keep) for a in state], [c.index_select(0, keep) for c in const]


def _step_expected_track_length(
    st: PhotonState,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    setup: TrackLengthSetup,
) -> PhotonState:
    """One whole flight of every photon with the expected-track-length estimator.

    Each photon's ray is traversed voxel by voxel to the grid's exit
    (:mod:`ctdose.physics.ray_kernels`): every voxel gets the photon's expected energy
    transfer there, and the real collision is placed where the optical depth reaches
    ``-ln U``. Photons without a collision in the grid escape; the others interact
    (:func:`_interact_fixed`, with the interaction picked by a uniform number on ``[0, mu)``
    at the site). Returns the photons that fly on. ``st`` is consumed.
    """
    from .kernels import EAGER_KERNELS, MIN_COMPILED_PHOTONS
    from .ray_kernels import CROSSINGS_PER_CALL, ROULETTE_DEPTH

    n = len(st)
    kernels = setup.kernels if n >= MIN_COMPILED_PHOTONS else EAGER_KERNELS
    e = st.energy_kev
    rnd = torch.rand((2, n), generator=gen, device=e.device, dtype=e.dtype)
    ie, fe, state, offset = _ray_set(st, tab, setup)
    # traversal state: the 13 tensors of ray_start, then t, tau, att, t_c, tau_r, ew (distinct
    # tensors: aliased inputs would compile the kernel a second time)
    state += [torch.zeros_like(e), torch.zeros_like(e), torch.ones_like(e), torch.full_like(e, -1.0),
                          torch.full_like(e, ROULETTE_DEPTH), e * st.weight]
    const = [-torch.log1p(-rnd[0]), ie.to(torch.int32), fe, offset]  # tau_c, ie, fe, offset
    t_c = torch.full_like(e, -1.0)
    rays = None  # photon of each ray once the set is compacted (None: all photons, in order)
    while True:
        m = state[0].numel()
        r_roulette = torch.rand(m, generator=gen, device=e.device, dtype=e.dtype)
        flat, tx, ty, tz, rx, ry, rz, t, tau, att, tc, tau_r, ew, index, score = _ray_chunk(
            setup, 1, [*state[:16], const[0], *state[16:], *const[1:], r_roulette],
            (grid.voxel_table, tab.total_tr_ab, setup.grid_i, CROSSINGS_PER_CALL),
        )
        tally.energy_kev.scatter_add_(0, index.view(-1), score.view(-1))
        state[:4] = flat, tx, ty, tz
        state[10:] = rx, ry, rz, t, tau, att, tc, tau_r, ew
        live = (rx >= 0) & (ry >= 0) & (rz >= 0)
        n_live = int(live.sum())
        if n_live >= _RAY_COMPACT_FRACTION * m and n_live > 0:
            continue
        if rays is None:
            t_c = tc
        else:
            t_c.index_copy_(0, rays, tc)
        if n_live == 0:
            break
        rays, state, const = _compact_rays(live, rays, state, const)
    coll = t_c >= 0  # a photon without a collision in the grid escapes
    x1 = torch.addcmul(st.x, t_c, st.u)
    y1 = torch.addcmul(st.y, t_c, st.v)
    z1 = torch.addcmul(st.z, t_c, st.w)
    # the interaction variate: uniform on [0, mu) at the site (picks the interaction type)
    rr = rnd[1] * _mu_at(x1, y1, z1, ie, fe, grid, tab, setup)
    return _end_step(st, e * st.weight, coll, coll, x1, y1, z1, ie, fe, rr, offset, tally, gen, cutoff_kev, grid,
                     setup, kernels)


def _step_expected_track_length_window(
    st: PhotonState,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    setup: TrackLengthSetup,
    window: WeightWindow,
    allow_split: bool = True,
) -> PhotonState:
    """One whole flight of every photon, expected track length under a weight window.

    The scores are those of :func:`_step_expected_track_length`; the collisions follow the
    window along the flight (:func:`ctdose.physics.ray_kernels.ray_chunk_split`): a ray may
    collide several times, as split copies of it would, or be rouletted, each collision with
    its own weight. The escaping energy is tallied as its expectation (weight x energy x the
    transmission at the grid's exit). Returns the photons that fly on from the collisions
    (in the order the collisions were found); ``st`` is not changed. ``allow_split=False``:
    roulette only (the pool has grown too large).
    """
    from .kernels import EAGER_KERNELS, MIN_COMPILED_PHOTONS
    from .ray_kernels import CROSSINGS_PER_CALL, ROULETTE_DEPTH_WINDOW
    from .weight_window import window_voxel_table

    n = len(st)
    e = st.energy_kev
    dev = e.device
    ie, fe, state, offset = _ray_set(st, tab, setup)
    # traversal state: the 13 tensors of ray_start, then t, tau, att, lam, tau_r, weight
    lam0 = -torch.rand(n, generator=gen, device=dev, dtype=e.dtype)
    state += [torch.zeros_like(e), torch.zeros_like(e), torch.ones_like(e), lam0,
                          torch.full_like(e, ROULETTE_DEPTH_WINDOW), st.weight.clone()]
    const = [e, ie.to(torch.int32), fe, offset]
    # medium, density and target weight of a voxel in one row (target_vox: its third column)
    vox_table = window_voxel_table(window, grid.voxel_table, setup.cell_f)
    target_vox = vox_table[:, 2]
    window_f = torch.tensor([window.lower, window.upper, float(window.max_split) if allow_split else 1.0],
                            dtype=torch.float32, device=dev)
    found = []  # (photon, distance, weight) of the collisions, call by call
    rays = None  # photon of each ray once the set is compacted (None: all photons, in order)
    while True:
        m = state[0].numel()
        rnd = torch.rand((3, m), generator=gen, device=dev, dtype=e.dtype)
        # three tensors, not rows of one: views enter the compiled kernel's guards, and the padded
        # calls of the flights' ends (new tensors) would compile it once more
        out = _ray_chunk(setup, 2, [*state, *const, *(r.clone() for r in rnd)],
                         (vox_table, tab.total_tr_ab, target_vox, window_f, setup.grid_i, CROSSINGS_PER_CALL))
        flat, tx, ty, tz, rx, ry, rz, t, tau, att, lam, tau_r, wgt, index, score, t_coll, w_coll = out
        tally.energy_kev.scatter_add_(0, index.view(-1), score.view(-1))
        hit = _indices(w_coll.view(-1) > 0)
        if hit.numel():
            ray = hit % m
            found.append((ray if rays is None else rays.index_select(0, ray), t_coll.view(-1).index_select(0, hit),
                          w_coll.view(-1).index_select(0, hit)))
        state[:4] = flat, tx, ty, tz
        state[10:] = rx, ry, rz, t, tau, att, lam, tau_r, wgt
        live = (rx >= 0) & (ry >= 0) & (rz >= 0)
        n_live = int(live.sum())
        if n_live >= _RAY_COMPACT_FRACTION_WINDOW * m and n_live > 0:
            continue
        # rays dropped now: the expected energy of those that left the grid escapes (the
        # roulette's losers have att = 0)
        tally.escaped_kev += float((wgt * const[0] * att).masked_select(~live).sum(dtype=torch.float64))
        if n_live == 0:
            break
        rays, state, const = _compact_rays(live, rays, state, const)
    if not found:
        tally.n_steps += 1
        return st.select(torch.zeros(0, dtype=torch.int64, device=dev))
    pid, t_c, w_c = (torch.cat(a) for a in zip(*found))
    ev = st.select(pid)
    ev.weight = w_c
    ie_c, fe_c = ie.index_select(0, pid), fe.index_select(0, pid)
    x1 = torch.addcmul(ev.x, t_c, ev.u)
    y1 = torch.addcmul(ev.y, t_c, ev.v)
    z1 = torch.addcmul(ev.z, t_c, ev.w)
    # the interaction variate: uniform on [0, mu) at the site (picks the interaction type)
    rr = torch.rand(pid.numel(), generator=gen, device=dev, dtype=e.dtype) * _mu_at(x1, y1, z1, ie_c, fe_c, grid, tab,
                                                                                   setup)
    inside = torch.ones(pid.numel(), dtype=torch.bool, device=dev)
    kernels = setup.kernels if pid.numel() >= MIN_COMPILED_PHOTONS else EAGER_KERNELS
    offset_c = offset.index_select(0, pid)
    return _end_step(ev, ev.energy_kev * w_c, inside, inside, x1, y1, z1, ie_c, fe_c, rr, offset_c, tally, gen,
                     cutoff_kev, grid, setup, kernels)


def _mu_at(x, y, z, ie, fe, grid: TransportGrid, tab: TransportTables, setup: TrackLengthSetup) -> torch.Tensor:
    """Linear attenuation coefficient (1/mm) at the points (their voxel, clamped into the grid)."""
    from .kernels import _voxel

    _, _, _, mi, rho = _voxel(x, y, z, ie, setup.grid_f, setup.grid_i, grid.voxel_table)
    return (tab.total_tr_ab[mi, 0] + fe * tab.total_tr_ab[mi, 1]) * rho


def _score_track(
    st: PhotonState,
    count: torch.Tensor,
    hi: torch.Tensor,
    ew: torch.Tensor,
    ie: torch.Tensor,
    fe: torch.Tensor,
    offset: torch.Tensor,
    r_strat: torch.Tensor,
    grid: TransportGrid,
    tab: TransportTables,
    tally: TransportTally,
    setup: TrackLengthSetup,
    score: Callable,
) -> None:
    """Score the segments just flown: ``count`` points spaced ``hi`` (mm) on each.

    The points lie photon after photon in one flat array (no empty slots) for
    :func:`ctdose.physics.kernels.score_points`; one serial ``scatter_add_`` adds the scores
    (bit-for-bit reproducible). A single point is scored by the eager kernel (the compiled one
    would specialise on it, see :data:`ctdose.physics.kernels.MIN_COMPILED_PHOTONS`).
    """
    from .kernels import EAGER_KERNELS, MIN_COMPILED_PHOTONS

    ends = count.cumsum(0)
    total = int(ends[-1])
    if total == 0:
        return
    if total < MIN_COMPILED_PHOTONS:
        score = EAGER_KERNELS[1]
    pid = _owners(ends, total)
    sidx, sval = score(
        pid, ends - count, st.x, st.y, st.z, st.u, st.v, st.w, hi, ew, ie, fe, offset, r_strat, setup.grid_f,
        setup.grid_i, grid.voxel_table, tab.total_tr_ab,
    )
    tally.energy_kev.scatter_add_(0, sidx, sval)


def _owners(ends: torch.Tensor, total: int) -> torch.Tensor:
    """Photon of each of ``total`` points, the points of photon ``i`` ending at ``ends[i]``.

    ``repeat_interleave(counts)``, computed as the running count of photon ends (exact integer
    sums; about twice as fast on CPU).
    """
    marks = torch.zeros(total + 1, dtype=torch.int32, device=ends.device)
    one = torch.ones(1, dtype=torch.int32, device=ends.device)
    marks.index_put_((ends,), one.expand(ends.numel()), accumulate=True)
    return marks[:total].cumsum(0, dtype=torch.int64)


def _indices(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the True entries of a 1-D mask: int64, not a view (a view would add a guard
    on its base to the compiled kernels, and a recompilation when later inputs are no views)."""
    return mask.nonzero().view(-1).clone()


#: Passes of the interaction kernel after which a photon still not sampled is an error (each
#: pass leaves at most a few % of its photons; NaN energies would never be accepted).
_MAX_INTERACTION_PASSES = 50


def _interact_fixed(
    idx: torch.Tensor,
    e: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    weight: torch.Tensor,
    x1: torch.Tensor,
    y1: torch.Tensor,
    z1: torch.Tensor,
    ie: torch.Tensor,
    fe: torch.Tensor,
    rr: torch.Tensor,
    offset: torch.Tensor,
    alive: torch.Tensor,
    tally: TransportTally,
    gen: torch.Generator,
    cutoff_kev: float,
    grid: TransportGrid,
    setup: TrackLengthSetup,
    kernels: tuple,
) -> None:
    """Real interactions of the photons ``idx`` with :func:`ctdose.physics.kernels.interact`.

    Each pass gives every photon a fixed number of proposals (``INCOHERENT_PROPOSALS`` or
    ``COHERENT_PROPOSALS``); the few photons none of whose proposals was accepted go to the
    next pass (fresh numbers: exact). Updates ``e``, ``u``, ``v``, ``w`` and ``alive`` in place
    and adds the cutoff deposits to the tally.
    """
    from .kernels import MIN_COMPILED_PHOTONS, interaction_uniforms

    cutoff = torch.full((), float(cutoff_kev), dtype=e.dtype, device=e.device)
    for _ in range(_MAX_INTERACTION_PASSES):
        m = idx.numel()
        if m == 0:
            return
        # fewer photons than the compiled kernels' smallest size (one, in the passes over those
        # left over): padded with copies of the last one to that size; the copies are dropped
        run_idx = idx if m >= MIN_COMPILED_PHOTONS else torch.cat([idx, idx[-1:].expand(MIN_COMPILED_PHOTONS - m)])
        rnd = _uniforms(gen, interaction_uniforms(), run_idx.numel(), e)
        e1, u1, v1, w1, alive1, deposit, tidx, done = (t[:m] for t in kernels[3](
            run_idx, rnd, e, u, v, w, weight, x1, y1, z1, ie, fe, rr, offset, cutoff, setup.grid_f, setup.grid_i,
            grid.voxel_table, setup.xs_ab, setup.sf_ratio, setup.coh_x2_inv, setup.coh_frac, setup.scatter_f,
            setup.scatter_i, setup.fl_ab, setup.fl_e,
        ))
        e.index_copy_(0, idx, e1)
        u.index_copy_(0, idx, u1)
        v.index_copy_(0, idx, v1)
        w.index_copy_(0, idx, w1)
        alive.index_copy_(0, idx, alive1)
        tally.energy_kev.scatter_add_(0, tidx, deposit)
        idx = idx.masked_select(~done)
    raise RuntimeError(f"interaction sampling did not converge for {idx.numel()} photons (NaN energies?)")


@dataclass
class TransportSetup:
    """Everything :func:`run_transport` needs for one geometry, built by :func:`prepare_transport`."""

    grid: TransportGrid
    tables: TransportTables
    block: BlockMajorant | None
    track_setup: TrackLengthSetup | None
    #: (table index, density g/cm^3) of the medium around the grid; None: vacuum
    ambient: tuple[int, float] | None = None


def prepare_transport(
    media_index: np.ndarray,
    density_g_cm3: np.ndarray,
    media: Sequence,
    spacing_mm_zyx: Sequence[float],
    origin_mm_zyx: Sequence[float],
    max_energy_kev: float,
    device,
    estimator: str,
    majorant: str,
    block_vox: int = 8,
    majorant_floor_per_mm: float = 0.0,
    track_spacing_mm: float | None = None,
    compile: bool | None = None,
    ambient=None,
    fluorescence_min_kev: float | None = FLUORESCENCE_MIN_KEV,
) -> TransportSetup:
    """Grid, coefficient tables, (block) majorant and track-length kernels for one geometry.

    ``majorant`` is "global" or "block"; ``estimator`` as in :func:`run_transport`;
    ``ambient`` the Medium around the grid (None: vacuum), see :func:`attenuate_in_ambient`;
    ``fluorescence_min_kev`` as in :func:`build_tables`.
    """
    mi = np.asarray(media_index)
    rho = np.asarray(density_g_cm3, dtype=np.float32)
    rho_max = np.zeros(len(media))
    np.maximum.at(rho_max, mi.ravel().astype(np.int64), rho.ravel().astype(np.float64))
    grid = TransportGrid.from_arrays(mi, rho, spacing_mm_zyx, origin_mm_zyx, device)
    table_media = list(media)
    amb = None
    if ambient is not None:
        # an extra table row, used by no voxel (density 0 in the majorant)
        amb = (len(table_media), float(ambient.density_g_cm3))
        table_media.append(ambient)
        rho_max = np.append(rho_max, 0.0)
    tables = build_tables(table_media, rho_max, float(max_energy_kev), device, majorant_floor_per_mm,
                          fluorescence_min_kev)
    block = build_block_majorant(mi, rho, tables, int(block_vox), majorant_floor_per_mm) if majorant == "block" else None
    fused = estimator in FUSED_ESTIMATORS
    track = None
    if fused:
        track = TrackLengthSetup.build(grid, tables, track_spacing_mm, compile, block,
                                       void_flights=estimator == "collision", majorant_floor_per_mm=majorant_floor_per_mm)
    return TransportSetup(grid, tables, block, track, amb)


def run_transport(
    grid: TransportGrid,
    tab: TransportTables,
    sample: Callable[[int, torch.Generator], PhotonState],
    batch_sizes: Sequence[int],
    gen: torch.Generator,
    estimator: str,
    cutoff_kev: float,
    pool_size: int,
    on_progress: Callable[[int], None] | None = None,
    block: BlockMajorant | None = None,
    track_setup: TrackLengthSetup | None = None,
    ambient: tuple[int, float] | None = None,
    window: WeightWindow | None = None,
    sample_dims: int = 0,
) -> TransportTally:
    """Transport all batches' source photons through one shared pool; return the tally.

    ``estimator`` is ``"expected_track_length"`` or ``"track_length"`` (both need
    ``track_setup``), ``"collision"`` or ``"analogue"`` (see the module docstring); a step of
    the expected-track-length estimator is one whole flight of every photon. ``ambient`` (from
    :func:`prepare_transport`): photons reach the grid attenuated by the medium around it
    (:func:`attenuate_in_ambient`).

    Photons are drawn from ``sample(n, gen)`` in portions, in batch order, and carry the
    offset of their batch's block in the tally (``energy_kev`` has ``len(batch_sizes) *
    n_vox`` entries): the batches stay independent while the pool stays full. The live pool is
    topped up with new source photons whenever it falls below half of ``pool_size`` (bounded
    memory; only one short tail of nearly empty steps at the very end). Deposited energies are
    in keV times weight. ``window`` (the two track-length estimators): after every step the pool
    is split and rouletted against its targets (:mod:`ctdose.physics.weight_window`).
    ``sample_dims > 0``: the source photons are ``sample(n, gen, u)`` of that many uniform
    numbers each from one scrambled Sobol' sequence per batch
    (:class:`ctdose.physics.quasi_random.BatchSobol`, seeded from ``gen``).
    """
    dev = grid.density.device
    n_b = len(batch_sizes)
    tally = TransportTally(energy_kev=torch.zeros(n_b * grid.n_vox, dtype=torch.float64, device=dev))
    # the compiled kernels' shape settings once for the whole run (one thread runs them)
    with shape_settings() if track_setup is not None else contextlib.nullcontext():
        ends = np.cumsum(np.asarray(batch_sizes, dtype=np.int64))
        starts = ends - np.asarray(batch_sizes, dtype=np.int64)
        batch_offsets = torch.arange(n_b, dtype=torch.int64, device=dev) * grid.n_vox
        total = int(sum(batch_sizes))
        streams = None
        if sample_dims > 0:
            from .quasi_random import BatchSobol

            streams = BatchSobol(batch_sizes, sample_dims, gen)
        drawn = 0
        pool: PhotonState | None = None
        while drawn < total or (pool is not None and len(pool) > 0):
            n_alive = 0 if pool is None else len(pool)
            if drawn < total and n_alive < pool_size // 2:
                k = min(pool_size - n_alive, total - drawn)
                fresh = sample(k, gen) if streams is None else sample(k, gen, streams.draw(k))
                # photons drawn..drawn+k-1 by batch (batches are consecutive ranges of photons)
                counts = np.clip(np.minimum(ends, drawn + k) - np.maximum(starts, drawn), 0, None)
                fresh.offset = torch.repeat_interleave(
                    batch_offsets, torch.as_tensor(counts, dtype=torch.int64, device=dev), output_size=k
                )
                tally.emitted_kev += float((fresh.energy_kev * fresh.weight).sum(dtype=torch.float64))
                if ambient is None:
                    entered, missed = enter_grid(fresh, grid, setup=track_setup)
                else:
                    entered, missed, dist = enter_grid(fresh, grid, with_distance=True, setup=track_setup)
                    attenuate_in_ambient(entered, dist, tab, ambient, tally)
                if bool(missed.any()):
                    tally.escaped_kev += float(
                        (fresh.energy_kev[missed] * fresh.weight[missed]).sum(dtype=torch.float64)
                    )
                pool = entered if pool is None else PhotonState.cat([pool, entered])
                drawn += k
                if on_progress is not None:
                    on_progress(k)
            if pool is None or len(pool) == 0:
                continue
            if estimator in FUSED_ESTIMATORS:
                allow_split = len(pool) <= MAX_POOL_GROWTH * pool_size
                if estimator == "expected_track_length" and window is not None:  # the window acts in flight
                    pool = _step_expected_track_length_window(pool, grid, tab, tally, gen, cutoff_kev, track_setup,
                                                              window, allow_split)
                    continue
                step = _FUSED_STEPS[estimator]
                pool = step(pool, grid, tab, tally, gen, cutoff_kev, track_setup)
                if window is not None and len(pool) > 0:
                    pool = apply_weight_window(pool, window, gen, allow_split=allow_split)
                continue
            n_paths = 1 if block is not None else max(1, min(_MAX_PATHS_PER_STEP, _PATH_SITES_PER_STEP // len(pool)))
            pool = _step(pool, grid, tab, tally, gen, cutoff_kev, block, n_paths)
    return tally


#: The step function of each fused estimator (the expected-track-length estimator with weight
#: windows has its own, :func:`_step_expected_track_length_window`).
_FUSED_STEPS = {
    "expected_track_length": _step_expected_track_length,
    "track_length": _step_track_length,
    "collision": _step_collision,
}
