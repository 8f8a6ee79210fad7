import numpy as np
import pandas as pd
import pytest
import torch

from learn_fakes import GROUPS, make_learning_store, tiny_profile
from ctdose.errors import MissingStepError
from ctdose.learn.ensemble import REGISTRY_COLUMNS, member_seed, train_all
from ctdose.learn.inference import load_ensemble, predict_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = make_learning_store(tmp_path_factory.mktemp("ens"))
    registry = train_all(tiny_profile(members=2), store, progress=False, groups=GROUPS)
    return store, registry


def test_registry_and_files(trained):
    store, registry = trained
    assert list(registry.columns) == REGISTRY_COLUMNS
    assert sorted(registry.model_id.unique()) == ["cylinder_mix000", "cylinder_mix100"]
    assert set(registry.member) == {0, 1} and registry.seed.nunique() == 2
    assert (registry.real_source == "surrogate").all()
    on_disk = pd.read_csv(store.run_dir / "models" / "registry.csv")
    assert len(on_disk) == 4
    for row in registry.itertuples():
        assert (store.run_dir / row.checkpoint).is_file()
        curves = pd.read_csv(store.run_dir / "models" / row.model_id / f"member{row.member}_curves.csv")
        assert list(curves.epoch) == [1, 2] and np.isfinite(curves.train_loss).all()
        assert row.val_organ_dev == pytest.approx(curves.val_organ_dev.min())
        assert row.best_epoch == int(curves.epoch[curves.val_organ_dev.idxmin()])
        assert row.n_val >= 1 and np.isfinite(row.baseline_organ_dev)


