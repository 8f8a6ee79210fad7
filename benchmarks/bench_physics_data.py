"""Physics-data accuracy and input-map speed (ctdose.materials / physics.xsection / spectrum / kerma).

Prints
- mu_en/rho of water and ICRU muscle from ctdose.physics.xsection vs NIST (max |deviation|, goal 2 %),
- HVL and air kerma of spekpy spectra computed by ctdose vs spekpy's own (goal 2 %),
- time to build the attenuation table of all shipped media,
- time of the cylinder and patient kerma maps for a thorax-sized grid at demo spacing
  (6 mm; ``--quick``: 12 mm) on this CPU (torch threads as set by the environment), for the
  first case in a process and for a further one (the cylinder mode's single-projection map is
  then reused).

Usage: ``python benchmarks/bench_physics_data.py [--quick]``
"""

from __future__ import annotations

import sys
import time

import numpy as np
import spekpy

from ctdose.materials import get_medium, media_list
from ctdose.physics import xsection
from ctdose.physics.kerma import kerma_map
from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
from ctdose.physics.spectrum import spekpy_spectrum

ENERGY_KEV = np.array([20.0, 30.0, 40.0, 60.0, 80.0, 100.0, 150.0])
NIST = {  # mu_en/rho in cm^2/g (NIST tables; muscle = "Muscle, Skeletal (ICRU-44)")
    "water": [0.5503, 0.1557, 0.06947, 0.03190, 0.02597, 0.02546, 0.02764],
    "muscle": [0.5638, 0.1610, 0.07192, 0.03258, 0.02615, 0.02544, 0.02745],
}


def _thorax(spacing_mm: float):
    nz = int(round(300 / spacing_mm))
    ny = int(round(300 / spacing_mm))
    nx = int(round(480 / spacing_mm))
    origin = (-(nz - 1) / 2 * spacing_mm, -(ny - 1) / 2 * spacing_mm, -(nx - 1) / 2 * spacing_mm)
    z, y, x = np.meshgrid(*[o + spacing_mm * np.arange(n) for o, n in zip(origin, (nz, ny, nx))], indexing="ij")
    labels = ((x / 170.0) ** 2 + (y / 120.0) ** 2 <= 1).astype(np.uint8)
    labels[((x / 60.0) ** 2 + (y / 80.0) ** 2 <= 1) & (np.abs(x) > 15)] = 2  # lungs
    return labels, (spacing_mm,) * 3, origin


def run(quick: bool = False) -> list[dict]:
    rows: list[dict] = []
    for name, ref in NIST.items():
        en = xsection.mass_coefficients(get_medium(name), ENERGY_KEV)["en"]
        dev = float(np.max(np.abs(en / np.array(ref) - 1)) * 100)
        rows.append(dict(benchmark=f"mu_en/rho {name} vs NIST, max |dev| 20-150 keV", value=round(dev, 3),
                         unit="%", goal="< 2", note="own mu_en (fluorescence escape + KN x S transfer)"))
    for kvp, th, al in ((120.0, 7.0, 7.0), (80.0, 12.0, 2.5)):
        ours = spekpy_spectrum(kvp, th, al)
        ref = spekpy.Spek(kvp=kvp, th=th, dk=0.5)
        ref.filter("Al", al)
        rows.append(dict(benchmark=f"HVL {kvp:g} kVp vs spekpy get_hvl1", value=round((ours.hvl_mm_al() / ref.get_hvl1() - 1) * 100, 3),
                         unit="%", goal="|x| < 2", note=f"ours {ours.hvl_mm_al():.3f} mm Al, spekpy {ref.get_hvl1():.3f}"))
        rows.append(dict(benchmark=f"air kerma {kvp:g} kVp vs spekpy get_kerma",
                         value=round((ours.air_kerma_gy_per_mas() / (ref.get_kerma() * 1e-6) - 1) * 100, 3),
                         unit="%", goal="|x| < 2", note=f"ours {ours.air_kerma_gy_per_mas() * 1e6:.2f} uGy/mAs at 1 m"))
    xsection._element_arrays.cache_clear()
    t0 = time.perf_counter()
    xsection.attenuation_table(media_list())
    rows.append(dict(benchmark="attenuation table, 21 media x 597 energies (cold)", value=round(time.perf_counter() - t0, 2),
                     unit="s", note="xraylib + own mu_en"))

    scanner = CTScanner(spectrum=spekpy_spectrum(120.0), bowtie=generic_body_bowtie())
    spacing = 12.0 if quick else 6.0
    labels, sp, origin = _thorax(spacing)
    protocol = Protocol("axial", -150.0, 150.0, projections_per_rotation=16)
    n_pos = len(protocol.source_positions(scanner))
    # twice per mode: the first case of a process, then every further case of a cohort
    for mode in ("cylinder", "patient"):
        for case in ("first case", "next case"):
            t0 = time.perf_counter()
            kerma_map(mode, labels.shape, sp, origin, scanner, protocol, labels=labels,
                      medium_of_label=["air", "muscle", "lung"], progress=False)
            rows.append(dict(benchmark=f"kerma map {mode}, {spacing:g} mm thorax {labels.shape}, {n_pos} positions",
                             value=round(time.perf_counter() - t0, 2), unit="s", note=f"CPU, {case}"))
    return rows


if __name__ == "__main__":
    import pandas as pd

    table = pd.DataFrame(run(quick="--quick" in sys.argv))
    print(table.to_string(index=False))
