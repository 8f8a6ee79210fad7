"""Exact voxel traversal of whole flights: the expected-track-length estimator's kernels.

A photon flies from its start (the grid entry, or its last interaction) along a straight ray
through the voxel grid. Inside a voxel of linear attenuation ``mu`` the ray runs ``l`` mm;
with ``T`` the transmission from the start to the voxel's entry (``T = exp(-tau)``, ``tau``
the optical depth so far) the photon's *expected* energy transfer in that voxel is

    w E mu_tr T (1 - exp(-mu l)) / mu,

the track-length integral ``int w E mu_tr exp(-tau(t)) dt`` over the voxel, exact for a
voxel of one medium. The expected-track-length estimator scores it in every voxel up to the
grid's exit, whether or not the photon gets there; the photon's real collision is sampled on
the same traversal (the optical depth ``-ln U`` is reached in the voxel where the running
``tau`` passes it), so there is no majorant and no virtual collision. The primary dose of a
ray then carries no noise of its own, only that of the source's sampling, and a scattered
photon spreads its expected energy transfer over all the voxels it could reach.

Beyond an attenuation of ``ROULETTE_ATTENUATION`` (once the collision is found) the scoring
continuation plays Russian roulette: it goes on with probability ``ROULETTE_SURVIVAL`` and
weight ``1 / ROULETTE_SURVIVAL``, or stops (unbiased; it bounds the work on rays deep in
bone or through a whole trunk). Under a weight window the whole ray plays it, from
``ROULETTE_ATTENUATION_WINDOW`` on.

Two pure tensor functions, fused with :func:`torch.compile` like
:mod:`ctdose.physics.kernels` (their eager versions give the same results up to rounding):

:func:`ray_start`
    the start voxel, the distances to the next voxel face along each axis, the distance
    between faces, the flat-index step per axis and the number of voxels left per axis;
:func:`ray_chunk`
    ``CROSSINGS_PER_CALL`` voxel crossings of every ray (unrolled): scores, collision,
    next voxel;
:func:`ray_chunk_split`
    the same under a weight window (:mod:`ctdose.physics.weight_window`): the window acts
    along the flight, so a ray may collide several times (as its split copies would) or be
    rouletted, each collision with its own weight; the scores are unchanged.

The traversal is the incremental one of Amanatides and Woo (1987): the next face is the
smallest of the three per-axis face distances, which then grows by that axis's face spacing.
"""

from __future__ import annotations

import math

import torch

from .kernels import compiled_kernels

__all__ = [
    "ray_start",
    "ray_chunk",
    "ray_chunk_split",
    "get_ray_kernels",
    "CROSSINGS_PER_CALL",
    "ROULETTE_ATTENUATION",
    "ROULETTE_ATTENUATION_WINDOW",
    "ROULETTE_SURVIVAL",
]

#: Voxel crossings per ray and kernel call (unrolled in the fused kernel).
CROSSINGS_PER_CALL = 8
#: Transmission below which the scoring continuation of a ray plays Russian roulette.
ROULETTE_ATTENUATION = 1e-3
#: Survival probability of that roulette (survivors score with weight 1 / survival).
ROULETTE_SURVIVAL = 0.25
#: Under a weight window (:func:`ray_chunk_split`) the roulette starts at a higher transmission,
#: where it paid in the thoraxes (one projection, one core, side by side: paper thorax +5 %
#: efficiency at 1e-2, the same at 5e-2, noise over the body 0.3 % higher, time 5 % lower; demo
#: thorax +8 %) and cost the homogeneous 32 cm water cylinder 12 % (3 % at 3e-3).
ROULETTE_ATTENUATION_WINDOW = 1e-2
#: Optical depth of the first roulette (without and with a window) and the step between later ones.
ROULETTE_DEPTH = -math.log(ROULETTE_ATTENUATION)
ROULETTE_DEPTH_WINDOW = -math.log(ROULETTE_ATTENUATION_WINDOW)
ROULETTE_DEPTH_STEP = -math.log(ROULETTE_SURVIVAL)
#: Inductor fuses at most this many nodes into one loop; the unrolled crossings need more than
#: its default (64) to stay one loop (otherwise it stores every intermediate to memory).
_MAX_FUSION_SIZE = 4096

