"""Interop with an independent EGSnrc-physics code: ompMC (PyPI ``ompmc``, GPL-3.0, optional).

Our ``.egsphant`` (ctdose.io.egsphant) is parsed here by a minimal reader written from the
DOSXYZnrc manual's format description (not ctdose's reader) and run in ompMC; ompMC's dose is
written with ctdose.io.threeddose and read back; and the two engines' energy deposition for the
same collimated beam on the same phantom is compared. ompMC's Python API (0.4) takes the
phantom as arrays, so the file is parsed into arrays first. Skipped when ompmc is absent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

ompmc = pytest.importorskip("ompmc")

from ctdose.io.egsphant import write_egsphant  # noqa: E402
from ctdose.io.threeddose import read_3ddose, write_3ddose  # noqa: E402
from ctdose.materials import get_medium  # noqa: E402
from ctdose.physics.mc import VoxelGeometry, simulate  # noqa: E402
from ctdose.physics.sources import PointSource  # noqa: E402

pytestmark = pytest.mark.interop

MEV_PER_KEV = 1e-3
SSD_CM = 50.0
HALF_FIELD_CM = 3.0
ENERGY_KEV = 60.0
N_HIST = 200_000


def _parse_egsphant(text: str):
    """Minimal .egsphant reader after the DOSXYZnrc manual (PIRS-794): ompMC's input arrays."""
    tok = text.split("\n")
    nmed = int(tok[0].split()[0])
    media = [tok[1 + i].strip() for i in range(nmed)]
    rest = "\n".join(tok[1 + nmed:]).split()  # ESTEPE values, then numbers
    rest = rest[nmed:]
    nx, ny, nz = (int(v) for v in rest[:3])
    pos = 3
    xb = np.array(rest[pos:pos + nx + 1], float); pos += nx + 1
    yb = np.array(rest[pos:pos + ny + 1], float); pos += ny + 1
    zb = np.array(rest[pos:pos + nz + 1], float); pos += nz + 1
    # media characters: nz slices of ny rows of nx characters
    rows = rest[pos:pos + ny * nz]
    pos += ny * nz
    mat = np.array([[int(c) for c in row] for row in rows], np.int32).reshape(nz, ny, nx)
    dens = np.array(rest[pos:pos + nx * ny * nz], float).reshape(nz, ny, nx)
    # ompMC wants (x, y, z) Fortran-ordered cubes, x fastest
    return media, xb, yb, zb, np.asfortranarray(dens.transpose(2, 1, 0)), np.asfortranarray(mat.transpose(2, 1, 0))


def _phantom():
    """A 10 x 10 x 12 cm water box (1 cm voxels) with a 0.3 g/cm3 water insert."""
    nz, ny, nx = 12, 10, 10
    mi = np.zeros((nz, ny, nx), np.uint8)
    rho = np.ones((nz, ny, nx), np.float32)
    rho[4:8, 3:7, 3:7] = 0.3
    # egsphant z = beam direction here (ompMC's beam runs along its z axis)
    return mi, rho, (10.0, 10.0, 10.0), (-55.0, -45.0, -45.0)


def test_egsphant_runs_in_ompmc_and_doses_agree(tmp_path):
    mi, rho, spacing, origin = _phantom()
    path = write_egsphant(tmp_path / "box.egsphant", mi, rho, ["H2O521ICRU"], spacing, origin)
    media, xb, yb, zb, dens, mat = _parse_egsphant(path.read_text())
    assert media == ["H2O521ICRU"] and dens.shape == (10, 10, 12)
    np.testing.assert_allclose(dens.transpose(2, 1, 0), rho, rtol=1e-6)

    geometry = ompmc.Geometry(xb, yb, zb, media, dens, mat)
    physics = ompmc.Physics(n_split=1, pegs_file=ompmc.data_path() / "pegs4" / "521icru.pegs4dat")
    source = ompmc.CollimatedSource(ssd=SSD_CM, x_min=-HALF_FIELD_CM, x_max=HALF_FIELD_CM,
                                    y_min=-HALF_FIELD_CM, y_max=HALF_FIELD_CM)
    e_mev, unc = ompmc.calc_cube(geometry, source, ompmc.Spectrum.monoenergetic(ENERGY_KEV * MEV_PER_KEV),
                                 physics, n_histories=N_HIST, n_batches=10, output_dose=False)
    # ompMC energy per history (MeV, [x, y, z]) -> .3ddose -> ctdose [z, y, x]
    out = write_3ddose(tmp_path / "ompmc.3ddose", e_mev.transpose(2, 1, 0), unc.transpose(2, 1, 0), spacing, origin)
    ref = read_3ddose(out)
    e_omp = np.asarray(ref.dose) * 1e6  # eV per history
    u_omp = np.asarray(ref.rel_uncertainty)

    # ours: the same point source 50 cm before the entrance face, opening sampled by area
    z_face_mm = origin[0] - spacing[0] / 2
    src = PointSource((0.0, 0.0, z_face_mm - SSD_CM * 10), (0.0, 0.0, 1.0), energy_kev=ENERGY_KEV, collimation="fan",
                      half_angles_rad=(math.atan(HALF_FIELD_CM / SSD_CM),) * 2, fan_axis=(1.0, 0.0, 0.0),
                      sampling="plane")
    geo = VoxelGeometry(mi, rho, [get_medium("water")], spacing, origin)
    res = simulate(geo, src, N_HIST, n_batches=10, seed=1, keep_batches=True)

    # depth profile in 2 cm slabs inside the field (the central 4 x 4 cm), and the total
    for k0 in range(0, 12, 2):
        w = np.zeros(geo.shape)
        w[k0:k0 + 2, 3:7, 3:7] = 1
        ours, s_ours = res.sum_with_sigma(w)
        theirs = float((e_omp * w).sum())
        s_theirs = float(np.sqrt(((e_omp * u_omp) ** 2 * w).sum()))  # voxel errors independent
        sig = math.hypot(s_ours, s_theirs)
        print(f"z {k0}-{k0 + 2} cm: ours {ours:9.2f} +- {s_ours:.2f}  ompMC {theirs:9.2f} +- {s_theirs:.2f} eV/history")
        # statistics plus 2 % for the different cross-section libraries (XCOM/PEGS4 vs xraylib)
        assert abs(ours - theirs) < 4 * sig + 0.02 * theirs
    total_ours, total_omp = float(res.energy_ev.sum()), float(e_omp.sum())
    print(f"total: ours {total_ours:.1f}, ompMC {total_omp:.1f} eV/history")
    assert total_ours == pytest.approx(total_omp, rel=0.03)
