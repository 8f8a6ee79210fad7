"""AAPM TG-195 Cases 4.1 / 4.2, 2, 3 and 1 at full statistics: ours next to the four codes.

Usage::

    python benchmarks/tg195.py                 # full statistics (several minutes on 2 cores)
    python benchmarks/tg195.py --quick         # reduced photons
    python benchmarks/tg195.py --photons 4e6 --pixel-mm 1 --device cuda
    python benchmarks/tg195.py --world vacuum  # the phantoms in vacuum (read ~1 % high)
    python benchmarks/tg195.py --case2-photons 2e7   # Case 2 alone at this count
    python benchmarks/tg195.py --case3-photons 1e7   # Case 3 alone at this count
    python benchmarks/tg195.py --weight-window       # Case 4 alone, with weight windows

Prints one table per configuration (ours, EGSnrc, Geant4, MCNP, PENELOPE, deviation % from
EGSnrc, our 1-sigma %) and a summary; goal: every VOI within 2 % of EGSnrc. Case 4.2 rows are
the 36 source angles (periphery; one projection with rotated VOIs, see ctdose.physics.tg195)
and the centre VOI (compared with the mean of the reference over the angles). Case 2
(radiography: a 390 x 390 x 200 mm soft-tissue box 1550 mm from the source, 56.4 keV and
120 kVp) lists the whole box and its nine 30 mm VOIs; the 1550 mm of voxelised air in front
of the box make it the slowest case per photon (about 300 track-length points in air each).
Case 3 (mammography, radiography: a half-cylinder breast under a source 660 mm above the
detector, 16.8 keV and Mo/Mo 30 kVp) lists the breast tissue ("Total body") and its seven VOIs
on a 2 mm grid of 9.8 M voxels (a few GB of memory).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctdose.physics.tg195 import (  # noqa: E402
    CASE1_BEAMS,
    CASE2_ENERGIES,
    CASE3_ENERGIES,
    case3_geometry,
    run_case1,
    run_case2,
    run_case3,
    run_case4,
)

CONFIGS = [("56.4 keV", 10.0), ("56.4 keV", 80.0), ("120 kVp", 10.0), ("120 kVp", 80.0)]
GOAL_PCT = 2.0


def case4_tables(n_photons: int, pixel_mm: float = 2.0, device: str = "cpu", seed: int = 0,
                 world: str = "air", weight_window: bool = False) -> pd.DataFrame:
    """Run every Case 4 configuration; one row per VOI."""
    out = []
    for energy, col in CONFIGS:
        table, res = run_case4(energy, col, n_photons, pixel_mm=pixel_mm, device=device, seed=seed, world=world,
                               weight_window=weight_window)
        table["wall_s"] = res.wall_s
        table["histories_per_s"] = res.histories_per_s
        out.append(table)
    return pd.concat(out, ignore_index=True)


def _per_beam(run_case, energies, n_photons: int, **kw) -> pd.DataFrame:
    """``run_case(energy, n_photons, **kw)`` for every beam, with its wall time; one table."""
    out = []
    for energy in energies:
        table, res = run_case(energy, n_photons, **kw)
        table["wall_s"] = res.wall_s
        out.append(table)
    return pd.concat(out, ignore_index=True)


def case2_table(n_photons: int, device: str = "cpu", seed: int = 0, world: str = "air") -> pd.DataFrame:
    """TG-195 Case 2 (radiography) for both beams; one row per VOI."""
    return _per_beam(run_case2, CASE2_ENERGIES, n_photons, device=device, seed=seed, world=world)


def case3_table(n_photons: int, device: str = "cpu", seed: int = 0) -> pd.DataFrame:
    """TG-195 Case 3 (mammography, radiography) for both beams; one row per volume."""
    return _per_beam(run_case3, CASE3_ENERGIES, n_photons, device=device, seed=seed, setup=case3_geometry())


def _radiography_rows(name: str, t: pd.DataFrame, n: int) -> list[dict]:
    """Benchmark rows of a radiography case: the total volume and the worst VOI per beam."""
    rows = []
    for energy, g in t.groupby("energy", sort=False):
        body = g[g["volume"] == "Total body"].iloc[0]
        vois = g[g["volume"] != "Total body"]
        worst = vois.loc[vois["deviation_pct"].abs().idxmax()]
        rows.append(dict(benchmark=f"TG-195 {name}, {energy}: total body vs EGSnrc", value=round(body["deviation_pct"], 2),
                         unit="%", goal=f"<= {GOAL_PCT}", note=f"+- {body['sigma_pct']:.2f} % (1 sd); {n} photons"))
        rows.append(dict(benchmark=f"TG-195 {name}, {energy}: max |dev| of {len(vois)} VOIs vs EGSnrc",
                         value=round(abs(worst["deviation_pct"]), 2), unit="%", goal=f"<= {GOAL_PCT}",
                         note=f"{worst['volume']}: +- {worst['sigma_pct']:.2f} % (1 sd)"))
    return rows


def _print_radiography(name: str, t: pd.DataFrame, n: int, what: str) -> None:
    for energy, g in t.groupby("energy", sort=False):
        print(f"\n=== TG-195 {name} (radiography), {energy} ({n} photons, {what}), eV per photon; "
              f"{g['wall_s'].iloc[0]:.0f} s ===")
        print(g[["volume", "ours", "EGSnrc", "Geant4", "MCNP", "Penelope", "deviation_pct", "sigma_pct"]]
              .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    within = (t["deviation_pct"].abs() <= GOAL_PCT + 2 * t["sigma_pct"]).mean()
    print(f"{name}: max |dev| {t['deviation_pct'].abs().max():.2f} %, rows within {GOAL_PCT} % + 2 sigma: {within:.0%}")


def case1_table(n_photons: int, device: str = "cpu") -> pd.DataFrame:
    """TG-195 Case 1 HVL/QVL fractions for every beam."""
    return pd.concat([run_case1(beam, n_photons, device=device) for beam in CASE1_BEAMS], ignore_index=True)


def summarise(t: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: max |deviation| of the 4.1 slabs, the 4.2 centre and the 4.2 periphery
    summed over all angles (the rotation's total), and the share of rows within the goal."""
    rows = []
    for (energy, col), g in t.groupby(["energy", "collimation_mm"], sort=False):
        s41 = g[g["case"] == "Case 4.1"]
        cen = g[(g["case"] == "Case 4.2") & (g["volume"] == "Center")]
        per = g[(g["case"] == "Case 4.2") & (g["volume"] == "Periphery")]
        per_total = 100 * (per["ours"].sum() / per["EGSnrc"].sum() - 1)
        per_sig = 100 * math.sqrt((per["ours_sigma"] ** 2).sum()) / per["ours"].sum()
        within = (t.loc[g.index, "deviation_pct"].abs() <= GOAL_PCT + 2 * t.loc[g.index, "sigma_pct"]).mean()
        rows.append(
            dict(
                energy=energy,
                collimation_mm=col,
                case41_max_abs_dev_pct=float(s41["deviation_pct"].abs().max()),
                case42_center_dev_pct=float(cen["deviation_pct"].iloc[0]),
                case42_center_sigma_pct=float(cen["sigma_pct"].iloc[0]),
                case42_periphery_total_dev_pct=per_total,
                case42_periphery_total_sigma_pct=per_sig,
                rows_within_goal_2sigma=float(within),
                wall_s=float(g["wall_s"].iloc[0]),
            )
        )
    return pd.DataFrame(rows)


