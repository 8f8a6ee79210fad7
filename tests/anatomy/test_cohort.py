import numpy as np
import pytest

from ctdose.anatomy.cohort import build_cohorts, organ_volumes_ml, planned_cases, sample_designs
from ctdose.anatomy.organs import label_id
from ctdose.anatomy.resume import build_state
from ctdose.config import load_profile
from ctdose.store import CaseStore


def test_organ_volumes_ml_counts_voxels():
    lab = np.zeros((2, 3, 4), np.uint8)
    lab[0, :, :2] = label_id("liver")
    vols = organ_volumes_ml(lab, (2.0, 5.0, 10.0))
    assert vols == {"air_outside": 18 * 0.1, "liver": 6 * 0.1}


def test_build_cohorts_writes_resumes_and_is_deterministic(tmp_path, capsys):
    cfg = load_profile("smoke", {"cohort.n_synthetic": 2, "cohort.n_surrogate": 2, "cohort.spacing_mm": 15.0})
    store = CaseStore.for_run(tmp_path / "run")
    table = build_cohorts(cfg, store, progress=False)
    assert table["case_id"].tolist() == ["synthetic_000", "synthetic_001", "surrogate_000", "surrogate_001"]
    assert (table["status"] == "written").all()
    ds = store.read_case("surrogate_001").load()
    a = ds.attrs
    assert a["cohort"] == "surrogate" and a["table"] is True and a["sex"] in ("M", "F")
    assert {"liver", "heart", "red_marrow"} <= set(a["target_volumes_ml"])
    assert a["roi_z_mm"][0] < a["roi_z_mm"][1] and a["provenance"]["seed"] == cfg["seed"]
    body = ds["body_mask"].values.astype(bool)
    lab = ds["labels"].values
    assert np.array_equal(body, (lab > 0) & (lab != label_id("table")))
    dens = ds["density_e"].values
    assert dens.dtype == np.float32 and dens[body].mean() == pytest.approx(3.3e29, rel=0.1)
    assert store.read_table("cohort_synthetic").shape[0] == 2
    # resumable: a second call writes nothing and says so
    again = build_cohorts(cfg, store, progress=False)
    assert (again["status"] == "skipped").all()
    assert "surrogate_000: already in the store, skipped" in capsys.readouterr().out
    # deterministic: the same profile samples the same designs
    d1, d2 = sample_designs(cfg), sample_designs(cfg)
    assert all(d1[k].equals(d2[k]) for k in d1)


def test_cases_built_with_other_anatomy_settings_are_built_again(tmp_path, capsys):
    """A case records the digest of what it was built from; another voxel size rebuilds it
    (its earlier dose with it), and the same settings again rebuild nothing."""
    from ctdose.provenance import settings_attr

    over = {"cohort.n_synthetic": 1, "cohort.n_surrogate": 1, "cohort.spacing_mm": 20.0}
    store = CaseStore.for_run(tmp_path / "run")
    build_cohorts(load_profile("smoke", over), store, progress=False)
    first = store.read_case("synthetic_000").load()
    assert len(first.attrs[settings_attr("labels")]) == 40
    store.add_variables("synthetic_000", {"dose_mc": np.ones(first["labels"].shape, np.float32)})
    capsys.readouterr()
    finer = load_profile("smoke", {**over, "cohort.spacing_mm": 15.0})
    planned = planned_cases(finer)  # what the build will do, told beforehand (nothing built)

    def states():
        return [build_state(store, c, k) for c, k in zip(planned["case_id"], planned["key"])]

    assert states() == ["other", "other"] and planned["cohort"].tolist() == ["synthetic", "surrogate"]
    assert build_state(store, "synthetic_009", planned["key"][0]) == "new"
    table = build_cohorts(finer, store, progress=False)
    assert table["case_id"].tolist() == planned["case_id"].tolist() and states() == ["current", "current"]
    assert (table["status"] == "written").all()
    assert "synthetic_000: built with other anatomy settings; building it again" in capsys.readouterr().out
    again = store.read_case("synthetic_000").load()
    assert again.attrs["spacing_mm"] == [15.0, 15.0, 15.0] and "dose_mc" not in again
    assert again.attrs[settings_attr("labels")] != first.attrs[settings_attr("labels")]
    assert (build_cohorts(finer, store, progress=False)["status"] == "skipped").all()
    # a case written without a digest (an older ctdose) is kept as it is
    store.add_variables("surrogate_000", {}, drop_attrs=[settings_attr("labels")])
    assert states() == ["current", "unrecorded"]
    assert build_cohorts(load_profile("smoke", over), store, progress=False).set_index("case_id").loc[
        "surrogate_000", "status"] == "skipped"


def test_parallel_build_equals_serial_and_notebook_helpers(tmp_path):
    from ctdose.anatomy.cohort import cohort_summary, label_colormap, organ_volume_table, slice_views

    over = {"cohort.n_synthetic": 1, "cohort.n_surrogate": 2, "cohort.spacing_mm": 15.0}
    serial = CaseStore.for_run(tmp_path / "a")
    build_cohorts(load_profile("smoke", {**over, "cohort.n_workers": 1}), serial, progress=False)
    parallel = CaseStore.for_run(tmp_path / "b")
    build_cohorts(load_profile("smoke", {**over, "cohort.n_workers": 2}), parallel, progress=False)
    assert parallel.case_ids() == serial.case_ids()
    assert len(parallel.manifest()) == 3
    for cid in serial.case_ids():
        np.testing.assert_array_equal(serial.read_case(cid)["labels"].values, parallel.read_case(cid)["labels"].values)
    vols = organ_volume_table(serial)
    assert set(vols["cohort"]) == {"synthetic", "surrogate"} and (vols["source"] == "target").all()
    assert {"lungs", "kidneys", "heart", "red_marrow"} <= set(vols["organ"])
    liver = vols[vols["organ"] == "liver"]
    assert liver.query("cohort == 'synthetic'")["relative"].between(0.9, 1.1).all()
    summary = cohort_summary(serial)
    assert summary["d_eff_cm"].between(15, 50).all()
    views = slice_views(serial.read_case("synthetic_000"))
    image, extent = views["axial"]
    assert image.shape == serial.read_case("synthetic_000")["labels"].shape[1:] and extent[2] > extent[3]
    from ctdose.anatomy.organs import organ_table

    assert label_colormap().N == organ_table()["id"].max() + 1


def test_cases_of_an_earlier_larger_cohort_stay_in_the_store_but_out_of_the_run(tmp_path, capsys):
    from ctdose.learn.splits import make_splits

    over = {"cohort.n_synthetic": 3, "cohort.n_surrogate": 3, "cohort.spacing_mm": 20.0, "cohort.n_test": 1}
    store = CaseStore.for_run(tmp_path / "run")
    build_cohorts(load_profile("smoke", over), store, progress=False)
    assert store.run_case_ids() == store.case_ids()
    smaller = load_profile("smoke", {**over, "cohort.n_synthetic": 2})
    capsys.readouterr()
    build_cohorts(smaller, store, progress=False)
    assert "cohort: 1 case(s) in the store are not among the profile's cohorts (synthetic_002); left out" in \
        capsys.readouterr().out
    assert "synthetic_002" in store.case_ids() and "synthetic_002" not in store.run_case_ids()
    splits = make_splits(store, smaller)
    assert "synthetic_002" not in set(splits["case_id"])
    assert "splits: 1 case(s)" in capsys.readouterr().out
