"""Cohort MC runner: writes dose and inputs per case, resumes, refuses bad settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from ctdose.config import load_profile
from ctdose.errors import ConfigError
from ctdose.physics.cohort_mc import case_seed, cases_to_run, check_mc_profile, run_cohort_mc
from ctdose.store import CaseStore, make_case

if TYPE_CHECKING:
    import xarray as xr


def _case(case_id: str, radius_mm: float) -> "xr.Dataset":
    nz, ny, nx, sp = 6, 12, 12, 20.0
    c = (np.arange(nx) - (nx - 1) / 2) * sp
    yy, xx = np.meshgrid(c, c, indexing="ij")
    body = (xx**2 + yy**2 <= radius_mm**2).astype(np.uint8) * 2  # label 2: subcutaneous fat
    labels = np.broadcast_to(body, (nz, ny, nx)).copy()
    z0 = 0.0
    return make_case(labels, (sp, sp, sp), (z0, c[0], c[0]), case_id=case_id, cohort="synthetic", sex="F",
                     height_m=1.7, roi_z_mm=[z0 - sp / 2, z0 + (nz - 0.5) * sp])


def _cfg():
    return load_profile("smoke", {"mc.n_photons": 6000, "mc.n_batches": 4, "device": "cpu",
                                  "scanner.projections_per_rotation": 4, "inputs.kerma_modes": ["cylinder"]})


def test_runs_every_case_then_resumes(tmp_path, capsys):
    store = CaseStore.for_run(tmp_path / "run")
    store.write_case(_case("synthetic_000", 100.0))
    store.write_case(_case("synthetic_001", 80.0))
    cfg = _cfg()
    assert set(cases_to_run(cfg, store)) == {"synthetic_000", "synthetic_001"}
    summary = run_cohort_mc(cfg, store, progress=False)
    assert list(summary["case_id"]) == ["synthetic_000", "synthetic_001"]
    ds = store.read_case("synthetic_000").load()
    body = ds["labels"].values > 0
    assert {"dose_mc", "dose_mc_sigma", "kerma_cylinder"} <= set(ds.data_vars)
    assert ds["dose_mc"].dtype == np.float32
    assert float(ds["dose_mc"].values[body].mean()) > 0
    assert np.all(ds["dose_mc_sigma"].values >= 0)
    assert ds.attrs["mc_n_photons"] == 6000 and ds.attrs["mc_seed"] == case_seed(cfg["seed"], "synthetic_000")
    assert ds.attrs["mc_rotation"] == "continuous, 4 positions per rotation"
    # a re-run has nothing to do; a new case is simulated alone
    again = run_cohort_mc(cfg, store, progress=False)
    assert again.empty and "nothing to do" in capsys.readouterr().out
    store.write_case(_case("synthetic_002", 60.0))
    third = run_cohort_mc(cfg, store, progress=False)
    assert list(third["case_id"]) == ["synthetic_002"]
    assert "resuming: 2 of 3" in capsys.readouterr().out
    # the untouched case kept its dose exactly
    np.testing.assert_array_equal(store.read_case("synthetic_000")["dose_mc"].values, ds["dose_mc"].values)


def test_same_seed_same_dose(tmp_path):
    a = CaseStore.for_run(tmp_path / "a")
    b = CaseStore.for_run(tmp_path / "b")
    for st in (a, b):
        st.write_case(_case("synthetic_000", 100.0))
        run_cohort_mc(_cfg(), st, progress=False)
    np.testing.assert_array_equal(a.read_case("synthetic_000")["dose_mc"].values,
                                  b.read_case("synthetic_000")["dose_mc"].values)


def test_bad_settings_are_refused(tmp_path):
    store = CaseStore.for_run(tmp_path / "run")
    store.write_case(_case("synthetic_000", 100.0))
    with pytest.raises(ConfigError, match="n_batches"):
        run_cohort_mc(load_profile("smoke", {"mc.n_batches": 1}), store, progress=False)
    with pytest.raises(ConfigError, match="kerma_modes"):
        run_cohort_mc(load_profile("smoke", {"inputs.kerma_modes": ["sphere"]}), store, progress=False)


def test_two_worker_processes_give_the_same_doses_as_one(tmp_path):
    """Each case has its own seed: the worker count changes the wall time, not one number."""
    doses = []
    for n_workers in (1, 2):
        store = CaseStore.for_run(tmp_path / f"run{n_workers}")
        store.write_case(_case("synthetic_000", 100.0))
        store.write_case(_case("synthetic_001", 80.0))
        cfg = load_profile("smoke", {"mc.n_photons": 6000, "mc.n_batches": 4, "device": "cpu", "mc.n_workers": n_workers,
                                     "scanner.projections_per_rotation": 4, "inputs.kerma_modes": []})
        run_cohort_mc(cfg, store, progress=False)
        doses.append([store.read_case(c)["dose_mc"].values for c in ("synthetic_000", "synthetic_001")])
    for one, two in zip(*doses):
        np.testing.assert_array_equal(one, two)


def test_local_worker_processes_keep_glibc_memory_trimming_off():
    """Dask's default MALLOC_TRIM_THRESHOLD_ made every photon step page-fault (2-3x slower)."""
    from ctdose.physics.cohort_mc import _client

    client, cluster = _client({"scheduler": None, "estimator": "track_length"}, 2, "cpu")
    try:
        env = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    finally:
        client.close()
        cluster.close()
    assert len(env) == 2  # two worker processes
    assert set(env.values()) == {None}


