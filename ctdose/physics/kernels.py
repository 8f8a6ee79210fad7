"""Fused per-photon kernels of the Woodcock steps, compiled where possible.

The per-photon arithmetic of one step lives in a few pure tensor functions:

:func:`advance` (:func:`advance_block` with the local majorant)
    free path with the majorant, move, voxel lookup, real-collision test, and the number of
    track-length points on the segment flown (:func:`segment_points`);
:func:`advance_collision` (:func:`advance_block_collision`)
    free path, voxel lookup, the collision estimator's score at the tentative site and the
    real-collision test (the collision estimator's step);
:func:`advance_collision_sites`
    up to ``COLLISION_SITES_PER_CALL`` of those flights per photon in one call, until a real
    collision or the grid's exit (fewer steps where most sites are virtual), with void flights
    through the air far from matter (:mod:`ctdose.physics.void`);
:func:`collide_interact`
    the collision estimator's step and the real interactions at its sites in one pass over
    the whole pool (no gathers of the interacting photons; see its docstring for when it pays);
:func:`score_points`
    the stratified track-length estimator at those points, which lie photon after photon in
    one flat array (no empty slots for short segments);
:func:`interact`
    the real interactions (photoelectric, incoherent, coherent) with a fixed number of
    rejection-sampling proposals per photon, all evaluated at once; the caller gives the few
    photons none of whose proposals was accepted another pass;
:func:`grid_entry`
    where new source photons enter the voxel box (slab method).

In eager PyTorch every elementwise operation is one pass over memory, and a step is some
hundred of them; :func:`torch.compile` fuses each function into one loop (C++ on CPU, Triton
on CUDA), which is about ten times faster per photon on CPU. :func:`get_kernels` returns the
compiled kernels when a compiler backend works here and the eager functions otherwise (the
same arithmetic; results then differ from a compiled run only by floating-point rounding).

Compilation happens once per process and device (shapes are dynamic, so neither the pool
size nor the number of points per segment recompiles); Inductor caches the generated code on
disk, so later processes start faster. Set ``CTDOSE_MC_COMPILE=0`` to never compile.

Grid and table constants enter as small tensors (``grid_f``, ``grid_i``, ``energy_f``,
``scatter_f``, ...), not Python numbers, so that a new geometry does not trigger a
recompilation. The kernels are elementwise (no reductions), so their results do not depend
on the number of threads.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings

import torch

from .energy_rows import MAX_SPLITS_PER_STEP
from .fluorescence import FLUORESCENCE_MAX_LINES
from .interactions import ELECTRON_REST_KEV, HC_KEV_ANGSTROM, kn_proposal, rotate_direction

__all__ = [
    "advance",
    "advance_block",
    "advance_collision",
    "advance_block_collision",
    "advance_collision_sites",
    "collide_interact",
    "counter_key",
    "counter_uniforms",
    "fluorescence_line",
    "segment_points",
    "score_points",
    "interact",
    "interaction_uniforms",
    "grid_entry",
    "get_kernels",
    "compiled_kernels",
    "shape_settings",
    "compile_enabled",
    "MIN_COMPILED_PHOTONS",
    "COLLISION_SITES_PER_CALL",
    "VOID_FLIGHT_MIN_FREE_PATHS",
    "INCOHERENT_PROPOSALS",
    "COHERENT_PROPOSALS",
]

#: Pools smaller than this run the eager kernels, and smaller interaction passes and ray sets
#: are padded to it: the compiled kernels are traced for any size but 0 and 1, which the
#: compiler specialises. Any larger pool runs compiled. At the tail of a run the last photons
#: take 5-30 steps in pools of fewer than 64, where an eager step took 2.6-11 ms and a compiled
#: one 1.2-3.7 ms (the threshold was 64 before; 1 core, ``benchmarks/bench_collision_step.py
#: --tail``): 25 ms less per run in the demo thorax (collision estimator, 5e5 histories), 47 ms
#: with the default estimator (2e5), 7 ms in the water cylinder. The threshold is part of a
#: run's random stream: a padded pass draws its counter-based numbers for the padded size
#: (:func:`counter_uniforms`), so another threshold gives a run of another seed (exact alike).
MIN_COMPILED_PHOTONS = 2

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_COMPILED: dict[str, tuple] = {}
_FAILED: set[str] = set()


#: Counter-based uniform numbers (:func:`counter_uniforms`): the increment of SplitMix64's Weyl
#: sequence and the two multipliers of its output function (Steele, Lea and Flood 2014), as
#: signed 64-bit integers (torch has no unsigned 64-bit arithmetic; the bits are the same).
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_SPLITMIX_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_SPLITMIX_M2 = 0x94D049BB133111EB - (1 << 64)
#: Mantissa bits of a float32 uniform number in [0, 1).
_UNIFORM_BITS = 24


def _shift_right(z, bits: int):
    """Logical right shift of int64 ``z`` (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


_COUNTER_CONSTANTS: dict[torch.device, torch.Tensor] = {}


def counter_key(gen: torch.Generator, device) -> torch.Tensor:
    """A key for :func:`counter_uniforms`: ``[seed, gamma, m1, m2]`` (int64, on ``device``), the
    seed a random 62-bit number from ``gen``.

    The constants travel in the tensor because, as literals, Inductor folds their products in
    Python integers and overflows. The key stays on the device (no synchronisation with a GPU).
    """
    device = torch.device(device)
    consts = _COUNTER_CONSTANTS.get(device)
    if consts is None:
        consts = torch.tensor([_SPLITMIX_GAMMA, _SPLITMIX_M1, _SPLITMIX_M2], dtype=torch.int64, device=device)
        _COUNTER_CONSTANTS[device] = consts
    seed = torch.randint(0, 1 << 62, (1,), generator=gen, device=device, dtype=torch.int64)
    return torch.cat([seed, consts])


def counter_uniforms(key: torch.Tensor, rows: int, n) -> torch.Tensor:
    """``(rows, n)`` uniform numbers in [0, 1) (float32, multiples of 2^-24) from an int64
    ``key`` (:func:`counter_key`).

    Number ``i`` (row-major) is SplitMix64's output function (Steele, Lea and Flood 2014) of
    the state ``seed + (i + 1) gamma``, its top ``_UNIFORM_BITS`` bits: a counter-based
    generator, so a compiled kernel computes the numbers where it reads them, with no array
    of random numbers written and read back. The same key gives the same numbers on any
    device and thread count, compiled or eager.

    Examples
    --------
    >>> key = counter_key(torch.Generator().manual_seed(1), "cpu")
    >>> r = counter_uniforms(key, 2, 1000)
    >>> r.shape, bool((r >= 0).all() and (r < 1).all())
    (torch.Size([2, 1000]), True)
    """
    i = torch.arange(rows * n, device=key.device, dtype=torch.int64).view(rows, n)
    z = key[0] + (i + 1) * key[1]
    z = (z ^ _shift_right(z, 30)) * key[2]
    z = (z ^ _shift_right(z, 27)) * key[3]
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 64 - _UNIFORM_BITS).to(torch.float32) * (1.0 / (1 << _UNIFORM_BITS))


