import numpy as np
import pandas as pd
import pytest
import torch

from learn_fakes import GROUPS, make_learning_store, tiny_profile
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
    changed = train_all(tiny_profile(members=1, epochs=1), other, progress=False, groups=GROUPS, mixes=[0])
    assert "other settings" in capsys.readouterr().out and int(changed.best_epoch[0]) == 1


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