def test_weight_window_key_reaches_the_run_and_keeps_the_dose(tmp_path, monkeypatch):
    """``mc.weight_window: true`` runs the cases with weight windows (recorded in the attrs);
    the body's mean dose agrees with the plain run; a non-boolean value is refused. (Eager
    kernels: compiling them would take most of this small test's time.)"""
    monkeypatch.setenv("CTDOSE_MC_COMPILE", "0")
    means = {}
    for window in (False, True):
        store = CaseStore.for_run(tmp_path / f"run{window}")
        store.write_case(_case("synthetic_000", 100.0))
        cfg = load_profile("smoke", {"mc.n_photons": 40000, "mc.n_batches": 4, "device": "cpu",
                                     "mc.weight_window": window, "scanner.projections_per_rotation": 4,
                                     "inputs.kerma_modes": []})
        run_cohort_mc(cfg, store, progress=False)
        ds = store.read_case("synthetic_000").load()
        assert ds.attrs["mc_weight_window"] == int(window)
        body = ds["labels"].values > 0
        means[window] = float(ds["dose_mc"].values[body].mean())
    print(f"body mean dose: plain {means[False]:.5g}, weight window {means[True]:.5g} Gy/mAs")
    assert means[True] == pytest.approx(means[False], rel=0.03)
    store = CaseStore.for_run(tmp_path / "bad")
    store.write_case(_case("synthetic_000", 100.0))
    cfg = load_profile("smoke")
    cfg["mc"]["weight_window"] = "yes"
    with pytest.raises(ConfigError, match="weight_window"):
        run_cohort_mc(cfg, store, progress=False)


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_shipped_profiles_pass_the_up_front_check(name):
    check_mc_profile(load_profile(name))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"mc.n_photons": -5}, r"profile 'smoke': mc\.n_photons must be a positive integer, got -5"),
        ({"mc.n_photons": 0}, r"mc\.n_photons must be a positive integer, got 0"),
        ({"mc.n_batches": 1}, r"profile 'smoke': mc\.n_batches must be in \[2, n_photons\], got 1"),
        ({"mc.estimator": "foo"}, r"mc\.estimator must be one of expected_track_length, .*, got 'foo'"),
        ({"mc.energy_cutoff_kev": float("nan")}, r"mc\.energy_cutoff_kev must be a finite number >= 1 keV, got nan"),
        ({"mc.energy_cutoff_kev": 0.5}, r"mc\.energy_cutoff_kev must be a finite number >= 1 keV, got 0\.5"),
        ({"mc.n_workers": 0}, r"mc\.n_workers must be an integer >= 1, got 0"),
        ({"device": "tpu"}, r"profile 'smoke': device must be 'cpu', 'cuda', 'cuda:<n>' or 'auto', got 'tpu'"),
        ({"mc.ambient": "unobtanium"}, r"profile 'smoke': mc\.ambient: medium 'unobtanium' unknown; use 'vacuum'"),
        ({"mc.ctdi_photons": -5}, r"profile 'smoke': mc\.ctdi_photons must be a positive integer, got -5"),
        ({"mc.ctdi_photons": 0}, r"mc\.ctdi_photons must be a positive integer, got 0"),
        ({"inputs.kerma_modes": ["cylinder", "sphere"]},
         r"profile 'smoke': inputs\.kerma_modes: unknown mode 'sphere'"),
        ({"inputs.kerma_grid_mm": -2.0}, r"profile 'smoke': inputs\.kerma_grid_mm must be a number > 0 \(mm\) or null"),
        ({"inputs.kerma_ray_step_mm": -1.0}, r"inputs\.kerma_ray_step_mm must be a number > 0 \(mm\) or null, got -1"),
        ({"inputs.kerma_ray_step_mm": "abc"}, r"inputs\.kerma_ray_step_mm must be a number > 0 \(mm\) or null"),
        ({"inputs.kerma_density_set": "icru44"},
         r"inputs\.kerma_density_set must be one of paper, icru46, got 'icru44'"),
        ({"mc.weight_window": True, "mc.estimator": "collision"},
         r"mc\.weight_window needs the estimator expected_track_length or track_length, got 'collision'"),
    ],
)
def test_bad_mc_settings_are_refused_up_front_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        check_mc_profile(load_profile("smoke", override))


