"""Evaluation of the trained ensembles on the fixed real test set (notebook 04).

For every model of ``<run_dir>/models/registry.csv`` and every test case of
``<run_dir>/tables/splits.csv`` (``role == "test"``), :func:`evaluate_models` makes sure the
ensemble prediction exists (``predictions/<model_id>/<case_id>``, written by
:func:`ctdose.learn.inference.predict_model`), then computes

- organ doses of the Table-4 organs, NN (ensemble mean, eq. 3) and MC (mean voxel dose);
- organ sigmas, aleatoric / epistemic / total, under full voxel correlation (eqs. 4-8);
- summed organ doses (eq. 9) and their sigmas (sum of organ sigmas);
- the effective diameter of the patient (AAPM Report 204) and the partial effective dose;

and writes tidy tables into ``<run_dir>/tables/``:

=================== ===========================================================
``organ_doses``     one row per (model, case, organ): ``dose_nn``, ``dose_mc``
                    (Gy per mAs), sigmas, ``deviation_percent``
``summed_doses``    one row per (model, case): eq. 9 sums and sigmas, NN/MC ratio,
                    effective diameters, partial effective doses
``table3``          per model: maximum relative uncertainties over the test set
                    (each component maximised separately), k = 2 total, TRS-457 check
``table4``          per model and organ (and ``partial_effective_dose``): mean over the
                    test cases of the relative deviation NN vs MC in percent
``calibration``     per model: observed vs nominal coverage of the organ-dose intervals
``organ_volumes``   per case of the splits: organ volumes in mL (Figure 7)
=================== ===========================================================

The Table-4 deviation of an organ is the mean over test cases of ``100 (D_NN - D_MC) / D_MC``
(cases where the organ is absent are skipped). The summed organ dose sums the Table-4 organs
present in the case (the same set for NN and MC, both use the case's labels).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._listing import first_names
from .dosimetry import (
    TABLE4_ORGANS,
    calibration_table,
    effective_diameter_cm,
    organ_mean_doses,
    partial_effective_dose,
)
from .errors import InputError, MissingStepError
from .uncertainty import max_relative_uncertainty, organ_uncertainties, trs457_check, voxel_uncertainty

__all__ = [
    "E_PARTIAL",
    "MC_MODEL",
    "body_outline",
    "evaluate_case",
    "evaluate_models",
    "explain_case",
    "load_registry",
    "model_label",
    "organ_volumes_ml",
    "parse_model_id",
    "roi_slices",
    "test_case_ids",
]

#: Row name of the partial effective dose in Table 4.
E_PARTIAL = "partial_effective_dose"
#: Label of the Monte Carlo reference in tables and figures.
MC_MODEL = "MC"

_STEP_TRAIN = "run notebook 03_training first (ctdose run --only 03_training)"
_STEP_PREDICT = "run notebook 04_ensemble_uncertainty (ctdose run --only 04_ensemble_uncertainty)"
_MM3_PER_ML = 1000.0


def _tqdm(iterable, progress: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, disable=not (progress and sys.stderr.isatty()), **kwargs)


def parse_model_id(model_id: str) -> tuple[str, int]:
    """``"cylinder_mix010" -> ("cylinder", 10)`` (docs/architecture.md model ids)."""
    mode, sep, mix = model_id.rpartition("_mix")
    if not sep or not mix.isdigit():
        raise InputError(f"model id {model_id!r}: expected '<kerma_mode>_mix<NNN>', e.g. cylinder_mix010")
    return mode, int(mix)


def model_label(model_id: str) -> str:
    """Paper-style name of a model: ``"cylinder_mix010" -> "10 % NN (cylinder)"``."""
    if model_id == MC_MODEL:
        return "MC"
    mode, percent = parse_model_id(model_id)
    return f"{percent} % NN ({mode})"


def load_registry(run_dir: str | Path) -> pd.DataFrame:
    """The learning engineer's ``<run_dir>/models/registry.csv`` (one row per member).

    Raises
    ------
    MissingStepError
        No registry or no model in it.
    """
    path = Path(run_dir) / "models" / "registry.csv"
    if not path.is_file():
        raise MissingStepError(f"{path}: no trained models; {_STEP_TRAIN}")
    registry = pd.read_csv(path)
    if registry.empty or "model_id" not in registry:
        raise MissingStepError(f"{path}: lists no trained model; {_STEP_TRAIN}")
    return registry


def _models_to_evaluate(cfg, store, model_ids: Sequence[str] | None) -> list[str]:
    """The models :func:`evaluate_models` evaluates: ``model_ids``, or the profile's; each must
    be in the registry. Registered models outside the profile are named and left out: a model
    of an earlier profile (another mix or kerma mode) was trained on that profile's cases."""
    from .learn.ensemble import profile_models

    registered = sorted(set(load_registry(store.run_dir)["model_id"].astype(str)))
    if model_ids is not None:
        wanted = set(model_ids)
    elif cfg is not None:
        wanted = {mid for mid, _, _ in profile_models(cfg)}
    else:
        return registered
    unknown = sorted(wanted - set(registered))
    if unknown:
        raise MissingStepError(f"model(s) {', '.join(unknown)} not in models/registry.csv; {_STEP_TRAIN}")
    outside = [m for m in registered if m not in wanted]
    if outside and model_ids is None:
        print(f"evaluate: {len(outside)} model(s) in models/registry.csv are not among the profile's models "
              f"({first_names(outside)}); left out")
    return sorted(wanted)


