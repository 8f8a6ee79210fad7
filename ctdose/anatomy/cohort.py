"""Build every cohort of a profile into the case store (notebook 01).

:func:`build_cohorts` samples the synthetic design (:mod:`.synthetic`) and the surrogate
cohort (:mod:`.surrogate`), voxelises each phantom at ``cohort.spacing_mm`` (only the thorax
ROI of :mod:`.roi`, for speed), derives ``body_mask`` and ``density_e``
(:func:`ctdose.materials.electron_density_map`) and writes each case atomically. If the
profile names ``cohort.clinical_dir`` (``<dir>/<case>/ct.nii.gz + seg.nii.gz`` or
``<dir>/<case>/dicom/``) or ``cohort.xcat_dir`` (``<name>_act_1.bin`` + ``<name>_log``),
those cases are imported too (cohorts ``clinical`` and ``xcat``).

The run is resumable: cases already in the store are skipped with a printed note. A case
records the digest of what it was built from (``labels_settings_sha1``: a phantom's sampled
parameters, an imported case's reader settings, ``cohort.spacing_mm``, ``roi_margin_mm``,
``roi_superior``; :mod:`ctdose.anatomy.resume`); one built with other settings is built again,
and its Monte Carlo dose and inputs with it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ConfigError
from ..provenance import digest
from ..store import CASES_TABLE, CaseStore, make_case, provenance
from .organs import body_mask, organ_table
from .phantom import PhantomParams, build_phantom
from .resume import LABELS_SETTINGS_ATTR, ImportJob, import_cases, import_job, needs_build, write_built
from .roi import thorax_roi_z_mm
from .surrogate import sample_surrogate, surrogate_params
from .synthetic import sample_synthetic, synthetic_params

__all__ = [
    "build_cohorts",
    "sample_designs",
    "planned_cases",
    "phantom_case",
    "case_variables",
    "organ_volumes_ml",
    "organ_volume_table",
    "cohort_summary",
    "slice_views",
    "label_colormap",
]

_DESIGN_TABLES = {"synthetic": "cohort_synthetic", "surrogate": "cohort_surrogate"}


def organ_volumes_ml(labels: np.ndarray, spacing_mm) -> dict[str, float]:
    """Volume (mL) of every label present in ``labels`` ([z, y, x], ``spacing_mm`` = (dz, dy, dx)).

    Returns
    -------
    dict
        ``{organ name: volume in mL}`` for the labels with at least one voxel.
    """
    voxel_ml = float(np.prod(np.broadcast_to(np.asarray(spacing_mm, float), (3,)))) * 1e-3
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)
    names = organ_table().set_index("id")["name"]
    return {str(names.get(i, f"label_{i}")): float(c * voxel_ml) for i, c in enumerate(counts) if c > 0}


def case_variables(labels: np.ndarray) -> dict[str, np.ndarray]:
    """``body_mask`` (uint8) and, when :mod:`ctdose.materials` is available, ``density_e`` (m^-3)."""
    out = {"body_mask": body_mask(labels)}
    try:
        from ..materials import electron_density_map
    except ImportError:  # pragma: no cover - materials is part of the package
        return out
    out["density_e"] = electron_density_map(labels).astype(np.float32)
    return out


def _seeds(seed: int) -> dict[str, int]:
    children = np.random.SeedSequence(int(seed)).spawn(2)
    return {name: int(c.generate_state(1)[0]) for name, c in zip(("synthetic", "surrogate"), children)}


def sample_designs(cfg: Mapping) -> dict[str, pd.DataFrame]:
    """Design tables of the synthetic and surrogate cohorts of a profile (seeded)."""
    c = cfg["cohort"]
    seeds = _seeds(cfg["seed"])
    out = {}
    if int(c["n_synthetic"]) > 0:
        out["synthetic"] = sample_synthetic(int(c["n_synthetic"]), seeds["synthetic"])
    if int(c["n_surrogate"]) > 0:
        out["surrogate"] = sample_surrogate(int(c["n_surrogate"]), seeds["surrogate"],
                                            arms_raised_fraction=c.get("arms_raised_fraction"))
    return out


def phantom_case(
    params: PhantomParams,
    case_id: str,
    cohort: str,
    spacing_mm: float,
    margin_mm: float,
    superior: str = "C7",
    sampled: Mapping[str, Any] | None = None,
    prov: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Voxelise one phantom's thorax ROI into a case Dataset (not yet written).

    Parameters
    ----------
    params : phantom parameters
    case_id, cohort : case identity
    spacing_mm : isotropic voxel edge (mm)
    margin_mm : ROI extension (mm) beyond the landmarks (:mod:`.roi`)
    superior : ROI superior landmark ("C7" or "C1")
    sampled : the sampled design parameters (stored as attribute ``sampled``)
    prov : provenance attributes
    """
    phantom = build_phantom(params)
    roi = thorax_roi_z_mm(phantom.landmarks_z_mm(), margin_mm, case_id, superior)
    labels, origin = phantom.voxelise(spacing_mm, roi)
    spacing = (float(spacing_mm),) * 3
    return make_case(
        labels, spacing, origin, variables=case_variables(labels),
        case_id=case_id, cohort=cohort, sex=params.sex, height_m=params.height_m,
        fat_scale=params.fat_scale, arms=params.arms, table=params.table,
        offset_x_mm=params.offset_x_mm, offset_y_mm=params.offset_y_mm,
        roi_z_mm=list(roi), roi_rule=f"{superior} top to adrenal bottom +- {margin_mm} mm",
        target_volumes_ml=phantom.target_volumes_ml(),
        sampled=dict(sampled or {}), provenance=dict(prov or {}),
    )


