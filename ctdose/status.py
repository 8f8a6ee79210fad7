"""What a run of the chain would compute, told from its store and profile without computing it.

Each step of the chain keeps what it made with the settings of now and computes the rest: the
cases (:func:`ctdose.anatomy.resume.build_state`), their Monte Carlo dose and kerma inputs
(:func:`ctdose.physics.cohort_mc.variable_states`), the ensemble members
(:func:`ctdose.learn.ensemble.member_state`) and the test predictions (their digests,
:mod:`ctdose.provenance`). :func:`chain_status` asks each step the same question the step asks
itself, so that a long run (hours of Monte Carlo, a day of training) can be checked before it
starts: ``ctdose status --profile paper --set mc.n_photons=2e8`` says which cases would be
simulated again and which members trained again. Where an earlier step computes something
again, the later steps that use it count as to compute too. A partial run (``--from``,
``--only``; ``steps``) is told as it runs: its steps not run compute nothing, the later steps
use the store as it is, and one that lacks an input a step not run would make will fail.

Only the notebooks' expensive work is listed. Their other cells (plots, checks, the CTDI
simulation, the evaluation tables and figures) run on every run and take minutes.

Examples
--------
>>> from ctdose.config import load_profile
>>> table = chain_status(load_profile("smoke"), "runs/never-run")  # doctest: +SKIP
>>> set(table["state"])  # doctest: +SKIP
{'to compute'}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from ._listing import first_names
from .errors import InputError, MissingStepError
from .paths import resolve_path

__all__ = ["STATES", "STEPS", "chain_status", "format_status", "left_out_cases", "left_out_members",
           "left_out_predictions"]

#: The steps :func:`chain_status` reports, each with the notebook that does it.
STEPS = ("01 cohort", "02 Monte Carlo", "03 training", "04 predictions")

#: What a run does with an item: keep it (made with the settings of now), compute it, keep it
#: although it records no settings (made by an older ctdose), leave it out of the run (a case,
#: model or prediction of an earlier profile, which stays in the run directory until ``ctdose
#: prune`` removes it), not compute it although it is not up to date because its notebook is
#: not among those run (``--from``/``--only``), or stop with an error there (the reason says
#: why: the cases cannot be split as the profile asks, or an input that a notebook not run
#: would make is missing).
STATES = ("up to date", "to compute", "kept", "left out", "not run", "will fail")

_COLUMNS = ["step", "item", "state", "reason"]

#: Reasons, by the state the steps' own functions report.
_CASE_REASONS = {"new": "not in the store", "other": "built with other settings or from other files",
                 "unrecorded": "built without a settings record"}
_MC_REASONS = {"new": "not computed", "other": "computed with other settings",
               "unrecorded": "computed without a settings record"}
_REBUILT = "its case is built again"
_MEMBER_REASONS = {"new": "not trained", "other": "trained with other settings or data"}
_MEMBER_UPSTREAM = "its cases' dose or input is computed again"
_MEMBER_OUTSIDE = "in models/registry.csv, not among the profile's models"
_MISSING_INPUT = "its case {case} has no {variable} (notebook 02 not run)"
_UNTRAINED = "its model is not trained (notebook 03 not run)"
_NO_SPLITS = "no splits table (notebook 03 not run)"
_PREDICTION_MISSING = "not predicted"
_PREDICTION_MEMBERS = "its members are trained again"
_PREDICTION_INPUT = "the case's input is computed again"
_PREDICTION_STALE = "made by other members or from other inputs"
_PREDICTION_UNRECORDED = "made without a settings record"
_PREDICTION_OUTSIDE_MODEL = "in the store, of a model not among the profile's"
_PREDICTION_OUTSIDE_CASE = "in the store, of a case not in the profile's test set"


def _state(kind: str) -> str:
    return {"new": "to compute", "other": "to compute", "current": "up to date", "unrecorded": "kept"}[kind]


def chain_status(cfg: Mapping, run_dir: str | os.PathLike, steps: Iterable[str] | None = None) -> pd.DataFrame:
    """What ``ctdose run`` of the profile ``cfg`` into ``run_dir`` would compute.

    Nothing is computed or written: the cohort's designs are sampled (seconds), the store's
    attributes and the members' checkpoints are read, and an EGSnrc dose file is hashed.

    Parameters
    ----------
    cfg : Profile
        The profile with its overrides (:func:`ctdose.config.load_profile`).
    run_dir : path
        The run directory (a relative one is taken from the project root). It need not exist.
    steps : iterable of str, optional
        The steps the run executes (of :data:`STEPS`; default all), as ``ctdose run --from``
        or ``--only`` chooses their notebooks. A step not run computes nothing (its pending
        items are ``not run``) and the later steps take the store as it is: the cases the
        last cohort build listed, the doses stored, the members on disk, the splits table.

    Returns
    -------
    pandas.DataFrame
        ``step, item, state, reason``: one row per case (step ``01 cohort``), per case and MC
        variable (``02 Monte Carlo``, item ``"<case> <variable>"``), per model member
        (``03 training``, item ``"<model> member <k>"``) and per model and test case
        (``04 predictions``, item ``"<model> <case>"``); ``state`` one of :data:`STATES`,
        ``reason`` why (empty where up to date).
    """
    from .anatomy.cohort import planned_cases
    from .anatomy.resume import build_state
    from .learn.ensemble import profile_models
    from .learn.splits import profile_splits, test_ids
    from .store import open_store

    run = set(STEPS) if steps is None else set(steps)
    if run - set(STEPS):
        raise ValueError(f"unknown steps {sorted(run - set(STEPS))}; the steps are {STEPS}")
    run_dir = resolve_path(run_dir)
    store = open_store(run_dir)
    planned = planned_cases(cfg, store)
    rows = []
    kinds = {}
    for cid, key, legacy in zip(planned["case_id"], planned["key"], planned["legacy_key"]):
        kinds[cid] = build_state(store, cid, key, legacy)
        rows.append(("01 cohort", cid, _state(kinds[cid]), _CASE_REASONS.get(kinds[cid], "")))
    rows += [("01 cohort", cid, "left out", "in the store, not among the profile's cohorts")
             for cid in left_out_cases(store, kinds)]
    if "01 cohort" in run:
        cases, cohorts = kinds, dict(zip(planned["case_id"], planned["cohort"]))
    else:  # the later steps take the cases the last cohort build listed, as they are
        listed = store.run_case_ids() if store is not None else []
        cases = {cid: "current" for cid in listed}
        cohorts = {cid: store.case_attrs(cid).get("cohort") for cid in listed}

    mc_rows, to_compute, missing = _mc_rows(cfg, store, cases)
    rows += mc_rows
    absent = set()  # (case, variable) pairs the training and predictions will not find
    if "02 Monte Carlo" not in run:
        to_compute, absent = set(), missing

    tests = None
    try:
        splits = profile_splits(cohorts, cfg)  # as the run will make them
    except (InputError, MissingStepError) as exc:  # the run stops at its splits: say so, do not stop here
        if "03 training" in run:
            rows += [(step, "splits", "will fail", str(exc)) for step in STEPS[2:] if step in run]
        splits = None
    retrained = set()  # the models notebook 03 trains (again), where it runs
    if splits is not None:
        member_rows, trained = _member_rows(cfg, store, run_dir, splits, to_compute, absent)
        rows += member_rows
        if "03 training" in run:
            retrained = trained
    if "03 training" not in run and "04 predictions" in run:  # the predictions take the stored splits
        stored = store is not None and (store.tables_dir / "splits.csv").is_file()
        splits = store.read_table("splits") if stored else None
        if splits is None:
            rows.append(("04 predictions", "splits", "will fail", _NO_SPLITS))
    if splits is not None:
        tests = test_ids(splits)
        rows += _prediction_rows(cfg, store, run_dir, tests, to_compute, absent, retrained,
                                 trained_now="03 training" in run)
    # what the run leaves out of training and evaluation: known without the splits, but for
    # the predictions of cases outside the test set
    models = {mid for mid, _, _ in profile_models(cfg)}
    rows += [("03 training", f"{mid} member {k}", "left out", _MEMBER_OUTSIDE)
             for mid, k in left_out_members(cfg, run_dir)]
    rows += [("04 predictions", f"{mid} {cid}", "left out",
              _PREDICTION_OUTSIDE_CASE if mid in models else _PREDICTION_OUTSIDE_MODEL)
             for mid, cid in left_out_predictions(cfg, store, tests)]
    rows = [_not_run(row) if row[0] not in run else row for row in rows]
    table = pd.DataFrame(rows, columns=_COLUMNS)
    return table.sort_values("step", kind="stable", key=lambda col: col.map(STEPS.index)).reset_index(drop=True)


def _not_run(row: tuple) -> tuple:
    """A row of a step the run does not execute: what it would compute stays as it is."""
    step, item, state, reason = row
    if state in ("to compute", "will fail"):
        return step, item, "not run", f"notebook {step[:2]} not run; {reason}"
    return row


def _mc_rows(cfg, store, kinds: Mapping[str, str]) -> tuple[list, set, set]:
    """Rows of the MC step, the ``(case_id, variable)`` pairs it computes, and those of them
    that are missing from the store (not computed yet, or dropped with a case built again)."""
    from .physics.cohort_mc import mc_variables, variable_states

    kept = [cid for cid, kind in kinds.items() if kind in ("current", "unrecorded")]
    states = {(r.case_id, r.variable): r.state for r in variable_states(cfg, store, kept).itertuples()} if kept else {}
    rows, to_compute, missing = [], set(), set()
    for cid, kind in kinds.items():  # in the cohort's order
        for v in mc_variables(cfg):
            if kind in ("new", "other"):  # the case is built (again): all its variables with it
                state, reason = "to compute", _REBUILT if kind == "other" else _MC_REASONS["new"]
            else:
                state, reason = _state(states[cid, v]), _MC_REASONS.get(states[cid, v], "")
            rows.append(("02 Monte Carlo", f"{cid} {v}", state, reason))
            if state == "to compute":
                to_compute.add((cid, v))
                if kind in ("new", "other") or states[cid, v] == "new":
                    missing.add((cid, v))
    return rows, to_compute, missing


def _member_rows(cfg, store, run_dir: Path, splits: pd.DataFrame, to_compute: set, absent: set) -> tuple[list, set]:
    """Rows of the training step, and the ids of the models some member of which is trained
    (``to_compute``: the ``(case_id, variable)`` pairs the MC step computes; ``absent``: those
    the training will not find, its members then fail)."""
    from .learn.ensemble import member_files, member_state, profile_models, train_settings_sha1
    from .learn.normalise import DOSE_VARIABLE, kerma_variable
    from .learn.splits import cases_of

    rows, retrained = [], set()
    for mid, mode, percent in profile_models(cfg):
        train_ids, val_ids = cases_of(splits, percent, "train"), cases_of(splits, percent, "val")
        # the member's digest covers these variables of its training and validation cases
        inputs = [(c, v) for c in (*train_ids, *val_ids) for v in (DOSE_VARIABLE, kerma_variable(mode))]
        lacking = [pair for pair in inputs if pair in absent]
        upstream = any(pair in to_compute for pair in inputs)
        settings = legacy = None
        if not upstream and not lacking:
            settings, legacy = (train_settings_sha1(cfg, store, mode, percent, train_ids, val_ids, legacy=old)
                                for old in (False, True))
        for member in range(int(cfg["train"]["members"])):
            item, files = f"{mid} member {member}", member_files(run_dir, mid, member)
            if lacking:
                rows.append(("03 training", item, "will fail",
                             _MISSING_INPUT.format(case=lacking[0][0], variable=lacking[0][1])))
            elif upstream and all(f.is_file() for f in files):
                rows.append(("03 training", item, "to compute", _MEMBER_UPSTREAM))
            else:
                kind = "new" if upstream else member_state(*files, mode, settings, legacy)[0]
                rows.append(("03 training", item, _state(kind), _MEMBER_REASONS.get(kind, "")))
            if rows[-1][2] == "to compute":
                retrained.add(mid)
    return rows, retrained


def _prediction_rows(cfg, store, run_dir: Path, tests: list[str], to_compute: set, absent: set, retrained: set,
                     trained_now: bool) -> list:
    """Rows of the prediction step (the test cases ``tests`` of each model, predicted by
    notebook 04); ``trained_now``: the training step runs before it (else the members on disk
    are used, and a model without them fails)."""
    from .evaluate import _stale_predictions
    from .learn.ensemble import member_files, profile_models
    from .learn.inference import PREDICTION_SETTINGS_ATTR
    from .learn.normalise import kerma_variable

    rows = []
    for mid, mode, _ in profile_models(cfg):
        have = set(store.prediction_case_ids(mid)) if store is not None else set()
        untrained = not trained_now and not all(
            f.is_file() for k in range(int(cfg["train"]["members"])) for f in member_files(run_dir, mid, k))
        # a prediction's digest covers the model's members and the case's kerma input
        new_input = {c for c in tests if (c, kerma_variable(mode)) in to_compute}
        check = [c for c in tests if c in have and c not in new_input and mid not in retrained and not untrained]
        recorded = [c for c in check if store.prediction_attrs(mid, c).get(PREDICTION_SETTINGS_ATTR) is not None]
        stale = set(_stale_predictions(store, mid, recorded)) if recorded else set()
        for cid in tests:
            if (cid, kerma_variable(mode)) in absent:
                row = ("will fail", _MISSING_INPUT.format(case=cid, variable=kerma_variable(mode)))
            elif untrained:
                row = ("will fail", _UNTRAINED)
            elif cid not in have:
                row = ("to compute", _PREDICTION_MISSING)
            elif mid in retrained:
                row = ("to compute", _PREDICTION_MEMBERS)
            elif cid in new_input:
                row = ("to compute", _PREDICTION_INPUT)
            elif cid in stale:
                row = ("to compute", _PREDICTION_STALE)
            elif cid not in recorded:
                row = ("kept", _PREDICTION_UNRECORDED)
            else:
                row = ("up to date", "")
            rows.append(("04 predictions", f"{mid} {cid}", *row))
    return rows


def left_out_cases(store, case_ids: Iterable[str]) -> list[str]:
    """Cases in ``store`` (None: no store) that are not among ``case_ids``, the profile's:
    cases of an earlier profile, which the run leaves out."""
    wanted = set(case_ids)
    return [] if store is None else [cid for cid in store.case_ids() if cid not in wanted]


def left_out_members(cfg, run_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """``(model_id, member)`` of the members in ``models/registry.csv`` whose model is not
    among the profile's (:func:`ctdose.learn.ensemble.profile_models`): trained under an
    earlier profile, kept on disk, left out of the evaluation."""
    from .learn.ensemble import profile_models

    registry = resolve_path(run_dir) / "models" / "registry.csv"
    if not registry.is_file():
        return []
    try:
        table = pd.read_csv(registry)
    except pd.errors.EmptyDataError:
        return []
    if not {"model_id", "member"} <= set(table.columns):
        raise InputError(f"{registry}: not a model registry (it needs the columns model_id and member)")
    wanted = {mid for mid, _, _ in profile_models(cfg)}
    return [(str(m), int(k)) for m, k in zip(table["model_id"], table["member"]) if str(m) not in wanted]


def left_out_predictions(cfg, store, test_ids: Iterable[str] | None) -> list[tuple[str, str]]:
    """``(model_id, case_id)`` of the stored predictions that are not of a profile's model and
    test case (``test_ids``; None where the test set is not known: then only the predictions of
    other models)."""
    from .learn.ensemble import profile_models

    if store is None:
        return []
    models = {mid for mid, _, _ in profile_models(cfg)}
    tests = None if test_ids is None else set(test_ids)
    return [(mid, cid) for mid in store.model_ids() for cid in store.prediction_case_ids(mid)
            if mid not in models or (tests is not None and cid not in tests)]


def format_status(table: pd.DataFrame) -> str:
    """The table of :func:`chain_status` in a few lines: per step the count of each state,
    and per reason the first items."""
    lines = []
    for step in STEPS:
        part = table[table["step"] == step]
        if part.empty:
            lines.append(f"{step}: nothing")
            continue
        if (part["state"] == "will fail").all():
            lines.append(f"{step}: will fail at its {', '.join(part['item'])}: {part['reason'].iloc[0]}")
            continue
        counts = part["state"].value_counts()
        lines.append(f"{step}: " + ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts))
        for (state, reason), group in part[part["state"] != "up to date"].groupby(["state", "reason"], sort=False):
            lines.append(f"    {state}: {len(group)} {reason} ({first_names(list(group['item']))})")
    return "\n".join(lines)
