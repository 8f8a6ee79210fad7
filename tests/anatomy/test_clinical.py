import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ctdose.anatomy.clinical import import_ct, load_clinical_case, ts_lookup
from ctdose.anatomy.cohort import build_cohorts, planned_cases
from ctdose.anatomy.organs import label_id
from ctdose.anatomy.phantom import PhantomParams, build_phantom
from ctdose.anatomy.resume import build_state
from ctdose.config import load_profile
from ctdose.errors import InputError
from ctdose.io.nifti import read_nifti, to_canonical
from ctdose.store import CaseStore

# our label -> TotalSegmentator v2 id, and HU, for a phantom written as a "clinical" case
TS_V2 = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "adrenal_right": 8, "adrenal_left": 9,
         "lung_left": 10, "lung_right": 12, "heart_wall": 51, "heart_blood": 51, "aorta_great_vessels": 52,
         "stomach": 6, "pancreas": 7, "oesophagus": 15, "trachea": 16, "colon": 20, "small_intestine": 18,
         "gallbladder": 4, "ribs": 92, "sternum": 116, "clavicles": 73, "scapulae": 71, "arm_bones": 69}
HU = {"subcutaneous_fat": -100, "lung_left": -800, "lung_right": -800, "trachea": -1000, "spine_bone": 700,
      "red_marrow": 250, "ribs": 700, "sternum": 700, "clavicles": 700, "scapulae": 700, "arm_bones": 700}


def _example(shared_dir):
    return shared_dir / "data" / "real-ct" / "totalsegmentator_example"


def _write_phantom_case(folder, spacing=6.0):
    ph = build_phantom(PhantomParams(sex="M", height_m=1.8, arms="raised"))
    lab, origin = ph.voxelise(spacing, (200.0, 800.0))
    z = origin[0] + spacing * np.arange(lab.shape[0])
    hu = np.full(lab.shape, -1000.0)
    body = lab > 0
    hu[body] = 40.0
    seg = np.zeros(lab.shape, np.uint8)
    for name, v in HU.items():
        hu[lab == label_id(name)] = v
    for name, i in TS_V2.items():
        seg[lab == label_id(name)] = i
    spine = np.isin(lab, [label_id("spine_bone"), label_id("red_marrow")])
    c7 = ph.landmarks_z_mm()["C7"]
    seg[spine] = 39  # T5
    seg[spine & ((z >= c7[0]) & (z <= c7[1]))[:, None, None]] = 44  # C7
    # canonical [z, y, x] LPS -> NIfTI (i = x, j = y, k = z) with a RAS affine (i -> left = -R, j -> posterior = -A)
    aff = np.diag([-spacing, -spacing, spacing, 1.0])
    aff[:3, 3] = (-origin[2], -origin[1], origin[0])
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), aff), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.transpose(seg, (2, 1, 0)), aff), folder / "seg.nii.gz")
    (folder / "meta.json").write_text(json.dumps({"sex": "M", "height_m": 1.8}))
    return ph, lab, origin


def _centre(lab, name, axis):
    return np.argwhere(lab == label_id(name))[:, axis].mean()