def test_profile_numbers_written_as_text_are_read():
    # YAML 1.1 reads 1e6 (without a dot) as a string
    cfg = {"name": "file", "mc": {"n_photons": "1e6", "n_batches": "10", "ctdi_photons": "1e6"}}
    check_mc_profile(cfg)


@pytest.mark.parametrize("ambient", [None, "vacuum", "air", "lung"])
def test_vacuum_and_known_ambient_media_are_accepted(ambient):
    check_mc_profile(load_profile("smoke", {"mc.ambient": ambient}))


def test_a_profile_file_with_one_kerma_mode_not_in_a_list_is_refused():
    """A YAML file's ``kerma_modes: patient`` (``--set`` refuses it by type) would be read as
    the modes 'p', 'a', 't', ..."""
    cfg = {"name": "file", "mc": {"n_photons": 1000}, "inputs": {"kerma_modes": "patient"}}
    with pytest.raises(ConfigError, match=r"profile 'file': inputs\.kerma_modes must be a list of modes"):
        check_mc_profile(cfg)


def test_a_profile_file_with_a_fractional_ctdi_photon_count_is_refused():
    """A YAML file is not type-checked against a shipped profile as ``--set`` is."""
    cfg = {"name": "file", "mc": {"n_photons": 1000, "ctdi_photons": 2.5}}
    with pytest.raises(ConfigError, match=r"profile 'file': mc\.ctdi_photons must be a positive integer, got 2\.5"):
        check_mc_profile(cfg)


def test_a_missing_cuda_device_is_refused_only_when_asked():
    import torch

    cfg = load_profile("smoke", {"device": "cuda"})
    check_mc_profile(cfg)  # the name is fine: the profile may run on another machine
    if torch.cuda.is_available():
        check_mc_profile(cfg, device_available=True)
    else:
        with pytest.raises(ConfigError, match=r"profile 'smoke': device 'cuda' requested but no CUDA device"):
            check_mc_profile(cfg, device_available=True)