def test_case_ids(store) -> list[str]:
    """Ids of the fixed test set (``role == "test"`` in ``tables/splits.csv``), sorted.

    Raises
    ------
    MissingStepError
        No splits table or an empty test set.
    """
    from .learn.splits import test_ids

    ids = test_ids(store.read_table("splits"))
    if not ids:
        raise MissingStepError(
            f"{store.tables_dir / 'splits.csv'}: the test set is empty (cohort.n_test = 0 or no real "
            f"cases); set cohort.n_test > 0 and {_STEP_TRAIN}"
        )
    return ids


def _default_groups() -> dict[str, list[int]]:
    from .anatomy.organs import dose_groups

    return dose_groups()


def body_outline(case) -> np.ndarray:
    """Body mask of a case (``body_mask``; else labels of ``in_body`` organs; else labels > 0)."""
    if "body_mask" in case:
        return np.asarray(case["body_mask"].values).astype(bool)
    labels = np.asarray(case["labels"].values)
    try:
        from .anatomy.organs import organ_table

        table = organ_table()
        if "in_body" in table:
            body_ids = table.loc[table["in_body"].astype(int) == 1, "id"].to_numpy()
            return np.isin(labels, body_ids)
    except ImportError:
        pass
    return labels > 0


def roi_slices(case) -> np.ndarray:
    """Indices of the axial slices inside the case's ROI (attribute ``roi_z_mm``; else all)."""
    z_mm = np.asarray(case["z"].values, dtype=float)
    roi = case.attrs.get("roi_z_mm")
    if roi is None or len(roi) != 2:
        return np.arange(z_mm.size)
    lo, hi = sorted(float(v) for v in roi)
    inside = np.flatnonzero((z_mm >= lo) & (z_mm <= hi))
    return inside if inside.size else np.arange(z_mm.size)


def organ_volumes_ml(
    labels: np.ndarray, spacing_mm: Sequence[float], groups: Mapping[str, Iterable[int]]
) -> dict[str, float]:
    """Volume per dose group in mL (voxel count times voxel volume); absent groups left out."""
    voxel_ml = float(np.prod([float(s) for s in spacing_mm])) / _MM3_PER_ML
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=256)
    out = {}
    for name, ids in groups.items():
        n = int(sum(counts[int(i)] for i in ids if 0 <= int(i) < counts.size))
        if n:
            out[name] = n * voxel_ml
    return out