def test_totalsegmentator_example_import(shared_dir):
    ex = _example(shared_dir)
    ct = to_canonical(*read_nifti(ex / "example_ct_sm.nii.gz"), "ct")
    seg = to_canonical(*read_nifti(ex / "example_seg.nii.gz", integer=True), "seg")
    tissue = {n: to_canonical(*read_nifti(ex / "example_seg_tissue_types" / f"{n}.nii.gz", integer=True), n)
              for n in ("skeletal_muscle", "subcutaneous_fat", "torso_fat")}
    out = import_ct(ct, seg, 6.0, 30.0, "ex", tissue=tissue, roi=False)
    lab = out["labels"]
    assert out["ts_version"] == "v2" and out["spacing_mm"] == (6.0, 6.0, 6.0)
    assert lab.shape == (15, 51, 61)  # 30x101x122 voxels of 3 mm -> 6 mm
    body = (lab > 0) & (lab != label_id("table"))
    frac = {n: np.count_nonzero(lab == label_id(n)) / body.sum() for n in
            ("liver", "subcutaneous_fat", "visceral_fat", "muscle", "spine_bone", "red_marrow")}
    assert 0.08 < frac["liver"] < 0.30  # upper abdomen
    assert 0.15 < frac["subcutaneous_fat"] + frac["visceral_fat"] < 0.60
    assert 0.10 < frac["muscle"] < 0.50
    assert 0.0 < frac["red_marrow"] < frac["spine_bone"] + frac["red_marrow"] < 0.06
    # orientation: liver on the patient's right (smaller x), spine posterior (larger y) of the body centre
    assert _centre(lab, "liver", 2) < _centre(lab, "spleen", 2)
    assert _centre(lab, "spine_bone", 1) > np.argwhere(body)[:, 1].mean()
    with pytest.raises(InputError, match="case ex.*C7"):
        import_ct(ct, seg, 6.0, 30.0, "ex")  # abdomen only: no cervical vertebra


def test_dicom_series_import_without_identifiers(shared_dir, tmp_path):
    case = tmp_path / "d1"
    case.mkdir()
    shutil.copytree(_example(shared_dir) / "example_ct_dicom", case / "dicom")
    shutil.copy(_example(shared_dir) / "example_seg_dicom.nii.gz", case / "seg.nii.gz")
    ds = load_clinical_case(case, 6.0, 30.0, roi=False)
    lab = ds["labels"].values
    assert ds.attrs["source"] == "dicom" and ds.attrs["spacing_mm"] == [6.0, 6.0, 6.0]
    assert ds.attrs["origin_mm"][0] == pytest.approx(-804.5)
    assert _centre(lab, "liver", 2) < _centre(lab, "spleen", 2)
    assert np.count_nonzero(lab == label_id("arm_bones")) > 0
    text = json.dumps(ds.attrs)
    for word in ("1.3.12.2.1107", "Patient", "Siemens", "SIEMENS", "Br38f"):
        assert word not in text
    # the scanner's per-slice tube current (614-616 mA) comes with the case, by slice position
    assert ds.attrs["tube_current_z_mm"] == [-804.5 + 2.0 * k for k in range(20)]
    assert all(614.0 <= v <= 616.0 for v in ds.attrs["tube_current_ma"])
    assert ds.attrs["tube_current_source"] == "DICOM XRayTubeCurrent of dicom/"


def test_phantom_written_as_clinical_case_round_trips(tmp_path):
    ph, lab, origin = _write_phantom_case(tmp_path / "clin" / "p1")
    ds = load_clinical_case(tmp_path / "clin" / "p1", 6.0, 30.0)
    got = ds["labels"].values
    k0 = int(round((ds.attrs["origin_mm"][0] - origin[0]) / 6.0))
    ref = lab[k0:k0 + got.shape[0]]
    for name in ("liver", "spleen", "kidney_right", "lung_left", "aorta_great_vessels"):
        assert np.array_equal(got == label_id(name), ref == label_id(name)), name
    assert ds.attrs["ts_version"] == "v2" and ds.attrs["sex"] == "M"
    lo, hi = ds.attrs["roi_z_mm"]
    marks = ph.landmarks_z_mm()
    # voxel landmarks vs analytic extents: within two 6 mm voxels (thin tips may hold no voxel centre)
    assert hi == pytest.approx(marks["C7"][1] + 30.0, abs=12.0)
    assert lo == pytest.approx(marks["adrenal"][0] - 30.0, abs=12.0)