def test_a_clinical_case_follows_its_tube_current_record_when_asked(tmp_path):
    """A step record (50 mA below z = 50 mm, 350 mA above) over a 120 mm scan: with
    ``tube_current_modulation: ct`` the dose and the kerma input of the top slab rise and those
    of the bottom slab fall against the constant 200 mA, at the same mean current; a case
    without a record runs at the constant current either way."""
    from ctdose.physics.tube_current import TubeCurrentProfile

    record = TubeCurrentProfile([-10.0, 49.0, 51.0, 110.0], [50.0, 50.0, 350.0, 350.0], "step")
    doses = {}
    for modulation in ("none", "ct"):
        store = CaseStore.for_run(tmp_path / modulation)
        case = _case("clinical_000", 100.0)
        case.attrs.update(record.to_attrs())
        store.write_case(case)
        store.write_case(_case("synthetic_000", 100.0))
        cfg = _cfg()
        cfg["scanner"]["tube_current_modulation"] = modulation
        run_cohort_mc(cfg, store, progress=False)
        doses[modulation] = {cid: store.read_case(cid).load() for cid in ("clinical_000", "synthetic_000")}
    plain, followed = doses["none"]["clinical_000"], doses["ct"]["clinical_000"]
    assert plain.attrs["mc_tube_current"] == "constant 200 mA (the case's tube-current record not used)"
    assert followed.attrs["mc_tube_current"].startswith("the case's tube-current modulation (step; mean 200 mA")
    body = plain["labels"].values > 0
    # three rotations at 10, 50 and 90 mm get 50, 200 and 350 mA (mean 200): the end slabs'
    # primary kerma, which only their own rotation reaches, scales by exactly 1/4 and 7/4; their
    # dose (scatter from the middle rotation included) about 0.37 and 1.64 in this run
    ratio = {name: [float(followed[name].values[k][body[k]].sum() / plain[name].values[k][body[k]].sum())
                    for k in (0, 5)] for name in ("dose_mc", "kerma_cylinder")}
    assert ratio["kerma_cylinder"] == pytest.approx([0.25, 1.75], rel=1e-5)
    assert ratio["dose_mc"][0] < 0.5 and ratio["dose_mc"][1] > 1.4, ratio
    # the total load is unchanged, so the whole-body energy stays within the MC noise
    total = float(followed["dose_mc"].values[body].sum() / plain["dose_mc"].values[body].sum())
    assert total == pytest.approx(1.0, abs=0.1)
    assert doses["ct"]["synthetic_000"].attrs["mc_tube_current"] == "constant 200 mA"
    np.testing.assert_array_equal(doses["ct"]["synthetic_000"]["dose_mc"].values,
                                  doses["none"]["synthetic_000"]["dose_mc"].values)


def _digests(store, cid):
    return {k: v for k, v in store.case_attrs(cid).items() if k.endswith("_settings_sha1")}


def test_results_made_with_other_settings_are_computed_again_and_only_those(tmp_path, capsys):
    """Each stored variable keeps the digest of what it was computed from; a re-run computes a
    variable again where the profile now says otherwise, and keeps the rest bit for bit."""
    from ctdose.provenance import settings_attr

    store = CaseStore.for_run(tmp_path / "run")
    store.write_case(_case("synthetic_000", 100.0))
    cfg = _cfg()
    run_cohort_mc(cfg, store, progress=False)
    first = store.read_case("synthetic_000").load()
    assert set(_digests(store, "synthetic_000")) == {settings_attr("dose_mc"), settings_attr("kerma_cylinder")}
    capsys.readouterr()
    # settings that do not change a number: nothing to do
    for key, value in (("mc.n_workers", 2), ("device", "cpu")):
        assert cases_to_run(load_profile("smoke", {**_overrides(), key: value}), store) == {}
    # more photons: the dose again, the kerma map kept
    more = load_profile("smoke", {**_overrides(), "mc.n_photons": 8000})
    assert cases_to_run(more, store) == {"synthetic_000": ["dose_mc"]}
    assert _states(more, store) == {"dose_mc": "other", "kerma_cylinder": "current"}
    run_cohort_mc(more, store, progress=False)
    out = capsys.readouterr().out
    assert "MC: dose_mc of 1 case (synthetic_000) was computed with other settings" in out
    second = store.read_case("synthetic_000").load()
    assert second.attrs["mc_n_photons"] == 8000
    assert not np.array_equal(second["dose_mc"].values, first["dose_mc"].values)
    np.testing.assert_array_equal(second["kerma_cylinder"].values, first["kerma_cylinder"].values)
    assert cases_to_run(more, store) == {}
    # another tube voltage changes the beam: dose and kerma map again
    hard = load_profile("smoke", {**_overrides(), "mc.n_photons": 8000, "scanner.kvp": 100.0})
    assert cases_to_run(hard, store) == {"synthetic_000": ["dose_mc", "kerma_cylinder"]}
    assert _states(hard, store) == {"dose_mc": "other", "kerma_cylinder": "other"}
    two_modes = load_profile("smoke", {**_overrides(), "mc.n_photons": 8000,
                                       "inputs.kerma_modes": ["cylinder", "patient"]})
    assert _states(two_modes, store) == {"dose_mc": "current", "kerma_cylinder": "current", "kerma_patient": "new"}
    # the first settings again: the same numbers as the first run (same seed)
    run_cohort_mc(cfg, store, progress=False)
    np.testing.assert_array_equal(store.read_case("synthetic_000")["dose_mc"].values, first["dose_mc"].values)
    assert store.read_case("synthetic_000").attrs["mc_n_photons"] == 6000