def _build_and_write(run_dir: str, job: tuple) -> str:
    """Worker: :func:`_write_phantom` into the store of ``run_dir``."""
    return _write_phantom(CaseStore.for_run(run_dir), job)


def _write_phantom(store: CaseStore, job: tuple) -> str:
    """Build one phantom case and write it (each case is its own atomic group) with the digest
    of its job, replacing a case built with other settings; returns its id."""
    return write_built(store, phantom_case(*job), _job_digest(job), manifest=False)


def _job_digest(job: tuple) -> str:
    """Digest of a phantom job: everything :func:`phantom_case` builds from but the provenance."""
    return digest(job[:-1])


def _progress(iterable, total: int, desc: str, progress: bool):
    if not progress or not sys.stderr.isatty() or os.environ.get("CTDOSE_PROGRESS", "1") == "0":
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def _all_phantom_jobs(cfg, designs, prov) -> Iterator[tuple]:
    """Every phantom of the designs as a job of :func:`phantom_case`."""
    c = cfg["cohort"]
    for cohort, table in designs.items():
        to_params = synthetic_params if cohort == "synthetic" else surrogate_params
        for row in table.to_dict("records"):
            sampled = {k: v for k, v in row.items() if k != "case_id"}
            yield (to_params(row), row["case_id"], cohort, float(c["spacing_mm"]), float(c["roi_margin_mm"]),
                   str(c.get("roi_superior", "C7")), sampled, prov)


def _phantom_jobs(cfg, designs, store, prov) -> Iterator[tuple]:
    """The phantom jobs that :func:`~ctdose.anatomy.resume.needs_build` asks for."""
    for job in _all_phantom_jobs(cfg, designs, prov):
        if needs_build(store, job[1], _job_digest(job)):
            yield job


def build_cohorts(cfg: Mapping, store: CaseStore, progress: bool = True) -> pd.DataFrame:
    """Sample, voxelise and store every cohort of the profile ``cfg``.

    Parameters
    ----------
    cfg : Profile
        Uses ``seed`` and ``cohort.{n_synthetic, n_surrogate, spacing_mm, roi_margin_mm,
        roi_superior, arms_raised_fraction, n_workers, clinical_dir, xcat_dir}``.
    store : CaseStore
    progress : bool
        Show tqdm progress bars (only on a terminal).

    Returns
    -------
    pandas.DataFrame
        One row per case of the profile's cohorts (``case_id, cohort, sex, height_m,
        status`` = written | skipped, ``n_slices``, ``roi_lo_mm``, ``roi_hi_mm``).
        The design tables are also written to the store's tables
        (``cohort_synthetic.csv``, ``cohort_surrogate.csv``), and this table as ``cases.csv``:
        the run's cases (:meth:`ctdose.store.CaseStore.run_case_ids`), which the later steps
        use; cases of an earlier profile that stay in the store are named and left out.
    """
    c = cfg["cohort"]
    spacing = float(c["spacing_mm"])
    if not spacing > 0:
        raise ConfigError(f"cohort.spacing_mm={spacing}: must be positive")
    designs = sample_designs(cfg)
    for cohort, table in designs.items():
        store.write_table(_DESIGN_TABLES[cohort], table)
    prov = provenance(getattr(cfg, "name", cfg.get("name")), int(cfg["seed"]), generator="ctdose.anatomy")
    before = {cid: store.case_attrs(cid).get(LABELS_SETTINGS_ATTR) for cid in store.case_ids()}
    jobs = list(_phantom_jobs(cfg, designs, store, prov))
    workers = int(c.get("n_workers", 1) or 1)
    if workers > 1 and len(jobs) > 1:
        run_dirs = [str(store.run_dir)] * len(jobs)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in _progress(pool.map(_build_and_write, run_dirs, jobs), len(jobs), "phantoms", progress):
                pass  # each worker writes its case; the loop waits for them and shows progress
    else:
        for job in _progress(jobs, len(jobs), "phantoms", progress):
            _write_phantom(store, job)
    store.write_manifest()
    imported = _import_external(cfg, store, prov)
    rows = []
    for cid in [cid for t in designs.values() for cid in t["case_id"]] + imported:
        a = store.case_attrs(cid)
        kept = cid in before and a.get(LABELS_SETTINGS_ATTR) == before[cid]  # a rebuilt case has a new digest
        rows.append({
            "case_id": cid, "cohort": a.get("cohort"), "sex": a.get("sex"), "height_m": a.get("height_m"),
            "status": "skipped" if kept else "written",
            "n_slices": int(store.read_case(cid, ["labels"]).sizes["z"]),
            "roi_lo_mm": a.get("roi_z_mm", [np.nan, np.nan])[0], "roi_hi_mm": a.get("roi_z_mm", [np.nan, np.nan])[1],
        })
    table = pd.DataFrame(rows)
    store.write_table(CASES_TABLE, table)
    store.run_case_ids(say="cohort")  # names cases of an earlier profile, which the later steps leave out
    return table