def _rows(rnd, rows: int, n):
    """``rnd`` itself (an array of uniform numbers) or, for an int64 key, ``rows`` x ``n``
    counter-based ones (:func:`counter_uniforms`)."""
    if rnd.dtype == torch.int64:
        return counter_uniforms(rnd, rows, n)
    return rnd


#: Entries of ``energy_f`` before the row table: first grid energy (keV), 1 / grid step (1/keV),
#: largest fractional step index.
_ENERGY_F_HEADER = 3


def _energy_index(e, energy_f):
    """Table row and step fraction of each energy (linear interpolation within a row).

    ``energy_f`` holds the grid's first energy, its inverse step and the largest fractional step
    index, then per step of the uniform grid its first table row and its split fractions
    (:class:`ctdose.physics.energy_rows.EnergyRows.lookup`, flattened): a step that holds an
    absorption edge has a row on either side of it, and the photon's fraction of the step
    picks one.
    """
    pe = ((e - energy_f[0]) * energy_f[1]).clamp(min=0.0).minimum(energy_f[2])
    ie = pe.to(torch.int64)
    fe = pe - ie.to(pe.dtype)
    at = _ENERGY_F_HEADER + (1 + MAX_SPLITS_PER_STEP) * ie
    row = energy_f[at]
    for k in range(MAX_SPLITS_PER_STEP):
        row = row + (fe >= energy_f[at + 1 + k]).to(pe.dtype)
    return row.to(torch.int64), fe


def _locate(px, py, pz, grid_f, grid_i):
    """Whether each point (mm) is inside the grid, and its voxel index (clamped into the grid)."""
    fx = (px - grid_f[0]) * grid_f[3]
    fy = (py - grid_f[1]) * grid_f[4]
    fz = (pz - grid_f[2]) * grid_f[5]
    inside = (fx >= 0) & (fx < grid_f[6]) & (fy >= 0) & (fy < grid_f[7]) & (fz >= 0) & (fz < grid_f[8])
    ix = fx.clamp(min=0.0).minimum(grid_f[6] - 1).to(torch.int64)
    iy = fy.clamp(min=0.0).minimum(grid_f[7] - 1).to(torch.int64)
    iz = fz.clamp(min=0.0).minimum(grid_f[8] - 1).to(torch.int64)
    return inside, (iz * grid_i[1] + iy) * grid_i[0] + ix


def _voxel(x1, y1, z1, ie, grid_f, grid_i, voxel_table):
    """Inside flag, voxel index, medium, table row ``med * n_rows + ie`` and density at each point."""
    inside, flat = _locate(x1, y1, z1, grid_f, grid_i)
    med = voxel_table[flat, 0].to(torch.int64)
    rho = voxel_table[flat, 1]
    return inside, flat, med, med * grid_i[3] + ie, rho


def _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table, total_tr_ab):
    """The real-collision test at the new positions: ``(rr, real, inside)``, and the voxel's
    index, table row, density and medium (``flat, mi, rho, med``)."""
    inside, flat, med, mi, rho = _voxel(x1, y1, z1, ie, grid_f, grid_i, voxel_table)
    mu = (total_tr_ab[mi, 0] + fe * total_tr_ab[mi, 1]) * rho
    rr = r_real * maj
    return rr, (rr < mu) & inside, inside, flat, mi, rho, med


def advance(
    x, y, z, u, v, w, e, r_path, r_real, r_strat, n_slots, h_mm, grid_f, grid_i, energy_f, maj_ab, voxel_table,
    total_tr_ab,
):
    """One free flight with the global majorant, the real-collision test at its end, and the
    number of track-length points on the segment flown (:func:`segment_points`).

    Parameters
    ----------
    x, y, z, u, v, w, e : Tensor (n,)
        Position (mm), unit direction and energy (keV) of each photon.
    r_path, r_real, r_strat : Tensor (n,)
        Uniform random numbers in [0, 1) for the free path, the rejection test and the
        offset of the track-length points.
    n_slots, h_mm : Tensor () float
        Most points per segment and their smallest spacing (mm), see :func:`segment_points`.
    grid_f : Tensor (9,) float32
        ``lo_x, lo_y, lo_z`` (mm), ``1/dx, 1/dy, 1/dz`` (1/mm), ``nx, ny, nz``.
    grid_i : Tensor (4,) int64
        ``nx, ny, nz, n_rows``.
    energy_f : Tensor (3 + 3 n_e,) float32
        First grid energy (keV), 1 / grid step (1/keV), largest fractional step index, then
        the steps' rows (see :func:`_energy_index`).
    maj_ab : Tensor (n_rows, 2)
        Majorant (1/mm) value and slope per table row.
    voxel_table : Tensor (n_vox, 2)
        Medium index and mass density (g/cm^3) per voxel.
    total_tr_ab : Tensor (n_media * n_rows, 4)
        Total and energy-transfer coefficients per density (value, slope, value, slope).

    Returns
    -------
    s, x1, y1, z1 : free path (mm) and the new position
    ie, fe : energy table row and step fraction (:func:`_energy_index`)
    rr : ``r_real * maj`` with the majorant ``maj`` (1/mm) at the photon energy: the
        rejection variate (it also picks the interaction type, see :func:`interact`)
    real, inside : real collision (inside the grid), new position inside the grid
    count, hi : track-length points on the segment and their spacing (mm)

    The voxel data at the new position are looked up again for the (fewer) photons that
    interact (:func:`interact`): writing them for every photon would cost more.
    """
    ie, fe, maj, s, x1, y1, z1 = _global_flight(x, y, z, u, v, w, e, r_path, energy_f, maj_ab)
    rr, real, inside, *_ = _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table, total_tr_ab)
    count, hi = segment_points(s, r_strat, n_slots, h_mm)
    return s, x1, y1, z1, ie, fe, rr, real, inside, count, hi


def _global_flight(x, y, z, u, v, w, e, r_path, energy_f, maj_ab):
    """Free path with the global majorant: ``ie, fe, maj, s, x1, y1, z1``."""
    ie, fe = _energy_index(e, energy_f)
    maj = maj_ab[ie, 0] + fe * maj_ab[ie, 1]
    s = -torch.log(r_path) / maj
    return ie, fe, maj, s, x + s * u, y + s * v, z + s * w


