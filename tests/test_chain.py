"""The whole chain, headless, on the smoke profile: what `ctdose run --profile smoke` does."""

from pathlib import Path

import pandas as pd
import pytest

from ctdose.config import load_profile
from ctdose.pipeline import run_chain
from ctdose.status import STEPS, chain_status
from ctdose.store import CaseStore


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    figures = root / "figures"
    figures.mkdir()
    log = run_chain("smoke", root / "run", figures_dir=figures, progress=False)
    return root / "run", figures, log


@pytest.mark.slow
def test_every_notebook_runs_and_leaves_an_executed_copy(smoke_run):
    run_dir, _, log = smoke_run
    assert list(log["status"]) == ["ok"] * 5
    for name in log["notebook"]:
        assert (run_dir / f"{name}.ipynb").is_file()
    assert (run_dir / "chain_log.csv").is_file()


@pytest.mark.slow
def test_store_holds_every_step(smoke_run):
    run_dir, _, _ = smoke_run
    store = CaseStore.for_run(run_dir)
    manifest = store.manifest()
    assert {"synthetic", "surrogate"} <= set(manifest["cohort"])
    for variables in manifest["variables"]:
        assert {"labels", "body_mask", "density_e", "dose_mc", "dose_mc_sigma", "kerma_cylinder"} <= set(variables.split())
    assert store.model_ids(), "no predictions stored"


@pytest.mark.slow
def test_tables_and_figures_are_written(smoke_run):
    run_dir, figures, _ = smoke_run
    for name in ("table3", "table4"):
        assert not pd.read_csv(run_dir / "tables" / f"{name}.csv").empty
    ssde = pd.read_csv(run_dir / "tables" / "ssde_check.csv")  # notebook 02's SSDE check, one row per case
    assert len(ssde) == len(CaseStore.for_run(run_dir).run_case_ids())
    assert {"case_id", "ctdivol_mgy", "d_w_cm", "ssde_mgy", "mc_mgy", "ratio"} <= set(ssde.columns)
    assert (ssde["mc_mgy"] > 0).all()
    pngs = {p.stem for p in figures.glob("*.png")}
    assert len(pngs) >= 5, pngs
    assert (figures / "README.md").is_file()


@pytest.mark.slow
def test_status_of_a_finished_run_is_up_to_date_and_follows_a_change_down_the_chain(smoke_run):
    table = chain_status(load_profile("smoke"), smoke_run[0])
    assert set(table["state"]) == {"up to date"} and list(table["step"].unique()) == list(STEPS)

    def to_compute(overrides):
        told = chain_status(load_profile("smoke", overrides), smoke_run[0])
        return {step: set(told.loc[(told["step"] == step) & (told["state"] == "to compute"), "reason"])
                for step in STEPS}

    # more photons: every dose again, so every member (trained on them) and every prediction
    assert to_compute({"mc.n_photons": 30000}) == {
        "01 cohort": set(), "02 Monte Carlo": {"computed with other settings"},
        "03 training": {"its cases' dose or input is computed again"},
        "04 predictions": {"its members are trained again"}}
    # more epochs: the members and their predictions only
    assert to_compute({"train.epochs": 3}) == {
        "01 cohort": set(), "02 Monte Carlo": set(), "03 training": {"trained with other settings or data"},
        "04 predictions": {"its members are trained again"}}

    def states(overrides, step):
        told = chain_status(load_profile("smoke", overrides), smoke_run[0])
        part = told[told["step"] == step]
        return dict(zip(part["item"], part["state"]))

    models = ("cylinder_mix000", "cylinder_mix010", "cylinder_mix020", "cylinder_mix100")
    # a second member per model: only the new members are trained (the models' predictions follow)
    assert states({"train.members": 2}, "03 training") == {
        f"{m} member {k}": "to compute" if k else "up to date" for m in models for k in (0, 1)}
    assert set(states({"train.members": 2}, "04 predictions").values()) == {"to compute"}
    # fewer mixes: nothing to compute; the other mixes' members are left out (and not evaluated)
    assert states({"train.mixes_percent_real": [0, 100]}, "03 training") == {
        "cylinder_mix000 member 0": "up to date", "cylinder_mix100 member 0": "up to date",
        "cylinder_mix010 member 0": "left out", "cylinder_mix020 member 0": "left out"}
    predictions = states({"train.mixes_percent_real": [0, 100]}, "04 predictions")
    from ctdose.evaluate import test_case_ids

    tests = test_case_ids(CaseStore.for_run(smoke_run[0]))
    assert {item: state for item, state in predictions.items() if state != "up to date"} == {
        f"{m} {c}": "left out" for m in models[1:3] for c in tests}

    # a run from notebook 03 on, after more photons: the doses stay as they are, so training and
    # predictions have nothing to do
    told = chain_status(load_profile("smoke", {"mc.n_photons": 30000}), smoke_run[0], steps=STEPS[2:])
    n_cases = len(told[told["step"] == "01 cohort"])
    assert (told["state"] == "not run").sum() == n_cases  # each case's dose_mc
    assert set(told.loc[told["step"].isin(STEPS[2:]), "state"]) == {"up to date"}
    # notebooks 01 and 03 only, with another synthetic design: 01 builds the synthetic cases
    # again, which drops their dose; 02 does not run, so the mixes trained on them will fail
    n = int(load_profile("smoke")["cohort"]["n_synthetic"])
    told = chain_status(load_profile("smoke", {"cohort.n_synthetic": n - 1}), smoke_run[0],
                        steps=["01 cohort", "03 training"])
    members = told[told["step"] == "03 training"]
    assert dict(zip(members["item"], members["state"])) == {
        f"{m} member 0": "up to date" if m == "cylinder_mix100" else "will fail" for m in models}
    assert set(members.loc[members["state"] == "will fail", "reason"].str.endswith("(notebook 02 not run)")) == {True}


