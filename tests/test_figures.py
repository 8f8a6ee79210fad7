import numpy as np
import pytest
from fake_run import fake_profile, GROUPS, make_fake_run
from scipy import stats

from ctdose import figures
from ctdose.config import load_profile
from ctdose.errors import MissingStepError
from ctdose.evaluate import evaluate_models


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    store = make_fake_run(tmp_path_factory.mktemp("run"))
    evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)
    return store, figures.figure_context(store, "smoke")


def _check_files(paths, suffixes):
    assert sorted(p.suffix for p in paths) == sorted(suffixes)
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0


def test_context_names_sources_profile_run(run):
    store, ctx = run
    note = ctx.footnote()
    assert "synthetic" in note and "surrogate" in note and "smoke" in note and store.run_dir.name in note


def test_context_says_when_cases_followed_their_tube_current_or_came_from_egsnrc(tmp_path):
    store = make_fake_run(tmp_path / "run")
    assert "tube-current" not in figures.figure_context(store, "smoke").footnote()
    cid = store.case_ids()[0]
    store.add_variables(cid, {}, attrs={"mc_tube_current": "the case's tube-current modulation (DICOM ...)"})
    note = figures.figure_context(store, "smoke").footnote()
    assert "MC dose of 1 clinical case with the CT's own tube-current modulation" in note
    assert "EGSnrc" not in note
    for c in store.case_ids()[1:3]:
        store.add_variables(c, {}, attrs={"mc_engine": "EGSnrc (x.3ddose; read as Gy per mAs of one rotation)"})
    note = figures.figure_context(store, "smoke").footnote()
    assert "MC dose of 2 cases from the user's EGSnrc results (.3ddose), of the others from the ctdose MC" in note


def test_tables_csv_and_markdown(run, tmp_path):
    store, ctx = run
    paths = figures.table3(store.read_table("table3"), ctx, tmp_path)
    _check_files(paths, [".csv", ".md"])
    md = (tmp_path / "table3.md").read_text()
    assert "| component |" in md and "total_k2" in md and ctx.footnote() in md
    wide = figures.table3_wide(store.read_table("table3")).set_index("component")
    np.testing.assert_allclose(wide.loc["total_k2"], 2 * wide.loc["total"])
    paths = figures.table4(store.read_table("table4"), ctx, tmp_path)
    _check_files(paths, [".csv", ".md"])
    wide4 = figures.table4_wide(store.read_table("table4"))
    assert list(wide4["organ"])[-1] == "partial_effective_dose"
    assert list(wide4["organ"])[:2] == ["muscle", "lung"]  # Table-4 order


def test_each_figure_and_table_writes_its_files(run, tmp_path):
    store, _ = run
    out = figures.draw_all(load_profile("smoke"), store, tmp_path)
    assert set(out) == {"table3", "table4", "figure3", "figure4", "figure5", "figure6", "figure7", "reliability"}
    for name, paths in out.items():
        _check_files(paths, [".csv", ".md"] if name.startswith("table") else [".png", ".svg"])
        if not name.startswith("table"):
            assert "smoke" in paths[1].read_text()  # the footnote is in the vector file


def test_figure_files_are_the_same_bytes_on_a_rerun(run, tmp_path):
    """A figure drawn twice from the same tables gives byte-identical PNG and SVG files (no
    date stamp, no random SVG ids), so a rerun of the demo changes a committed figure only
    where its content changes."""
    store, ctx = run
    case = store.read_case("sur001").load()
    preds = {"cylinder_mix100": store.read_prediction("cylinder_mix100", "sur001").load()}
    first = figures.figure6_dose_maps(case, preds, ctx, tmp_path / "a", slice_index=0)
    second = figures.figure6_dose_maps(case, preds, ctx, tmp_path / "b", slice_index=0)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert b"<dc:date>" not in first[1].read_bytes()


def test_figure6_single_model_and_explicit_slice(run, tmp_path):
    store, ctx = run
    case = store.read_case("sur001").load()
    preds = {"cylinder_mix100": store.read_prediction("cylinder_mix100", "sur001").load()}
    _check_files(figures.figure6_dose_maps(case, preds, ctx, tmp_path, slice_index=0), [".png", ".svg"])


def test_missing_tables(run, tmp_path):
    empty = make_fake_run(tmp_path / "empty", n_test=1, n_train=1, with_predictions=False)
    with pytest.raises(MissingStepError, match="04_ensemble_uncertainty"):
        figures.draw_all(load_profile("smoke"), empty, tmp_path / "f")
    case = empty.read_case("sur000").load().drop_vars("dose_mc")
    with pytest.raises(MissingStepError, match="02_mc_preparation"):
        figures.figure3_inputs(case, figures.figure_context(empty, "smoke"), tmp_path)


def test_linear_fit_band_against_scipy():
    rng = np.random.default_rng(5)
    x = rng.uniform(20, 40, 12)
    y = 1.5 - 0.01 * x + rng.normal(0, 0.02, x.size)
    grid = np.array([x.mean(), 25.0, 38.0])
    band = figures.linear_fit_band(x, y, grid)
    ref = stats.linregress(x, y)
    assert band["slope"] == pytest.approx(ref.slope)
    assert band["intercept"] == pytest.approx(ref.intercept)
    # at the mean of x the half width is t * s / sqrt(n) = t * stderr of the intercept-at-mean
    n = x.size
    s = np.sqrt(np.sum((y - ref.intercept - ref.slope * x) ** 2) / (n - 2))
    half0 = stats.t.ppf(0.975, n - 2) * s / np.sqrt(n)
    assert (band["upper"][0] - band["fit"][0]) == pytest.approx(half0)
    # slope uncertainty: the band widens away from the mean by the slope's standard error
    half = band["upper"] - band["fit"]
    expected = stats.t.ppf(0.975, n - 2) * np.sqrt((s / np.sqrt(n)) ** 2 + (ref.stderr * (grid - x.mean())) ** 2)
    np.testing.assert_allclose(half, expected, rtol=1e-10)