def _states(cfg, store) -> dict:
    """Variable -> state of synthetic_000 (:func:`ctdose.physics.cohort_mc.variable_states`)."""
    from ctdose.physics.cohort_mc import variable_states

    table = variable_states(cfg, store, ["synthetic_000"])
    return dict(zip(table["variable"], table["state"]))


def _overrides() -> dict:
    return {"mc.n_photons": 6000, "mc.n_batches": 4, "device": "cpu", "scanner.projections_per_rotation": 4,
            "inputs.kerma_modes": ["cylinder"]}


def test_switching_the_tube_current_modulation_on_redoes_only_cases_with_a_record(tmp_path):
    from ctdose.physics.tube_current import TubeCurrentProfile

    store = CaseStore.for_run(tmp_path / "run")
    case = _case("clinical_000", 100.0)
    case.attrs.update(TubeCurrentProfile([-10.0, 110.0], [100.0, 300.0], "ramp").to_attrs())
    store.write_case(case)
    store.write_case(_case("synthetic_000", 100.0))
    run_cohort_mc(_cfg(), store, progress=False)
    followed = load_profile("smoke", {**_overrides(), "scanner.tube_current_modulation": "ct"})
    assert cases_to_run(followed, store) == {"clinical_000": ["dose_mc", "kerma_cylinder"]}


def test_results_stored_without_a_digest_are_kept_and_named(tmp_path, capsys):
    """A store written before the digests were recorded: its results are kept, not recomputed
    on a guess, and the run says so."""
    from ctdose.provenance import settings_attr

    store = CaseStore.for_run(tmp_path / "run")
    store.write_case(_case("synthetic_000", 100.0))
    run_cohort_mc(_cfg(), store, progress=False)
    store.add_variables("synthetic_000", {}, drop_attrs=[settings_attr("dose_mc"), settings_attr("kerma_cylinder")])
    capsys.readouterr()
    more = load_profile("smoke", {**_overrides(), "mc.n_photons": 8000})
    assert run_cohort_mc(more, store, progress=False).empty
    out = capsys.readouterr().out
    assert "MC: dose_mc of 1 case (synthetic_000) was stored without a record of its settings; kept" in out
    assert _states(more, store) == {"dose_mc": "unrecorded", "kerma_cylinder": "unrecorded"}


def test_the_case_digests_cover_anatomy_beam_and_seed_but_not_the_worker_count():
    from ctdose.physics.cohort_mc import case_digests
    from ctdose.physics.scanner import case_protocol, scanner_from_profile

    cfg = _cfg()
    scanner = scanner_from_profile(cfg)
    protocol, _ = case_protocol(cfg, (0.0, 120.0))
    base = case_digests(cfg, scanner, protocol, "synthetic_000", anatomy="a")
    assert set(base) == {"dose_mc", "kerma_cylinder"}
    other_anatomy = case_digests(cfg, scanner, protocol, "synthetic_000", anatomy="b")
    assert all(other_anatomy[v] != base[v] for v in base)
    longer = case_digests(cfg, scanner, case_protocol(cfg, (0.0, 160.0))[0], "synthetic_000", anatomy="a")
    assert all(longer[v] != base[v] for v in base)
    other_case = case_digests(cfg, scanner, protocol, "synthetic_001", anatomy="a")  # another seed
    assert other_case["dose_mc"] != base["dose_mc"] and other_case["kerma_cylinder"] == base["kerma_cylinder"]
    workers = load_profile("smoke", {**_overrides(), "mc.n_workers": 2, "mc.scheduler": "tcp://elsewhere:8786"})
    assert case_digests(workers, scanner, protocol, "synthetic_000", anatomy="a") == base