def run(quick: bool = False) -> list[dict]:
    """Rows for ``benchmarks/run.py``."""
    n = 200_000 if quick else 2_000_000
    t = case4_tables(n, pixel_mm=4.0 if quick else 2.0)
    s = summarise(t)
    rows = []
    for _, r in s.iterrows():
        tag = f"TG-195 case 4, {r['energy']}, {r['collimation_mm']:.0f} mm"
        rows.append(dict(benchmark=f"{tag}: max |dev| 4.1 slabs vs EGSnrc", value=round(r["case41_max_abs_dev_pct"], 2),
                         unit="%", goal=f"<= {GOAL_PCT}", note=f"{n} photons"))
        rows.append(dict(benchmark=f"{tag}: 4.2 periphery (36 angles) vs EGSnrc", value=round(r["case42_periphery_total_dev_pct"], 2),
                         unit="%", goal=f"<= {GOAL_PCT}", note=f"+- {r['case42_periphery_total_sigma_pct']:.2f} % (1 sd)"))
        rows.append(dict(benchmark=f"{tag}: 4.2 centre vs EGSnrc", value=round(r["case42_center_dev_pct"], 2),
                         unit="%", goal=f"<= {GOAL_PCT}", note=f"+- {r['case42_center_sigma_pct']:.2f} % (1 sd)"))
    rows += _radiography_rows("case 2", case2_table(n), n)
    rows += _radiography_rows("case 3", case3_table(n), n)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--photons", type=float, default=None)
    p.add_argument("--pixel-mm", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--world", default="air", choices=["air", "vacuum"], help="medium around the cylinder")
    p.add_argument("--csv", default=None, help="also write the full table here")
    p.add_argument("--case2-photons", type=float, default=None,
                   help="run only Case 2, with this many photons per beam (default: with the others, "
                        "2x --photons)")
    p.add_argument("--case3-photons", type=float, default=None,
                   help="run only Case 3, with this many photons per beam (default: with the others, "
                        "2x --photons)")
    p.add_argument("--weight-window", action="store_true",
                   help="run only Case 4, with weight windows (simulate(weight_window=True))")
    a = p.parse_args(argv)
    n = int(a.photons or (200_000 if a.quick else 2_000_000))
    t0 = time.perf_counter()
    pd.set_option("display.width", 200)
    if not (a.case3_photons or a.weight_window):
        n2 = int(a.case2_photons or 2 * n)
        _print_radiography("Case 2", case2_table(n2, a.device, world=a.world), n2, f"5 mm voxels, box in {a.world}")
    if not (a.case2_photons or a.weight_window):
        n3 = int(a.case3_photons or 2 * n)
        _print_radiography("Case 3", case3_table(n3, a.device), n3, "2 mm voxels, in air")
    if a.case2_photons or a.case3_photons:
        print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
        return 0
    t = case4_tables(n, a.pixel_mm, a.device, world=a.world, weight_window=a.weight_window)
    window = ", weight windows" if a.weight_window else ""
    pd.set_option("display.max_rows", 500)
    cols = ["case", "volume", "angle_deg", "ours", "EGSnrc", "Geant4", "MCNP", "Penelope", "deviation_pct", "sigma_pct"]
    for (energy, col), g in t.groupby(["energy", "collimation_mm"], sort=False):
        print(f"\n=== TG-195 Case 4, {energy}, {col:.0f} mm collimation ({n} photons, {a.pixel_mm} mm pixels, "
              f"cylinder in {a.world}{window}), eV per photon ===")
        print(g[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if not a.weight_window:
        c1 = case1_table(max(n // 10, 20_000), a.device)
        print("\n=== TG-195 Case 1: air kerma fraction behind the HVL / QVL filter ===")
        print(c1[["beam", "volume", "ours", "ours_sigma", "EGSnrc", "Geant4", "MCNP", "Penelope", "deviation_pct"]]
              .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    s = summarise(t)
    print("\n=== summary (deviation from EGSnrc, %) ===")
    print(s.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
    if a.csv:
        t.to_csv(a.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