def evaluate_case(
    case,
    predictions: Mapping[str, object],
    groups: Mapping[str, Iterable[int]],
) -> tuple[list[dict], list[dict]]:
    """Organ and summed doses of one test case for several models.

    Parameters
    ----------
    case : xarray.Dataset
        The case (``labels``, ``dose_mc``; ``body_mask`` and ``dose_mc_sigma`` optional).
    predictions : mapping
        ``{model_id: Dataset with mu and sigma_aleatoric (member, z, y, x)}``.
    groups : mapping
        Dose groups ``{group: [label ids]}``; only Table-4 organs are used.

    Returns
    -------
    (list of dict, list of dict)
        Organ rows and summed rows (see module docstring for the columns).
    """
    case_id = str(case.attrs.get("case_id", ""))
    if "dose_mc" not in case:
        raise MissingStepError(
            f"case {case_id!r} has no dose_mc; run notebook 02_mc_preparation first "
            "(ctdose run --only 02_mc_preparation)"
        )
    labels = np.asarray(case["labels"].values)
    dose_mc = np.asarray(case["dose_mc"].values, dtype=np.float64)
    t4 = {g: groups[g] for g in TABLE4_ORGANS if g in groups}
    mc = organ_mean_doses(dose_mc, labels, t4)
    sigma_mc = (
        organ_mean_doses(np.asarray(case["dose_mc_sigma"].values, dtype=np.float64), labels, t4)
        if "dose_mc_sigma" in case
        else {}
    )
    spacing = case.attrs.get("spacing_mm") or [float(np.diff(case[d].values[:2])[0]) for d in ("z", "y", "x")]
    body = body_outline(case)
    roi = roi_slices(case)
    d_eff = effective_diameter_cm(body, spacing, "aapm204", roi)
    d_area = effective_diameter_cm(body, spacing, "area", roi)
    e_mc = partial_effective_dose(mc)
    organ_rows, summed_rows = [], []
    for model_id, pred in predictions.items():
        mode, percent = parse_model_id(model_id)
        mu = np.asarray(pred["mu"].values, dtype=np.float64)
        sig = np.asarray(pred["sigma_aleatoric"].values, dtype=np.float64)
        if mu.shape[1:] != labels.shape:
            raise InputError(
                f"prediction {model_id}/{case_id}: grid {mu.shape[1:]} differs from the case grid {labels.shape}; "
                f"delete it and {_STEP_PREDICT}"
            )
        result = voxel_uncertainty(mu, sig)
        table = organ_uncertainties(result, labels, t4).set_index("organ")
        for organ in mc:
            row = table.loc[organ]
            organ_rows.append(
                {
                    "model_id": model_id,
                    "kerma_mode": mode,
                    "percent_real": percent,
                    "case_id": case_id,
                    "organ": organ,
                    "dose_nn": float(row["dose"]),
                    "dose_mc": mc[organ],
                    "sigma_aleatoric": float(row["sigma_aleatoric"]),
                    "sigma_epistemic": float(row["sigma_epistemic"]),
                    "sigma_tot": float(row["sigma_tot"]),
                    "sigma_mc": sigma_mc.get(organ, np.nan),
                    "deviation_percent": 100.0 * (float(row["dose"]) - mc[organ]) / mc[organ]
                    if mc[organ] != 0
                    else np.nan,
                    "n_members": int(mu.shape[0]),
                }
            )
        organs = list(mc)
        nn_doses = {o: float(table.loc[o, "dose"]) for o in organs}
        summed_rows.append(
            {
                "model_id": model_id,
                "kerma_mode": mode,
                "percent_real": percent,
                "case_id": case_id,
                "cohort": case.attrs.get("cohort"),
                "n_organs": len(organs),
                "dose_sum_nn": sum(nn_doses.values()),
                "dose_sum_mc": sum(mc.values()),
                "sigma_aleatoric_sum": float(table.loc[organs, "sigma_aleatoric"].sum()),
                "sigma_epistemic_sum": float(table.loc[organs, "sigma_epistemic"].sum()),
                "sigma_tot_sum": float(table.loc[organs, "sigma_tot"].sum()),
                "d_eff_cm": d_eff,
                "d_area_cm": d_area,
                "e_partial_nn": partial_effective_dose(nn_doses),
                "e_partial_mc": e_mc,
                "n_members": int(mu.shape[0]),
            }
        )
    for row in summed_rows:
        row["ratio_nn_mc"] = row["dose_sum_nn"] / row["dose_sum_mc"] if row["dose_sum_mc"] else np.nan
    return organ_rows, summed_rows


def table3_from_summed(summed: pd.DataFrame, purpose: str = "adult") -> pd.DataFrame:
    """Table 3 per model, with the TRS-457 check of the k = 2 total (see module docstring)."""
    table = max_relative_uncertainty(summed, dose="dose_sum_nn")
    meta = summed.groupby("model_id")[["kerma_mode", "percent_real", "n_members"]].first()
    table = table.join(meta, on="model_id")
    checks = [trs457_check(u, purpose) for u in table["rel_tot_k2_percent"]]
    table["trs457_purpose"] = purpose
    table["trs457_limit_percent"] = [c["limit_percent"] for c in checks]
    table["trs457_passes"] = [c["passes"] for c in checks]
    return table


