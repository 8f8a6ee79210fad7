"""`ctdose status`: what a run would compute, before it runs (the chain itself: tests/test_chain.py)."""

import pandas as pd

from ctdose.config import load_profile
from ctdose.pipeline import main
from ctdose.status import STEPS, chain_status, format_status


def test_a_run_not_started_is_all_to_compute_and_nothing_is_written(tmp_path, capsys):
    cfg = load_profile("smoke")
    run_dir = tmp_path / "run"
    table = chain_status(cfg, run_dir)
    assert not run_dir.exists()
    assert set(table["state"]) == {"to compute"}
    c, t = cfg["cohort"], cfg["train"]
    n_cases = int(c["n_synthetic"]) + int(c["n_surrogate"])
    n_models = len(cfg["inputs"]["kerma_modes"]) * len(t["mixes_percent_real"])
    counts = table.groupby("step").size()
    assert counts["01 cohort"] == n_cases
    assert counts["02 Monte Carlo"] == n_cases * (1 + len(cfg["inputs"]["kerma_modes"]))
    assert counts["03 training"] == n_models * int(t["members"])
    assert counts["04 predictions"] == n_models * int(c["n_test"])
    assert set(table.loc[table["step"] == "03 training", "reason"]) == {"not trained"}
    # the command line: a summary, and with --check the exit status says that work is left
    assert main(["status", "--profile", "smoke", "--out", str(run_dir), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"01 cohort: {n_cases} to compute" in out and "nothing is computed or written" in out
    assert not run_dir.exists()


def test_the_summary_counts_each_state_and_names_the_first_items():
    table = pd.DataFrame(
        [("01 cohort", f"case_{k}", "up to date", "") for k in range(3)]
        + [("01 cohort", f"new_{k}", "to compute", "not in the store") for k in range(5)]
        + [("01 cohort", "old_0", "left out", "in the store, not among the profile's cohorts")],
        columns=["step", "item", "state", "reason"],
    )
    lines = format_status(table).splitlines()
    assert lines[0] == "01 cohort: 3 up to date, 5 to compute, 1 left out"
    assert lines[1] == "    to compute: 5 not in the store (new_0, new_1, new_2, ...)"
    assert lines[2] == "    left out: 1 in the store, not among the profile's cohorts (old_0)"
    assert lines[3:] == [f"{step}: nothing" for step in STEPS[1:]]


def test_a_run_directory_with_something_else_as_its_store_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "run" / "store.zarr").mkdir(parents=True)
    assert main(["status", "--profile", "smoke", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'store.zarr'}: exists but is not a Zarr v3 store" in err
    assert list((tmp_path / "run" / "store.zarr").iterdir()) == []  # nothing written into it


def test_a_profile_whose_cases_cannot_be_split_is_told_to_fail_at_the_splits(tmp_path, capsys):
    """The run would stop at notebook 03 (its splits); the status says so, with the run's own
    message, and still reports the steps before it."""
    cfg = load_profile("smoke", {"cohort.n_test": 99})
    table = chain_status(cfg, tmp_path / "run")
    failing = table[table["state"] == "will fail"]
    assert list(failing["step"]) == ["03 training", "04 predictions"] and set(failing["item"]) == {"splits"}
    n = int(cfg["cohort"]["n_surrogate"])
    assert set(failing["reason"]) == {f"cohort.n_test = 99, but the store has only {n} surrogate cases"}
    assert (table.loc[table["step"] == "01 cohort", "state"] == "to compute").all()
    assert main(["status", "--profile", "smoke", "--out", str(tmp_path / "run"), "--set", "cohort.n_test=99",
                 "--check"]) == 1
    assert "03 training: will fail at its splits: cohort.n_test = 99" in capsys.readouterr().out


def test_a_registry_that_is_not_one_is_named(tmp_path, capsys):
    from ctdose.status import left_out_members

    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "registry.csv").write_text("")
    assert left_out_members(load_profile("smoke"), tmp_path / "run") == []
    (models / "registry.csv").write_text("name,value\na,1\n")
    assert main(["status", "--profile", "smoke", "--out", str(tmp_path / "run")]) == 2
    assert f"{models / 'registry.csv'}: not a model registry" in capsys.readouterr().err


def test_a_partial_run_says_what_it_leaves_and_what_it_lacks(tmp_path, capsys):
    """``--only``/``--from`` as for ``ctdose run``: the steps not run compute nothing, and a
    step whose input a step not run would make will fail (on a run not started)."""
    cfg = load_profile("smoke")
    run_dir = tmp_path / "run"
    only4 = chain_status(cfg, run_dir, steps=["04 predictions"])
    assert set(only4.loc[only4["step"] == "01 cohort", "state"]) == {"not run"}
    assert list(only4.loc[only4["step"] == "04 predictions", "state"]) == ["will fail"]
    assert only4.loc[only4["step"] == "04 predictions", "reason"].iloc[0] == "no splits table (notebook 03 not run)"
    only3 = chain_status(cfg, run_dir, steps=["03 training"])
    assert list(only3.loc[only3["state"] == "will fail", "step"]) == ["03 training"]
    assert "no cases" in only3.loc[only3["state"] == "will fail", "reason"].iloc[0]
    assert main(["status", "--profile", "smoke", "--out", str(run_dir), "--only", "04", "--check"]) == 1
    out = capsys.readouterr().out
    assert "`ctdose run --only 04`" in out and "04 predictions: will fail at its splits" in out
    assert not run_dir.exists()
