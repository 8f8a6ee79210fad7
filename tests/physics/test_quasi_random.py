"""Quasi-random source sampling: one scrambled Sobol' sequence per batch; unbiased, less noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.errors import InputError
from ctdose.materials import get_medium
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.quasi_random import BatchSobol
from ctdose.physics.sources import PointSource


def test_each_batch_is_its_own_scrambled_sequence_across_portions():
    gen = torch.Generator().manual_seed(3)
    s = BatchSobol([5, 7, 4], 3, gen)
    u = torch.cat([s.draw(3), s.draw(6), s.draw(7)])  # portions that straddle the batches
    starts = [0, 5, 12]
    for b, (start, size) in enumerate(zip(starts, [5, 7, 4])):
        ref = torch.quasirandom.SobolEngine(3, scramble=True, seed=s.seeds[b]).draw(size, dtype=torch.float64)
        assert torch.equal(u[start:start + size], ref)
    assert len(set(s.seeds)) == 3
    with pytest.raises(ValueError, match="more photons"):
        s.draw(1)
    again = BatchSobol([5, 7, 4], 3, torch.Generator().manual_seed(3))
    assert again.seeds == s.seeds


def test_a_batch_of_2_to_the_m_points_is_a_net():
    """The first 2^m points of a scrambled Sobol' sequence put exactly 2^m / 64 points into each
    of 64 equal intervals of every coordinate (random numbers would scatter by about 2.8)."""
    u = BatchSobol([1 << 12], 4, torch.Generator().manual_seed(0)).draw(1 << 12).numpy()
    for d in range(4):
        counts = np.histogram(u[:, d], bins=64, range=(0.0, 1.0))[0]
        assert np.all(counts == 64)


def _slab_and_source():
    water = get_medium("water")
    mi = np.zeros((6, 20, 12), np.uint8)
    rho = np.full(mi.shape, 1.0, np.float32)
    geo = VoxelGeometry(mi, rho, [water], (5.0, 5.0, 5.0), (-12.5, -47.5, -27.5))
    src = PointSource((0, -500.0, 0), (0, 1, 0), energy_kev=60.0, half_angles_rad=(0.07, 0.035))
    return geo, src


def test_sobol_and_random_sampling_agree_and_sobol_lowers_the_primary_noise():
    """Same water slab and beam: the depth-dose by thirds agrees (unbiased) and the near third,
    where the primary dominates, is less noisy with Sobol' points."""
    geo, src = _slab_and_source()
    runs = {how: simulate(geo, src, 60_000, seed=5, keep_batches=True, source_sampling=how)
            for how in ("random", "sobol")}
    sig = {}
    for k, idx in enumerate(np.array_split(np.arange(geo.shape[1]), 3)):
        w = np.zeros(geo.shape)
        w[:, idx, :] = 1.0
        (a, sa), (b, sb) = (runs[how].sum_with_sigma(w) for how in ("random", "sobol"))
        print(f"third {k}: random {a:.4g} +- {100 * sa / a:.2f} %, sobol {b:.4g} +- {100 * sb / b:.2f} %")
        assert abs(a - b) < 4 * math.hypot(sa, sb)
        sig[k] = (sa / a, sb / b)
    near = runs["random"].rel_sigma[:, :6, :].mean(), runs["sobol"].rel_sigma[:, :6, :].mean()
    print(f"near third, mean relative error per voxel: random {near[0]:.4f}, sobol {near[1]:.4f}")
    assert near[1] < 0.8 * near[0]
    res = runs["sobol"]
    assert res.deposited_energy_ev + res.escaped_energy_ev == pytest.approx(res.emitted_energy_ev, rel=0.02)


def test_sobol_runs_are_reproducible_in_workers_and_refuse_unknown_modes():
    geo, src = _slab_and_source()
    a = simulate(geo, src, 20_000, seed=2)
    b = simulate(geo, src, 20_000, seed=2)
    assert np.array_equal(a.energy_ev, b.energy_ev)
    c = simulate(geo, src, 20_000, seed=2, workers=2)
    assert c.energy_ev.sum() == pytest.approx(a.energy_ev.sum(), rel=0.02)

    class Custom:  # a user's source without sample_dims: drawn at random, as before
        max_energy_kev = 60.0
        dose_scale_per_mas = None

        def sample(self, n, gen):
            return src.sample(n, gen)

    d = simulate(geo, Custom(), 20_000, seed=2, source_sampling="sobol")
    assert np.array_equal(d.energy_ev, simulate(geo, src, 20_000, seed=2, source_sampling="random").energy_ev)
    with pytest.raises(InputError, match="source_sampling"):
        simulate(geo, src, 1000, source_sampling="halton")