def _import_jobs(cfg, prov, store) -> list[tuple[str, ImportJob]]:
    """The clinical and XCAT cases the profile names, as ``(cohort, job)``
    (:func:`ctdose.anatomy.resume.import_cases`); their files are digested (those unchanged
    since the case in ``store`` was imported are not read)."""
    c = cfg["cohort"]
    spacing, margin = float(c["spacing_mm"]), float(c["roi_margin_mm"])
    superior = str(c.get("roi_superior", "C7"))
    jobs = []
    if c.get("clinical_dir"):
        from .clinical import clinical_import_jobs

        jobs += [("clinical", job) for job in clinical_import_jobs(Path(c["clinical_dir"]), spacing, margin, superior,
                                                                   prov=prov, store=store)]
    if c.get("xcat_dir"):
        from ..io.xcat import load_xcat_case, xcat_phantoms

        for bin_path, log_path in xcat_phantoms(Path(c["xcat_dir"])):
            cid = f"xcat_{bin_path.name[: -len('_act_1.bin')]}"
            load = partial(load_xcat_case, bin_path, log_path, spacing, margin, case_id=cid, prov=prov)
            jobs.append(("xcat", import_job(store, cid, [bin_path, log_path], Path(c["xcat_dir"]), load, spacing,
                                            margin, superior)))
    return jobs


def _import_external(cfg, store, prov) -> list[str]:
    """Import clinical and XCAT folders named by the profile; returns their case ids."""
    return import_cases(store, [job for _, job in _import_jobs(cfg, prov, store)])


def planned_cases(cfg: Mapping, store: CaseStore | None = None) -> pd.DataFrame:
    """The cases a cohort build of the profile ``cfg`` makes, without building anything.

    Parameters
    ----------
    cfg : Profile
    store : CaseStore, optional
        The run's store: the files of an imported case unchanged since it was imported there
        are not read again.

    Returns
    -------
    pandas.DataFrame
        ``case_id, cohort, key, legacy_key``: the phantoms of the sampled designs, then the
        clinical and XCAT cases of the folders the profile names, each with the digest of what
        it would be built from (``labels_settings_sha1``) and, for an import, the digest an
        earlier ctdose recorded without the files (:func:`ctdose.anatomy.resume.build_state`).
    """
    rows = [(job[1], job[2], _job_digest(job), None) for job in _all_phantom_jobs(cfg, sample_designs(cfg), None)]
    rows += [(job.case_id, cohort, job.key, job.legacy_key) for cohort, job in _import_jobs(cfg, None, store)]
    return pd.DataFrame(rows, columns=["case_id", "cohort", "key", "legacy_key"])