def table4_from_rows(organs: pd.DataFrame, summed: pd.DataFrame) -> pd.DataFrame:
    """Table 4: mean relative deviation (percent) per model and organ, plus the partial E."""
    t4 = (
        organs.groupby(["model_id", "organ"], sort=False)["deviation_percent"]
        .agg(mean_deviation_percent="mean", n_cases="count")
        .reset_index()
    )
    dev_e = 100.0 * (summed["e_partial_nn"] - summed["e_partial_mc"]) / summed["e_partial_mc"]
    e_rows = (
        summed.assign(deviation_percent=dev_e)
        .groupby("model_id", sort=False)["deviation_percent"]
        .agg(mean_deviation_percent="mean", n_cases="count")
        .reset_index()
        .assign(organ=E_PARTIAL)
    )
    table = pd.concat([t4, e_rows[t4.columns]], ignore_index=True)
    order = {o: i for i, o in enumerate((*TABLE4_ORGANS, E_PARTIAL))}
    table["_order"] = table["organ"].map(order)
    table = table.sort_values(["model_id", "_order"]).drop(columns="_order").reset_index(drop=True)
    mode_mix = table["model_id"].map(parse_model_id)
    table.insert(1, "kerma_mode", [m for m, _ in mode_mix])
    table.insert(2, "percent_real", [p for _, p in mode_mix])
    return table


def _device(cfg) -> str:
    wanted = str(cfg.get("device", "auto")) if cfg is not None else "auto"
    if wanted != "auto":
        return wanted
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _ensure_predictions(store, model_ids, case_ids, cfg, progress: bool, predict: bool) -> None:
    """Predict the test cases a model has no prediction for, or one made from other members or
    inputs than now (:func:`_stale_predictions`); with ``predict=False`` either is an error."""
    for model_id in model_ids:
        have = set(store.prediction_case_ids(model_id))
        stale = _stale_predictions(store, model_id, [c for c in case_ids if c in have])
        missing = [c for c in case_ids if c not in have]
        if predict and (missing or stale):
            from .learn.inference import predict_model

            if stale:
                print(f"note: {len(stale)} prediction(s) of {model_id} were made by other members or from other "
                      f"inputs ({first_names(stale)}); predicting them again")
            predict_model(store, model_id, missing + stale, _device(cfg), bool(progress and sys.stderr.isatty()))
            missing, stale = [c for c in case_ids if c not in set(store.prediction_case_ids(model_id))], []
        if missing:
            raise MissingStepError(
                f"model {model_id!r} has no prediction for test case(s) {', '.join(missing)}; {_STEP_PREDICT}"
            )
        if stale:
            raise MissingStepError(
                f"model {model_id!r}: the prediction(s) for test case(s) {', '.join(stale)} were made by other "
                f"members or from other inputs than now; {_STEP_PREDICT}"
            )


def _stale_predictions(store, model_id: str, case_ids: Sequence[str]) -> list[str]:
    """The cases whose stored prediction records a digest other than the model's members and the
    case's kerma input give now (:func:`ctdose.learn.inference.prediction_digest`). Predictions
    without a digest (hand-made, or from an older ctdose) are kept."""
    from .learn.inference import PREDICTION_SETTINGS_ATTR, model_digest, prediction_digest

    recorded = {}
    for c in case_ids:
        value = store.prediction_attrs(model_id, c).get(PREDICTION_SETTINGS_ATTR)
        if value is not None:
            recorded[c] = value
    if not recorded:
        return []
    model_sha1 = model_digest(store.run_dir, model_id)
    mode = parse_model_id(model_id)[0]
    return [c for c, value in recorded.items()
            if value != prediction_digest(model_sha1, store.case_attrs(c), mode)]


def organ_volume_table(store, case_ids: Iterable[str], groups: Mapping[str, Iterable[int]]) -> pd.DataFrame:
    """Organ volumes (mL) of the Table-4 organs for the given cases (basis of Figure 7)."""
    t4 = {g: groups[g] for g in TABLE4_ORGANS if g in groups}
    rows = []
    for case_id in case_ids:
        case = store.read_case(case_id, ["labels"])
        spacing = store.case_attrs(case_id).get("spacing_mm")
        for organ, vol in organ_volumes_ml(case["labels"].values, spacing, t4).items():
            rows.append({"case_id": case_id, "organ": organ, "volume_ml": vol})
    return pd.DataFrame(rows, columns=["case_id", "organ", "volume_ml"])


