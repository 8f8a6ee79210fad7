"""Randomised quasi-Monte Carlo source sampling: one scrambled Sobol' sequence per batch.

A source photon is a function of a few uniform numbers (for a CT source: the tube position
along the scan, the two field coordinates and the energy). Drawing them from a scrambled
Sobol' sequence instead of independent random numbers spreads the photons of a batch evenly
over the source's phase space: every voxel is crossed by nearly the same number of primary
rays in every batch. With the expected-track-length estimator, whose primary dose carries no
noise of its own, that removes most of the primary's share of the variance.

Each batch gets its own Owen-scrambled sequence (:class:`torch.quasirandom.SobolEngine` with
``scramble=True``), seeded from the run's generator: every photon is still uniformly
distributed, so every tally stays unbiased, and the batches stay independent and identically
distributed, so the batch method's uncertainty stays valid (Owen 1997; L'Ecuyer and Lemieux
2002). The photons after the source (free paths, interactions) use the ordinary generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BatchSobol", "SOURCE_SAMPLING"]

#: ``simulate(source_sampling=...)``: scrambled Sobol' per batch, or independent random numbers.
SOURCE_SAMPLING = ("sobol", "random")
#: Largest seed of a batch's scramble (``torch.quasirandom.SobolEngine`` takes an int).
_MAX_SEED = 2**62


class BatchSobol:
    """Uniform numbers in [0, 1)^dims for consecutive photons of consecutive batches.

    Parameters
    ----------
    batch_sizes : sequence of int
        Photons per batch; photons are numbered batch after batch.
    dims : int
        Uniform numbers per photon (the source's ``sample_dims``).
    gen : torch.Generator
        Seeds one scramble per batch (drawn here, in batch order).

    Examples
    --------
    >>> import torch
    >>> s = BatchSobol([4, 4], 2, torch.Generator().manual_seed(0))
    >>> u = s.draw(6)  # the first batch's 4 points, then 2 of the second's
    >>> tuple(u.shape), bool(((u >= 0) & (u < 1)).all())
    ((6, 2), True)
    """

    def __init__(self, batch_sizes: Sequence[int], dims: int, gen: torch.Generator):
        self.sizes = [int(n) for n in batch_sizes]
        self.dims = int(dims)
        seeds = torch.randint(0, _MAX_SEED, (len(self.sizes),), generator=gen, device=gen.device)
        self.seeds = [int(s) for s in seeds.cpu()]
        self._batch = -1
        self._left = 0
        self._engine = None

    def draw(self, n: int) -> torch.Tensor:
        """The next ``n`` photons' uniform numbers, (n, dims) float64 on the CPU."""
        parts = []
        while n > 0:
            if self._left == 0:
                self._batch += 1
                if self._batch >= len(self.sizes):
                    raise ValueError("BatchSobol: more photons drawn than the batches hold")
                self._engine = torch.quasirandom.SobolEngine(self.dims, scramble=True, seed=self.seeds[self._batch])
                self._left = self.sizes[self._batch]
            k = min(n, self._left)
            parts.append(self._engine.draw(k, dtype=torch.float64))
            self._left -= k
            n -= k
        if not parts:
            return torch.empty((0, self.dims), dtype=torch.float64)
        u = torch.cat(parts) if len(parts) > 1 else parts[0]
        # float64 points lie in [0, 1); keep them there after any rounding
        return u.clamp_(0.0, float(np.nextafter(1.0, 0.0)))
