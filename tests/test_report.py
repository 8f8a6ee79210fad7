import pytest
from fake_run import fake_profile, GROUPS, make_fake_run

from ctdose.errors import MissingStepError
from ctdose.evaluate import evaluate_models
from ctdose.report import comparison_tables, write_comparison_page
from ctdose._data import read_table


def test_paper_tables_shipped():
    t3 = read_table("paper_table3.csv").set_index("component")
    assert t3.loc["total_k2", "mix000"] == 17.8
    # the paper's k = 2 values are twice the total
    assert (abs(t3.loc["total_k2"] - 2 * t3.loc["total"]) < 0.05).all()
    t4 = read_table("paper_table4.csv").set_index("organ")
    assert len(t4) == 17 and t4.loc["oesophagus", "mix010"] == 2089


def test_comparison_page(tmp_path):
    cfg = fake_profile()
    store = make_fake_run(tmp_path / "run")
    with pytest.raises(MissingStepError, match="04_ensemble_uncertainty"):
        write_comparison_page(cfg, store, tmp_path / "fig")
    evaluate_models(cfg, store, progress=False, groups=GROUPS, predict=False)
    tables = comparison_tables(store)
    t3 = tables["table3_cylinder"].set_index("component")
    assert t3.loc["total_k2", "0 % NN (paper)"] == 17.8
    assert t3.loc["total_k2", "100 % NN (paper)"] == 10.0
    assert t3.loc["total_k2", "0 % NN (this run)"] == pytest.approx(2 * t3.loc["total", "0 % NN (this run)"])
    # a figure present on disk is embedded, a missing one is named as not drawn
    (tmp_path / "fig").mkdir()
    (tmp_path / "fig" / "figure4_summed_doses.png").write_bytes(b"png")
    page = write_comparison_page(cfg, store, tmp_path / "fig")
    text = page.read_text()
    assert "smoke" in text and "surrogate" in text and "XCAT" in text
    assert "![Figure 4" in text and "(figure4_summed_doses.png)" in text
    assert "| component | 0 % NN (this run) | 0 % NN (paper) |" in text
    assert "TRS-457" in text
    assert "Figure 6. One test patient" in text and "not drawn in this run" in text
