"""Remove what a profile's run leaves out: cases, models and predictions of an earlier profile.

A run keeps what it does not use. Cases of an earlier, larger cohort stay in the store, models
of mixes or kerma modes no longer in the profile stay in ``models/``, predictions of an earlier
test set stay beside the current ones: ``ctdose status`` lists them as *left out*. On a paper
run they are gigabytes. :func:`prune_plan` lists the same items (the functions
:func:`ctdose.status.left_out_cases`, :func:`~ctdose.status.left_out_members` and
:func:`~ctdose.status.left_out_predictions` decide for both) with their size on disk, and the
leftovers of interrupted writes; :func:`prune` removes them. The command
``ctdose prune --profile P --out DIR`` only lists; ``--yes`` removes.

Each removal is atomic (a case or prediction is renamed away, then deleted; the registry is
rewritten last, by rename), so an interrupted prune leaves a consistent run directory and a
second prune finishes the work.

Examples
--------
>>> from ctdose.config import load_profile
>>> plan = prune_plan(load_profile("demo", ["train.mixes_percent_real=[0, 100]"]), "runs/demo")  # doctest: +SKIP
>>> plan.groupby("what")["bytes"].sum()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ._atomic import atomic_remove_folder, atomic_write_csv
from .errors import InputError, MissingStepError
from .paths import resolve_path

__all__ = ["PLAN_COLUMNS", "format_plan", "prune", "prune_plan"]

#: Columns of :func:`prune_plan`: what kind of item (``case``, ``model``, ``prediction``,
#: ``leftover``), its name, its path relative to the run directory, and its size in bytes.
PLAN_COLUMNS = ["what", "item", "path", "bytes"]

#: The kinds in the order they are removed: what depends on a case or model goes first.
_REMOVAL_ORDER = ("prediction", "case", "model", "leftover")


def _size_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prune_plan(cfg, run_dir: str | os.PathLike) -> pd.DataFrame:
    """What :func:`prune` would remove from ``run_dir`` for the profile ``cfg``; nothing is
    removed or written.

    Parameters
    ----------
    cfg : Profile
        The profile with its overrides (:func:`ctdose.config.load_profile`): the one the run
        directory is run with.
    run_dir : path
        The run directory (a relative one is taken from the project root).

    Returns
    -------
    pandas.DataFrame
        :data:`PLAN_COLUMNS`, one row per item: a case not among the profile's cohorts (its
        whole group in the store), a model not among the profile's (its folder in ``models/``
        and its rows of ``models/registry.csv``), a prediction of such a model or of a case not
        in the profile's test set, and a hidden group an interrupted write left behind; in
        the order :func:`prune` removes them (predictions first).
    """
    from .anatomy.cohort import planned_cases
    from .learn.splits import profile_splits, test_ids
    from .status import left_out_cases, left_out_members, left_out_predictions
    from .store import open_store

    run_dir = resolve_path(run_dir)
    store = open_store(run_dir)
    planned = planned_cases(cfg, store)
    rows = []
    cases = left_out_cases(store, planned["case_id"])
    rows += [("case", cid, f"store.zarr/cases/{cid}") for cid in cases]
    models = sorted({mid for mid, _ in left_out_members(cfg, run_dir)})
    rows += [("model", mid, f"models/{mid}") for mid in models]
    try:
        tests = test_ids(profile_splits(dict(zip(planned["case_id"], planned["cohort"])), cfg))
    except (InputError, MissingStepError):  # the profile's cases cannot be split: its test set is not known
        tests = None
    predictions = set(left_out_predictions(cfg, store, tests))
    if store is not None:  # the predictions of a case that goes go with it
        gone = set(cases)
        predictions |= {(mid, cid) for mid in store.model_ids() for cid in store.prediction_case_ids(mid)
                        if cid in gone}
        rows += [("leftover", name, f"store.zarr/{name}") for name in store.leftovers()]
    models_dir = run_dir / "models"
    if models_dir.is_dir():  # a model folder whose removal was interrupted
        rows += [("leftover", p.name, f"models/{p.name}") for p in sorted(models_dir.glob(".trash-*"))]
    rows += [("prediction", f"{mid} {cid}", f"store.zarr/predictions/{mid}/{cid}") for mid, cid in sorted(predictions)]
    rows.sort(key=lambda row: _REMOVAL_ORDER.index(row[0]))  # stable: each kind keeps its order
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS[:3])
    plan["bytes"] = [_size_bytes(run_dir / p) if (run_dir / p).exists() else 0 for p in plan["path"]]
    return plan


def prune(cfg, run_dir: str | os.PathLike) -> pd.DataFrame:
    """Remove what :func:`prune_plan` lists; returns that plan.

    Cases and predictions are removed from the store atomically (renamed away, then deleted),
    a model's folder likewise, and its rows leave ``models/registry.csv`` last (the file is
    replaced by rename). An interrupted prune leaves a consistent run directory; run it again
    to finish.
    """
    from .status import left_out_members
    from .store import open_store

    run_dir = resolve_path(run_dir)
    plan = prune_plan(cfg, run_dir)
    store = open_store(run_dir)
    for row in plan.itertuples():
        path = run_dir / row.path
        if row.what == "prediction":
            mid, cid = path.parent.name, path.name
            if cid in store.prediction_case_ids(mid):
                store.delete_prediction(mid, cid)
        elif row.what == "case":
            if row.item in store:
                store.delete_case(row.item, manifest=False)
        elif row.what == "model" and path.exists():
            atomic_remove_folder(path)
        elif row.what == "leftover" and path.exists():
            shutil.rmtree(path)
    if store is not None and (plan["what"] == "case").any():
        store.write_manifest()
    gone = set(left_out_members(cfg, run_dir))
    registry = run_dir / "models" / "registry.csv"
    if gone:
        table = pd.read_csv(registry)
        keep = [(str(m), int(k)) not in gone for m, k in zip(table["model_id"], table["member"])]
        atomic_write_csv(table[keep], registry)
    return plan


def format_plan(plan: pd.DataFrame) -> str:
    """The plan in a few lines: per kind the count, the size and the first names."""
    from ._listing import first_names

    if plan.empty:
        return "nothing is left out"
    lines = []
    for what in ("case", "model", "prediction", "leftover"):
        part = plan[plan["what"] == what]
        if len(part):
            lines.append(f"{len(part)} {what}(s), {_megabytes(part['bytes'].sum())}: {first_names(list(part['item']))}")
    lines.append(f"in all {_megabytes(plan['bytes'].sum())}")
    return "\n".join(lines)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
