import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr

from ctdose.errors import InputError, MissingStepError
from ctdose.store import CaseStore, make_case, provenance


def _case(case_id="c1", shape=(5, 6, 7), value=1, **attrs):
    labels = np.full(shape, value, np.uint8)
    dens = np.random.default_rng(0).random(shape).astype(np.float32) * 3e29
    return make_case(labels, (2.0, 3.0, 4.0), (-10.0, -20.0, -30.0), {"density_e": dens},
                     case_id=case_id, cohort="synthetic", sex="F", height_m=1.62,
                     provenance=provenance("smoke", 7), organ_volume_ml={"liver": 1500.0}, **attrs)


def test_round_trip_keeps_values_coordinates_and_attributes(tmp_path):
    store = CaseStore.for_run(tmp_path)
    ds = _case()
    store.write_case(ds)
    back = store.read_case("c1").load()
    np.testing.assert_array_equal(back["labels"].values, ds["labels"].values)
    np.testing.assert_array_equal(back["density_e"].values, ds["density_e"].values)
    np.testing.assert_allclose(back["x"].values, -30.0 + 4.0 * np.arange(7))
    np.testing.assert_allclose(back["z"].values, -10.0 + 2.0 * np.arange(5))
    assert back.attrs["spacing_mm"] == [2.0, 3.0, 4.0]
    assert back.attrs["organ_volume_ml"] == {"liver": 1500.0}
    assert back.attrs["provenance"]["profile"] == "smoke"
    assert back.attrs["provenance"]["ctdose_version"]
    assert back["labels"].dtype == np.uint8


