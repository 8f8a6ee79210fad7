import numpy as np
import pytest

from ctdose.anatomy.organs import label_id
from ctdose.anatomy.phantom import PhantomParams, build_phantom
from ctdose.errors import InputError
from ctdose.io.xcat import load_xcat_case, read_xcat, read_xcat_log

# ctdose label -> XCAT structure written by the test (everything else -> "muscle")
STRUCTURES = {"liver": "liver", "spleen": "spleen", "lung_right": "r_lung", "lung_left": "l_lung",
              "kidney_right": "r_kidney_cortex", "kidney_left": "l_kidney_cortex", "spine_bone": "spine",
              "red_marrow": "bone_marrow", "ribs": "rib", "adrenal_right": "adrenal", "adrenal_left": "adrenal",
              "heart_wall": "myoLV", "heart_blood": "bldplLV", "subcutaneous_fat": "body", "skin": "skin"}


def _write_xcat(folder, n_slices_in_log=True):
    ph = build_phantom(PhantomParams(sex="F", height_m=1.7, arms="raised"))
    lab, _ = ph.voxelise(10.0, (250.0, 760.0))
    ny, nx = lab.shape[1:]
    n = max(ny, nx)
    sq = np.zeros((lab.shape[0], n, n), np.uint8)
    sq[:, :ny, :nx] = lab
    names = sorted(set(STRUCTURES.values()) | {"muscle"})
    ids = {name: float(10 + 3 * i) for i, name in enumerate(names)}  # unique activity values = ids
    xcat = np.zeros(sq.shape, np.float32)
    expected = np.zeros(sq.shape, np.uint8)
    for lab_id in np.unique(sq):
        if lab_id == 0:
            continue
        name = STRUCTURES.get(_name(lab_id), "muscle")
        xcat[sq == lab_id] = ids[name]
        expected[sq == lab_id] = lab_id if _name(lab_id) in STRUCTURES else label_id("muscle")
    expected[expected == label_id("adrenal_left")] = label_id("adrenal_right")  # one XCAT structure
    # XCAT layout: slices head -> feet, columns from the patient's left to right
    raw = xcat[::-1, :, ::-1]
    raw.astype("<f4").tofile(folder / "ph_act_1.bin")
    lines = ["XCAT log (written by the ctdose test suite)", "pixel width =  1.0 (cm)", "slice width = 1.0 (cm)",
             f"array_size = {n}"]
    if n_slices_in_log:
        lines += ["startslice = 1", f"endslice = {raw.shape[0]}"]
    lines += [f"{name}_activity = {v}" for name, v in ids.items()]
    (folder / "ph_log").write_text("\n".join(lines) + "\n")
    return expected


def _name(i):
    from ctdose.anatomy.organs import label_name

    return label_name(int(i))


def test_reader_restores_labels_and_orientation(tmp_path):
    expected = _write_xcat(tmp_path)
    info = read_xcat_log(tmp_path / "ph_log")
    assert info["pixel_mm"] == 10.0 and info["nx"] == info["ny"] == expected.shape[1]
    labels, spacing = read_xcat(tmp_path / "ph_act_1.bin", tmp_path / "ph_log")
    assert spacing == (10.0, 10.0, 10.0)
    adrenal = np.isin(labels, [label_id("adrenal_right"), label_id("adrenal_left")])
    assert (labels == label_id("adrenal_left")).any()  # split at the body centre
    labels = labels.copy()
    labels[adrenal] = label_id("adrenal_right")
    np.testing.assert_array_equal(labels, expected)


def test_case_uses_the_documented_roi_fallback(tmp_path):
    _write_xcat(tmp_path, n_slices_in_log=False)
    ds = load_xcat_case(tmp_path / "ph_act_1.bin", tmp_path / "ph_log", 10.0, 30.0)
    assert ds.attrs["cohort"] == "xcat" and ds.attrs["case_id"] == "xcat_ph"
    lab = ds["labels"].values
    lungs = np.isin(lab, [label_id("lung_right"), label_id("lung_left")])
    top = np.flatnonzero(lungs.any(axis=(1, 2))).max()
    assert lab.shape[0] - 1 - top == 3  # 30 mm above the lung apex (fallback for C7)


def test_bad_xcat_files(tmp_path):
    _write_xcat(tmp_path)
    data = (tmp_path / "ph_act_1.bin").read_bytes()
    (tmp_path / "ph_act_1.bin").write_bytes(data[:-100])
    with pytest.raises(InputError, match="ph_act_1.bin: .*truncated"):
        read_xcat(tmp_path / "ph_act_1.bin", tmp_path / "ph_log")
    (tmp_path / "ph_act_1.bin").write_bytes(data[:-4] + np.float32(999.0).tobytes())
    with pytest.raises(InputError, match="999"):
        read_xcat(tmp_path / "ph_act_1.bin", tmp_path / "ph_log")
    log = (tmp_path / "ph_log").read_text()
    (tmp_path / "ph_log").write_text(log + "extra_activity = 10.0\n")  # 10.0 is already a structure's id
    with pytest.raises(InputError, match="not a label map"):
        read_xcat(tmp_path / "ph_act_1.bin", tmp_path / "ph_log")
    (tmp_path / "bad_log").write_text("array_size = 4\n")
    with pytest.raises(InputError, match="bad_log: no 'pixel width"):
        read_xcat_log(tmp_path / "bad_log")


def test_an_xcat_folder_becomes_a_cohort_and_is_imported_again_at_another_voxel_size(tmp_path, capsys):
    from ctdose.anatomy.cohort import build_cohorts, planned_cases
    from ctdose.anatomy.resume import build_state
    from ctdose.config import load_profile
    from ctdose.store import CaseStore

    (tmp_path / "xcat").mkdir()
    _write_xcat(tmp_path / "xcat")
    over = {"cohort.n_synthetic": 0, "cohort.n_surrogate": 0, "cohort.spacing_mm": 10.0,
            "cohort.xcat_dir": str(tmp_path / "xcat")}
    store = CaseStore.for_run(tmp_path / "run")
    assert build_cohorts(load_profile("smoke", over), store, progress=False)["case_id"].tolist() == ["xcat_ph"]
    assert store.case_attrs("xcat_ph")["cohort"] == "xcat"
    coarser = load_profile("smoke", {**over, "cohort.spacing_mm": 20.0})
    for cfg, state in ((load_profile("smoke", over), "current"), (coarser, "other")):
        planned = planned_cases(cfg)
        assert planned[["case_id", "cohort"]].values.tolist() == [["xcat_ph", "xcat"]]
        assert build_state(store, "xcat_ph", planned["key"][0]) == state
    capsys.readouterr()
    assert build_cohorts(coarser, store, progress=False)["status"].tolist() == ["written"]
    assert "xcat_ph: built with other import settings" in capsys.readouterr().out
    assert store.case_attrs("xcat_ph")["spacing_mm"] == [20.0, 20.0, 20.0]
    assert build_cohorts(coarser, store, progress=False)["status"].tolist() == ["skipped"]
    # a phantom generated again with other activities (the same names): imported again
    log = tmp_path / "xcat" / "ph_log"
    log.write_text(log.read_text().replace("liver_activity", "liver_activity_old") + "liver_activity = 1.0\n")
    planned = planned_cases(coarser, store)
    assert build_state(store, "xcat_ph", planned["key"][0], planned["legacy_key"][0]) == "other"