def evaluate_models(
    cfg,
    store,
    progress: bool = True,
    *,
    groups: Mapping[str, Iterable[int]] | None = None,
    predict: bool = True,
    model_ids: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Evaluate every registered model on the fixed test set and write the result tables.

    Parameters
    ----------
    cfg : Profile
        The run's profile (``device``; TRS-457 purpose from ``evaluate.trs457_purpose``,
        default ``"adult"``).
    store : CaseStore
        The run's store.
    progress : bool
        Show a progress bar (only on a terminal).
    groups : mapping, optional
        Dose groups; default ``ctdose.anatomy.organs.dose_groups()``.
    predict : bool
        Predict missing test cases with :func:`ctdose.learn.inference.predict_model`;
        with ``False`` a missing prediction is an error.
    model_ids : sequence of str, optional
        These models instead of the profile's (``inputs.kerma_modes`` x
        ``train.mixes_percent_real``; every registered model where ``cfg`` is None). Models
        trained under an earlier profile that stay in the registry are named and left out.

    Returns
    -------
    dict of str to DataFrame
        ``organ_doses, summed_doses, table3, table4, calibration, organ_volumes`` (also
        written to ``<run_dir>/tables/<name>.csv``).

    Raises
    ------
    MissingStepError
        No trained model, a model of the profile not trained, no splits table, an empty test
        set, a test case without MC dose, or a model without a test prediction; the message
        names the step to run.
    """
    all_models = _models_to_evaluate(cfg, store, model_ids)
    case_ids = test_case_ids(store)
    groups = _default_groups() if groups is None else groups
    _ensure_predictions(store, all_models, case_ids, cfg, progress, predict)

    organ_rows, summed_rows = [], []
    for case_id in _tqdm(case_ids, progress, desc="evaluate test cases"):
        case = store.read_case(case_id).load()
        case.attrs.setdefault("case_id", case_id)
        preds = {m: store.read_prediction(m, case_id) for m in all_models}
        o, s = evaluate_case(case, preds, groups)
        organ_rows += o
        summed_rows += s
    organs = pd.DataFrame(organ_rows)
    summed = pd.DataFrame(summed_rows)
    ev = (cfg or {}).get("evaluate", {}) if hasattr(cfg, "get") else {}
    purpose = str(ev.get("trs457_purpose", "adult"))
    levels = ev.get("coverage_levels")
    splits = store.read_table("splits")
    tables = {
        "organ_doses": organs,
        "summed_doses": summed,
        "table3": table3_from_summed(summed, purpose),
        "table4": table4_from_rows(organs, summed),
        "calibration": calibration_table(organs, levels),
        "organ_volumes": organ_volume_table(store, sorted(set(splits["case_id"].astype(str))), groups),
    }
    for name, frame in tables.items():
        store.write_table(name, frame)
    return tables


def explain_case(
    store,
    model_id: str,
    case_id: str,
    groups: Mapping[str, Iterable[int]] | None = None,
) -> dict:
    """Eqs. 3-9 on one stored case and model, for teaching (notebook 04).

    Returns
    -------
    dict
        ``voxel`` (:class:`ctdose.uncertainty.VoxelUncertainty`), ``organs`` (DataFrame of
        organ dose and sigmas with the MC organ dose, Table-4 organs), ``dose_sum``,
        ``sigma_sum`` (eq. 9 and its full-correlation sigma), ``dose_sum_mc``, ``case``
        (the loaded case Dataset) and ``n_members``.
    """
    groups = _default_groups() if groups is None else groups
    t4 = {g: groups[g] for g in TABLE4_ORGANS if g in groups}
    case = store.read_case(case_id).load()
    pred = store.read_prediction(model_id, case_id).load()
    voxel = voxel_uncertainty(pred["mu"].values, pred["sigma_aleatoric"].values)
    labels = case["labels"].values
    organs = organ_uncertainties(voxel, labels, t4)
    mc = organ_mean_doses(case["dose_mc"].values, labels, t4)
    organs.insert(2, "dose_mc", organs["organ"].map(mc))
    return {
        "voxel": voxel,
        "organs": organs,
        "dose_sum": float(organs["dose"].sum()),
        "sigma_sum": float(organs["sigma_tot"].sum()),
        "dose_sum_mc": float(organs["dose_mc"].sum()),
        "case": case,
        "n_members": int(pred.sizes["member"]),
    }