def ray_start(x, y, z, u, v, w, grid_f, grid_i, cell_f):
    """Traversal state of rays that start at ``(x, y, z)`` (mm) inside the grid.

    Parameters
    ----------
    x, y, z, u, v, w : Tensor (n,)
        Start (mm) and unit direction.
    grid_f, grid_i : Tensor
        As in :func:`ctdose.physics.kernels.advance` (box corner, inverse spacing, counts).
    cell_f : Tensor (3,) float32
        Voxel edges ``dx, dy, dz`` (mm).

    Returns
    -------
    flat : Tensor (n,) int32
        Flat index ``(k ny + j) nx + i`` of the start voxel (32-bit: grids of fewer than
        2^31 voxels, checked where the kernels are set up).
    tx, ty, tz : Tensor (n,)
        Distance (mm) to the next voxel face along each axis (inf for a zero direction cosine).
    tdx, tdy, tdz : Tensor (n,)
        Distance (mm) between successive faces of that axis (``dx / |u|``, ...).
    dfx, dfy, dfz : Tensor (n,) int32
        Change of ``flat`` when the ray crosses a face of that axis (``+-1``, ``+-nx``,
        ``+-nx ny``).
    rx, ry, rz : Tensor (n,)
        Voxels left along each axis before the ray leaves the grid (float).
    """
    pos = (x, y, z)
    dirs = (u, v, w)
    inf = torch.full_like(x, float("inf"))
    face, step, left, index = [], [], [], []
    for a in range(3):
        p, d = pos[a], dirs[a]
        i = ((p - grid_f[a]) * grid_f[3 + a]).floor().clamp(min=0.0).minimum(grid_f[6 + a] - 1)
        edge = (i + (d > 0).to(p.dtype)) * cell_f[a] + grid_f[a]
        face.append(torch.where(d != 0, ((edge - p) / d).clamp(min=0.0), inf))
        step.append(torch.where(d != 0, cell_f[a] / d.abs(), inf))
        left.append(torch.where(d > 0, grid_f[6 + a] - 1 - i, i))
        index.append(i.to(torch.int32))
    nx, ny = grid_i[0].to(torch.int32), grid_i[1].to(torch.int32)
    flat = (index[2] * ny + index[1]) * nx + index[0]
    one = torch.ones_like(flat)
    dfx = torch.where(u > 0, one, -one)
    dfy = torch.where(v > 0, one, -one) * nx
    dfz = torch.where(w > 0, one, -one) * (nx * ny)
    return flat, face[0], face[1], face[2], step[0], step[1], step[2], dfx, dfy, dfz, left[0], left[1], left[2]


def _crossing(flat, tx, ty, tz, t, voxel_table, total_tr_ab, ie, fe, n_rows):
    """The current voxel of each ray: attenuation and energy-transfer coefficients (1/mm), the
    distance to its exit face (mm), the optical depth of the chord and its transmission."""
    row = voxel_table[flat]
    mi = row[:, 0].to(torch.int32) * n_rows + ie
    rho = row[:, 1]
    mu = (total_tr_ab[mi, 0] + fe * total_tr_ab[mi, 1]) * rho
    mu_tr = (total_tr_ab[mi, 2] + fe * total_tr_ab[mi, 3]) * rho
    t_next = torch.minimum(torch.minimum(tx, ty), tz)
    depth = mu * (t_next - t)
    return mu, mu_tr, t_next, depth, torch.exp(-depth)


