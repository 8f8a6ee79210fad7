import numpy as np
import pandas as pd
import pytest
from fake_run import fake_profile, DELTAS, GROUPS, MODELS, make_fake_run

from ctdose.config import load_profile
from ctdose.errors import MissingStepError
from ctdose.evaluate import evaluate_models, model_label, organ_volumes_ml, parse_model_id


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    store = make_fake_run(tmp_path_factory.mktemp("run"))
    tables = evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)
    return store, tables


def test_tables_written(evaluated):
    store, tables = evaluated
    for name in ("organ_doses", "summed_doses", "table3", "table4", "calibration", "organ_volumes"):
        assert (store.tables_dir / f"{name}.csv").is_file()
        assert len(store.read_table(name)) == len(tables[name]) > 0


def test_organ_deviation_equals_model_bias(evaluated):
    _, tables = evaluated
    t4 = tables["table4"]
    for model_id, (bias, _) in MODELS.items():
        rows = t4[t4["model_id"] == model_id]
        np.testing.assert_allclose(rows["mean_deviation_percent"], 100 * bias, atol=1e-3)
        assert "partial_effective_dose" in set(rows["organ"])
    summed = tables["summed_doses"]
    for model_id, (bias, _) in MODELS.items():
        np.testing.assert_allclose(summed.loc[summed["model_id"] == model_id, "ratio_nn_mc"], 1 + bias, rtol=1e-5)


def test_table3_matches_hand_computation(evaluated):
    _, tables = evaluated
    t3 = tables["table3"].set_index("model_id")
    d = np.asarray(DELTAS)
    for model_id, (bias, spread) in MODELS.items():
        # relative to the ensemble mean (1 + bias) d: epistemic = spread * pop. std of deltas,
        # aleatoric = 0.055 * rms(1 + spread * delta); full correlation keeps ratios voxel-independent
        epi = 100 * spread * d.std()
        ale = 100 * 0.055 * np.sqrt(np.mean((1 + spread * d) ** 2))
        tot = 100 * np.sqrt((spread * d.std()) ** 2 + (0.055 * np.sqrt(np.mean((1 + spread * d) ** 2))) ** 2)
        assert t3.loc[model_id, "rel_epistemic_percent"] == pytest.approx(epi, rel=1e-4)
        assert t3.loc[model_id, "rel_aleatoric_percent"] == pytest.approx(ale, rel=1e-4)
        assert t3.loc[model_id, "rel_tot_percent"] == pytest.approx(tot, rel=1e-4)
        assert t3.loc[model_id, "rel_tot_k2_percent"] == pytest.approx(2 * tot, rel=1e-4)
        assert t3.loc[model_id, "trs457_passes"] == (2 * tot <= 20.0)


def test_effective_diameter_grows_with_case_size(evaluated):
    _, tables = evaluated
    per_case = tables["summed_doses"].groupby("case_id")["d_eff_cm"].first()
    assert per_case.is_monotonic_increasing
    assert ((per_case > 10) & (per_case < 40)).all()


def test_calibration_has_k2_level(evaluated):
    _, tables = evaluated
    cal = tables["calibration"]
    k2 = cal[np.isclose(cal["k"], 2.0)]
    assert set(k2["model_id"]) == set(MODELS)
    # mix100 is biased by 5 % with ~5.7 % total sigma: every organ lies within k = 2
    assert k2.set_index("model_id").loc["cylinder_mix100", "observed"] == 1.0
    # mix000 is biased by -20 % (25 % of the prediction) with ~10 % sigma: none within k = 2
    assert k2.set_index("model_id").loc["cylinder_mix000", "observed"] == 0.0


def test_organ_volumes():
    labels = np.zeros((2, 2, 2), np.uint8)
    labels[0] = 4
    vols = organ_volumes_ml(labels, (10.0, 10.0, 10.0), {"lung": [4, 5], "heart": [6]})
    assert vols == {"lung": pytest.approx(4.0)}


def test_model_ids():
    assert parse_model_id("patient_mix020") == ("patient", 20)
    assert model_label("cylinder_mix000") == "0 % NN (cylinder)"


def test_the_profiles_models_are_evaluated_and_earlier_ones_left_out(tmp_path, capsys):
    """Models of an earlier profile (another mix, another kerma mode) that stay in the registry
    were trained on that profile's cases: they are named and left out of the tables."""
    earlier = {"cylinder_mix020": (0.1, 0.05), "patient_mix000": (0.0, 0.01)}
    store = make_fake_run(tmp_path, n_test=2, n_train=2, models={**MODELS, **earlier})
    capsys.readouterr()
    tables = evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)
    assert "2 model(s) in models/registry.csv are not among the profile's models (cylinder_mix020, " \
           "patient_mix000); left out" in capsys.readouterr().out
    for name in ("organ_doses", "summed_doses", "table3", "table4", "calibration"):
        assert set(tables[name]["model_id"]) == set(MODELS), name
    assert set(store.read_table("table3")["model_id"]) == set(MODELS)
    # chosen by name, they are evaluated
    tables = evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False,
                             model_ids=["cylinder_mix020"])
    assert set(tables["table3"]["model_id"]) == {"cylinder_mix020"}
    # a model the profile names but nobody trained: the error says which and what to run
    more = load_profile("smoke", {"inputs.kerma_modes": ["cylinder"], "train.mixes_percent_real": [0, 10, 100]})
    with pytest.raises(MissingStepError, match="cylinder_mix010 not in models/registry.csv.*03_training"):
        evaluate_models(more, store, progress=False, groups=GROUPS, predict=False)


def test_missing_registry(tmp_path):
    store = make_fake_run(tmp_path, n_test=1, n_train=1, with_registry=False, with_predictions=False)
    with pytest.raises(MissingStepError, match="03_training"):
        evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)


def test_missing_splits_and_empty_test_set(tmp_path):
    store = make_fake_run(tmp_path, n_test=1, n_train=1, with_splits=False, with_predictions=False)
    with pytest.raises(MissingStepError, match="03_training"):
        evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)
    store.write_table("splits", pd.DataFrame({"mix": ["mix000"], "percent_real": [0], "case_id": ["syn001"],
                                              "cohort": ["synthetic"], "role": ["train"], "real_source": ["surrogate"]}))
    with pytest.raises(MissingStepError, match="test set is empty"):
        evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)


def test_missing_prediction(tmp_path):
    store = make_fake_run(tmp_path, n_test=2, n_train=1, with_predictions=False)
    with pytest.raises(MissingStepError, match="no prediction for test case.*04_ensemble_uncertainty"):
        evaluate_models(fake_profile(), store, progress=False, groups=GROUPS, predict=False)
    assert not (store.tables_dir / "table3.csv").exists()