def advance_block(
    x, y, z, u, v, w, e, r_path, r_real, r_strat, n_slots, h_mm, grid_f, grid_i, energy_f, block_ab, block_f, block_i,
    voxel_table, total_tr_ab,
):
    """:func:`advance` with a local majorant per block of voxels (fewer virtual collisions).

    The free path is sampled with the majorant of the photon's block; a path that would leave
    the block stops at its face instead (no collision there; by the memoryless exponential
    law, restarting with the next block's majorant is exact). A photon stopped at a face is
    put just past it (``block_f[9]`` mm along the exit axis only), so that it always makes
    progress, however small its direction cosine along that axis.

    Extra parameters
    ----------------
    block_ab : Tensor (n_blocks * n_rows, 2)
        Block majorant (1/mm) value and slope per table row.
    block_f : Tensor (10,) float32
        ``1/bw_x, 1/bw_y, 1/bw_z`` (1/mm), ``bw_x, bw_y, bw_z`` (mm), ``nbx, nby, nbz``,
        face offset (mm).
    block_i : Tensor (3,) int64
        ``nbx, nby, nbz``.

    Returns the same tuple as :func:`advance`; ``s`` is the distance flown (to the collision
    site or the block face) and ``real`` is False at a face.
    """
    ie, fe, maj, s, x1, y1, z1, coll = _block_flight(x, y, z, u, v, w, e, r_path, grid_f, grid_i, energy_f, block_ab,
                                                     block_f, block_i)
    rr, real, inside, *_ = _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table, total_tr_ab)
    count, hi = segment_points(s, r_strat, n_slots, h_mm)
    return s, x1, y1, z1, ie, fe, rr, real & coll, inside, count, hi


def _block_flight(x, y, z, u, v, w, e, r_path, grid_f, grid_i, energy_f, block_ab, block_f, block_i):
    """Free path with the block majorant, cut at the block face (see :func:`advance_block`):
    ``ie, fe, maj, s, x1, y1, z1, coll`` (``coll``: a tentative collision inside the block)."""
    ie, fe = _energy_index(e, energy_f)
    gx = (x - grid_f[0]) * block_f[0]
    gy = (y - grid_f[1]) * block_f[1]
    gz = (z - grid_f[2]) * block_f[2]
    bx = gx.floor().clamp(min=0.0).minimum(block_f[6] - 1)
    by = gy.floor().clamp(min=0.0).minimum(block_f[7] - 1)
    bz = gz.floor().clamp(min=0.0).minimum(block_f[8] - 1)
    bidx = (bz.to(torch.int64) * block_i[1] + by.to(torch.int64)) * block_i[0] + bx.to(torch.int64)
    row = bidx * grid_i[3] + ie
    maj = block_ab[row, 0] + fe * block_ab[row, 1]
    s_free = -torch.log(r_path) / maj
    inf = torch.full_like(x, float("inf"))
    # distance to the block's exit face along each axis (faces in mm)
    fxp = (bx + (u > 0).to(x.dtype)) * block_f[3] + grid_f[0]
    fyp = (by + (v > 0).to(x.dtype)) * block_f[4] + grid_f[1]
    fzp = (bz + (w > 0).to(x.dtype)) * block_f[5] + grid_f[2]
    tx = torch.where(u != 0, (fxp - x) / u, inf).clamp(min=0.0)
    ty = torch.where(v != 0, (fyp - y) / v, inf).clamp(min=0.0)
    tz = torch.where(w != 0, (fzp - z) / w, inf).clamp(min=0.0)
    d_exit = torch.minimum(torch.minimum(tx, ty), tz)
    coll = s_free < d_exit
    s = torch.where(coll, s_free, d_exit)
    x1 = x + s * u
    y1 = y + s * v
    z1 = z + s * w
    # at a face: just past it along the exit axis
    eps = block_f[9]
    ax = (~coll) & (tx <= ty) & (tx <= tz)
    ay = (~coll) & (~ax) & (ty <= tz)
    az = (~coll) & (~ax) & (~ay)
    x1 = torch.where(ax, fxp + torch.where(u > 0, eps, -eps), x1)
    y1 = torch.where(ay, fyp + torch.where(v > 0, eps, -eps), y1)
    z1 = torch.where(az, fzp + torch.where(w > 0, eps, -eps), z1)
    return ie, fe, maj, s, x1, y1, z1, coll


def advance_collision(
    x, y, z, u, v, w, e, ew, r_path, r_real, offset, grid_f, grid_i, energy_f, maj_ab, voxel_table, total_tr_ab,
):
    """One free flight with the global majorant, scored by the collision estimator.

    At the tentative collision site (real or virtual) the photon scores its expected energy
    transfer per unit majorant path, ``w E mu_tr(E, voxel) / mu_maj(E)``; the sites form a
    Poisson process of rate ``mu_maj`` along the path, so the sum over them estimates the
    track-length integral ``int w E mu_tr dt`` without bias. Then the real-collision test.

    Parameters
    ----------
    ew : Tensor (n,)
        Photon energy times weight (keV).
    offset : Tensor (n,) int64
        Start of the photon's batch block in the tally.

    The other parameters are those of :func:`advance` (no track-length points here).

    Returns
    -------
    x1, y1, z1, ie, fe, rr, real, inside
        As :func:`advance`.
    index : Tensor (n,) int64
        Tally index of the site (``offset`` + voxel index, clamped into the grid).
    score : Tensor (n,) float64
        Energy (keV x weight) scored there; zero outside the grid.
    """
    ie, fe, maj, _, x1, y1, z1 = _global_flight(x, y, z, u, v, w, e, r_path, energy_f, maj_ab)
    return _collision_site(x1, y1, z1, ie, fe, maj, r_real, ew, offset, grid_f, grid_i, voxel_table,
                           total_tr_ab)[:10]


def advance_block_collision(
    x, y, z, u, v, w, e, ew, r_path, r_real, offset, grid_f, grid_i, energy_f, block_ab, block_f, block_i,
    voxel_table, total_tr_ab,
):
    """:func:`advance_collision` with the block majorant (:func:`advance_block`).

    A photon stopped at a block face has no tentative collision there: it scores nothing and
    ``real`` is False.
    """
    ie, fe, maj, _, x1, y1, z1, coll = _block_flight(x, y, z, u, v, w, e, r_path, grid_f, grid_i, energy_f,
                                                     block_ab, block_f, block_i)
    x1, y1, z1, ie, fe, rr, real, inside, index, score = _collision_site(
        x1, y1, z1, ie, fe, maj, r_real, ew, offset, grid_f, grid_i, voxel_table, total_tr_ab
    )[:10]
    return x1, y1, z1, ie, fe, rr, real & coll, inside, index, torch.where(coll, score, torch.zeros_like(score))


#: Tentative sites (flights) per photon in one call of :func:`advance_collision_sites`. The
#: call stops a photon at its first real collision, so where a fraction p of the sites is real
#: it flies min(K, geometric(p)) of the K, and the other slots are computed and discarded.
#: Whole collision-estimator runs in the demo thorax (12 % real sites, global majorant), 1 core,
#: 5e5 histories, medians of 3 runs, histories/s: one flight per call 4.2e5; K = 2, 3, 4, 5, 6,
#: 8: 4.9e5, 4.7e5, 5.1e5, 4.5e5, 4.0e5, 3.5e5 (the wasted slots and the wider score arrays
#: outweigh the saved steps beyond 4). See ``benchmarks/bench_collision_step.py``.
COLLISION_SITES_PER_CALL = 4


