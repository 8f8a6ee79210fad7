"""Fused per-photon kernels of the track-length Woodcock step, compiled where possible.

The per-photon arithmetic of one step lives in two pure tensor functions:

:func:`advance`
    free path with the majorant, move, voxel lookup, real-collision test;
:func:`score_segment`
    the stratified track-length estimator along the segment just flown.

In eager PyTorch every elementwise operation is one pass over memory, and a step is some
fifty of them; :func:`torch.compile` fuses each function into one loop (C++ on CPU, Triton on
CUDA), which is about ten times faster per photon on CPU. :func:`get_kernels` returns the
compiled pair when a compiler backend works here and the eager functions otherwise (the
same arithmetic; results then differ from a compiled run only by floating-point rounding).

Compilation happens once per process and device (shapes are dynamic, so neither the pool
size nor the number of samples per segment recompiles); Inductor caches the generated code
on disk, so later processes start faster. Set ``CTDOSE_MC_COMPILE=0`` to never compile.

Grid and table constants enter as small tensors (``grid_f``, ``grid_i``, ``energy_f``), not
Python numbers, so that a new geometry does not trigger a recompilation.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings

import torch

__all__ = ["advance", "advance_block", "score_segment", "get_kernels", "compile_enabled", "MIN_COMPILED_PHOTONS"]

#: Pools smaller than this run the eager kernels (the tail of a run; also avoids the
#: compiler's specialisation on sizes 0 and 1).
MIN_COMPILED_PHOTONS = 64

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_COMPILED: dict[str, tuple] = {}
_FAILED: set[str] = set()


def _energy_index(e, energy_f):
    """Table index and fraction of each energy (linear interpolation on the uniform grid)."""
    pe = ((e - energy_f[0]) * energy_f[1]).clamp(min=0.0).minimum(energy_f[2])
    ie = pe.to(torch.int64)
    return ie, pe - ie.to(pe.dtype)


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


def _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table, total_tr_ab):
    """Voxel, medium and density at the new positions, and the real-collision test there."""
    inside, flat = _locate(x1, y1, z1, grid_f, grid_i)
    med = voxel_table[flat, 0].to(torch.int64)
    rho = voxel_table[flat, 1]
    mi = med * grid_i[3] + ie
    mu = (total_tr_ab[mi, 0] + fe * total_tr_ab[mi, 1]) * rho
    rr = r_real * maj
    return flat, med, mi, rho, rr, (rr < mu) & inside, inside


def advance(x, y, z, u, v, w, e, r_path, r_real, grid_f, grid_i, energy_f, maj_ab, voxel_table, total_tr_ab):
    """One free flight with the global majorant, and the real-collision test at its end.

    Parameters
    ----------
    x, y, z, u, v, w, e : Tensor (n,)
        Position (mm), unit direction and energy (keV) of each photon.
    r_path, r_real : Tensor (n,)
        Uniform random numbers in [0, 1) for the free path and the rejection test.
    grid_f : Tensor (9,) float32
        ``lo_x, lo_y, lo_z`` (mm), ``1/dx, 1/dy, 1/dz`` (1/mm), ``nx, ny, nz``.
    grid_i : Tensor (4,) int64
        ``nx, ny, nz, n_e``.
    energy_f : Tensor (3,) float32
        First table energy (keV), 1 / table step (1/keV), largest fractional table index.
    maj_ab : Tensor (n_e, 2)
        Majorant (1/mm) value and slope per table step.
    voxel_table : Tensor (n_vox, 2)
        Medium index and mass density (g/cm^3) per voxel.
    total_tr_ab : Tensor (n_media * n_e, 4)
        Total and energy-transfer coefficients per density (value, slope, value, slope).

    Returns
    -------
    s, x1, y1, z1 : free path (mm) and the new position
    ie, fe : energy table index and fraction
    maj : majorant at the photon energy (1/mm)
    flat : voxel index of the new position (clamped into the grid)
    med, mi, rho : medium index, table row ``med * n_e + ie``, density there
    rr : ``r_real * maj``, the rejection variate (also picks the interaction type)
    real, inside : real collision (inside the grid), new position inside the grid
    """
    ie, fe = _energy_index(e, energy_f)
    maj = maj_ab[ie, 0] + fe * maj_ab[ie, 1]
    s = -torch.log(r_path) / maj
    x1 = x + s * u
    y1 = y + s * v
    z1 = z + s * w
    flat, med, mi, rho, rr, real, inside = _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table,
                                                    total_tr_ab)
    return s, x1, y1, z1, ie, fe, maj, flat, med, mi, rho, rr, real, inside


def advance_block(
    x, y, z, u, v, w, e, r_path, r_real, grid_f, grid_i, energy_f, block_ab, block_f, block_i, voxel_table,
    total_tr_ab,
):
    """:func:`advance` with a local majorant per block of voxels (fewer virtual collisions).

    The free path is sampled with the majorant of the photon's block; a path that would leave
    the block stops at its face instead (no collision there; by the memoryless exponential
    law, restarting with the next block's majorant is exact). A photon stopped at a face is
    put just past it (``block_f[9]`` mm along the exit axis only), so that it always makes
    progress, however small its direction cosine along that axis.

    Extra parameters
    ----------------
    block_ab : Tensor (n_blocks * n_e, 2)
        Block majorant (1/mm) value and slope per table step.
    block_f : Tensor (10,) float32
        ``1/bw_x, 1/bw_y, 1/bw_z`` (1/mm), ``bw_x, bw_y, bw_z`` (mm), ``nbx, nby, nbz``,
        face offset (mm).
    block_i : Tensor (3,) int64
        ``nbx, nby, nbz``.

    Returns the same tuple as :func:`advance`; ``s`` is the distance flown (to the collision
    site or the block face) and ``real`` is False at a face.
    """
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
    flat, med, mi, rho, rr, real, inside = _collide(x1, y1, z1, ie, fe, maj, r_real, grid_f, grid_i, voxel_table,
                                                    total_tr_ab)
    return s, x1, y1, z1, ie, fe, maj, flat, med, mi, rho, rr, real & coll, inside


def score_segment(
    x, y, z, u, v, w, s, ew, ie, fe, offset, r_strat, slots, h_mm, grid_f, grid_i, voxel_table, total_tr_ab
):
    """Stratified track-length estimate of the energy transferred along each flight segment.

    For a segment of length ``s`` from ``(x, y, z)`` along ``(u, v, w)`` the expected energy
    transferred to charged particles is the track-length integral
    ``int_0^s w E mu_tr(E, p(t)) dt``. With ``K`` slots and spacing ``h = max(h_mm, s / K)``
    the points ``t_j = (j + U) h`` (one uniform ``U`` per photon, ``j < K``, kept where
    ``t_j < s``) give ``h sum_j f(t_j)``, an unbiased estimate of that integral for every
    integrand (systematic sampling): each voxel crossed gets its share, not only the voxels
    where the photon happens to collide. Points outside the grid score nothing (vacuum).

    Parameters
    ----------
    ew : Tensor (n,)
        Photon energy times weight (keV).
    offset : Tensor (n,) int64
        Start of the photon's batch block in ``tally``.
    r_strat : Tensor (n,)
        The uniform offset ``U`` per photon.
    slots : Tensor (K,) float
        ``0, 1, ..., K - 1``.
    h_mm : Tensor () float
        Smallest spacing of the sample points (mm).

    Returns
    -------
    index : Tensor (K, n) int64
        Tally index (``offset`` + voxel index, clamped into the grid) of each point.
    score : Tensor (K, n) float64
        Energy (keV x weight) scored there; zero outside the segment or the grid.

    The caller adds ``score`` into the tally with one serial ``index_add_`` (the kernel may
    run on several threads; a serial sum keeps the result bit-for-bit reproducible).
    """
    # points run along the first axis, photons along the second (the long, vectorised one)
    k = slots.shape[0]
    hi = torch.maximum(s / k, h_mm)
    t = (slots[:, None] + r_strat[None, :]) * hi[None, :]
    inside, flat = _locate(x[None, :] + t * u[None, :], y[None, :] + t * v[None, :], z[None, :] + t * w[None, :],
                           grid_f, grid_i)
    ok = (t < s[None, :]) & inside
    med = voxel_table[flat, 0].to(torch.int64)
    rho = voxel_table[flat, 1]
    mi = med * grid_i[3] + ie[None, :]
    mu_tr = (total_tr_ab[mi, 2] + fe[None, :] * total_tr_ab[mi, 3]) * rho
    score = torch.where(ok, mu_tr * (ew * hi)[None, :], torch.zeros_like(mu_tr))
    return flat + offset[None, :], score.to(torch.float64)


def compile_enabled() -> bool:
    """False when the environment variable ``CTDOSE_MC_COMPILE`` is ``0``/``false``/``no``."""
    return os.environ.get("CTDOSE_MC_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


class _Guarded:
    """A compiled kernel that falls back to the eager one (for good) if compilation fails."""

    def __init__(self, key: str, compiled, eager):
        self.key, self.compiled, self.eager = key, compiled, eager

    def __call__(self, *args):
        if self.key not in _FAILED:
            try:
                # no "duck sizing": equal sizes of unrelated inputs (e.g. the table rows of a
                # one-medium grid) must not become guards that force a recompilation later
                with torch.fx.experimental._config.patch(use_duck_shape=False):
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


def get_kernels(device: torch.device, compile: bool | None = None):
    """``(advance, score_segment, advance_block)`` for ``device``: compiled when asked and possible.

    Parameters
    ----------
    device : torch.device
    compile : bool or None
        None: compile unless ``CTDOSE_MC_COMPILE=0``. False: the eager functions.
    """
    want = compile_enabled() if compile is None else bool(compile)
    key = torch.device(device).type
    if not want or key in _FAILED:
        return advance, score_segment, advance_block
    with _LOCK:
        if key not in _COMPILED:
            opts = dict(dynamic=True, fullgraph=True)
            _COMPILED[key] = (
                _Guarded(key, torch.compile(advance, **opts), advance),
                _Guarded(key, torch.compile(score_segment, **opts), score_segment),
                _Guarded(key, torch.compile(advance_block, **opts), advance_block),
            )
        return _COMPILED[key]