def test_chunks_are_about_64_cubed_and_compressed(tmp_path):
    store = CaseStore.for_run(tmp_path)
    store.write_case(_case(shape=(70, 130, 20)))
    meta = json.loads((store.root / "cases" / "c1" / "density_e" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [64, 64, 20]
    assert any(c["name"] == "blosc" for c in meta["codecs"][-1:] + meta["codecs"])


def test_manifest_lists_every_case(tmp_path):
    store = CaseStore.for_run(tmp_path)
    store.write_case(_case("a"))
    store.write_case(_case("b"))
    manifest = (tmp_path / "manifest.csv").read_text()
    assert "a,synthetic,F,1.62,5x6x7" in manifest and "\nb," in manifest
    assert list(store.manifest()["case_id"]) == ["a", "b"]
    assert store.case_ids(cohort="surrogate") == []


def test_existing_case_is_not_overwritten_by_accident(tmp_path):
    store = CaseStore.for_run(tmp_path)
    store.write_case(_case())
    with pytest.raises(InputError, match="already in the store"):
        store.write_case(_case(value=2))
    store.write_case(_case(value=2), overwrite=True)
    assert int(store.read_case("c1")["labels"].values.max()) == 2


def test_add_variables_keeps_attributes_and_old_variables(tmp_path):
    store = CaseStore.for_run(tmp_path)
    store.write_case(_case())
    dose = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    store.add_variables("c1", {"dose_mc": dose}, attrs={"mc": {"n_photons": 10}})
    back = store.read_case("c1")
    np.testing.assert_array_equal(back["dose_mc"].values, dose)
    assert "density_e" in back and back.attrs["cohort"] == "synthetic"
    assert back.attrs["mc"] == {"n_photons": 10}
    with pytest.raises(InputError, match="shape"):
        store.add_variables("c1", {"dose_mc": dose[:-1]})


def test_update_case_attrs_rewrites_the_metadata_only(tmp_path):
    store = CaseStore.for_run(tmp_path)
    store.write_case(_case())
    case_dir = store.root / "cases" / "c1"
    files_before = {p: p.stat().st_mtime_ns for p in case_dir.rglob("*") if p.is_file() and p.name != "zarr.json"}
    store.update_case_attrs("c1", {"labels_sources": {"0a1b": ["stamp", "sha"]}, "sex": "M"})
    back = store.read_case("c1").load()
    assert back.attrs["labels_sources"] == {"0a1b": ["stamp", "sha"]} and back.attrs["sex"] == "M"
    assert back.attrs["organ_volume_ml"] == {"liver": 1500.0} and back.attrs["cohort"] == "synthetic"
    np.testing.assert_array_equal(back["density_e"].values, _case()["density_e"].values)
    # the volumes are not copied or touched, and no temporary file is left
    assert {p: p.stat().st_mtime_ns for p in files_before} == files_before
    assert sorted(p.name for p in case_dir.iterdir() if p.is_file()) == ["zarr.json"]
    with pytest.raises(MissingStepError, match="'c2' is not in"):
        store.update_case_attrs("c2", {"sex": "M"})


def test_missing_things_say_which_step_to_run(tmp_path):
    store = CaseStore.for_run(tmp_path)
    with pytest.raises(MissingStepError, match="01_phantom_sampling"):
        store.read_case("nope")
    store.write_case(_case())
    with pytest.raises(MissingStepError, match="02_mc_preparation"):
        store.read_case("c1", variables=["dose_mc"])
    with pytest.raises(MissingStepError, match="04_ensemble"):
        store.read_prediction("cylinder_mix000", "c1")


def test_bad_ids_and_shapes_are_refused(tmp_path):
    store = CaseStore.for_run(tmp_path)
    with pytest.raises(InputError, match="case id"):
        store.write_case(_case("../evil"))
    with pytest.raises(InputError, match="3D"):
        make_case(np.zeros((3, 3), np.uint8), (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError, match="empty"):
        make_case(np.zeros((0, 3, 3), np.uint8), (1, 1, 1), (0, 0, 0))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "store.zarr").mkdir()
    with pytest.raises(InputError, match="not a Zarr v3 store"):
        CaseStore.for_run(tmp_path / "other")


def test_predictions_round_trip(tmp_path):
    store = CaseStore.for_run(tmp_path)
    mu = np.random.default_rng(1).random((3, 4, 5, 6)).astype(np.float32)
    ds = xr.Dataset({"mu": (("member", "z", "y", "x"), mu), "sigma_aleatoric": (("member", "z", "y", "x"), mu / 10)})
    store.write_prediction("cylinder_mix010", "c1", ds)
    assert store.model_ids() == ["cylinder_mix010"]
    assert store.prediction_case_ids("cylinder_mix010") == ["c1"]
    np.testing.assert_array_equal(store.read_prediction("cylinder_mix010", "c1")["mu"].values, mu)


def test_tables_round_trip(tmp_path):
    import pandas as pd

    store = CaseStore.for_run(tmp_path)
    store.write_table("organ_doses", pd.DataFrame({"organ": ["lung"], "dose": [1.5]}))
    assert store.read_table("organ_doses.csv")["dose"].tolist() == [1.5]
    with pytest.raises(MissingStepError):
        store.read_table("table3")


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from ctdose.store import CaseStore, make_case
    store = CaseStore.for_run(sys.argv[1])
    rng = np.random.default_rng(0)
    big = rng.random((160, 160, 160)).astype(np.float32)
    i = 0
    while True:
        i += 1
        labels = np.full(big.shape, i % 250 + 1, np.uint8)
        ds = make_case(labels, (1, 1, 1), (0, 0, 0), {"density_e": big + i}, case_id="big", cohort="synthetic")
        store.write_case(ds, overwrite=True)
        print(i, flush=True)
    """
)


@pytest.mark.slow
def test_killing_a_writer_leaves_a_readable_store_without_partial_cases(tmp_path):
    store = CaseStore.for_run(tmp_path)
    store.write_case(_case("kept"))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete version exists
        cases = store.root / "cases"
        deadline = time.time() + 60
        while not any(p.name.startswith(".tmp-big") for p in cases.iterdir()):  # a second write is under way
            assert time.time() < deadline, "writer never started a second write"
            time.sleep(0.005)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    store = CaseStore.for_run(tmp_path)
    assert store.case_ids() == ["big", "kept"]
    big = store.read_case("big").load()
    version = int(big["labels"].values[0, 0, 0])
    assert (big["labels"].values == version).all()  # one whole version, not a mix
    expected = np.random.default_rng(0).random((160, 160, 160)).astype(np.float32) + (version - 1)
    np.testing.assert_array_equal(big["density_e"].values, expected)  # written by the same version
    np.testing.assert_array_equal(store.read_case("kept")["labels"].values, _case("kept")["labels"].values)
    leftovers = store.cleanup()
    assert all(name.startswith("cases/.") for name in leftovers)
    assert store.case_ids() == ["big", "kept"]
