"""The collision estimator's three steps side by side: where the fused one pays, and the
several flights per call.

Usage::

    python benchmarks/bench_collision_step.py              # 1e6 histories, 3 rounds
    python benchmarks/bench_collision_step.py --quick      # 2e5 histories, 1 round
    python benchmarks/bench_collision_step.py --breakdown  # where a run's time goes, per kernel
    python benchmarks/bench_collision_step.py --scaling    # what the second core adds
    python benchmarks/bench_collision_step.py --tail       # the steps of a run's last few photons

The collision estimator's step either calls a flight kernel and then the interaction kernel
on the indices of the real collisions, or does both in one pass over the whole pool
(``fused``, :func:`ctdose.physics.kernels.collide_interact`), which evaluates the samplers for
every photon. The flight kernel flies each photon once (``one site``,
:func:`~ctdose.physics.kernels.advance_collision`) or up to ``COLLISION_SITES_PER_CALL`` times
until a real collision or the exit (``sites``, :func:`~ctdose.physics.kernels.advance_collision_sites`).
``ctdose.physics.transport._FUSED_INTERACTION_MIN_REAL`` picks the fused step while the last
step's fraction of real tentative sites is at least that value, and
``_SITES_PER_CALL_MAX_REAL`` the several flights while it is below that value; those fly through
the air far from matter with the air's majorant (void flights, :mod:`ctdose.physics.void`),
which the script also turns off (``sites, no void flights``). This script forces each step in
turn (the thresholds at 0 or above 1) on one core in the 32 cm water cylinder of
``bench_mc.py`` with a majorant floor that sets the real fraction (water's own
majorant: about 60 % real, the rest escapes and vacuum corners; a floor of k times water's mu
at 60 keV: about 1/k of that) and in the demo thorax (global majorant from bone: about 12 %
real). The runs alternate in every round, so the VM's drift falls on all alike; the table
gives the ratios of the medians of histories/s to the one-site step's, and the measured
fraction of real sites (in the one-site runs).

``--breakdown`` runs the collision estimator as ``simulate`` chooses its steps (1 core, the water
cylinder and the demo thorax) and times every call of each compiled kernel and of
``torch.rand``: calls, share of the run's wall time, elements (photons, or random numbers) per
history and nanoseconds per element. The rest of the time is the steps' glue: the tally's
``scatter_add_``, the gathers and scatters around the interaction kernel, the pool's
compaction, the source and Python.

``--scaling`` asks what two cores can give the collision estimator (the water cylinder and the
demo thorax, each run in fresh processes after a warm-up): one process with one core alone;
``simulate(workers=2)``; and two independent one-core processes started at the same moment,
each with half the histories (their histories over the later one's wall time: the most that two
workers could reach on this machine, where each pays the other's use of the shared cache and
memory, and nothing else). The configurations alternate in every round; the table gives
medians and ranges and the ratios to one core.

``--tail`` times the steps of the last photons of a run (pools of fewer than 64 photons), which
ran the eager kernels before ``ctdose.physics.kernels.MIN_COMPILED_PHOTONS`` became 2: the
collision estimator in the demo thorax and the water cylinder, and the default estimator in the
demo thorax (1 core), with the old threshold of 64 and the shipped one alternating in one
process; per run the wall time, the steps with fewer than 64 photons and their time (medians).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_mc  # noqa: E402

from ctdose.materials import get_medium  # noqa: E402
from ctdose.physics import transport, void  # noqa: E402
from ctdose.physics.mc import simulate  # noqa: E402
from ctdose.physics.sources import PointSource  # noqa: E402
from ctdose.physics.xsection import mass_coefficients  # noqa: E402

#: ``(_FUSED_INTERACTION_MIN_REAL, _SITES_PER_CALL_MAX_REAL, void flights)`` that force each step
#: (a fraction is <= 1): the fused step always; never, and the several flights always (with and
#: without the void flights through the air, :mod:`ctdose.physics.void`); neither.
_FORCE = {"fused": (0.0, 0.0, True), "sites": (2.0, 2.0, True), "sites, no void flights": (2.0, 2.0, False),
          "one site": (2.0, 0.0, True)}
_REFERENCE_ENERGY_KEV = 60.0


def _source(geo) -> PointSource:
    """The one-projection fan source of ``bench_mc`` for ``geo``."""
    return bench_mc.projection_source(geo)


_VOID_DISTANCE = void.void_distance_mm


def _no_void_distance(density_g_cm3, spacing_mm_zyx):
    """No void voxel anywhere: the several-flights step without void flights."""
    return np.zeros(np.shape(density_g_cm3), np.float32)


def _force(force: tuple) -> None:
    """Set the thresholds and the void distances of one entry of ``_FORCE``."""
    transport._FUSED_INTERACTION_MIN_REAL, transport._SITES_PER_CALL_MAX_REAL, voids = force
    void.void_distance_mm = _VOID_DISTANCE if voids else _no_void_distance


class _RealFraction:
    """Counts the tentative sites and real collisions of every collision step (a wrapper of
    the step function that reads the tally's ``real_fraction`` after each step of one flight
    per photon) while ``on``."""

    def __init__(self):
        self.sites = 0
        self.real = 0.0
        self.on = False
        self._step = transport._FUSED_STEPS["collision"]

    def __call__(self, st, grid, tab, tally, *args):
        out = self._step(st, grid, tab, tally, *args)
        if not self.on:
            return out
        self.sites += len(st)
        self.real += tally.real_fraction * len(st)
        return out

    def fraction(self) -> float:
        return self.real / max(self.sites, 1)


def run(quick: bool = False, rounds: int = 3) -> list[dict]:
    """Histories/s of the three steps (1 core) at several real fractions."""
    import torch

    n = 200_000 if quick else 1_000_000
    rounds = 1 if quick else rounds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    water_geo, water_body, _ = bench_mc.water_cylinder()
    water = get_medium("water")
    mu_water_per_mm = float(mass_coefficients(water, np.array([_REFERENCE_ENERGY_KEV]))["total"][0]
                            * water.density_g_cm3 / transport.MM_PER_CM)
    cases = [(f"water cylinder, floor {k:g} x mu_water", water_geo, water_body, k * mu_water_per_mm)
             for k in (0, 1.5, 2.5, 4)]
    demo_geo, demo_body, _ = bench_mc.demo_phantom()
    cases.append(("demo thorax (bone majorant)", demo_geo, demo_body, 0.0))
    rows = []
    saved = transport._FUSED_INTERACTION_MIN_REAL, transport._SITES_PER_CALL_MAX_REAL
    counter = _RealFraction()
    transport._FUSED_STEPS["collision"] = counter
    try:
        for name, geo, body, floor in cases:
            src = _source(geo)
            kw = dict(estimator="collision", majorant_floor_per_mm=floor)
            speed = {k: [] for k in _FORCE}
            for kernel, force in _FORCE.items():  # warm-up: compilation
                _force(force)
                simulate(geo, src, 40_000, **kw)
            counter.sites, counter.real = 0, 0.0
            sigma = {}
            for r in range(rounds):
                for kernel, force in _FORCE.items():
                    _force(force)
                    counter.on = kernel == "one site"
                    t0 = time.perf_counter()
                    res = simulate(geo, src, n, seed=r, **kw)
                    speed[kernel].append(n / (time.perf_counter() - t0))
                    sigma[kernel] = float(np.mean(np.minimum(res.rel_sigma[body], 1.0)))
            med = {k: float(np.median(v)) for k, v in speed.items()}
            for kernel in ("fused", "sites", "sites, no void flights"):
                rows.append(dict(benchmark=f"collision step, {name}: {kernel} / one site",
                                 value=round(med[kernel] / med["one site"], 3), unit="x",
                                 note=f"real sites {counter.fraction():.2f}; {kernel} {med[kernel]:.3g} /s, one site "
                                      f"{med['one site']:.3g} /s (median of {rounds}); sigma {sigma[kernel]:.3f} / "
                                      f"{sigma['one site']:.3f}; {n} histories, 1 core"))
    finally:
        transport._FUSED_STEPS["collision"] = counter._step
        transport._FUSED_INTERACTION_MIN_REAL, transport._SITES_PER_CALL_MAX_REAL = saved
        void.void_distance_mm = _VOID_DISTANCE
        torch.set_num_threads(threads)
    return rows


class _Timed:
    """A kernel (or ``torch.rand``) that adds its wall time, calls and elements to ``stats[name]``."""

    def __init__(self, name: str, fn, stats: dict):
        self.name, self.fn, self.stats = name, fn, stats

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        # a kernel's first argument is per photon; torch.rand's result is the random numbers
        n = out.numel() if self.name == "torch.rand" else args[0].numel()
        entry = self.stats.setdefault(self.name, [0, 0.0, 0])
        entry[0] += 1
        entry[1] += dt
        entry[2] += n
        return out


def breakdown(quick: bool = False) -> list[dict]:
    """Where a collision-estimator run's time goes (1 core): per kernel and ``torch.rand``."""
    import torch

    from ctdose.physics import kernels

    n = 200_000 if quick else 1_000_000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    names = [f.__name__ for f in kernels.EAGER_KERNELS]
    rows = []
    rand = torch.rand
    try:
        for make in (bench_mc.water_cylinder, bench_mc.demo_phantom):
            geo, _, name = make()
            src = _source(geo)
            simulate(geo, src, 40_000, estimator="collision")  # warm-up: compilation
            key = "cpu"
            compiled = kernels._COMPILED.get(key)
            if compiled is None:
                raise RuntimeError("the compiled kernels are not available here (CTDOSE_MC_COMPILE=0?)")
            stats: dict = {}
            kernels._COMPILED[key] = tuple(_Timed(nm, f, stats) for nm, f in zip(names, compiled))
            torch.rand = _Timed("torch.rand", rand, stats)
            try:
                t0 = time.perf_counter()
                simulate(geo, src, n, estimator="collision")
                wall = time.perf_counter() - t0
            finally:
                kernels._COMPILED[key] = compiled
                torch.rand = rand
            rows.append(dict(benchmark=f"collision run, {name}", value=round(n / wall), unit="histories/s",
                             note=f"{n} histories, 1 core, {wall:.2f} s"))
            timed = 0.0
            for part, (calls, dt, elements) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
                timed += dt
                rows.append(dict(benchmark=f"  {part}", value=round(100 * dt / wall, 1), unit="% of the run",
                                 note=f"{calls} calls, {elements / n:.2f} elements per history, "
                                      f"{dt / elements * 1e9:.0f} ns per element"))
            rows.append(dict(benchmark="  the rest (scatter_add_, gathers, compaction, source, Python)",
                             value=round(100 * (wall - timed) / wall, 1), unit="% of the run",
                             note=f"{(wall - timed) / n * 1e9:.0f} ns per history"))
    finally:
        torch.set_num_threads(threads)
    return rows


