"""Worker processes for :func:`ctdose.physics.mc.simulate` on several CPU cores.

The compiled track-length kernels (:mod:`ctdose.physics.kernels`) run with Python's global
interpreter lock held, so threads cannot run them side by side. ``simulate(workers=n)``
therefore sends groups of batches to ``n - 1`` worker processes (the calling process runs the
first group itself). The pool is started once per process with the ``spawn`` method (safe with
torch's threads) and reused by later calls; a worker builds its tables and compiles its
kernels on first use (Inductor's on-disk cache makes that quick after the first time).

Each group has its own generator (seed ``seed + group * stride``), so a result depends on
``seed`` and ``workers`` and on nothing else. Inside a daemonic process (which may not start
children, e.g. a Dask worker) :func:`can_use_processes` is False and the caller falls back.
"""

from __future__ import annotations

import atexit
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GroupJob", "GroupResult", "can_use_processes", "run_group", "submit"]

_POOL: ProcessPoolExecutor | None = None
_POOL_SIZE = 0


@dataclass
class GroupJob:
    """Everything a worker process needs to transport one group of batches."""

    media_index: np.ndarray
    density_g_cm3: np.ndarray
    media: list
    spacing_mm: tuple
    origin_mm: tuple
    source: Any
    batch_sizes: list
    seed: int
    estimator: str
    cutoff_kev: float
    pool_size: int
    majorant_floor_per_mm: float
    track_spacing_mm: float | None
    compile: bool | None
    majorant: str = "global"
    block_vox: int = 8
    ambient: Any = None
    #: weight-window target per block (:mod:`ctdose.physics.weight_window`), or None
    window_target: np.ndarray | None = None
    #: uniform numbers per source photon from the batches' Sobol' sequences (0: random sampling)
    sample_dims: int = 0
    #: fluorescence lines transported from this energy (keV) on; None: all local
    fluorescence_min_kev: float | None = None


@dataclass
class GroupResult:
    """A group's tally (keV x weight, batch-major, float64) and its energy bookkeeping."""

    energy_kev: np.ndarray
    escaped_kev: float
    emitted_kev: float
    n_steps: int


def run_group(job: GroupJob) -> GroupResult:
    """Transport ``job`` in this process (the body of a worker task)."""
    import torch

    from .transport import prepare_transport, run_transport

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    prep = prepare_transport(
        job.media_index, job.density_g_cm3, job.media, job.spacing_mm, job.origin_mm, float(job.source.max_energy_kev),
        dev, job.estimator, job.majorant, job.block_vox, job.majorant_floor_per_mm, job.track_spacing_mm, job.compile,
        job.ambient, job.fluorescence_min_kev,
    )
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(job.seed))
    window = None
    if job.window_target is not None:
        from .weight_window import WeightWindow

        ts = prep.track_setup
        window = WeightWindow(torch.from_numpy(job.window_target), ts.block_f, ts.grid_f, ts.block_i)
    tally = run_transport(
        prep.grid, prep.tables, job.source.sample, job.batch_sizes, gen, estimator=job.estimator,
        cutoff_kev=job.cutoff_kev, pool_size=job.pool_size, block=prep.block, track_setup=prep.track_setup,
        ambient=prep.ambient, window=window, sample_dims=job.sample_dims,
    )
    return GroupResult(tally.energy_kev.numpy(), tally.escaped_kev, tally.emitted_kev, tally.n_steps)


def can_use_processes() -> bool:
    """False inside a daemonic process (it may not start worker processes)."""
    return not multiprocessing.current_process().daemon


def _pool(n: int) -> ProcessPoolExecutor:
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE < n:
        if _POOL is not None:
            _POOL.shutdown(wait=True)
        _POOL = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        _POOL_SIZE = n
    return _POOL


def submit(jobs: list[GroupJob]) -> list[Future]:
    """Start ``jobs`` in the shared pool of worker processes (grown to ``len(jobs)``)."""
    pool = _pool(len(jobs))
    return [pool.submit(run_group, job) for job in jobs]


@atexit.register
def _shutdown() -> None:
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