#: A photon in a void voxel (:mod:`ctdose.physics.void`) flies with the void's majorant while
#: its distance to the nearest matter exceeds this many mean free paths at the global
#: majorant (below that a void flight ends at that distance sooner than a global one at a
#: site, on average, and gains nothing).
VOID_FLIGHT_MIN_FREE_PATHS = 1.0


def advance_collision_sites(
    x, y, z, u, v, w, e, ew, rnd, offset, grid_f, grid_i, energy_f, maj_ab, void_ab, void_table, total_tr_ab,
):
    """:func:`advance_collision` repeated up to ``K = COLLISION_SITES_PER_CALL`` times per photon:
    flight after flight, each scored at its tentative site, until the first real collision or
    the grid's exit; in void voxels far from matter, flights with the void's majorant.

    A virtual collision changes neither energy nor direction, so the flights that follow it
    need no interaction in between: the photon's energy index and majorants are computed once,
    and the step's fixed costs (random numbers, the pool's gathers and compaction, the kernel
    call) are shared by up to K sites. Flight k uses the numbers ``rnd[2k]`` (free path, as
    ``1 - rnd[2k]``) and ``rnd[2k + 1]`` (rejection test).

    Void flights (:mod:`ctdose.physics.void`): where the voxel a flight starts in lies ``d`` mm
    from the nearest matter (``void_table[:, 2]``) and ``d`` exceeds
    ``VOID_FLIGHT_MIN_FREE_PATHS`` mean free paths at the global majorant, the free path is
    sampled with the void majorant ``void_ab`` instead; a path longer than ``d`` ends after
    ``d`` with no tentative site (no score, no collision test; exact by the memoryless law,
    as at a block face). Where no voxel has a distance (all zero), the result is that of K
    calls of :func:`advance_collision` with the same numbers, each for the photons whose
    earlier flights ended at a virtual site inside the grid.

    Parameters
    ----------
    rnd : Tensor (2 K, n)
        Uniform numbers in [0, 1), or an int64 key (:func:`counter_key`) for the kernel's own
        (:func:`counter_uniforms`).
    void_ab : Tensor (n_rows, 2)
        Majorant of the void voxels (1/mm) per table row: value and slope.
    void_table : Tensor (n_vox, 4) float32
        Per voxel: medium index, density (g/cm^3), void distance (mm), unused
        (:func:`ctdose.physics.transport.void_voxel_table`).

    The other parameters are those of :func:`advance_collision`.

    Returns
    -------
    x1, y1, z1, ie, fe, rr, real, inside : Tensor (n,)
        As :func:`advance_collision`, for the last flight each photon flew: a real collision,
        the exit, or the K-th flight's end at a virtual site or after a void flight (then
        ``real`` is False and ``inside`` True: the photon flies on in the next step).
    index : Tensor (n, K) int64
        Tally index of each flight's end (that of the last flight in the slots after it).
    score : Tensor (n, K) float64
        Each flight's score (zero outside the grid, after a void flight's full distance, and
        in the slots after the last flight).
    n_sites : Tensor (n,) int32
        Flights flown (1 to K).
    """
    rnd = _rows(rnd, 2 * COLLISION_SITES_PER_CALL, x.shape[0])
    ie, fe = _energy_index(e, energy_f)
    maj_all = maj_ab[ie, 0] + fe * maj_ab[ie, 1]
    maj_void = void_ab[ie, 0] + fe * void_ab[ie, 1]
    _, flat = _locate(x, y, z, grid_f, grid_i)
    void_mm = void_table[flat, 2]
    going = torch.ones_like(ie, dtype=torch.bool)
    real, inside = torch.zeros_like(going), torch.ones_like(going)
    rr = torch.zeros_like(x)
    n_sites = torch.zeros_like(ie, dtype=torch.int32)
    x1, y1, z1 = x, y, z
    indices, scores = [], []
    for k in range(COLLISION_SITES_PER_CALL):
        # a photon that has stopped keeps its site: its later slots look up that voxel again
        in_void = void_mm * maj_all > VOID_FLIGHT_MIN_FREE_PATHS
        maj = torch.where(in_void, maj_void, maj_all)
        s = -torch.log(1.0 - rnd[2 * k]) / maj
        through = in_void & (s >= void_mm)  # the whole void distance: no site
        s = torch.where(through, void_mm, s)
        x1 = torch.where(going, x1 + s * u, x1)
        y1 = torch.where(going, y1 + s * v, y1)
        z1 = torch.where(going, z1 + s * w, z1)
        rr_k, real_k, inside_k, flat, mi, rho, _ = _collide(x1, y1, z1, ie, fe, maj, rnd[2 * k + 1], grid_f, grid_i,
                                                            void_table, total_tr_ab)
        real_k = real_k & ~through
        mu_tr = (total_tr_ab[mi, 2] + fe * total_tr_ab[mi, 3]) * rho
        site = going & inside_k & ~through
        scores.append(torch.where(site, mu_tr * (ew / maj), torch.zeros_like(mu_tr)).to(torch.float64))
        indices.append(flat + offset)
        rr = torch.where(going, rr_k, rr)
        real = torch.where(going, real_k, real)
        inside = torch.where(going, inside_k, inside)
        n_sites = n_sites + going.to(torch.int32)
        void_mm = torch.where(going, void_table[flat, 2], void_mm)
        going = going & inside_k & ~real_k
    return x1, y1, z1, ie, fe, rr, real, inside, torch.stack(indices, 1), torch.stack(scores, 1), n_sites


def _collision_site(x1, y1, z1, ie, fe, maj, r_real, ew, offset, grid_f, grid_i, voxel_table, total_tr_ab):
    """Collision-estimator score and real-collision test at the tentative sites (x1, y1, z1):
    ``x1, y1, z1, ie, fe, rr, real, inside, index, score`` (see :func:`advance_collision`),
    then the site's medium, table row and density (``med, mi, rho``)."""
    rr, real, inside, flat, mi, rho, med = _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table,
                                                    total_tr_ab)
    mu_tr = (total_tr_ab[mi, 2] + fe * total_tr_ab[mi, 3]) * rho
    score = torch.where(inside, mu_tr * (ew / maj), torch.zeros_like(mu_tr))
    return x1, y1, z1, ie, fe, rr, real, inside, flat + offset, score.to(torch.float64), med, mi, rho


