"""The case store: one Zarr v3 store per run directory, one xarray Dataset per case.

Layout (see ``docs/architecture.md``)::

    <run_dir>/store.zarr/cases/<case_id>/                 labels, body_mask, density_e, dose_mc, ...
    <run_dir>/store.zarr/predictions/<model_id>/<case_id>/ mu, sigma_aleatoric (member, z, y, x)
    <run_dir>/manifest.csv                                 one row per case
    <run_dir>/tables/<name>.csv                            organ doses, splits, Table 3/4, ...

Writes are atomic per case: a case is written into a hidden temporary group
(``cases/.tmp-<case_id>-<token>``) and renamed into place when complete. A rename of a
directory is atomic on POSIX file systems, and Zarr v3 keeps no listing of child groups in
the parent, so a crash or Ctrl-C at any moment leaves either the previous complete case or
the new complete case, never a half-written one. Hidden groups are ignored by readers and
removed by :meth:`CaseStore.cleanup`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from . import __version__
from ._atomic import atomic_remove_folder, atomic_write_csv, atomic_write_text
from ._plain import to_plain
from ._listing import first_names
from .errors import InputError, MissingStepError
from .paths import resolve_path

__all__ = ["CaseStore", "make_case", "open_store", "provenance"]

#: Table of the run's cases, written by the cohort build (notebook 01).
CASES_TABLE = "cases"

CHUNK_EDGE = 64
"""Chunk edge length in voxels (chunks of about 64^3)."""

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SPATIAL_DIMS = ("z", "y", "x")


def _group_attrs(group: Path) -> dict:
    """The attributes of a Zarr group, read from its ``zarr.json`` only."""
    return dict(json.loads((group / "zarr.json").read_text()).get("attributes", {}))


def _check_id(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _ID_PATTERN.match(name):
        raise InputError(
            f"{kind} {name!r}: use letters, digits, '_', '-', '.' only, not starting with '.' or '-'"
        )
    return name


def _jsonable(value: Any) -> Any:
    return to_plain(value, "attribute")


def provenance(profile: str | None = None, seed: int | None = None, **extra: Any) -> dict:
    """Provenance attributes: profile, seed, ctdose version, creation time (UTC)."""
    info = {
        "profile": profile,
        "seed": seed,
        "ctdose_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(extra)
    return _jsonable(info)


def make_case(
    labels: np.ndarray,
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
    variables: Mapping[str, np.ndarray] | None = None,
    **attrs: Any,
) -> xr.Dataset:
    """Build a case Dataset with physical coordinates.

    Parameters
    ----------
    labels : ndarray of uint8, shape (nz, ny, nx)
        Label volume in the ctdose label scheme (``ctdose/data/organs.csv``).
    spacing_mm : sequence of 3 float
        Voxel size ``(dz, dy, dx)`` in mm.
    origin_mm : sequence of 3 float
        Centre of voxel ``[0, 0, 0]`` as ``(z0, y0, x0)`` in mm.
    variables : mapping, optional
        Further volumes on the same grid (``density_e``, ``dose_mc``, ...).
    **attrs
        Case attributes; must include ``case_id``. Must be JSON-serialisable.

    Returns
    -------
    xarray.Dataset
        Dims ``(z, y, x)``, coordinates in mm, ``spacing_mm``/``origin_mm`` attributes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels: expected a 3D volume [z, y, x], got shape {labels.shape}")
    if labels.size == 0:
        raise InputError("labels: empty volume")
    spacing = [float(s) for s in spacing_mm]
    origin = [float(o) for o in origin_mm]
    if len(spacing) != 3 or len(origin) != 3 or min(spacing) <= 0:
        raise InputError(f"spacing_mm {spacing_mm} / origin_mm {origin_mm}: need 3 values, spacing > 0")
    coords = {
        dim: (dim, origin[i] + spacing[i] * np.arange(labels.shape[i]), {"units": "mm"})
        for i, dim in enumerate(_SPATIAL_DIMS)
    }
    data = {"labels": (_SPATIAL_DIMS, labels.astype(np.uint8, copy=False))}
    for name, arr in (variables or {}).items():
        arr = np.asarray(arr)
        if arr.shape != labels.shape:
            raise InputError(f"variable {name!r}: shape {arr.shape} differs from labels {labels.shape}")
        data[name] = (_SPATIAL_DIMS, arr)
    attrs = dict(attrs)
    attrs["spacing_mm"] = spacing
    attrs["origin_mm"] = origin
    return xr.Dataset(data, coords=coords, attrs=_jsonable(attrs))