def _changed(before_dir: Path, after_dir: Path) -> dict[str, set[str]]:
    """Per step of :func:`ctdose.status.chain_status`, the items whose recorded digest (or, for a
    member, checkpoint file) differs between two copies of a run directory."""
    from ctdose.learn.inference import PREDICTION_SETTINGS_ATTR
    from ctdose.provenance import file_digest, settings_attr

    before, after = CaseStore.for_run(before_dir), CaseStore.for_run(after_dir)

    def attrs(store, cid):
        return store.case_attrs(cid) if cid in store else {}

    changed = {step: set() for step in STEPS}
    for cid in after.case_ids():
        a, b = attrs(after, cid), attrs(before, cid)
        if a.get(settings_attr("labels")) != b.get(settings_attr("labels")):
            changed["01 cohort"].add(cid)
        for v in after.case_variables(cid):
            if v.startswith(("dose_mc", "kerma_")) and a.get(settings_attr(v)) != b.get(settings_attr(v)):
                changed["02 Monte Carlo"].add(f"{cid} {v}")
    for ckpt in (after_dir / "models").glob("*/member*.pt"):
        old = before_dir / ckpt.relative_to(after_dir)
        if not old.is_file() or file_digest(old) != file_digest(ckpt):
            changed["03 training"].add(f"{ckpt.parent.name} member {ckpt.stem.removeprefix('member')}")
    for mid in after.model_ids():
        for cid in after.prediction_case_ids(mid):
            old = before.prediction_attrs(mid, cid) if cid in before.prediction_case_ids(mid) else {}
            if after.prediction_attrs(mid, cid).get(PREDICTION_SETTINGS_ATTR) != old.get(PREDICTION_SETTINGS_ATTR):
                changed["04 predictions"].add(f"{mid} {cid}")
    return changed


@pytest.mark.slow
def test_a_rerun_with_a_smaller_cohort_recomputes_only_what_it_changes(smoke_run, tmp_path):
    """The run again on a copy, with one synthetic case fewer. The synthetic design of n - 1
    cases samples other phantoms, so those cases are built, simulated, trained and predicted
    again; the last one stays in the store but out of the run; the surrogate cases keep their
    phantoms and doses bit for bit, and the 100 % model (surrogate cases only) is reused."""
    import json
    import shutil

    import numpy as np

    from ctdose.evaluate import _stale_predictions, test_case_ids

    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    n = int(load_profile("smoke")["cohort"]["n_synthetic"])
    smaller = load_profile("smoke", [f"cohort.n_synthetic={n - 1}"])
    told = chain_status(smaller, run_dir)  # what the run will compute, told beforehand
    log = run_chain("smoke", run_dir, overrides=[f"cohort.n_synthetic={n - 1}"], figures_dir=tmp_path / "figures",
                    progress=False)
    assert list(log["status"]) == ["ok"] * 5
    # ... is what it computed: every item status said is to compute changed, and no other
    assert _changed(smoke_run[0], run_dir) == {
        step: set(told.loc[(told["step"] == step) & (told["state"] == "to compute"), "item"]) for step in STEPS}
    assert set(told.loc[told["state"] == "left out", "item"]) == {f"synthetic_{n - 1:03d}"}
    after = chain_status(smaller, run_dir)
    assert set(after["state"]) == {"up to date", "left out"}

    def printed(name: str) -> str:
        cells = json.loads((run_dir / f"{name}.ipynb").read_text())["cells"]
        return "".join(t for c in cells for o in c.get("outputs", []) for t in o.get("text", []))

    dropped = f"synthetic_{n - 1:03d}"
    store, before = CaseStore.for_run(run_dir), CaseStore.for_run(smoke_run[0])
    assert dropped in store.case_ids() and dropped not in store.run_case_ids()
    cohort = printed("01_phantom_sampling")
    assert f"({dropped}); left out" in cohort
    assert "synthetic_000: built with other anatomy settings" in cohort
    assert "surrogate_000: already in the store, skipped" in cohort
    n_surrogate = len(store.case_ids("surrogate"))
    assert f"MC: resuming: {n_surrogate} of {n_surrogate + n - 1} cases already done" in printed("02_mc_preparation")
    np.testing.assert_array_equal(store.read_case("surrogate_000")["dose_mc"].values,
                                  before.read_case("surrogate_000")["dose_mc"].values)
    training = printed("03_training")
    assert "training it again" in training and "cylinder_mix100 member 0 already trained" in training
    assert dropped not in set(store.read_table("splits")["case_id"])
    for model in store.model_ids():
        assert _stale_predictions(store, model, test_case_ids(store)) == []