def test_v1_label_map_is_detected(shared_dir):
    ex = _example(shared_dir)
    ct = to_canonical(*read_nifti(ex / "example_ct_sm.nii.gz"), "ct")
    seg = to_canonical(*read_nifti(ex / "example_seg.nii.gz", integer=True), "seg")
    _, v2 = ts_lookup("v2")
    _, v1 = ts_lookup("v1")
    by_name = {n: i for i, n in v1.items()}
    lut = np.zeros(256, np.uint8)
    for i, n in v2.items():
        lut[i] = by_name.get(n, 0)  # v2 classes missing in v1 -> background
    seg1 = type(seg)(lut[seg.array], seg.spacing_mm, seg.origin_mm, "seg_v1")
    a = import_ct(ct, seg, 6.0, 30.0, "a", roi=False)
    b = import_ct(ct, seg1, 6.0, 30.0, "b", roi=False)
    assert b["ts_version"] == "v1"
    assert np.array_equal(a["labels"] == label_id("liver"), b["labels"] == label_id("liver"))


def test_bad_inputs_raise_and_leave_the_store_untouched(shared_dir, tmp_path):
    ex = _example(shared_dir)
    ct_arr, aff = read_nifti(ex / "example_ct_sm.nii.gz")
    seg_arr, _ = read_nifti(ex / "example_seg.nii.gz", integer=True)
    ct = to_canonical(ct_arr, aff, "ct.nii.gz")
    with pytest.raises(InputError, match="same grid"):
        import_ct(ct, to_canonical(seg_arr[:, :, :20], aff, "seg.nii.gz"), 6.0, 30.0, "x", roi=False)
    shifted = aff.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(InputError, match="same grid"):
        import_ct(ct, to_canonical(seg_arr, shifted, "seg.nii.gz"), 6.0, 30.0, "x", roi=False)
    bad = seg_arr.copy()
    bad[0, 0, 0] = 200
    with pytest.raises(InputError, match=r"seg.nii.gz: label ids \[200\]"):
        import_ct(ct, to_canonical(bad, aff, "seg.nii.gz"), 6.0, 30.0, "x", roi=False)
    # a whole clinical folder with one bad case: the run stops, the store keeps what it had
    run = tmp_path / "run"
    cfg = load_profile("smoke", {"cohort.n_synthetic": 1, "cohort.n_surrogate": 0, "cohort.spacing_mm": 15.0})
    store = CaseStore.for_run(run)
    build_cohorts(cfg, store, progress=False)
    before = store.case_ids()
    case = tmp_path / "clin" / "bad"
    case.mkdir(parents=True)
    nan_ct = ct_arr.copy()
    nan_ct[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan_ct, aff), case / "ct.nii.gz")
    shutil.copy(ex / "example_seg.nii.gz", case / "seg.nii.gz")
    cfg = load_profile("smoke", {"cohort.n_synthetic": 1, "cohort.n_surrogate": 0, "cohort.spacing_mm": 15.0,
                                 "cohort.clinical_dir": str(tmp_path / "clin")})
    with pytest.raises(InputError, match="ct.nii.gz: contains 1 NaN"):
        build_cohorts(cfg, store, progress=False)
    assert store.case_ids() == before
    np.testing.assert_array_equal(store.read_case(before[0])["labels"].values,
                                  CaseStore.for_run(run).read_case(before[0])["labels"].values)


