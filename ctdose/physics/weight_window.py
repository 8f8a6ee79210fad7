"""Weight windows: splitting and Russian roulette by position (unbiased variance reduction).

Through a thick patient the photon fluence falls by two orders of magnitude from the side the
beam enters to the side it leaves (a 32 cm water cylinder: the dose of one 120 kVp projection
falls 180-fold), so an analogue run spends most of its photons where the dose is high and
leaves the far side noisy. A weight window keeps the photon *density* more even instead: each
block of voxels gets a target weight ``W`` proportional to the photon energy fluence a pilot
run found there (at most 1, at least ``min_weight``), and after every step of the track-length
estimator a photon of weight ``w`` in a block with target ``W``

* is split into ``n = floor(w / W + U)`` copies of weight ``w / n`` when ``w > upper W``
  (at most ``max_split`` copies at once; the weight is kept exactly),
* plays Russian roulette when ``w < lower W``: it survives with probability ``w / W`` and
  then has weight ``W`` (the weight is kept in expectation).

Both keep every tally unbiased for *any* choice of targets; the targets only decide where the
photons go. The expected-track-length estimator's flights run to the grid's exit, so a
window applied at their ends would come too late (a photon is only split where it already
collided); there the window acts along the flight instead
(:func:`ctdose.physics.ray_kernels.ray_chunk_split`): in a voxel of target ``W`` a ray of
weight ``w`` outside the bounds collides ``w / W`` times as often (at most ``max_split``),
each collision with weight ``W``, which is what its split copies would do; a ray below the
window plays roulette as a whole (its scores too) every few voxels.
The copies of a photon belong to its batch, so the batch method still sees
independent batches. Photons through a CT bowtie's thick edges (weights of about 0.1) are
rouletted in the body; in a helical scan of the demo thorax this did not change the
efficiency measurably, so the window is off by default.

The targets come from a short pilot run (:func:`window_targets`): the pilot's energy per
block divided by the block's mass-weighted energy-transfer coefficient at 60 keV (an energy
fluence, so that bone is not mistaken for a high-fluence region), relative to the 99th
percentile over the blocks. Blocks lighter than 0.05 g/cm^3 on average (air), blocks the
pilot did not reach and blocks far outside the field (fluence below a quarter of
``min_weight``: scatter far from the beam) get no window. While the pool has grown to four
times its size, photons are only rouletted, not split (any such rule keeps the tallies
unbiased), which bounds the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .transport import PhotonState

__all__ = [
    "DEFAULT_MIN_WEIGHT",
    "WeightWindow",
    "apply_weight_window",
    "pilot_photons",
    "voxel_targets",
    "voxel_table_with_targets",
    "window_targets",
    "window_voxel_table",
]

#: Smallest target weight: at most this many times more photons than at the entrance.
DEFAULT_MIN_WEIGHT = 1.0 / 64.0
#: Window bounds relative to the target weight: split above, roulette below. A narrow window
#: (1/1.25 .. 1.25) gave 4-6 % less noise than [0.5, 2] at the same cost for both estimators
#: (32 cm water, demo and paper thorax; narrower gained nothing more).
WINDOW_UPPER = 1.25
WINDOW_LOWER = 0.8
#: Most copies one photon is split into at one step.
MAX_SPLIT = 16
#: Photon energy (keV) of the energy-transfer coefficients that turn pilot energy into fluence.
REFERENCE_ENERGY_KEV = 60.0
#: Percentile of the block fluences that gets target weight 1.
REFERENCE_PERCENTILE = 99.0
#: Blocks of lower mean density (g/cm^3; air) get no window.
MIN_DENSITY_G_CM3 = 0.05
#: Blocks whose fluence is below this fraction of ``min_weight`` (relative to the reference)
#: lie outside the field (scatter far from the beam): no window there, so that photons are
#: not multiplied where no one asked for dose.
OUT_OF_FIELD_FRACTION = 0.25
#: Splitting pauses while the pool holds more than this many times its nominal size.
MAX_POOL_GROWTH = 4
#: Pilot run: this fraction of the photons, at least ``MIN_PILOT_PHOTONS`` (at most all).
PILOT_FRACTION = 0.05
MIN_PILOT_PHOTONS = 20_000


@dataclass
class WeightWindow:
    """Target weight per block of voxels (0: no window there) and the block geometry.

    ``block_f``, ``grid_f`` and ``block_i`` are those of
    :class:`ctdose.physics.transport.TrackLengthSetup` (block edges, grid corner, block counts).
    """

    target: torch.Tensor
    block_f: torch.Tensor
    grid_f: torch.Tensor
    block_i: torch.Tensor
    lower: float = WINDOW_LOWER
    upper: float = WINDOW_UPPER
    max_split: int = MAX_SPLIT
    #: target per voxel (float32, flat z, y, x), made by :func:`voxel_targets` when first needed
    target_vox: torch.Tensor | None = None
    #: the grid's voxel table with the targets beside it, made by :func:`window_voxel_table`
    voxel_table: torch.Tensor | None = None


def pilot_photons(n_photons: int) -> int:
    """Photons of the pilot run for a run of ``n_photons``."""
    return int(min(n_photons, max(MIN_PILOT_PHOTONS, round(PILOT_FRACTION * n_photons))))


def _block_sums(arr: np.ndarray, block_vox: int, n_blocks: tuple[int, int, int]) -> np.ndarray:
    """Sum of a [z, y, x] array over blocks of ``block_vox`` voxels (partial blocks at the far faces)."""
    b = int(block_vox)
    pad = [(0, nb * b - n) for nb, n in zip(n_blocks, arr.shape)]
    nbz, nby, nbx = n_blocks
    return np.pad(arr, pad).reshape(nbz, b, nby, b, nbx, b).sum(axis=(1, 3, 5))


def window_targets(
    pilot_energy_kev: np.ndarray,
    media_index: np.ndarray,
    density_g_cm3: np.ndarray,
    tr_per_density: np.ndarray,
    block_vox: int,
    n_blocks: tuple[int, int, int],
    min_weight: float = DEFAULT_MIN_WEIGHT,
) -> np.ndarray:
    """Target weight per block (flattened z, y, x block order) from a pilot run's energy.

    Parameters
    ----------
    pilot_energy_kev : ndarray [z, y, x]
        Energy scored per voxel by the pilot run (any unit: only ratios matter).
    media_index, density_g_cm3 : ndarray [z, y, x]
        The grid (medium per voxel, mass density in g/cm^3).
    tr_per_density : ndarray (n_media,)
        Energy-transfer coefficient per unit density of each medium at
        ``REFERENCE_ENERGY_KEV`` (any unit).
    block_vox : int
        Block edge in voxels; ``n_blocks`` the number of blocks along (z, y, x).
    min_weight : float
        Smallest target weight, in (0, 1].

    Returns
    -------
    ndarray (n_blocks,) float32
        ``clip(F / F_99, min_weight, 1)`` with F the block's energy fluence (pilot energy over
        the mass-weighted transfer coefficient) and F_99 its 99th percentile over the blocks;
        0 (no window) in blocks lighter than ``MIN_DENSITY_G_CM3``, not reached, or with
        ``F / F_99`` below ``OUT_OF_FIELD_FRACTION * min_weight``.
    """
    rho = np.asarray(density_g_cm3, dtype=np.float64)
    mi = np.asarray(media_index).astype(np.int64)
    tr = np.asarray(tr_per_density, dtype=np.float64)
    energy = _block_sums(np.asarray(pilot_energy_kev, dtype=np.float64), block_vox, n_blocks)
    mass = _block_sums(rho, block_vox, n_blocks)
    voxels = _block_sums(np.ones(rho.shape), block_vox, n_blocks)
    transfer = _block_sums(rho * tr[mi], block_vox, n_blocks)
    dense = mass > MIN_DENSITY_G_CM3 * np.maximum(voxels, 1.0)
    ok = dense & (transfer > 0) & (energy > 0)
    fluence = np.where(ok, energy / np.where(ok, transfer, 1.0), 0.0)
    target = np.zeros(fluence.shape, dtype=np.float32)
    if ok.any():
        rel = fluence / float(np.percentile(fluence[ok], REFERENCE_PERCENTILE))
        ok &= rel >= OUT_OF_FIELD_FRACTION * float(min_weight)
        target[ok] = np.clip(rel[ok], float(min_weight), 1.0)
    return target.reshape(-1)


def voxel_targets(win: WeightWindow, cell_f: torch.Tensor) -> torch.Tensor:
    """The target weight of every voxel (its centre's block; flat z, y, x order), cached on ``win``.

    ``cell_f`` holds the voxel edges ``dx, dy, dz`` (mm). For the expected-track-length
    flights (:func:`ctdose.physics.ray_kernels.ray_chunk_split`), which look the window up
    voxel by voxel; 4 bytes per voxel.
    """
    if win.target_vox is None:
        bf, gf = win.block_f, win.grid_f
        axes = []
        for a in range(3):
            n = int(gf[6 + a])
            centre = (torch.arange(n, device=gf.device, dtype=torch.float32) + 0.5) * cell_f[a]
            axes.append((centre * bf[a]).floor().clamp(min=0.0).minimum(bf[6 + a] - 1).to(torch.int64))
        bx, by, bz = axes
        bi = win.block_i
        flat = (bz[:, None, None] * bi[1] + by[None, :, None]) * bi[0] + bx[None, None, :]
        win.target_vox = win.target[flat].reshape(-1).to(torch.float32).contiguous()
    return win.target_vox


def window_voxel_table(win: WeightWindow, voxel_table: torch.Tensor, cell_f: torch.Tensor) -> torch.Tensor:
    """The grid's voxel table with every voxel's target weight beside it, cached on ``win``.

    Rows ``[medium, density, target, 0]`` (float32, 16 bytes, four rows to a 64-byte cache
    line) from ``voxel_table`` (``[medium, density]`` per voxel, as in
    :class:`ctdose.physics.transport.TransportGrid`) and :func:`voxel_targets`. The
    expected-track-length flights under a window read medium, density and target at every
    voxel crossing: from one row they are one memory access instead of two (paper thorax, one
    core, side by side: 7-8 % faster; the same numbers, so the same doses). ``win.target_vox``
    becomes the table's third column (a view), so the targets are held once.
    """
    if win.voxel_table is None:
        win.voxel_table = voxel_table_with_targets(voxel_table, voxel_targets(win, cell_f))
        win.target_vox = win.voxel_table[:, 2]
    return win.voxel_table


def voxel_table_with_targets(voxel_table: torch.Tensor, target_vox: torch.Tensor) -> torch.Tensor:
    """Rows ``[medium, density, target, 0]`` (contiguous float32) from the ``[medium, density]``
    rows of ``voxel_table`` and one target weight per voxel (``target_vox``, 0: no window)."""
    return torch.stack([voxel_table[:, 0], voxel_table[:, 1], target_vox, torch.zeros_like(target_vox)], 1).contiguous()


def apply_weight_window(
    st: "PhotonState", win: WeightWindow, gen: torch.Generator, allow_split: bool = True
) -> "PhotonState":
    """Split or roulette the photons of ``st`` against their block's target weight.

    Returns the new pool (copies follow their original, in order); ``st`` may be consumed
    (its weight tensor is replaced). ``allow_split=False``: roulette only.
    """
    bf, gf, bi = win.block_f, win.grid_f, win.block_i
    bx = ((st.x - gf[0]) * bf[0]).floor().clamp(min=0.0).minimum(bf[6] - 1).to(torch.int64)
    by = ((st.y - gf[1]) * bf[1]).floor().clamp(min=0.0).minimum(bf[7] - 1).to(torch.int64)
    bz = ((st.z - gf[2]) * bf[2]).floor().clamp(min=0.0).minimum(bf[8] - 1).to(torch.int64)
    target = win.target[(bz * bi[1] + by) * bi[0] + bx]
    windowed = target > 0
    ratio = torch.where(windowed, st.weight / torch.where(windowed, target, 1.0), 1.0)
    split = (ratio > win.upper) & allow_split
    low = ratio < win.lower
    if not bool((split | low).any()):
        return st
    r = torch.rand(ratio.shape, generator=gen, device=ratio.device, dtype=ratio.dtype)
    n_split = (ratio + r).floor().clamp(max=float(win.max_split))
    copies = torch.where(split, n_split, torch.where(low & (r >= ratio), 0.0, 1.0))
    st.weight = torch.where(split, st.weight / copies.clamp(min=1.0), torch.where(low, target, st.weight))
    counts = copies.to(torch.int64)
    if bool((counts == 1).all()):
        return st
    idx = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    return st.select(idx)