def collide_interact(
    x, y, z, u, v, w, e, ew, weight, offset, rnd, cutoff_kev, grid_f, grid_i, energy_f, maj_ab, voxel_table,
    total_tr_ab, xs_ab, sf_ratio, coh_x2_inv, coh_frac, scatter_f, scatter_i, fl_ab=None, fl_e=None,
):
    """:func:`advance_collision` and :func:`interact` in one pass over the whole pool.

    Every photon flies to its tentative site (global majorant), scores there, and makes the
    real-collision test; the photons with a real collision then interact at once, with the
    samplers of :func:`interact` evaluated for every photon and kept where the collision is
    real. Against :func:`advance_collision` followed by :func:`interact` on the indices of
    the real collisions, this saves the gathers of the interacting photons' state, the scatter
    of the results back into the pool and a second voxel lookup, and costs the samplers'
    arithmetic (and random numbers) of the photons that do not interact: it pays where most
    tentative sites are real (a water phantom: about 60 %), not where most are virtual (a
    thorax under a bone majorant: about 12 %); :func:`ctdose.physics.transport._step_collision`
    chooses.

    Parameters
    ----------
    x, y, z, u, v, w, e, ew, offset, grid_f, grid_i, energy_f, maj_ab, voxel_table, total_tr_ab
        As in :func:`advance_collision`.
    weight : Tensor (n,)
        Statistical weight of each photon (for the deposit at the energy cutoff).
    rnd : Tensor (2 + R, n)
        Uniform numbers in [0, 1): row 0 the free path (``1 - rnd[0]`` in (0, 1]), row 1 the
        rejection test, rows 2.. those of the lean samplers (``R = interaction_uniforms(lean=True)``:
        the branch and energy ratio of an incoherent proposal from one number, the azimuth
        from the accepted proposal's acceptance number; both exact, see :func:`_incoherent`).
        Or an int64 key (:func:`counter_key`) for the kernel's own (:func:`counter_uniforms`).
    cutoff_kev, xs_ab, sf_ratio, coh_x2_inv, coh_frac, scatter_f, scatter_i, fl_ab, fl_e
        As in :func:`interact`.

    Returns
    -------
    x1, y1, z1, ie, fe, rr : Tensor (n,)
        The tentative site (mm), energy table row and step fraction, rejection variate
        (as :func:`advance_collision`; :func:`interact` takes them for the photons
        ``pending``).
    e1, u1, v1, w1 : Tensor (n,)
        Energy and direction after the step (unchanged where no interaction was sampled).
    real, inside : Tensor (n,) bool
        Real collision; site inside the grid.
    alive : Tensor (n,) bool
        Inside the grid and neither absorbed nor below the cutoff.
    pending : Tensor (n,) bool
        A real collision none of whose proposals was accepted: it needs another pass of
        :func:`interact` (fresh numbers: exact).
    index : Tensor (n,) int64
        Tally index of the site (``offset`` + voxel index, clamped into the grid).
    score : Tensor (n,) float64
        The collision estimator's score at the site plus the energy deposited there at the
        cutoff (keV x weight).
    """
    rnd = _rows(rnd, 2 + interaction_uniforms(lean=True), x.shape[0])
    ie, fe, maj, _, x1, y1, z1 = _global_flight(x, y, z, u, v, w, e, 1.0 - rnd[0], energy_f, maj_ab)
    x1, y1, z1, ie, fe, rr, real, inside, index, score, med, mi, rho = _collision_site(
        x1, y1, z1, ie, fe, maj, rnd[1], ew, offset, grid_f, grid_i, voxel_table, total_tr_ab
    )
    e1, u1, v1, w1, alive, deposit, done = _sample_interaction(
        e, u, v, w, weight, fe, rr, med, mi, rho, rnd[2:], cutoff_kev, xs_ab, sf_ratio, coh_x2_inv, coh_frac,
        scatter_f, scatter_i, real, lean=True, fl_ab=fl_ab, fl_e=fl_e,
    )
    return (x1, y1, z1, ie, fe, rr, e1, u1, v1, w1, real, inside, alive & inside, real & (~done), index,
            score + deposit)


def segment_points(s, r_strat, n_slots, h_mm):
    """Number and spacing of the stratified track-length points on each flight segment.

    For a segment of length ``s`` the expected energy transferred to charged particles is
    the track-length integral ``int_0^s w E mu_tr(E, p(t)) dt``. With ``K`` slots and the
    spacing ``h = max(h_mm, s / K)`` the points ``t_j = (j + U) h`` (one uniform ``U`` per
    photon; ``j < K`` and ``t_j < s``) give ``h sum_j f(t_j)``, an unbiased estimate of that
    integral for every integrand (systematic sampling): each voxel crossed gets its share, not
    only the voxels where the photon happens to collide. :func:`score_points` scores them.

    Parameters
    ----------
    s : Tensor (n,)
        Segment lengths (mm).
    r_strat : Tensor (n,)
        The uniform offset ``U`` per photon.
    n_slots : Tensor () float
        ``K``, the most points per segment.
    h_mm : Tensor () float
        Smallest spacing of the points (mm).

    Returns
    -------
    count : Tensor (n,) int64
        Points on the segment: the number of ``j < K`` with ``(j + U) h < s``, exactly as
        :func:`score_points` places them.
    h : Tensor (n,)
        Spacing of the points (mm).
    """
    hi = torch.maximum(s / n_slots, h_mm)
    c = (s / hi - r_strat).ceil().clamp(min=0.0).minimum(n_slots)
    # the same test as the points' own positions (float rounding of the estimate above)
    c = torch.where((c > 0) & ((c - 1.0 + r_strat) * hi >= s), c - 1.0, c)
    c = torch.where((c < n_slots) & ((c + r_strat) * hi < s), c + 1.0, c)
    return c.to(torch.int64), hi


def score_points(
    pid, start, x, y, z, u, v, w, hi, ew, ie, fe, offset, r_strat, grid_f, grid_i, voxel_table, total_tr_ab
):
    """Track-length scores of the points of :func:`segment_points`, photon after photon.

    Point ``p`` belongs to photon ``pid[p]`` and is its ``j = p - start[pid[p]]``-th, at
    ``t_j = (j + U) h`` along the photon's segment. Points outside the grid score nothing
    (vacuum).

    Parameters
    ----------
    pid : Tensor (P,) int64
        Photon of each point (nondecreasing: a photon's points are consecutive).
    start : Tensor (n,) int64
        Index of each photon's first point.
    x, y, z, u, v, w : Tensor (n,)
        Segment start (mm) and unit direction.
    hi : Tensor (n,)
        Point spacing (mm), from :func:`segment_points`.
    ew : Tensor (n,)
        Photon energy times weight (keV).
    ie, fe : Tensor (n,)
        Energy table row and step fraction.
    offset : Tensor (n,) int64
        Start of the photon's batch block in the tally.
    r_strat : Tensor (n,)
        The uniform offset ``U`` per photon.

    Returns
    -------
    index : Tensor (P,) int64
        Tally index (``offset`` + voxel index, clamped into the grid) of each point.
    score : Tensor (P,) float64
        Energy (keV x weight) scored there; zero outside the grid.

    The caller adds ``score`` into the tally with one serial ``scatter_add_`` (the kernel may
    run on several threads; a serial sum keeps the result bit-for-bit reproducible).
    """
    j = torch.arange(pid.shape[0], device=pid.device) - start[pid]
    h = hi[pid]
    t = (j.to(h.dtype) + r_strat[pid]) * h
    inside, flat = _locate(x[pid] + t * u[pid], y[pid] + t * v[pid], z[pid] + t * w[pid], grid_f, grid_i)
    med = voxel_table[flat, 0].to(torch.int64)
    rho = voxel_table[flat, 1]
    mi = med * grid_i[3] + ie[pid]
    mu_tr = (total_tr_ab[mi, 2] + fe[pid] * total_tr_ab[mi, 3]) * rho
    score = torch.where(inside, mu_tr * (ew[pid] * h), torch.zeros_like(mu_tr))
    return flat + offset[pid], score.to(torch.float64)