@pytest.mark.slow
def test_prune_removes_exactly_what_the_status_says_is_left_out(smoke_run, tmp_path, capsys):
    """A copy of the run pruned for one synthetic case fewer and two mixes: the case, the two
    other mixes' models and their predictions go; everything else stays as the status saw it."""
    import shutil

    from ctdose.pipeline import main
    from ctdose.prune import prune_plan
    from ctdose.run_record import read_run_record

    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    assert read_run_record(run_dir)["profile"] == "smoke" and read_run_record(run_dir)["overrides"] == {}
    n = int(load_profile("smoke")["cohort"]["n_synthetic"])
    sets = [f"cohort.n_synthetic={n - 1}", "train.mixes_percent_real=[0, 100]"]
    cfg = load_profile("smoke", sets)
    told = chain_status(cfg, run_dir)
    left = told[told["state"] == "left out"]
    plan = prune_plan(cfg, run_dir)
    dropped = f"synthetic_{n - 1:03d}"
    def listed(table, column, value):
        return set(table.loc[table[column] == value, "item"])

    assert listed(left, "step", "01 cohort") == listed(plan, "what", "case") == {dropped}
    assert listed(plan, "what", "model") == {"cylinder_mix010", "cylinder_mix020"}
    assert listed(left, "step", "03 training") == {"cylinder_mix010 member 0", "cylinder_mix020 member 0"}
    assert listed(left, "step", "04 predictions") == listed(plan, "what", "prediction")
    assert len(plan[plan["what"] == "prediction"]) == 2 * int(cfg["cohort"]["n_test"])

    args = ["prune", "--profile", "smoke", "--out", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    assert main(args + ["--yes"]) == 2  # the run was made with the plain smoke profile
    assert "was last run with profile 'smoke' (ctdose" in capsys.readouterr().err
    assert main(args + ["--yes", "--force"]) == 0
    after = chain_status(cfg, run_dir)
    assert "left out" not in set(after["state"])
    kept = told[told["state"] != "left out"].reset_index(drop=True)
    pd.testing.assert_frame_equal(after, kept)  # nothing the run uses was touched
    store = CaseStore.for_run(run_dir)
    assert dropped not in store.case_ids() and set(store.model_ids()) == {"cylinder_mix000", "cylinder_mix100"}
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["cylinder_mix000", "cylinder_mix100",
                                                                      "registry.csv"]
    assert set(pd.read_csv(run_dir / "models" / "registry.csv")["model_id"]) == {"cylinder_mix000", "cylinder_mix100"}
    assert prune_plan(cfg, run_dir).empty


@pytest.mark.slow
def test_a_partial_run_computes_what_the_status_says(smoke_run, tmp_path):
    """``--only 03`` with more epochs: the members are trained again, the predictions (notebook
    04 not run) stay, and a whole run would then predict again."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    cfg = load_profile("smoke", {"train.epochs": 3})
    told = chain_status(cfg, run_dir, steps=["03 training"])
    log = run_chain("smoke", run_dir, overrides=["train.epochs=3"], only=["03"], progress=False)
    assert list(log["notebook"]) == ["03_training"]
    assert _changed(smoke_run[0], run_dir) == {
        step: set(told.loc[(told["step"] == step) & (told["state"] == "to compute"), "item"]) for step in STEPS}
    assert len(told[told["state"] == "to compute"]) == 4
    assert set(told.loc[told["step"] == "04 predictions", "state"]) == {"not run"}
    after = chain_status(cfg, run_dir)
    assert set(after.loc[after["step"] != "04 predictions", "state"]) == {"up to date"}
    assert set(after.loc[after["step"] == "04 predictions", "reason"]) == {"made by other members or from other inputs"}