def test_clinical_folder_becomes_a_cohort_in_one_call(tmp_path):
    _write_phantom_case(tmp_path / "clinical" / "p1")
    _write_phantom_case(tmp_path / "clinical" / "p2")
    cfg = load_profile("smoke", {"cohort.n_synthetic": 0, "cohort.n_surrogate": 0, "cohort.spacing_mm": 12.0,
                                 "cohort.clinical_dir": str(tmp_path / "clinical")})
    store = CaseStore.for_run(tmp_path / "run")
    table = build_cohorts(cfg, store, progress=False)
    assert table["case_id"].tolist() == ["clinical_p1", "clinical_p2"]
    assert store.case_ids(cohort="clinical") == ["clinical_p1", "clinical_p2"]
    ds = store.read_case("clinical_p1")
    assert {"labels", "body_mask", "density_e"} <= set(ds.data_vars)
    # the same settings again: kept; another voxel size: imported again (as planned_cases tells beforehand)
    assert (build_cohorts(cfg, store, progress=False)["status"] == "skipped").all()
    cfg["cohort"]["spacing_mm"] = 10.0
    planned = planned_cases(cfg)
    assert planned["case_id"].tolist() == ["clinical_p1", "clinical_p2"] and set(planned["cohort"]) == {"clinical"}
    assert [build_state(store, c, k) for c, k in zip(planned["case_id"], planned["key"])] == ["other", "other"]
    build_cohorts(cfg, store, progress=False)
    assert [build_state(store, c, k) for c, k in zip(planned["case_id"], planned["key"])] == ["current", "current"]
    assert store.case_attrs("clinical_p2")["spacing_mm"] == [10.0, 10.0, 10.0]


def test_a_case_whose_files_changed_is_imported_again_and_only_that_one(tmp_path, capsys):
    """A corrected segmentation of one patient: that case is imported again (its dose goes with
    it), the other is kept without its files being read; a case imported by an earlier ctdose
    (digest of the settings alone) is kept."""
    from ctdose.anatomy.resume import LABELS_SETTINGS_ATTR, SOURCES_ATTR, import_digest

    for name in ("p1", "p2"):
        _write_phantom_case(tmp_path / "clinical" / name)
    cfg = load_profile("smoke", {"cohort.n_synthetic": 0, "cohort.n_surrogate": 0, "cohort.spacing_mm": 12.0,
                                 "cohort.clinical_dir": str(tmp_path / "clinical")})
    store = CaseStore.for_run(tmp_path / "run")
    build_cohorts(cfg, store, progress=False)
    record = store.case_attrs("clinical_p1")[SOURCES_ATTR]
    assert len(record) == 3 and "seg" not in repr(record)  # ct, seg, meta.json; digests only
    for cid in ("clinical_p1", "clinical_p2"):
        store.add_variables(cid, {"dose_mc": np.ones(store.read_case(cid)["labels"].shape, np.float32)})
    seg_path = tmp_path / "clinical" / "p2" / "seg.nii.gz"
    seg = nib.load(seg_path)
    fixed = np.asarray(seg.dataobj).copy()
    fixed[fixed == TS_V2["spleen"]] = 0  # the spleen taken out of the segmentation
    nib.save(nib.Nifti1Image(fixed, seg.affine), seg_path)

    def states():
        planned = planned_cases(cfg, store)
        return [build_state(store, *row) for row in planned[["case_id", "key", "legacy_key"]].values]

    assert states() == ["current", "other"]
    capsys.readouterr()
    table = build_cohorts(cfg, store, progress=False)
    out = capsys.readouterr().out
    assert table["status"].tolist() == ["skipped", "written"]
    assert "clinical_p2: built with other import settings or files; building it again" in out
    assert "dose_mc" in store.case_variables("clinical_p1") and "dose_mc" not in store.case_variables("clinical_p2")
    p2 = store.read_case("clinical_p2")["labels"].values
    assert not (p2 == label_id("spleen")).any() and (store.read_case("clinical_p1")["labels"].values ==
                                                     label_id("spleen")).any()
    assert states() == ["current", "current"]
    # a case imported before the files were digested: its digest is that of the settings alone
    legacy = import_digest(12.0, float(cfg["cohort"]["roi_margin_mm"]), "C7", ts_version="auto")
    store.add_variables("clinical_p1", {}, attrs={LABELS_SETTINGS_ATTR: legacy}, drop_attrs=[SOURCES_ATTR])
    assert states() == ["unrecorded", "current"]
    assert build_cohorts(cfg, store, progress=False)["status"].tolist() == ["skipped", "skipped"]
    # the kept legacy case now holds the record of its files (read once), under its old digest
    assert store.case_attrs("clinical_p1")[SOURCES_ATTR] == record
    assert store.case_attrs("clinical_p1")[LABELS_SETTINGS_ATTR] == legacy and states() == ["unrecorded", "current"]