#: ``--scaling``: seconds between starting the processes and their common start of the timed
#: run (imports, the phantom and the warm-up run take about 10-20 s).
_SCALING_LEAD_S = 30.0
_PHANTOMS = {"water": bench_mc.water_cylinder, "thorax": bench_mc.demo_phantom}


def solo(phantom: str, n: int, workers: int, start_at: float) -> dict:
    """One timed collision run of ``n`` histories with ``workers`` workers in this process,
    started at the epoch time ``start_at`` (after a warm-up); prints and returns its figures."""
    import torch

    torch.set_num_threads(1)
    geo, _, name = _PHANTOMS[phantom]()
    src = _source(geo)
    simulate(geo, src, 100_000, estimator="collision", workers=workers, seed=0)  # compilation, worker start
    wait = start_at - time.time()
    if wait < 0:
        raise RuntimeError(f"the warm-up took {-wait:.1f} s longer than the lead of {_SCALING_LEAD_S:g} s")
    time.sleep(wait)
    t0 = time.perf_counter()
    simulate(geo, src, n, estimator="collision", workers=workers, seed=1)
    out = dict(name=name, histories=n, wall_s=time.perf_counter() - t0)
    print(json.dumps(out), flush=True)
    return out


def _solo_processes(phantom: str, n: int, workers: list[int]) -> list[dict]:
    """Run :func:`solo` with ``n`` histories in one fresh process per entry of ``workers``, all
    timed from the same moment; their figures."""
    start_at = time.time() + _SCALING_LEAD_S
    procs = [subprocess.Popen([sys.executable, __file__, "--solo", phantom, str(n), str(w), repr(start_at)],
                              stdout=subprocess.PIPE, text=True) for w in workers]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a --solo process failed (exit status {proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def scaling(quick: bool = False, rounds: int = 3) -> list[dict]:
    """Histories/s of the collision estimator on one core, on two workers, and of two one-core
    processes side by side (see the module's docstring)."""
    n = 1_000_000 if quick else 4_000_000
    configs = {"1 core": [1], "simulate(workers=2)": [2], "two 1-core processes at once, half each": [1, 1]}
    rows = []
    for phantom in _PHANTOMS:
        rates: dict = {c: [] for c in configs}
        name = ""
        for _ in range(1 if quick else rounds):
            for c, workers in configs.items():
                res = _solo_processes(phantom, n // len(workers), workers)
                name = res[0]["name"]
                rates[c].append(sum(r["histories"] for r in res) / max(r["wall_s"] for r in res))
        one = float(np.median(rates["1 core"]))
        for c, v in rates.items():
            med = float(np.median(v))
            rows.append(dict(benchmark=f"{name}: {c}", value=f"{med:.3g}", unit="histories/s",
                             note=f"range {min(v):.3g}-{max(v):.3g}, {med / one:.2f}x one core, {len(v)} round(s) "
                                  f"of {n} histories"))
    return rows


#: ``--tail``: the pool size below which the kernels ran eager before (and the size counted).
_OLD_MIN_COMPILED_PHOTONS = 64


def tail(quick: bool = False, rounds: int = 3) -> list[dict]:
    """The tail of a run: its steps with fewer than 64 photons, eager (the old threshold) against
    compiled (see the module's docstring)."""
    import torch

    from ctdose.physics import kernels

    shipped = kernels.MIN_COMPILED_PHOTONS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cases = [(bench_mc.demo_phantom, "collision", 500_000), (bench_mc.water_cylinder, "collision", 500_000),
             (bench_mc.demo_phantom, "expected_track_length", 200_000)]
    rows = []
    try:
        for make, estimator, n in cases:
            n = n // 5 if quick else n
            geo, _, name = make()
            src = _source(geo)
            step = transport._FUSED_STEPS[estimator]
            small: list = []

            def timed(st, *args, step=step, small=small):
                t0 = time.perf_counter()
                out = step(st, *args)
                if len(st) < _OLD_MIN_COMPILED_PHOTONS:
                    small.append(time.perf_counter() - t0)
                return out

            transport._FUSED_STEPS[estimator] = timed
            figures: dict = {}
            try:
                for threshold in (_OLD_MIN_COMPILED_PHOTONS, shipped):  # warm-up: compilation
                    kernels.MIN_COMPILED_PHOTONS = threshold
                    simulate(geo, src, 50_000, estimator=estimator, seed=0)
                for r in range(1 if quick else rounds):
                    order = (_OLD_MIN_COMPILED_PHOTONS, shipped) if r % 2 == 0 else (shipped, _OLD_MIN_COMPILED_PHOTONS)
                    for threshold in order:
                        kernels.MIN_COMPILED_PHOTONS = threshold
                        small.clear()
                        t0 = time.perf_counter()
                        simulate(geo, src, n, estimator=estimator, seed=1)
                        figures.setdefault(threshold, []).append((time.perf_counter() - t0, len(small), sum(small)))
            finally:
                transport._FUSED_STEPS[estimator] = step
                kernels.MIN_COMPILED_PHOTONS = shipped
            for threshold, runs in figures.items():
                wall, steps, dt = (float(np.median([f[i] for f in runs])) for i in range(3))
                how = "eager" if threshold == _OLD_MIN_COMPILED_PHOTONS else "compiled"
                rows.append(dict(benchmark=f"{name}, {estimator}: threshold {threshold} ({how})",
                                 value=round(1e3 * dt, 1), unit="ms in the tail",
                                 note=f"{steps:.0f} steps below {_OLD_MIN_COMPILED_PHOTONS} photons, run {wall:.3f} s "
                                      f"({n} histories, 1 core, medians of {len(runs)})"))
    finally:
        torch.set_num_threads(threads)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--breakdown", action="store_true", help="where a collision run's time goes, per kernel")
    p.add_argument("--scaling", action="store_true", help="what the second core adds")
    p.add_argument("--tail", action="store_true", help="the steps of a run's last few photons")
    p.add_argument("--solo", nargs=4, metavar=("PHANTOM", "N", "WORKERS", "START_AT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.solo:
        phantom, n, workers, start_at = a.solo
        solo(phantom, int(n), int(workers), float(start_at))
        return 0
    import pandas as pd

    pd.set_option("display.width", 220)
    pd.set_option("display.max_colwidth", 120)
    if a.scaling:
        rows = scaling(a.quick, a.rounds)
    elif a.tail:
        rows = tail(a.quick, a.rounds)
    else:
        rows = breakdown(a.quick) if a.breakdown else run(a.quick, a.rounds)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