def test_same_seed_gives_identical_weights_and_resume_reuses(trained, tmp_path, capsys):
    store, registry = trained
    other = make_learning_store(tmp_path)
    train_all(tiny_profile(members=2), other, progress=False, groups=GROUPS, mixes=[0])
    for k in range(2):
        a = torch.load(store.run_dir / f"models/cylinder_mix000/member{k}.pt", weights_only=True)["state_dict"]
        b = torch.load(other.run_dir / f"models/cylinder_mix000/member{k}.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[n], b[n]) for n in a)
    a0 = torch.load(store.run_dir / "models/cylinder_mix000/member0.pt", weights_only=True)["state_dict"]
    a1 = torch.load(store.run_dir / "models/cylinder_mix000/member1.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a0[n], a1[n]) for n in a0)  # members differ
    capsys.readouterr()
    again = train_all(tiny_profile(members=2), other, progress=False, groups=GROUPS, mixes=[0])
    assert "already trained" in capsys.readouterr().out
    assert len(again) == 2
    assert _member_states(tiny_profile(members=2), other) == ["current", "current"]
    assert _member_states(tiny_profile(members=1, epochs=1), other) == ["other"]
    # more members, or another list of mixes, trains the new members only: the digest of a
    # member leaves out how many models and members the run has
    assert _member_states(tiny_profile(members=3), other) == ["current", "current", "new"]
    assert _member_states(tiny_profile(members=2, mixes_percent_real=[0, 50, 100]), other) == ["current", "current"]
    changed = train_all(tiny_profile(members=1, epochs=1), other, progress=False, groups=GROUPS, mixes=[0])
    assert "other settings" in capsys.readouterr().out and int(changed.best_epoch[0]) == 1


def _member_states(cfg, store) -> list[str]:
    """:func:`ctdose.learn.ensemble.member_state` of the members of cylinder_mix000 under ``cfg``
    (the question train_member asks before it trains)."""
    from ctdose.learn.ensemble import member_files, member_state, train_settings_sha1
    from ctdose.learn.splits import cases_of

    splits = store.read_table("splits")
    key, legacy = (train_settings_sha1(cfg, store, "cylinder", 0, cases_of(splits, 0, "train"),
                                       cases_of(splits, 0, "val"), legacy=old) for old in (False, True))
    return [member_state(*member_files(store.run_dir, "cylinder_mix000", k), "cylinder", key, legacy)[0]
            for k in range(int(cfg["train"]["members"]))]


def test_a_member_recorded_by_an_earlier_ctdose_with_the_same_settings_is_reused(trained, tmp_path, capsys):
    """Earlier versions digested every training setting (the mixes and member count included).
    A member recorded so is reused while those settings are the same (no training again on
    upgrading); with another member count it is trained again, once."""
    import shutil

    from ctdose.learn.ensemble import train_settings_sha1
    from ctdose.learn.splits import cases_of

    store, _ = trained
    run = make_learning_store(tmp_path)
    shutil.copytree(store.run_dir / "models", run.run_dir / "models")
    run.write_table("splits", store.read_table("splits"))
    splits = run.read_table("splits")
    ids = cases_of(splits, 0, "train"), cases_of(splits, 0, "val")
    now, legacy = (train_settings_sha1(tiny_profile(members=2), run, "cylinder", 0, *ids, legacy=old)
                   for old in (False, True))
    assert now != legacy and train_settings_sha1(tiny_profile(members=3), run, "cylinder", 0, *ids) == now
    for k in range(2):  # the checkpoints as an earlier ctdose wrote them
        path = run.run_dir / f"models/cylinder_mix000/member{k}.pt"
        payload = torch.load(path, weights_only=True)
        assert payload["settings_sha1"] == now
        torch.save({**payload, "settings_sha1": legacy}, path)
    assert _member_states(tiny_profile(members=2), run) == ["current", "current"]
    assert _member_states(tiny_profile(members=3), run) == ["other", "other", "new"]
    capsys.readouterr()
    train_all(tiny_profile(members=2), run, progress=False, groups=GROUPS, mixes=[0])
    assert capsys.readouterr().out.count("already trained") == 2


def test_member_seeds_are_derived_from_the_run_seed():
    assert member_seed(1, 0) == member_seed(1, 0) != member_seed(1, 1) != member_seed(2, 1)


def test_predict_model_writes_member_predictions_in_gray_per_mas(trained):
    store, _ = trained
    case_id = store.case_ids()[0]
    predict_model(store, "cylinder_mix100", [case_id], "cpu", False)
    pred = store.read_prediction("cylinder_mix100", case_id).load()
    mc = store.read_case(case_id).load()
    assert pred.mu.dims == ("member", "z", "y", "x") and pred.sizes["member"] == 2
    body = mc.body_mask.values > 0
    assert np.all(pred.sigma_aleatoric.values[:, body] >= 0.055 * np.abs(pred.mu.values[:, body]) * 0.99 - 1e-12)
    # the right order of magnitude (doses ~1e-4 Gy/mAs), even after 2 tiny epochs
    assert 1e-6 < np.median(np.abs(pred.mu.values[:, body])) < 1e-2
    members = load_ensemble(store.run_dir, "cylinder_mix100")
    assert [m.meta["member"] for m in members] == [0, 1]


def test_prediction_on_another_grid_is_refused(trained, tmp_path):
    from ctdose.errors import InputError
    from ctdose.learn.inference import predict_case
    from ctdose.store import CaseStore, make_case

    store, _ = trained
    members = load_ensemble(store.run_dir, "cylinder_mix000")
    case = store.read_case(store.case_ids()[0]).load()
    other = CaseStore.for_run(tmp_path)
    variables = {v: case[v].values for v in case.data_vars if v != "labels"}
    other.write_case(make_case(case["labels"].values, (10.0, 10.0, 10.0), (0, 0, 0), variables,
                               case_id="fine", cohort="surrogate"))
    with pytest.raises(InputError, match=r"refused for a \(10.0, 10.0, 10.0\) mm grid"):
        predict_case(other, members, "fine")
    with pytest.raises(InputError, match="'cylinder' kerma input"):
        load_ensemble(store.run_dir, "cylinder_mix000", kerma_mode="patient")


def test_a_model_trained_again_with_fewer_members_is_that_ensemble_only(tmp_path, capsys):
    """The registry lists the latest training's members; the files of an earlier, larger
    ensemble stay on disk but are not loaded (and are reused where their settings come back)."""
    store = make_learning_store(tmp_path)
    train_all(tiny_profile(members=2), store, progress=False, groups=GROUPS, mixes=[0])
    assert len(load_ensemble(store.run_dir, "cylinder_mix000")) == 2
    train_all(tiny_profile(members=1), store, progress=False, groups=GROUPS, mixes=[0])
    on_disk = pd.read_csv(store.run_dir / "models" / "registry.csv")
    assert list(on_disk["member"]) == [0]
    assert (store.run_dir / "models/cylinder_mix000/member1.pt").is_file()
    assert [m.meta["member"] for m in load_ensemble(store.run_dir, "cylinder_mix000")] == [0]
    capsys.readouterr()
    train_all(tiny_profile(members=2), store, progress=False, groups=GROUPS, mixes=[0])
    assert "member1.pt); reusing it" in capsys.readouterr().out  # member 0 was trained with members=1
    assert len(load_ensemble(store.run_dir, "cylinder_mix000")) == 2
    (store.run_dir / "models/cylinder_mix000/member1.pt").unlink()
    with pytest.raises(MissingStepError, match=r"registry.csv: member checkpoint .*member1.pt of model "
                                                r"'cylinder_mix000' is missing; run notebook 03_training"):
        load_ensemble(store.run_dir, "cylinder_mix000")


def test_a_case_whose_dose_was_computed_again_trains_the_members_again(tmp_path, capsys):
    from ctdose.learn.splits import cases_of
    from ctdose.provenance import settings_attr

    store = make_learning_store(tmp_path)
    train_all(tiny_profile(), store, progress=False, groups=GROUPS, mixes=[0])
    capsys.readouterr()
    train_all(tiny_profile(), store, progress=False, groups=GROUPS, mixes=[0])
    assert "already trained" in capsys.readouterr().out
    # a test case's dose does not enter training; a training case's does
    splits = store.read_table("splits")
    test_case = cases_of(splits, 0, "test")[0]
    store.add_variables(test_case, {}, attrs={settings_attr("dose_mc"): "another"})
    train_all(tiny_profile(), store, progress=False, groups=GROUPS, mixes=[0])
    assert "already trained" in capsys.readouterr().out
    store.add_variables(cases_of(splits, 0, "train")[0], {}, attrs={settings_attr("dose_mc"): "another"})
    train_all(tiny_profile(), store, progress=False, groups=GROUPS, mixes=[0])
    assert "trained with other settings; training it again" in capsys.readouterr().out


def test_predictions_made_by_other_members_or_inputs_are_made_again(trained, tmp_path, capsys):
    import shutil

    from ctdose.evaluate import _ensure_predictions
    from ctdose.provenance import settings_attr
    from ctdose.store import CaseStore

    shutil.copytree(trained[0].run_dir, tmp_path / "run")
    store = CaseStore.for_run(tmp_path / "run")
    model, (a, b) = "cylinder_mix100", store.case_ids()[:2]
    cfg = tiny_profile(members=2)
    _ensure_predictions(store, [model], [a, b], cfg, False, True)
    first = store.read_prediction(model, a)["mu"].values.copy()
    assert len(store.prediction_attrs(model, a)["settings_sha1"]) == 40
    stamp = (store.root / "predictions" / model / b / "zarr.json").stat().st_mtime_ns
    capsys.readouterr()
    _ensure_predictions(store, [model], [a, b], cfg, False, True)  # up to date: nothing done
    assert capsys.readouterr().out == ""
    # the case's kerma input computed again: that case's prediction again, the other kept
    store.add_variables(a, {}, attrs={settings_attr("kerma_cylinder"): "another"})
    with pytest.raises(Exception, match=rf"prediction\(s\) for test case\(s\) {a} were made by other members"):
        _ensure_predictions(store, [model], [a, b], cfg, False, False)
    _ensure_predictions(store, [model], [a, b], cfg, False, True)
    assert f"1 prediction(s) of {model} were made by other members or from other inputs ({a})" in capsys.readouterr().out
    assert (store.root / "predictions" / model / b / "zarr.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(store.read_prediction(model, a)["mu"].values, first)  # same members, same numbers
    # a member trained again (other weights): every prediction again
    ckpt = store.run_dir / "models" / model / "member1.pt"
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, ckpt)
    _ensure_predictions(store, [model], [a, b], cfg, False, True)
    assert "2 prediction(s)" in capsys.readouterr().out
    assert not np.array_equal(store.read_prediction(model, a)["mu"].values, first)