def test_files_touched_with_the_same_bytes_are_recorded_again_and_not_read_next_time(tmp_path, monkeypatch):
    """Copied or touched files (new times, same bytes) keep the case, whose record of the files
    is brought up to date (its metadata only), so that the next run reads no file."""
    import os

    import ctdose.provenance
    from ctdose.anatomy.resume import LABELS_SETTINGS_ATTR, SOURCES_ATTR, source_files
    from ctdose.provenance import files_digest

    folder = tmp_path / "clinical" / "p1"
    _write_phantom_case(folder)
    cfg = load_profile("smoke", {"cohort.n_synthetic": 0, "cohort.n_surrogate": 0, "cohort.spacing_mm": 12.0,
                                 "cohort.clinical_dir": str(tmp_path / "clinical")})
    store = CaseStore.for_run(tmp_path / "run")
    build_cohorts(cfg, store, progress=False)
    store.add_variables("clinical_p1", {"dose_mc": np.ones(store.read_case("clinical_p1")["labels"].shape, np.float32)})
    before = store.case_attrs("clinical_p1")
    labels_meta = store.root / "cases" / "clinical_p1" / "labels" / "zarr.json"
    labels_mtime = labels_meta.stat().st_mtime_ns
    for f in source_files(folder):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    read = []
    digest_of_file = ctdose.provenance.file_digest
    monkeypatch.setattr(ctdose.provenance, "file_digest", lambda p: read.append(p) or digest_of_file(p))
    assert build_cohorts(cfg, store, progress=False)["status"].tolist() == ["skipped"]
    assert len(read) == 3  # the three touched files, read once to tell that their bytes are the same
    after = store.case_attrs("clinical_p1")
    assert after[LABELS_SETTINGS_ATTR] == before[LABELS_SETTINGS_ATTR]
    assert after[SOURCES_ATTR] != before[SOURCES_ATTR]
    assert after[SOURCES_ATTR] == files_digest(source_files(folder), folder)[1]  # the files as they are now
    assert {k: v for k, v in after.items() if k != SOURCES_ATTR} == {k: v for k, v in before.items()
                                                                    if k != SOURCES_ATTR}
    assert "dose_mc" in store.case_variables("clinical_p1") and labels_meta.stat().st_mtime_ns == labels_mtime
    read.clear()
    assert build_cohorts(cfg, store, progress=False)["status"].tolist() == ["skipped"]
    assert read == []  # the next run reads none of them


def test_a_tube_current_file_comes_with_the_case_and_must_lie_on_the_ct(tmp_path):
    _, lab, origin = _write_phantom_case(tmp_path / "clin" / "p1")
    z_top = origin[0] + 6.0 * (lab.shape[0] - 1)
    csv = tmp_path / "clin" / "p1" / "tube_current.csv"
    csv.write_text(f"z_mm,tube_current_ma\n{z_top},350\n{origin[0]},120\n")
    ds = load_clinical_case(tmp_path / "clin" / "p1", 6.0, 30.0)
    assert ds.attrs["tube_current_z_mm"] == [origin[0], z_top]
    assert ds.attrs["tube_current_ma"] == [120.0, 350.0]
    assert ds.attrs["tube_current_source"] == "tube_current.csv"
    csv.write_text(f"z_mm,tube_current_ma\n{z_top + 500},350\n{z_top + 900},120\n")  # another frame
    with pytest.raises(InputError, match=r"tube_current\.csv: tube-current positions .* outside the CT's z range"):
        load_clinical_case(tmp_path / "clin" / "p1", 6.0, 30.0)
    csv.unlink()
    assert "tube_current_ma" not in load_clinical_case(tmp_path / "clin" / "p1", 6.0, 30.0).attrs