#: Incoherent (Klein-Nishina x S) proposals per photon and pass of :func:`interact`: the
#: acceptance is about 0.6 at CT energies, so some 5 % of the incoherent photons are left for
#: the next pass (few passes over few photons cost less than more proposals for all).
INCOHERENT_PROPOSALS = 3
#: Coherent (form factor x Thomson) proposals per photon and pass: the acceptance is 0.75 to
#: 0.98, so 1 to 6 % of the coherent photons (a few % of all) are left for the next pass.
COHERENT_PROPOSALS = 2
#: Uniform numbers per incoherent proposal (branch, energy ratio, acceptance test).
_UNIFORMS_PER_INCOHERENT = 3
#: The same in the lean samplers of :func:`collide_interact` (branch and energy ratio from one
#: number, see :func:`ctdose.physics.interactions.kn_proposal`).
_UNIFORMS_PER_INCOHERENT_LEAN = 2
#: Uniform numbers per coherent proposal (form factor inversion, Thomson acceptance test).
_UNIFORMS_PER_COHERENT = 2


def interaction_uniforms(lean: bool = False) -> int:
    """Rows of uniform numbers that :func:`interact` takes per photon.

    ``INCOHERENT_PROPOSALS`` incoherent proposals (3 numbers each); the ``COHERENT_PROPOSALS``
    coherent ones (2 numbers each) use the same rows (a photon makes one kind of interaction);
    the last row is the azimuth. ``lean``: the samplers of :func:`collide_interact`, 2 numbers
    per incoherent proposal and no azimuth row (the accepted proposal's acceptance number
    gives it).
    """
    per_incoherent = _UNIFORMS_PER_INCOHERENT_LEAN if lean else _UNIFORMS_PER_INCOHERENT
    rows = max(per_incoherent * INCOHERENT_PROPOSALS, _UNIFORMS_PER_COHERENT * COHERENT_PROPOSALS)
    return rows if lean else rows + 1


def _incoherent(e, med, rnd, n_prop, sf_ratio, scatter_f, scatter_i, lean=False):
    """Klein-Nishina x S(x)/S(inf) with ``n_prop`` proposals per photon (rows ``3p, 3p + 1, 3p + 2``
    of ``rnd``: branch, energy ratio, acceptance): the first accepted E'/E, whether any was,
    and (``lean``) a uniform number for the azimuth.

    ``lean``: rows ``2p, 2p + 1`` (branch and energy ratio from one number, acceptance), and
    the accepted proposal's acceptance number ``r < f`` gives ``r / f``, uniform in [0, 1)
    and independent of the proposal (exact). Otherwise the third output is None.
    """
    per = _UNIFORMS_PER_INCOHERENT_LEAN if lean else _UNIFORMS_PER_INCOHERENT
    k = e * (1.0 / ELECTRON_REST_KEV)
    x_max = e * (1.0 / HC_KEV_ANGSTROM)
    base = med * scatter_i[0]
    eps_out = torch.ones_like(e)
    az_out = torch.zeros_like(e) if lean else None
    done = torch.zeros_like(e, dtype=torch.bool)
    # unrolled (one fused loop over the photons); the first accepted proposal wins: going
    # backwards, each accepted one overwrites the later ones
    for p in reversed(range(n_prop)):
        r = rnd[per * p:per * (p + 1)]
        eps, g, one_minus_cos = kn_proposal(k, r[0], None if lean else r[1])
        x = x_max * (0.5 * one_minus_cos).clamp(min=0.0, max=1.0).sqrt()
        px = (x * scatter_f[0]).clamp(min=0.0).minimum(scatter_f[1])
        jx = px.to(torch.int64)
        lo = sf_ratio[base + jx]
        sf = lo + (px - jx.to(px.dtype)) * (sf_ratio[base + jx + 1] - lo)
        f = g * sf
        acc = r[per - 1] < f
        eps_out = torch.where(acc, eps, eps_out)
        if lean:
            az_out = torch.where(acc, (r[per - 1] / f).clamp(max=1.0), az_out)
        done = done | acc
    return eps_out, done, az_out


def _coherent(e, med, rnd, n_prop, coh_x2_inv, coh_frac, scatter_f, scatter_i, lean=False):
    """Form factor x Thomson with ``n_prop`` proposals per photon (rows ``2p, 2p + 1`` of ``rnd``:
    x^2 by the inverse cumulative table, acceptance): the first accepted cos theta, whether
    any was, and (``lean``, else None) a uniform number for the azimuth from the accepted
    proposal's acceptance number (as in :func:`_incoherent`)."""
    pe = (e * scatter_f[2]).clamp(min=0.0).minimum(scatter_f[3])
    je = pe.to(torch.int64)
    te = pe - je.to(pe.dtype)
    fb = med * scatter_i[1] + je
    frac = coh_frac[fb] * (1.0 - te) + coh_frac[fb + 1] * te
    xmax2 = (e * (1.0 / HC_KEV_ANGSTROM)) ** 2
    base = med * scatter_i[2]
    cos_out = torch.ones_like(e)
    az_out = torch.zeros_like(e) if lean else None
    done = torch.zeros_like(e, dtype=torch.bool)
    for p in reversed(range(n_prop)):
        r = rnd[_UNIFORMS_PER_COHERENT * p:_UNIFORMS_PER_COHERENT * (p + 1)]
        uu = (r[0] * frac * scatter_f[4]).clamp(min=0.0).minimum(scatter_f[5])
        j = uu.to(torch.int64)
        lo = coh_x2_inv[base + j]
        x2 = lo + (uu - j.to(uu.dtype)) * (coh_x2_inv[base + j + 1] - lo)
        c = (1.0 - 2.0 * x2 / xmax2).clamp(min=-1.0, max=1.0)
        thomson = 1.0 + c * c
        acc = r[1] * 2.0 < thomson
        cos_out = torch.where(acc, c, cos_out)
        if lean:
            az_out = torch.where(acc, (r[1] * 2.0 / thomson).clamp(max=1.0), az_out)
        done = done | acc
    return cos_out, done, az_out


