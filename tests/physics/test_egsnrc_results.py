"""Tests of ctdose.physics.egsnrc_results: a user's EGSnrc .3ddose as a case's MC dose."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from ctdose.config import load_profile
from ctdose.errors import ConfigError, InputError
from ctdose.io.threeddose import write_3ddose
from ctdose.physics.cohort_mc import cases_to_run, check_mc_profile, run_cohort_mc
from ctdose.physics.egsnrc_results import (EGSNRC_FILE_ATTR, case_dose_from_3ddose, egsnrc_settings,
                                           gy_per_mas_per_unit)
from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
from ctdose.physics.sources import CTSource
from ctdose.physics.spectrum import spekpy_spectrum
from ctdose.provenance import file_digest
from ctdose.store import CaseStore, make_case

if TYPE_CHECKING:
    import xarray as xr

SHAPE, SPACING, ORIGIN = (6, 12, 12), (20.0, 20.0, 20.0), (0.0, -110.0, -110.0)


def _case(case_id: str) -> "xr.Dataset":
    c = ORIGIN[1] + SPACING[1] * np.arange(SHAPE[1])
    yy, xx = np.meshgrid(c, c, indexing="ij")
    body = (xx**2 + yy**2 <= 100.0**2).astype(np.uint8) * 2
    labels = np.broadcast_to(body, SHAPE).copy()
    return make_case(labels, SPACING, ORIGIN, case_id=case_id, cohort="clinical", sex="F", height_m=1.7,
                     roi_z_mm=[-10.0, 110.0])


def _file_dose(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(1e-18, 5e-18, SHAPE), rng.uniform(0.005, 0.05, SHAPE)  # Gy per particle, fraction


def test_unit_factor_is_the_ctdose_sources_own_normalisation():
    """Dose per particle x particles per mAs x scan mAs / mAs per rotation: for the photons per
    mAs of ctdose's CT source the factor is that source's own ``dose_scale_per_mas``."""
    scanner = CTScanner(spekpy_spectrum(120.0, bin_kev=2.0), generic_body_bowtie())
    for protocol in (Protocol("axial", -10.0, 110.0, projections_per_rotation=8),
                     Protocol("helical", 0.0, 137.0, pitch=0.8, tube_current_ma=150.0, rotation_time_s=0.5)):
        src = CTSource(scanner, protocol)
        total = protocol.source_positions(scanner).total_mas
        per_rotation = protocol.tube_current_ma * protocol.rotation_time_s
        assert gy_per_mas_per_unit(src.photons_per_mas, total, per_rotation) == pytest.approx(
            src.dose_scale_per_mas, rel=1e-12)
    assert gy_per_mas_per_unit(None, 300.0, 200.0) == 1.0


def test_a_file_on_the_case_grid_is_read_and_others_are_named(tmp_path):
    dose, rel = _file_dose()
    path = write_3ddose(tmp_path / "c.3ddose", dose, rel, SPACING, ORIGIN)
    got, sigma = case_dose_from_3ddose(path, SHAPE, SPACING, ORIGIN, 2.5e15)
    np.testing.assert_allclose(got, dose * 2.5e15, rtol=1e-6)
    np.testing.assert_allclose(sigma, dose * rel * 2.5e15, rtol=1e-5)
    assert got.dtype == sigma.dtype == np.float32
    with pytest.raises(InputError, match=r"c\.3ddose: 12 x 12 x 6 voxels \(x, y, z\), the case has 12 x 12 x 5"):
        case_dose_from_3ddose(path, (5, 12, 12), SPACING, ORIGIN, 1.0)
    with pytest.raises(InputError, match=r"c\.3ddose: y voxel boundaries differ from the case's by up to 0\.1 cm"):
        case_dose_from_3ddose(path, SHAPE, SPACING, (0.0, -109.0, -110.0), 1.0)
    with pytest.raises(InputError, match=r"c\.3ddose: x voxel boundaries"):
        case_dose_from_3ddose(path, SHAPE, (20.0, 20.0, 20.5), ORIGIN, 1.0)
    negative = write_3ddose(tmp_path / "n.3ddose", -dose, rel, SPACING, ORIGIN)
    with pytest.raises(InputError, match=r"n\.3ddose: negative dose"):
        case_dose_from_3ddose(negative, SHAPE, SPACING, ORIGIN, 1.0)


@pytest.mark.parametrize(
    "key, value, message",
    [("egsnrc_dir", "no/such/folder", r"mc\.egsnrc_dir: no such folder"),
     ("egsnrc_dir", 3, r"mc\.egsnrc_dir must be a folder or null"),
     ("egsnrc_particles_per_mas", -1.0, r"mc\.egsnrc_particles_per_mas must be a number > 0 or null, got -1\.0"),
     ("egsnrc_particles_per_mas", "many", r"egsnrc_particles_per_mas must be a number > 0 or null, got 'many'")],
)
def test_bad_egsnrc_settings_are_refused_up_front(key, value, message):
    cfg = load_profile("smoke")
    cfg["mc"][key] = value
    with pytest.raises(ConfigError, match=message):
        check_mc_profile(cfg)


def test_cases_with_an_egsnrc_file_take_their_dose_from_it(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "egsnrc"
    folder.mkdir()
    dose, rel = _file_dose()
    write_3ddose(folder / "clinical_000.3ddose", dose, rel, SPACING, ORIGIN)
    store = CaseStore.for_run(tmp_path / "run")
    for cid in ("clinical_000", "clinical_001"):
        store.write_case(_case(cid))
    particles = 3.0e11
    cfg = load_profile("smoke", {"mc.n_photons": 4000, "mc.n_batches": 4, "device": "cpu",
                                 "scanner.projections_per_rotation": 4, "inputs.kerma_modes": ["cylinder"],
                                 "mc.egsnrc_dir": str(folder), "mc.egsnrc_particles_per_mas": particles})
    egsnrc_settings(cfg)
    run_cohort_mc(cfg, store, progress=False)
    assert "1 of 2 cases take their dose from EGSnrc .3ddose files" in capsys.readouterr().out
    a, b = store.read_case("clinical_000").load(), store.read_case("clinical_001").load()
    # three 40 mm rotations over the 120 mm ROI: the scan's mAs is three rotations' mAs
    np.testing.assert_allclose(a["dose_mc"].values, dose * particles * 3.0, rtol=1e-6)
    np.testing.assert_allclose(a["dose_mc_sigma"].values, dose * rel * particles * 3.0, rtol=1e-5)
    assert a.attrs["mc_engine"] == ("EGSnrc (clinical_000.3ddose; dose per particle x 3e+11 particles per mAs "
                                    "x 3 rotations)")
    body = a["labels"].values > 0
    assert a.attrs["mc_mean_rel_sigma_body"] == pytest.approx(float(np.mean(rel[body])), rel=1e-5)
    assert a.attrs["mc_tube_current"] == "constant 200 mA" and "mc_n_photons" not in a.attrs
    assert "kerma_cylinder" in a.data_vars  # the inputs still come from ctdose
    # the dose records its file (digests of its size and time, and of its bytes); a re-run trusts
    # the recorded bytes' digest while size and time are unchanged: a planted one shows it
    record = a.attrs[EGSNRC_FILE_ATTR]
    assert record[1] == file_digest(folder / "clinical_000.3ddose") and EGSNRC_FILE_ATTR not in b.attrs
    assert cases_to_run(cfg, store) == {}
    store.add_variables("clinical_000", {}, attrs={EGSNRC_FILE_ATTR: [record[0], "0" * 40]})
    assert cases_to_run(cfg, store) == {"clinical_000": ["dose_mc"]}
    store.add_variables("clinical_000", {}, attrs={EGSNRC_FILE_ATTR: record})
    assert cases_to_run(cfg, store) == {}
    assert b.attrs["mc_engine"] == "ctdose Monte Carlo" and b.attrs["mc_n_photons"] == 4000
    # a file added later, or changed, replaces that case's ctdose dose (and all its mc_* record)
    write_3ddose(folder / "clinical_001.3ddose", dose, rel, SPACING, ORIGIN)
    kerma = b["kerma_cylinder"].values.copy()
    run_cohort_mc(cfg, store, progress=False)
    assert "MC: dose_mc of 1 case (clinical_001) was computed with other settings" in capsys.readouterr().out
    b = store.read_case("clinical_001").load()
    np.testing.assert_allclose(b["dose_mc"].values, dose * particles * 3.0, rtol=1e-6)
    assert b.attrs["mc_engine"].startswith("EGSnrc (clinical_001.3ddose") and "mc_n_photons" not in b.attrs
    np.testing.assert_array_equal(b["kerma_cylinder"].values, kerma)
    write_3ddose(folder / "clinical_001.3ddose", 2.0 * dose, rel, SPACING, ORIGIN)
    assert cases_to_run(cfg, store) == {"clinical_001": ["dose_mc"]}  # new time: the file is read again
    run_cohort_mc(cfg, store, progress=False)
    assert store.case_attrs("clinical_001")[EGSNRC_FILE_ATTR][1] == file_digest(folder / "clinical_001.3ddose")
    np.testing.assert_allclose(store.read_case("clinical_001")["dose_mc"].values, 2.0 * dose * particles * 3.0,
                               rtol=1e-6)
    # a file touched with the same bytes (copied, synced) keeps its dose; the run gives the case
    # the file's new record (metadata only), so that the next run does not read the file
    import os

    import ctdose.provenance

    path = folder / "clinical_000.3ddose"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    before = store.case_attrs("clinical_000")
    read = []
    monkeypatch.setattr(ctdose.provenance, "file_digest", lambda p: read.append(p) or file_digest(p))
    assert run_cohort_mc(cfg, store, progress=False).empty and read == [path]  # read once, to tell
    after = store.case_attrs("clinical_000")
    assert after[EGSNRC_FILE_ATTR][1] == before[EGSNRC_FILE_ATTR][1]
    assert after[EGSNRC_FILE_ATTR][0] != before[EGSNRC_FILE_ATTR][0]
    assert {k: v for k, v in after.items() if k != EGSNRC_FILE_ATTR} == {k: v for k, v in before.items()
                                                                        if k != EGSNRC_FILE_ATTR}
    read.clear()
    assert cases_to_run(cfg, store) == {} and read == []