def _next_voxel(flat, tx, ty, tz, tdx, tdy, tdz, dfx, dfy, dfz, rx, ry, rz):
    """Cross the nearest face: one axis's count of voxels left falls by one, the flat index
    moves (while still in the grid) and that axis's next face moves one face spacing on."""
    sx = (tx <= ty) & (tx <= tz)
    sy = (~sx) & (ty <= tz)
    sz = (~sx) & (~sy)
    rx = torch.where(sx, rx - 1.0, rx)
    ry = torch.where(sy, ry - 1.0, ry)
    rz = torch.where(sz, rz - 1.0, rz)
    step = torch.where(sx, dfx, torch.where(sy, dfy, dfz))
    flat = torch.where((rx >= 0) & (ry >= 0) & (rz >= 0), flat + step, flat)
    tx = torch.where(sx, tx + tdx, tx)
    ty = torch.where(sy, ty + tdy, ty)
    tz = torch.where(sz, tz + tdz, tz)
    return flat, tx, ty, tz, rx, ry, rz


def ray_chunk(
    flat, tx, ty, tz, tdx, tdy, tdz, dfx, dfy, dfz, rx, ry, rz, t, tau, att, tau_c, t_c, tau_r, ew, ie, fe, offset,
    r_roulette, voxel_table, total_tr_ab, grid_i, n_cross: int,
):
    """``n_cross`` voxel crossings of every ray: expected-track-length scores and the collision.

    Parameters
    ----------
    flat, tx, ty, tz, tdx, tdy, tdz, dfx, dfy, dfz, rx, ry, rz :
        Traversal state from :func:`ray_start` (or the previous call).
    t : Tensor (n,)
        Distance (mm) from the ray's start to the current voxel's entry.
    tau, att : Tensor (n,)
        Optical depth to the current voxel's entry and ``exp(-tau)`` (kept as a product).
    tau_c : Tensor (n,)
        Optical depth of the real collision (``-ln U``).
    t_c : Tensor (n,)
        Distance (mm) of the collision from the start; negative until it is found.
    tau_r : Tensor (n,)
        Optical depth of the next roulette of the scoring continuation.
    ew : Tensor (n,)
        Scoring weight times energy (keV); raised by the roulette's survivors.
    ie, fe : Tensor (n,)
        Energy table row and step fraction.
    offset : Tensor (n,) int64
        Start of the photon's batch block in the tally.
    r_roulette : Tensor (n,)
        A uniform number per ray for this call's roulette.
    voxel_table, total_tr_ab :
        As in :func:`ctdose.physics.kernels.advance`.
    grid_i : Tensor (4,) int64
        ``nx, ny, nz, n_rows``.
    n_cross : int
        Crossings per call (a Python constant: the loop is unrolled).

    Returns
    -------
    The updated state ``flat, tx, ty, tz, rx, ry, rz, t, tau, att, t_c, tau_r, ew``, then
    ``index`` (n_cross, n) int64 (tally index of each crossing) and ``score`` (n_cross, n)
    float64 (keV x weight; 0 for rays already out of the grid).

    A ray is live while it has voxels left on every axis (``rx, ry, rz >= 0``); a roulette
    loser is marked done by ``rx = -1``.
    """
    live = (rx >= 0) & (ry >= 0) & (rz >= 0)
    deep = live & (tau > tau_r) & (t_c >= 0)
    win = r_roulette < ROULETTE_SURVIVAL
    ew = torch.where(deep & win, ew * (1.0 / ROULETTE_SURVIVAL), ew)
    rx = torch.where(deep & ~win, -1.0, rx)
    tau_r = torch.where(deep, tau_r + ROULETTE_DEPTH_STEP, tau_r)
    n_rows = grid_i[3].to(torch.int32)
    indices, scores = [], []
    for _ in range(n_cross):
        live = (rx >= 0) & (ry >= 0) & (rz >= 0)
        mu, mu_tr, t_next, depth, trans = _crossing(flat, tx, ty, tz, t, voxel_table, total_tr_ab, ie, fe, n_rows)
        # mu_tr <= mu: no attenuation (vacuum) means no energy transfer either
        sc = torch.where(live & (mu > 0), ew * mu_tr * att * (1.0 - trans) / mu, torch.zeros_like(mu))
        indices.append(flat.to(torch.int64) + offset)
        scores.append(sc)
        # mu > 0: a zero optical depth (U = 0 happens, 2^-24 per draw) collides at the first
        # matter, not in vacuum (0 / 0)
        hit = live & (t_c < 0) & (mu > 0) & (tau + depth >= tau_c)
        t_c = torch.where(hit, (t + (tau_c - tau) / mu).clamp(max=t_next), t_c)
        tau = tau + depth
        att = att * trans
        t = t_next
        flat, tx, ty, tz, rx, ry, rz = _next_voxel(flat, tx, ty, tz, tdx, tdy, tdz, dfx, dfy, dfz, rx, ry, rz)
    return (flat, tx, ty, tz, rx, ry, rz, t, tau, att, t_c, tau_r, ew, torch.stack(indices, 0),
            torch.stack(scores, 0).to(torch.float64))