def interact(idx, rnd, e, u, v, w, weight, x1, y1, z1, ie, fe, rr, offset, cutoff_kev, grid_f, grid_i, voxel_table,
             xs_ab, sf_ratio, coh_x2_inv, coh_frac, scatter_f, scatter_i, fl_ab=None, fl_e=None):
    """Real interactions of the photons ``idx``: type, new energy and direction, cutoff deposit.

    The rejection samplers of :mod:`ctdose.physics.interactions` with a fixed number of
    proposals per photon, all evaluated at once (no loops over shrinking subsets): the
    first accepted proposal is the sample (exact: rejection sampling is the first accepted
    of a sequence of independent proposals). A photon none of whose proposals is accepted
    is returned unchanged with ``done`` False; the caller samples it again with fresh
    numbers (exact for the same reason).

    Parameters
    ----------
    idx : Tensor (m,) int64
        The photons (indices into the per-photon arrays) that interact.
    rnd : Tensor (R, m)
        Uniform numbers in [0, 1), ``R = interaction_uniforms()``; or an int64 key
        (:func:`counter_key`) for the kernel's own (:func:`counter_uniforms`).
    e, u, v, w, weight : Tensor (n,)
        Energy (keV), unit direction and statistical weight of every photon.
    x1, y1, z1, ie, fe, rr : Tensor (n,)
        From :func:`advance`: the collision site (mm), energy table row and step fraction and
        the rejection variate ``r * mu_maj`` (uniform on [0, mu): it picks the interaction).
    offset : Tensor (n,) int64
        Start of each photon's batch block in the tally.
    cutoff_kev : Tensor () float
        Energy cutoff (keV): a scattered photon below it deposits its energy and stops.
    grid_f, grid_i, voxel_table :
        As in :func:`advance`.
    xs_ab : Tensor (n_media * n_rows, 4)
        Photoelectric and incoherent coefficients per density (value, slope, value, slope).
    sf_ratio, coh_x2_inv, coh_frac : Tensor
        The flattened :class:`ctdose.physics.interactions.ScatterTables`.
    scatter_f : Tensor (6,) float32
        ``1 / sf_x_step`` (A), largest fractional x index, ``1 / coh energy step`` (1/keV),
        largest fractional energy index, ``n_u - 1``, largest fractional u index.
    scatter_i : Tensor (3,) int64
        ``n_x``, ``n_e`` of ``coh_frac``, ``n_u``.
    fl_ab, fl_e : Tensor or None
        Transported fluorescence lines (:class:`ctdose.physics.transport.TransportTables`):
        a photoabsorption emits one of them (:func:`fluorescence_line`) isotropically, and
        the photon flies on with the line's energy. None: every photoabsorption ends the
        photon (no medium has a line to transport).

    Returns
    -------
    e1, u1, v1, w1 : Tensor (m,)
        New energy and direction (the old ones where not ``done``).
    alive : Tensor (m,) bool
        False after photoabsorption (without a transported fluorescence photon) or below the
        cutoff.
    deposit : Tensor (m,) float64
        Energy (keV x weight) deposited at the cutoff (0 where not ``done``).
    tidx : Tensor (m,) int64
        Tally index of the photon's voxel.
    done : Tensor (m,) bool
        The interaction was sampled.
    """
    rnd = _rows(rnd, interaction_uniforms(), idx.shape[0])
    e0 = e[idx]
    _, flat, m, row, d = _voxel(x1[idx], y1[idx], z1[idx], ie[idx], grid_f, grid_i, voxel_table)
    e1, u1, v1, w1, alive, deposit, done = _sample_interaction(
        e0, u[idx], v[idx], w[idx], weight[idx], fe[idx], rr[idx], m, row, d, rnd, cutoff_kev, xs_ab, sf_ratio,
        coh_x2_inv, coh_frac, scatter_f, scatter_i, fl_ab=fl_ab, fl_e=fl_e,
    )
    return e1, u1, v1, w1, alive, deposit, flat + offset[idx], done


def fluorescence_line(r, d, row, m, f, fl_ab, fl_e):
    """The fluorescence line a photoabsorption emits: its energy (keV), 0 for none.

    ``r`` is the rejection variate, uniform on [0, tau) given a photoabsorption (``tau`` the
    photoelectric coefficient at density ``d``): line ``j`` of medium ``m`` is chosen where
    ``r`` falls into its part ``P_j tau`` of [0, tau) (the lines' partial coefficients at the
    table row ``row`` and fraction ``f``, times ``d``), none where ``r`` lies above their sum.
    ``fl_ab`` (n_media * n_rows, 2 L) and ``fl_e`` (n_media * L) as in :func:`interact`.
    """
    n_lines = FLUORESCENCE_MAX_LINES
    line_kev = torch.zeros_like(r)
    upper = torch.zeros_like(r)
    for j in range(n_lines):
        lower = upper
        upper = lower + (fl_ab[row, j] + f * fl_ab[row, n_lines + j]) * d
        line_kev = torch.where((r >= lower) & (r < upper), fl_e[m * n_lines + j], line_kev)
    return line_kev


def _sample_interaction(e0, u0, v0, w0, wt, f, r, m, row, d, rnd, cutoff_kev, xs_ab, sf_ratio, coh_x2_inv, coh_frac,
                        scatter_f, scatter_i, real=None, lean=False, fl_ab=None, fl_e=None):
    """The interaction of each photon at its site (see :func:`interact`): ``e1, u1, v1, w1, alive,
    deposit, done`` from its energy ``e0``, direction, weight ``wt``, table fraction ``f``,
    rejection variate ``r``, medium ``m``, table row ``row`` and density ``d``. ``real``: a mask
    of the photons that interact (the others come back unchanged, alive and not ``done``);
    None: all of them. ``lean``: the samplers' lean variants (``interaction_uniforms(True)``
    rows of ``rnd``; the azimuth from the accepted proposal). ``fl_ab``, ``fl_e``: transported
    fluorescence lines (:func:`fluorescence_line`); the line is chosen with ``r`` (uniform
    on [0, ph) given a photoabsorption, ``r < ph``) and the isotropic direction with
    ``rnd[0]`` and ``rnd[1]``, the first proposal's numbers that a photoabsorption leaves
    unused: no numbers beyond the scattering's."""
    ph = (xs_ab[row, 0] + f * xs_ab[row, 1]) * d
    inc = (xs_ab[row, 2] + f * xs_ab[row, 3]) * d
    is_photo = r < ph
    is_inc = (~is_photo) & (r < ph + inc)
    is_coh = (~is_photo) & (~is_inc)
    if real is not None:
        is_photo, is_inc, is_coh = is_photo & real, is_inc & real, is_coh & real
    eps, done_inc, az_inc = _incoherent(e0, m, rnd, INCOHERENT_PROPOSALS, sf_ratio, scatter_f, scatter_i, lean)
    cos_coh, done_coh, az_coh = _coherent(e0, m, rnd, COHERENT_PROPOSALS, coh_x2_inv, coh_frac, scatter_f, scatter_i,
                                          lean)
    k = e0 * (1.0 / ELECTRON_REST_KEV)
    cos_inc = (1.0 - (1.0 - eps) / (k * eps)).clamp(min=-1.0, max=1.0)
    cos_t = torch.where(is_inc, cos_inc, cos_coh)
    phi = (torch.where(is_inc, az_inc, az_coh) if lean else rnd[-1]) * (2.0 * math.pi)
    un, vn, wn = rotate_direction(u0, v0, w0, cos_t, phi)
    done = is_photo | (is_inc & done_inc) | (is_coh & done_coh)
    scattered = done & (~is_photo)
    e1 = torch.where(is_inc & done, e0 * eps, e0)
    u1, v1, w1 = torch.where(scattered, un, u0), torch.where(scattered, vn, v0), torch.where(scattered, wn, w0)
    absorbed = done & is_photo
    flying = scattered
    if fl_ab is not None:
        line_kev = fluorescence_line(r, d, row, m, f, fl_ab, fl_e)
        emit = absorbed & (line_kev > 0.0) & (line_kev < e0)
        cos_iso = 2.0 * rnd[0] - 1.0
        sin_iso = (1.0 - cos_iso * cos_iso).clamp(min=0.0).sqrt()
        phi_iso = rnd[1] * (2.0 * math.pi)
        e1 = torch.where(emit, line_kev, e1)
        u1 = torch.where(emit, sin_iso * torch.cos(phi_iso), u1)
        v1 = torch.where(emit, sin_iso * torch.sin(phi_iso), v1)
        w1 = torch.where(emit, cos_iso, w1)
        absorbed = absorbed & (~emit)
        flying = flying | emit
    below = flying & (e1 < cutoff_kev)
    alive = ~(absorbed | below)
    deposit = torch.where(below, e1 * wt, torch.zeros_like(e1))
    return e1, u1, v1, w1, alive, deposit.to(torch.float64), done