def _ellipse_case(case_id: str) -> "xr.Dataset":
    """Fat in an ellipse 240 mm wide (x) and 120 mm deep (y), 10 mm voxels, 3 slices."""
    nz, ny, nx, sp = 3, 16, 28, 10.0
    x = (np.arange(nx) - (nx - 1) / 2) * sp
    y = (np.arange(ny) - (ny - 1) / 2) * sp
    body = ((x[None, :] / 120.0) ** 2 + (y[:, None] / 60.0) ** 2 <= 1.0).astype(np.uint8) * 2
    labels = np.broadcast_to(body, (nz, ny, nx)).copy()
    return make_case(labels, (sp, sp, sp), (0.0, y[0], x[0]), case_id=case_id, cohort="synthetic", sex="F",
                     height_m=1.7, roi_z_mm=[-sp / 2, (nz - 0.5) * sp])


@pytest.mark.parametrize("override, message", [
    ({"scanner.angular_modulation": "ct"}, "angular_modulation must be one of none, model"),
    ({"scanner.angular_modulation": "model", "scanner.angular_modulation_strength": -1}, "angular_modulation_strength"),
    ({"scanner.angular_modulation": "model", "scanner.angular_modulation_max_depth": 0.5},
     "angular_modulation_max_depth"),
])
def test_angular_modulation_settings_are_checked_up_front(override, message):
    from ctdose.physics.scanner import angular_modulation_settings, check_protocol_profile

    assert angular_modulation_settings(load_profile("smoke")) is None
    on = load_profile("smoke", {"scanner.angular_modulation": "model", "scanner.angular_modulation_max_depth": 4})
    assert angular_modulation_settings(on) == {"mode": "model", "strength": 0.5, "max_depth": 4.0}
    with pytest.raises(ConfigError, match=message):
        check_protocol_profile(load_profile("smoke", override))


def test_a_modelled_angular_modulation_reaches_the_dose_the_kerma_and_the_digests(tmp_path):
    """``scanner.angular_modulation: model`` on an elliptical case: both variables are computed
    again (their digests cover the setting; ``none`` leaves earlier digests as they were); the
    kerma map gets more from the lateral projections (the wide side); strength 0 reproduces
    the constant current bit for bit."""
    store = CaseStore.for_run(tmp_path / "run")
    store.write_case(_ellipse_case("synthetic_000"))
    run_cohort_mc(_cfg(), store, progress=False)
    constant = store.read_case("synthetic_000").load()
    assert cases_to_run(load_profile("smoke", {**_overrides(), "scanner.angular_modulation": "none"}), store) == {}
    modelled = load_profile("smoke", {**_overrides(), "scanner.angular_modulation": "model",
                                      "scanner.projections_per_rotation": 4})
    assert cases_to_run(modelled, store) == {"synthetic_000": ["dose_mc", "kerma_cylinder"]}
    run_cohort_mc(modelled, store, progress=False)
    ds = store.read_case("synthetic_000").load()
    assert "angular modulation: attenuation model, strength 0.5" in ds.attrs["mc_tube_current"]
    assert cases_to_run(modelled, store) == {}

    def side_over_front(k):
        mid = k[1]  # the middle slice: (y, x)
        return float(mid[7:9, [1, 26]].mean() / mid[[2, 13], 13:15].mean())

    before, after = side_over_front(constant["kerma_cylinder"].values), side_over_front(ds["kerma_cylinder"].values)
    print(f"kerma at the sides over kerma at front and back: constant {before:.3f}, modulated {after:.3f}")
    assert after > 1.3 * before
    flat = load_profile("smoke", {**_overrides(), "scanner.angular_modulation": "model",
                                  "scanner.angular_modulation_strength": 0})
    run_cohort_mc(flat, store, progress=False)
    again = store.read_case("synthetic_000").load()
    for v in ("dose_mc", "kerma_cylinder"):
        np.testing.assert_array_equal(again[v].values, constant[v].values)