def ray_chunk_split(
    flat, tx, ty, tz, tdx, tdy, tdz, dfx, dfy, dfz, rx, ry, rz, t, tau, att, lam, tau_r, wgt, e_kev, ie, fe, offset,
    r_roulette, r_pick, r_window, voxel_table, total_tr_ab, target_vox, window_f, grid_i, n_cross: int,
):
    """``n_cross`` voxel crossings of every ray under a weight window: scores and collisions.

    The scores are those of :func:`ray_chunk`. The collisions follow the weight window *along
    the flight* (the way a track-length photon is split or rouletted at every step): in a voxel
    of target weight ``W_t`` a ray of weight ``W`` stands for ``m = W / W_t`` photons
    (``m = 1`` inside the window's bounds ``[lower, upper] W_t`` and where there is no window,
    at most ``max_split``), so its collisions are a point process of rate ``m mu T`` per mm
    and each carries weight ``W / m``: rate times weight is the analogue ``W mu T``, and every
    tally stays unbiased. The points are placed systematically: a running sum
    ``lam = Lambda - U`` of the expected count (``U`` one uniform number per ray) has a
    collision wherever it passes an integer, so ``m = 1`` everywhere is exactly the analogue
    collision of :func:`ray_chunk` and a photon split ``m`` ways collides ``m`` times as
    often, spread evenly along its way. Where ``k > 1`` integers fall in one voxel, one of
    them (picked by ``r_pick``) is scored with ``k`` times the weight (unbiased). A ray below
    the window (``W < lower W_t``) where the call starts plays Russian roulette as a whole, as
    a track-length photon would: it goes on with probability ``W / W_t`` and weight ``W_t``,
    or stops (scores, collisions and escape alike), so light copies that fly back into the
    heavy part of the beam do not pay for a whole flight there.

    Parameters
    ----------
    flat ... att, tau_r :
        As in :func:`ray_chunk`.
    lam : Tensor (n,)
        Expected collisions so far minus ``U`` (starts at ``-U``).
    wgt : Tensor (n,)
        Ray weight (raised by the roulette's survivors); ``e_kev`` its energy (keV).
    r_pick : Tensor (n,)
        A uniform number per ray for this call's choice among several collisions in a voxel.
    r_window : Tensor (n,)
        A uniform number per ray for this call's roulette below the window.
    voxel_table :
        As in :func:`ray_chunk`; it may have more columns than medium and density (only the
        first two are read).
    target_vox : Tensor (n_vox,) float32
        Target weight of each voxel's window block (0: no window); may be a strided column of
        ``voxel_table`` (:func:`ctdose.physics.weight_window.window_voxel_table`: one memory
        access per crossing for all three).
    window_f : Tensor (3,) float32
        ``lower, upper, max_split`` (``max_split = 1``: roulette only, no splitting).

    Returns
    -------
    The updated state ``flat, tx, ty, tz, rx, ry, rz, t, tau, att, lam, tau_r, wgt``, then per
    crossing (n_cross, n): ``index`` (int64), ``score`` (float64), ``t_coll`` (distance of
    the scored collision, mm) and ``w_coll`` (its weight ``k W / m`` for ``k`` collisions in
    the voxel; > 0 exactly where there is one, since a live ray's weight is > 0). A loser of
    either roulette is marked done by ``rx = -1`` and ``att = 0``; the transmission ``att``
    of a ray that left the grid stays that at its exit (its expected escaping fraction)."""
    live = (rx >= 0) & (ry >= 0) & (rz >= 0)
    deep = live & (tau > tau_r)
    win = r_roulette < ROULETTE_SURVIVAL
    wgt = torch.where(deep & win, wgt * (1.0 / ROULETTE_SURVIVAL), wgt)
    rx = torch.where(deep & ~win, -1.0, rx)
    att = torch.where(deep & ~win, 0.0, att)  # a loser carries nothing out of the grid
    tau_r = torch.where(deep, tau_r + ROULETTE_DEPTH_STEP, tau_r)
    n_rows = grid_i[3].to(torch.int32)
    lower, upper, max_split = window_f[0], window_f[1], window_f[2]
    # below the window where the call starts: the whole ray (its scores too) plays roulette
    live = (rx >= 0) & (ry >= 0) & (rz >= 0)
    target = target_vox[flat]
    ratio = wgt / torch.where(target > 0, target, 1.0)
    low = live & (target > 0) & (ratio < lower)
    keep = r_window < ratio
    wgt = torch.where(low & keep, target, wgt)
    rx = torch.where(low & ~keep, -1.0, rx)
    att = torch.where(low & ~keep, 0.0, att)
    out = ([], [], [], [])
    for _ in range(n_cross):
        live = (rx >= 0) & (ry >= 0) & (rz >= 0)
        mu, mu_tr, t_next, depth, trans = _crossing(flat, tx, ty, tz, t, voxel_table, total_tr_ab, ie, fe, n_rows)
        absorbing = live & (mu > 0)
        sc = torch.where(absorbing, wgt * e_kev * mu_tr * att * (1.0 - trans) / mu, torch.zeros_like(mu))
        # photons this ray stands for here, and the expected collisions in the voxel
        target = target_vox[flat]
        ratio = wgt / torch.where(target > 0, target, 1.0)
        outside = (target > 0) & ((ratio > upper) | (ratio < lower))
        m = torch.where(outside, ratio.clamp(max=max_split), torch.ones_like(ratio))
        m_att = m * att
        lam_next = torch.where(absorbing, lam + m_att * (1.0 - trans), lam)
        k = torch.floor(lam_next) - torch.floor(lam)
        # the picked integer, and where the running sum reaches it inside the voxel
        level = torch.floor(lam) + 1.0 + torch.floor(r_pick * k)  # r_pick < 1: at most k - 1
        q = ((level - lam) / torch.where(k > 0, m_att, 1.0)).clamp(0.0, 1.0)
        s = -torch.log1p(-q) / torch.where(absorbing, mu, 1.0)
        out[0].append(flat.to(torch.int64) + offset)
        out[1].append(sc)
        out[2].append(torch.minimum(t + s, t_next))
        out[3].append(k * wgt / m)
        lam = lam_next
        tau = tau + depth
        att = torch.where(live, att * trans, att)  # kept at the exit: the escaping fraction
        t = t_next
        flat, tx, ty, tz, rx, ry, rz = _next_voxel(flat, tx, ty, tz, tdx, tdy, tdz, dfx, dfy, dfz, rx, ry, rz)
    index, score, t_coll, w_coll = (torch.stack(a, 0) for a in out)
    return (flat, tx, ty, tz, rx, ry, rz, t, tau, att, lam, tau_r, wgt, index, score.to(torch.float64), t_coll,
            w_coll)


#: The kernels in the order :func:`get_ray_kernels` returns them.
EAGER_RAY_KERNELS = (ray_start, ray_chunk, ray_chunk_split)


def get_ray_kernels(device: torch.device, compile: bool | None = None):
    """``(ray_start, ray_chunk, ray_chunk_split)`` for ``device``: compiled when asked and possible, else eager.

    Same rules as :func:`ctdose.physics.kernels.get_kernels` (``CTDOSE_MC_COMPILE=0`` turns
    compilation off; a failing compiler falls back to the eager functions with a warning).
    """
    return compiled_kernels(EAGER_RAY_KERNELS, device, compile, name="ray",
                            options={"max_fusion_size": _MAX_FUSION_SIZE})