def organ_volume_table(store: CaseStore, cohorts: Sequence[str] | None = None) -> pd.DataFrame:
    """Organ volumes of every case of the run (:meth:`~ctdose.store.CaseStore.run_case_ids`),
    long format (the basis of the paper's Figure 7).

    Phantom cases report their target volumes (the sampled design, whole organs); imported
    cases (clinical, xcat) their voxelised volumes inside the ROI.

    Returns
    -------
    pandas.DataFrame
        Columns ``case_id, cohort, sex, organ, volume_ml, source`` (``target`` | ``voxels``)
        and ``relative``: volume / ICRP reference volume of the case's sex (NaN where the sex
        is unknown or the organ has no reference).
    """
    from .phantom import reference_organ_volumes_ml

    ref = {}
    for sex in ("M", "F"):
        ref[sex] = reference_organ_volumes_ml(sex)
        ref[sex]["heart"] = ref[sex]["heart_wall"] + ref[sex]["heart_blood"]
    rows = []
    for cid in store.run_case_ids():
        a = store.case_attrs(cid)
        if cohorts is not None and a.get("cohort") not in cohorts:
            continue
        if a.get("target_volumes_ml"):
            vols, source = _merge_sides(a["target_volumes_ml"]), "target"
        else:
            lab = store.read_case(cid, ["labels"])["labels"].values
            vols, source = _merge_sides(organ_volumes_ml(lab, a["spacing_mm"])), "voxels"
        for organ, v in vols.items():
            r = ref.get(a.get("sex"), {}).get(organ)
            rows.append({"case_id": cid, "cohort": a.get("cohort"), "sex": a.get("sex"), "organ": organ,
                         "volume_ml": float(v), "source": source, "relative": float(v) / r if r else np.nan})
    return pd.DataFrame(rows, columns=["case_id", "cohort", "sex", "organ", "volume_ml", "source", "relative"])


_SIDES = {"lung_right": "lungs", "lung_left": "lungs", "kidney_right": "kidneys", "kidney_left": "kidneys",
          "adrenal_right": "adrenals", "adrenal_left": "adrenals", "heart_wall": "heart", "heart_blood": "heart"}


def _merge_sides(vols: Mapping[str, float]) -> dict[str, float]:
    """Sum left/right organs (and heart wall + blood of voxel tables) into one organ."""
    out: dict[str, float] = {}
    has_heart = "heart" in vols
    for organ, v in vols.items():
        if organ == "heart_blood" and has_heart:
            continue  # phantom targets: "heart" already holds wall + blood
        key = _SIDES.get(organ, organ)
        out[key] = out.get(key, 0.0) + float(v)
    return out


def cohort_summary(store: CaseStore) -> pd.DataFrame:
    """One row per case of the run (:meth:`~ctdose.store.CaseStore.run_case_ids`): cohort, sex,
    height, arms, offsets, ROI length and effective diameter (cm).

    The effective diameter is ``ctdose.dosimetry.effective_diameter_cm`` (AAPM 204) of the
    body mask over the ROI slices.
    """
    from ..dosimetry import effective_diameter_cm

    rows = []
    for cid in store.run_case_ids():
        a = store.case_attrs(cid)
        body = store.read_case(cid, ["body_mask"])["body_mask"].values
        roi = a.get("roi_z_mm") or [np.nan, np.nan]
        rows.append({
            "case_id": cid, "cohort": a.get("cohort"), "sex": a.get("sex"), "height_m": a.get("height_m"),
            "arms": a.get("arms"), "offset_y_mm": a.get("offset_y_mm"), "roi_length_mm": roi[1] - roi[0],
            "d_eff_cm": effective_diameter_cm(body, tuple(a["spacing_mm"])),
        })
    return pd.DataFrame(rows)


def slice_views(ds: xr.Dataset, variable: str = "labels") -> dict[str, tuple[np.ndarray, list[float]]]:
    """Axial (middle of the ROI) and coronal (through the isocentre, y = 0) views of a case.

    Returns
    -------
    dict
        ``{"axial": (image, extent), "coronal": (image, extent)}``; ``extent`` in mm for
        ``imshow(image, extent=extent)`` (axial: radiological view, anterior up; coronal:
        head up, patient's right on the left).
    """
    vol = ds[variable].values
    z, y, x = (ds[c].values for c in ("z", "y", "x"))
    dz, dy, dx = (float(v[1] - v[0]) if len(v) > 1 else 1.0 for v in (z, y, x))
    k = len(z) // 2
    j = int(np.argmin(np.abs(y)))
    axial = (vol[k], [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2])
    coronal = (vol[::-1, j, :], [x[0] - dx / 2, x[-1] + dx / 2, z[0] - dz / 2, z[-1] + dz / 2])
    return {"axial": axial, "coronal": coronal}


def label_colormap():
    """A matplotlib colormap with one distinct colour per label id (air white).

    Use ``imshow(labels, cmap=label_colormap(), vmin=-0.5, vmax=cmap.N - 0.5, interpolation="nearest")``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = int(organ_table()["id"].max()) + 1
    colours = list(plt.cm.tab20.colors) + list(plt.cm.tab20b.colors) + list(plt.cm.tab20c.colors)
    return ListedColormap([(1.0, 1.0, 1.0)] + colours[: n - 1], name="ctdose_labels")