def grid_entry(x, y, z, u, v, w, box_f):
    """Where rays from ``(x, y, z)`` along ``(u, v, w)`` enter the voxel box (slab method).

    Parameters
    ----------
    x, y, z, u, v, w : Tensor (n,)
        Start (mm) and unit direction of each ray.
    box_f : Tensor (7,) float32
        The box's corners ``lo_x, lo_y, lo_z, hi_x, hi_y, hi_z`` (mm) and the distance (mm)
        by which an entering photon is put inside the box.

    Returns
    -------
    hit : Tensor (n,) bool
        The ray meets the box (a start inside the box counts).
    t_in : Tensor (n,)
        Distance (mm) from the start to the box's face along the ray (0 inside the box).
    x1, y1, z1 : Tensor (n,)
        The entry point moved ``box_f[6]`` mm further in (the start where ``hit`` is False).

    A direction cosine below 1e-12 in magnitude counts as zero: the ray then meets that
    axis's slab everywhere or nowhere.
    """
    t_in = torch.zeros_like(x)
    t_out = torch.full_like(x, float("inf"))
    for a, (p, d) in enumerate(((x, u), (y, v), (z, w))):
        lo, hi = box_f[a], box_f[3 + a]
        small = d.abs() < 1e-12
        inv = 1.0 / torch.where(small, torch.ones_like(d), d)
        t1 = (lo - p) * inv
        t2 = (hi - p) * inv
        inside_slab = (p >= lo) & (p <= hi)
        tmin = torch.where(small, torch.where(inside_slab, 0.0, float("inf")), torch.minimum(t1, t2))
        tmax = torch.where(small, torch.where(inside_slab, float("inf"), -1.0), torch.maximum(t1, t2))
        t_in = torch.maximum(t_in, tmin)
        t_out = torch.minimum(t_out, tmax)
    hit = t_in < t_out
    t = torch.where(hit, t_in + box_f[6], 0.0)
    return hit, t_in, x + t * u, y + t * v, z + t * w


def compile_enabled() -> bool:
    """False when the environment variable ``CTDOSE_MC_COMPILE`` is ``0``/``false``/``no``."""
    return os.environ.get("CTDOSE_MC_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


_SHAPE_CONFIG = torch.fx.experimental._config


def shape_settings():
    """Context for calling the compiled kernels: no "duck sizing" of their input shapes.

    Equal sizes of unrelated inputs (e.g. the table rows of a one-medium grid) must not become
    guards that force a recompilation later. Each kernel call sets this itself; a caller that
    makes many calls (:func:`ctdose.physics.transport.run_transport`) sets it once around
    them, which saves the cost of changing the setting at every call.
    """
    return _SHAPE_CONFIG.patch(use_duck_shape=False)


class _Guarded:
    """A compiled kernel that falls back to the eager one (for good) if compilation fails."""

    def __init__(self, key: str, compiled, eager):
        self.key, self.compiled, self.eager = key, compiled, eager

    def __call__(self, *args):
        if self.key not in _FAILED:
            try:
                if not _SHAPE_CONFIG.use_duck_shape:  # inside shape_settings(): no patch per call
                    return self.compiled(*args)
                with shape_settings():
                    return self.compiled(*args)
            except Exception as exc:  # a missing compiler or backend: run eager, say so once
                _FAILED.add(self.key)
                warnings.warn(
                    f"ctdose MC: torch.compile is not available on {self.key} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); running the eager kernels "
                    "(same results, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.eager(*args)


#: The kernels in the order :func:`get_kernels` returns them.
EAGER_KERNELS = (advance, score_points, advance_block, interact, advance_collision, advance_block_collision,
                 grid_entry, collide_interact, advance_collision_sites)


def get_kernels(device: torch.device, compile: bool | None = None):
    """``(advance, score_points, advance_block, interact, advance_collision, advance_block_collision,
    grid_entry, collide_interact, advance_collision_sites)`` for ``device``.

    Compiled when asked and possible, else the eager functions.

    Parameters
    ----------
    device : torch.device
    compile : bool or None
        None: compile unless ``CTDOSE_MC_COMPILE=0``. False: the eager functions.
    """
    return compiled_kernels(EAGER_KERNELS, device, compile)


def compiled_kernels(eager: tuple, device: torch.device, compile: bool | None = None, name: str = "",
                     options: dict | None = None) -> tuple:
    """The functions ``eager`` compiled for ``device`` (once per process), or ``eager`` itself.

    The rules of :func:`get_kernels`: ``compile=None`` compiles unless ``CTDOSE_MC_COMPILE=0``;
    a set whose compilation failed before (``_FAILED``) runs eager; each compiled function
    falls back to its eager one if the compiler fails (:class:`_Guarded`). ``name`` tells sets
    of kernels apart (cache and failure key ``device[:name]``); ``options`` go to Inductor.
    """
    want = compile_enabled() if compile is None else bool(compile)
    key = torch.device(device).type + (f":{name}" if name else "")
    if not want or key in _FAILED:
        return eager
    with _LOCK:
        if key not in _COMPILED:
            opts = dict(dynamic=True, fullgraph=True, **({"options": options} if options else {}))
            _COMPILED[key] = tuple(_Guarded(key, torch.compile(f, **opts), f) for f in eager)
        return _COMPILED[key]