def _encoding(ds: xr.Dataset) -> dict:
    enc = {}
    compressor = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    for name, var in ds.data_vars.items():
        chunks = tuple(1 if d == "member" else min(CHUNK_EDGE, n) for d, n in zip(var.dims, var.shape))
        enc[name] = {"chunks": chunks, "compressors": (compressor,)}
    return enc


def open_store(run_dir: str | os.PathLike) -> "CaseStore | None":
    """The store of a run directory, or None where it has none yet (nothing is created)."""
    root = resolve_path(run_dir) / "store.zarr"
    return CaseStore(root) if root.exists() else None


class CaseStore:
    """A Zarr v3 case store in a run directory.

    Parameters
    ----------
    root : path
        Path of the ``.zarr`` directory; created if missing.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> store = CaseStore.for_run(tempfile.mkdtemp())
    >>> ds = make_case(np.ones((2, 3, 4), np.uint8), (2, 2, 2), (0, 0, 0), case_id="c1", cohort="synthetic")
    >>> store.write_case(ds)
    >>> store.case_ids()
    ['c1']
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not (self.root / "zarr.json").is_file():
            raise InputError(f"{self.root}: exists but is not a Zarr v3 store (no zarr.json)")
        group = zarr.open_group(str(self.root), mode="a", zarr_format=3)
        for sub in ("cases", "predictions"):
            if sub not in group:
                group.create_group(sub)
        group.attrs.setdefault("ctdose_store_version", 1)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> "CaseStore":
        """Open (or create) the store of a run directory, ``<run_dir>/store.zarr``.

        A relative ``run_dir`` is taken from the project root (see :mod:`ctdose.paths`).
        """
        run_dir = resolve_path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_dir / "store.zarr")

    @property
    def run_dir(self) -> Path:
        return self.root.parent

    @property
    def tables_dir(self) -> Path:
        return self.run_dir / "tables"

    # -- low level ----------------------------------------------------------------------
    def _children(self, rel: str) -> list[str]:
        folder = self.root / rel
        if not folder.is_dir():
            return []
        return sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").is_file()
        )

    def _atomic_write(self, rel_parent: str, name: str, ds: xr.Dataset, overwrite: bool) -> None:
        parent = self.root / rel_parent
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / name
        if target.exists() and not overwrite:
            raise InputError(f"{target}: already in the store (use overwrite=True to replace it)")
        token = uuid.uuid4().hex[:8]
        tmp_rel = f"{rel_parent}/.tmp-{name}-{token}"
        try:
            ds.to_zarr(
                str(self.root), group=tmp_rel, mode="w", zarr_format=3, consolidated=False, encoding=_encoding(ds)
            )
            self._swap(self.root / tmp_rel, target)
        except BaseException:
            shutil.rmtree(self.root / tmp_rel, ignore_errors=True)
            raise

    @staticmethod
    def _swap(new: Path, target: Path) -> None:
        """Put the complete directory ``new`` in place of ``target`` (atomic renames)."""
        if target.exists():
            trash = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
            os.rename(target, trash)
            try:
                os.rename(new, target)
            except BaseException:
                os.rename(trash, target)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(new, target)

    def leftovers(self) -> list[str]:
        """Hidden ``.tmp-``/``.trash-`` groups that interrupted writes left behind (paths
        relative to the store)."""
        predictions = self.root / "predictions"
        models = [p for p in predictions.glob("*") if p.is_dir() and not p.name.startswith((".tmp-", ".trash-"))]
        found = []
        for folder in [self.root / "cases", predictions, *models]:
            if folder.is_dir():
                found += [str(p.relative_to(self.root)) for p in sorted(folder.iterdir())
                          if p.name.startswith((".tmp-", ".trash-"))]
        return found

    def cleanup(self) -> list[str]:
        """Remove the :meth:`leftovers` of interrupted writes; returns them."""
        removed = self.leftovers()
        for rel in removed:
            shutil.rmtree(self.root / rel, ignore_errors=True)
        return removed

    # -- cases --------------------------------------------------------------------------
    def case_ids(self, cohort: str | None = None) -> list[str]:
        """Sorted ids of the complete cases, optionally of one cohort."""
        ids = self._children("cases")
        if cohort is None:
            return ids
        return [c for c in ids if self.case_attrs(c).get("cohort") == cohort]

    def run_case_ids(self, say: str | None = None) -> list[str]:
        """Sorted ids of the run's cases: those the cohort build listed in ``tables/cases.csv``
        (:data:`CASES_TABLE`, the profile's cohorts), or every case where there is no such table.

        Cases of an earlier profile that stay in the store (a smaller cohort now, a clinical
        folder no longer named) are left out; with ``say`` (the step's name) a note names them.
        """
        ids = self.case_ids()
        path = self.tables_dir / f"{CASES_TABLE}.csv"
        if not path.is_file():
            return ids
        listed = set(pd.read_csv(path)["case_id"].astype(str))
        outside = [c for c in ids if c not in listed]
        if outside and say:
            print(f"{say}: {len(outside)} case(s) in the store are not among the profile's cohorts "
                  f"({first_names(outside)}); left out")
        return [c for c in ids if c in listed]

    def __contains__(self, case_id: str) -> bool:
        return (self.root / "cases" / case_id / "zarr.json").is_file()

    def __len__(self) -> int:
        return len(self.case_ids())

    def _require(self, case_id: str) -> Path:
        path = self.root / "cases" / case_id
        if not (path / "zarr.json").is_file():
            raise MissingStepError(
                f"case {case_id!r} is not in {self.root}; run notebook 01_phantom_sampling "
                "(ctdose run --only 01_phantom_sampling) first"
            )
        return path

    def write_case(
        self, ds: xr.Dataset, case_id: str | None = None, *, overwrite: bool = False, manifest: bool = True
    ) -> None:
        """Write a case atomically.

        Parameters
        ----------
        ds : xarray.Dataset
            A case made with :func:`make_case` (dims ``z, y, x``).
        case_id : str, optional
            Defaults to ``ds.attrs["case_id"]``.
        overwrite : bool
            Replace an existing case (atomically); otherwise an existing case is an error.
        manifest : bool
            Rewrite ``manifest.csv`` afterwards. Bulk writers (parallel cohorts) pass ``False``
            and call :meth:`write_manifest` once at the end.
        """
        case_id = _check_id("case id", case_id or ds.attrs.get("case_id", ""))
        if "labels" not in ds:
            raise InputError(f"case {case_id!r}: a case needs a 'labels' variable")
        ds = ds.copy()
        ds.attrs = _jsonable({**ds.attrs, "case_id": case_id})
        self._atomic_write("cases", case_id, ds, overwrite)
        if manifest:
            self.write_manifest()

    def read_case(self, case_id: str, variables: Sequence[str] | None = None) -> xr.Dataset:
        """Open a case lazily (zarr-backed, no dask); call ``.load()`` to read it into memory."""
        self._require(case_id)
        ds = xr.open_zarr(
            str(self.root), group=f"cases/{case_id}", zarr_format=3, consolidated=False, chunks=None
        )
        if variables is not None:
            missing = [v for v in variables if v not in ds]
            if missing:
                raise MissingStepError(
                    f"case {case_id!r} has no {', '.join(missing)}; {_step_for(missing[0])}"
                )
            ds = ds[list(variables)]
        return ds

    def case_attrs(self, case_id: str) -> dict:
        """Attributes of a case (read from its metadata only)."""
        return _group_attrs(self._require(case_id))

    def update_case_attrs(self, case_id: str, attrs: Mapping[str, Any]) -> None:
        """Set attributes of a case without copying its volumes.

        Only the case's metadata file (``zarr.json``) is replaced, atomically: for records
        that change while the data stays (which source files were read, at which size and
        time). Results go through :meth:`add_variables`, which writes volumes and attributes
        together.
        """
        meta_path = self._require(case_id) / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"] = {**meta.get("attributes", {}), **_jsonable(dict(attrs))}
        atomic_write_text(meta_path, json.dumps(meta, indent=2))

    def case_variables(self, case_id: str) -> list[str]:
        """Names of the data variables of a case."""
        path = self._require(case_id)
        return sorted(
            p.name
            for p in path.iterdir()
            if (p / "zarr.json").is_file()
            and json.loads((p / "zarr.json").read_text()).get("node_type") == "array"
            and p.name not in _SPATIAL_DIMS
        )

    def add_variables(
        self,
        case_id: str,
        arrays: Mapping[str, np.ndarray | xr.DataArray],
        attrs: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = True,
        manifest: bool = True,
        drop_attrs: Iterable[str] = (),
    ) -> None:
        """Add (or replace) volumes of a case atomically.

        The case is copied into a hidden group, the variables are written there, and the
        copy is renamed into place: an interruption leaves the previous complete case.
        ``drop_attrs`` names attributes removed before ``attrs`` are merged (those of a
        result being replaced that the new result may not set again).
        """
        path = self._require(case_id)
        shape = tuple(self.read_case(case_id)["labels"].shape)
        existing = set(self.case_variables(case_id))
        new = {}
        for name, arr in arrays.items():
            values = np.asarray(arr.values if isinstance(arr, xr.DataArray) else arr)
            if values.shape != shape:
                raise InputError(f"case {case_id!r}, variable {name!r}: shape {values.shape} != case grid {shape}")
            if name in existing and not overwrite:
                raise InputError(f"case {case_id!r}: variable {name!r} exists (overwrite=False)")
            new[name] = values
        dropped = set(drop_attrs)
        kept = {k: v for k, v in self.case_attrs(case_id).items() if k not in dropped}
        merged_attrs = {**kept, **_jsonable(dict(attrs or {}))}
        tmp = path.with_name(f".tmp-{case_id}-{uuid.uuid4().hex[:8]}")
        try:
            shutil.copytree(path, tmp)
            for name in new:
                if name in existing:
                    shutil.rmtree(tmp / name)
            rel = str(tmp.relative_to(self.root))
            if new:
                ds_new = xr.Dataset({k: (_SPATIAL_DIMS, v) for k, v in new.items()})
                ds_new.to_zarr(
                    str(self.root), group=rel, mode="a", zarr_format=3, consolidated=False,
                    encoding=_encoding(ds_new),
                )
            # xarray's append mode rewrites the group attributes: restore the merged set
            group = zarr.open_group(str(self.root), path=rel, mode="r+", zarr_format=3)
            group.attrs.put(merged_attrs)
            self._swap(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if manifest:
            self.write_manifest()

    def delete_case(self, case_id: str, manifest: bool = True) -> None:
        """Remove a case (atomically, :func:`ctdose._atomic.atomic_remove_folder`); its
        predictions stay."""
        atomic_remove_folder(self._require(case_id))
        if manifest:
            self.write_manifest()

    # -- predictions --------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        """Models that have at least one stored prediction."""
        return [m for m in self._children_dirs("predictions") if self._children(f"predictions/{m}")]

    def _children_dirs(self, rel: str) -> list[str]:
        folder = self.root / rel
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def prediction_case_ids(self, model_id: str) -> list[str]:
        return self._children(f"predictions/{model_id}")

    def prediction_attrs(self, model_id: str, case_id: str) -> dict:
        """Attributes of a stored prediction (read from its metadata only)."""
        path = self.root / "predictions" / model_id / case_id
        if not (path / "zarr.json").is_file():
            raise MissingStepError(f"no prediction of model {model_id!r} for case {case_id!r}")
        return _group_attrs(path)

    def delete_prediction(self, model_id: str, case_id: str) -> None:
        """Remove a stored prediction (atomically); a model left without predictions goes too."""
        path = self.root / "predictions" / model_id / case_id
        if not (path / "zarr.json").is_file():
            raise MissingStepError(f"no prediction of model {model_id!r} for case {case_id!r}")
        atomic_remove_folder(path)
        if not self.prediction_case_ids(model_id):
            atomic_remove_folder(path.parent)

    def write_prediction(self, model_id: str, case_id: str, ds: xr.Dataset, *, overwrite: bool = True) -> None:
        """Write a model's prediction for one case atomically (dims ``member, z, y, x``)."""
        _check_id("model id", model_id)
        _check_id("case id", case_id)
        ds = ds.copy()
        ds.attrs = _jsonable({**ds.attrs, "model_id": model_id, "case_id": case_id})
        self._atomic_write(f"predictions/{model_id}", case_id, ds, overwrite)

    def read_prediction(self, model_id: str, case_id: str) -> xr.Dataset:
        path = self.root / "predictions" / model_id / case_id / "zarr.json"
        if not path.is_file():
            raise MissingStepError(
                f"no prediction of model {model_id!r} for case {case_id!r}; run notebook "
                "04_ensemble_uncertainty (ctdose run --only 04_ensemble_uncertainty)"
            )
        return xr.open_zarr(
            str(self.root), group=f"predictions/{model_id}/{case_id}", zarr_format=3, consolidated=False, chunks=None
        )

    # -- tables -------------------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``<run_dir>/tables/<name>.csv`` atomically; returns the path."""
        name = name[:-4] if name.endswith(".csv") else name
        _check_id("table name", name)
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        path = self.tables_dir / f"{name}.csv"
        atomic_write_csv(df, path)
        return path

    def read_table(self, name: str) -> pd.DataFrame:
        name = name[:-4] if name.endswith(".csv") else name
        path = self.tables_dir / f"{name}.csv"
        if not path.is_file():
            raise MissingStepError(f"{path}: table not found; {_step_for(name)}")
        return pd.read_csv(path)

    # -- manifest -----------------------------------------------------------------------
    def manifest(self) -> pd.DataFrame:
        """One row per case: id, cohort, sex, height, shape, spacing and variables."""
        rows = []
        for case_id in self.case_ids():
            attrs = self.case_attrs(case_id)
            labels_meta = json.loads((self.root / "cases" / case_id / "labels" / "zarr.json").read_text())
            row = {
                "case_id": case_id,
                "cohort": attrs.get("cohort"),
                "sex": attrs.get("sex"),
                "height_m": attrs.get("height_m"),
                "shape": "x".join(str(n) for n in labels_meta.get("shape", [])),
                "spacing_mm": "x".join(f"{s:g}" for s in attrs.get("spacing_mm", [])),
                "variables": " ".join(self.case_variables(case_id)),
            }
            rows.append(row)
        columns = ["case_id", "cohort", "sex", "height_m", "shape", "spacing_mm", "variables"]
        return pd.DataFrame(rows, columns=columns)

    def write_manifest(self) -> Path:
        """Rewrite ``<run_dir>/manifest.csv`` (atomically)."""
        path = self.run_dir / "manifest.csv"
        atomic_write_csv(self.manifest(), path)
        return path

    def __repr__(self) -> str:
        return f"CaseStore({str(self.root)!r}, cases={len(self)})"


_STEP_OF = {
    "labels": "01_phantom_sampling",
    "body_mask": "01_phantom_sampling",
    "density_e": "01_phantom_sampling",
    "dose_mc": "02_mc_preparation",
    "dose_mc_sigma": "02_mc_preparation",
    "kerma_cylinder": "02_mc_preparation",
    "kerma_patient": "02_mc_preparation",
    "ssde_check": "02_mc_preparation",
    "splits": "03_training",
}


def _step_for(name: str) -> str:
    step = _STEP_OF.get(name)
    if step is None:
        return "run the chain step that makes it (ctdose run)"
    return f"run notebook {step} first (ctdose run --only {step})"
