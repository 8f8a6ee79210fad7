"""The whole chain, headless, on the smoke profile: what `ctdose run --profile smoke` does."""

import pandas as pd
import pytest

from ctdose.pipeline import run_chain
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
    pngs = {p.stem for p in figures.glob("*.png")}
    assert len(pngs) >= 5, pngs
    assert (figures / "README.md").is_file()
