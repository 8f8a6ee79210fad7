"""`ctdose prune`: what a profile's run leaves out, listed and removed (on a finished smoke run:
tests/test_chain.py)."""

import shutil

import pandas as pd
import pytest
from fake_run import fake_profile, make_fake_run

from ctdose.config import load_profile
from ctdose.errors import MissingStepError
from ctdose.pipeline import main
from ctdose.prune import PLAN_COLUMNS, format_plan, prune, prune_plan
from ctdose.run_record import read_run_record, write_run_record
from ctdose.store import CaseStore


def _fake(tmp_path):
    """A hand-made run whose cases are not the smoke profile's (all left out), with the models
    cylinder_mix000 and cylinder_mix100 registered and predicted, and a profile of mix 0 only."""
    store = make_fake_run(tmp_path / "run", n_test=2, n_train=2)
    for mid in ("cylinder_mix000", "cylinder_mix100"):
        folder = store.run_dir / "models" / mid
        folder.mkdir(parents=True)
        for k in range(3):
            (folder / f"member{k}.pt").write_bytes(b"0" * 1000)
    cfg = load_profile("smoke", {"inputs.kerma_modes": ["cylinder"], "train.mixes_percent_real": [0]})
    return store, cfg


def test_the_plan_lists_cases_models_predictions_and_leftovers_with_their_size(tmp_path):
    store, cfg = _fake(tmp_path)
    (store.root / "cases" / ".trash-sur000-1234abcd").mkdir()  # an interrupted removal
    plan = prune_plan(cfg, store.run_dir)
    assert list(plan.columns) == PLAN_COLUMNS
    by = {what: list(part["item"]) for what, part in plan.groupby("what")}
    assert by["case"] == ["sur000", "sur001", "syn002", "syn003"]
    assert by["model"] == ["cylinder_mix100"]
    assert by["leftover"] == ["cases/.trash-sur000-1234abcd"]
    # the predictions of the left-out cases go with them (here: all, of both models)
    assert sorted(by["prediction"]) == [f"{m} sur00{k}" for m in ("cylinder_mix000", "cylinder_mix100") for k in (0, 1)]
    sizes = dict(zip(plan["item"], plan["bytes"]))
    assert sizes["cylinder_mix100"] == 3000
    case_dir = store.root / "cases" / "sur000"
    assert sizes["sur000"] == sum(p.stat().st_size for p in case_dir.rglob("*") if p.is_file()) > 0
    assert format_plan(plan).splitlines()[0].startswith("4 case(s), ")
    assert (store.root / "cases" / "sur000").is_dir()  # listing removes nothing


def test_prune_removes_the_plan_and_an_interrupted_prune_is_finished_by_the_next(tmp_path, monkeypatch):
    store, cfg = _fake(tmp_path)
    calls = []
    real = CaseStore.delete_case

    def interrupted(self, case_id, manifest=True):
        calls.append(case_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, case_id, manifest)

    monkeypatch.setattr(CaseStore, "delete_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prune(cfg, store.run_dir)
    monkeypatch.setattr(CaseStore, "delete_case", real)
    left = prune_plan(cfg, store.run_dir)  # the predictions went first, then two cases
    assert list(left["item"]) == ["syn002", "syn003", "cylinder_mix100"]
    assert store.case_ids() == ["syn002", "syn003"] and store.model_ids() == []
    done = prune(cfg, store.run_dir)
    assert list(done["item"]) == ["syn002", "syn003", "cylinder_mix100"]
    assert prune_plan(cfg, store.run_dir).empty
    assert store.case_ids() == [] and store.model_ids() == []
    assert not (store.run_dir / "models" / "cylinder_mix100").exists()
    assert (store.run_dir / "models" / "cylinder_mix000" / "member0.pt").is_file()
    assert set(pd.read_csv(store.run_dir / "models" / "registry.csv")["model_id"]) == {"cylinder_mix000"}
    assert pd.read_csv(store.run_dir / "manifest.csv").empty
    assert store.leftovers() == [] and not list((store.run_dir / "models").glob(".trash-*"))


def test_a_run_directory_last_run_with_other_settings_is_pruned_only_with_force(tmp_path, capsys):
    store, cfg = _fake(tmp_path)
    run_dir = store.run_dir
    write_run_record(run_dir, fake_profile(), "smoke", {"train.mixes_percent_real": [0, 100]})
    assert read_run_record(run_dir)["overrides"] == {"train.mixes_percent_real": [0, 100]}
    files = sorted(p for p in run_dir.rglob("*"))
    args = ["prune", "--profile", "smoke", "--out", str(run_dir), "--set", "inputs.kerma_modes=[cylinder]",
            "--set", "train.mixes_percent_real=[0]"]
    assert main(args + ["--yes"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir} was last run with profile 'smoke' with --set train.mixes_percent_real=[0, 100]" in err
    assert "pass --force" in err and sorted(run_dir.rglob("*")) == files  # nothing removed
    assert main(args) == 0  # listing is allowed, with the warning
    out = capsys.readouterr().out
    assert "note: " in out and "nothing was removed; pass --yes" in out and sorted(run_dir.rglob("*")) == files
    assert main(args + ["--yes", "--force"]) == 0
    assert "removed" in capsys.readouterr().out and store.case_ids() == []


def test_a_damaged_run_record_is_named(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{not json")
    assert main(["prune", "--profile", "smoke", "--out", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run' / 'run.json'}: not a run record" in capsys.readouterr().err


def test_leftovers_and_delete_prediction(tmp_path):
    store = make_fake_run(tmp_path / "run", n_test=1, n_train=1)
    (store.root / "predictions" / ".tmp-cylinder_mix000-abcd1234").mkdir()
    (store.root / "predictions" / "cylinder_mix000" / ".trash-sur000-abcd1234").mkdir()
    assert store.leftovers() == ["predictions/.tmp-cylinder_mix000-abcd1234",
                                 "predictions/cylinder_mix000/.trash-sur000-abcd1234"]
    listed = store.leftovers()
    assert store.cleanup() == listed and store.leftovers() == []
    store.delete_prediction("cylinder_mix000", "sur000")
    assert "cylinder_mix000" not in store.model_ids()
    assert not (store.root / "predictions" / "cylinder_mix000").exists()  # its last prediction: the group goes
    assert store.prediction_case_ids("cylinder_mix100") == ["sur000"]
    shutil.rmtree(store.root / "predictions" / "cylinder_mix100" / "sur000")
    with pytest.raises(MissingStepError, match="no prediction of model 'cylinder_mix100'"):
        store.delete_prediction("cylinder_mix100", "sur000")
