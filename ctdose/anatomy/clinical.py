"""Real CT import: CT (NIfTI in HU or a DICOM series) + TotalSegmentator labels -> ctdose case.

One case folder ``<dir>/<case>/`` holds ``ct.nii.gz`` (or a ``dicom/`` folder) and
``seg.nii.gz`` (TotalSegmentator ``total``: v1 with 104 classes as in the paper, or v2 with
117), optionally ``tissue_types/{subcutaneous_fat,torso_fat,skeletal_muscle}.nii.gz``, a
``meta.json`` with ``{"sex": "M", "height_m": 1.8}`` and a ``tube_current.csv`` (columns
``z_mm``, ``tube_current_ma``: the scan's tube-current modulation; a DICOM series carries its
own per slice, which the CSV, where given, replaces). :func:`load_clinical_case` turns it
into a case of cohort ``clinical``; :func:`ctdose.anatomy.cohort.build_cohorts` imports every
case of ``cohort.clinical_dir``.

Steps (:func:`import_ct`)
-------------------------
1. CT and labels are reoriented to ``[z, y, x]`` LPS (:func:`ctdose.io.nifti.to_canonical`);
   they must then share one grid (shape, spacing, origin within 0.01 mm).
2. The TotalSegmentator version is taken from the argument or detected: ids above 104 mean
   v2; otherwise the version whose lung ids cover air-like voxels (mean HU < -500) wins.
   Ids the version does not have are refused.
3. Thorax ROI (:mod:`ctdose.anatomy.roi`) from the C7 and adrenal labels, on the native grid;
   the volume is cropped to it.
4. Resampling to the profile spacing: HU by area averaging + linear interpolation, labels by
   nearest neighbour.
5. Body mask from HU (> ``body_threshold``), largest connected component, holes filled
   slice by slice (so lungs and airways are inside), plus every labelled voxel.
6. Every body voxel gets a label of ``organs.csv``: first from HU (``clinical_hu_rules.csv``:
   air in the body below ``air_max``, fat up to ``fat_max``, soft tissue (muscle) up to
   ``bone_min``, other bone above), then from the tissue-type masks where given (skeletal
   muscle, subcutaneous fat, torso fat = visceral fat), then from the organ labels
   (``totalsegmentator_map.csv``; bones from vertebrae, ribs, sternum, skull, ...).
   Trachea voxels denser than ``air_max`` (the wall) become soft tissue: air in the body
   stays air.
7. Red marrow: the spongiosa of spine, sternum and ribs, defined as the voxels of each of
   these bone labels that are not on its surface (one-voxel 6-connected erosion of the bone
   mask on the output grid); the surface layer stays cortical bone.
8. Objects outside the body denser than ``body_threshold`` (table, cushions) get the label
   ``table``.

No DICOM header field other than geometry, rescale values and the per-slice tube current is
read; attributes name the source type only. The tube-current record is stored with the case
(attributes ``tube_current_z_mm``, ``tube_current_ma``, ``tube_current_source``; see
:mod:`ctdose.physics.tube_current`) and followed by the Monte Carlo and the kerma inputs when
the profile sets ``scanner.tube_current_modulation: ct``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr
from scipy import ndimage

from .._data import read_table
from ..errors import InputError
from ..io.nifti import CanonicalVolume, read_nifti, to_canonical
from ..physics.tube_current import TUBE_CURRENT_CSV, TubeCurrentProfile, read_tube_current_csv
from ..store import make_case
from .cohort import case_variables
from .organs import label_id
from .roi import CERVICAL, crop_z, landmark_extent_z_mm, thorax_roi_z_mm
from .resume import ImportJob, import_cases, import_job, source_files

__all__ = [
    "import_ct",
    "load_clinical_case",
    "clinical_case_dirs",
    "import_clinical_cohort",
    "clinical_import_jobs",
    "detect_ts_version",
    "ts_lookup",
    "resample",
]

TS_VERSIONS = ("v1", "v2")
_TISSUE_TYPES = {"skeletal_muscle": "muscle", "subcutaneous_fat": "subcutaneous_fat", "torso_fat": "visceral_fat"}
_MARROW_BONES = ("spine_bone", "sternum", "ribs")


def _rules() -> dict[str, float]:
    t = read_table("clinical_hu_rules.csv")
    return dict(zip(t["key"], t["value"].astype(float)))


def ts_lookup(version: str) -> tuple[np.ndarray, dict[int, str]]:
    """Lookup TotalSegmentator id -> ctdose label id (uint8, 0 for unused) and id -> class name."""
    if version not in TS_VERSIONS:
        raise InputError(f"TotalSegmentator version {version!r}: expected one of {TS_VERSIONS}")
    t = read_table("totalsegmentator_map.csv")
    t = t[t["version"] == version]
    lut = np.zeros(256, np.uint8)
    for idx, lab in zip(t["index"], t["label"]):
        lut[int(idx)] = label_id(lab)
    return lut, dict(zip(t["index"].astype(int), t["ts_name"]))


def detect_ts_version(seg: np.ndarray, hu: np.ndarray, where: str) -> str:
    """Guess v1/v2 of a TotalSegmentator ``total`` label map (see module docstring)."""
    if int(seg.max()) > 104:
        return "v2"
    means = {}
    for version in TS_VERSIONS:
        _, names = ts_lookup(version)
        ids = [i for i, n in names.items() if n.startswith("lung_")]
        m = np.isin(seg, ids)
        if m.any():
            means[version] = float(hu[m].mean())
    if means:
        version, mean = min(means.items(), key=lambda kv: kv[1])
        if mean < _rules()["air_max"]:
            return version
    raise InputError(f"{where}: cannot tell TotalSegmentator v1 from v2 (no lung labels); pass ts_version='v1' or 'v2'")


def resample(vol: CanonicalVolume, spacing_mm: float | tuple, order: int) -> CanonicalVolume:
    """Resample onto a grid of ``spacing_mm`` with the same origin and extent.

    ``order=0`` (labels): nearest neighbour. ``order=1`` (HU): area average over the new
    voxel (uniform filter) followed by linear interpolation.
    """
    new = np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    old = np.asarray(vol.spacing_mm)
    shape = np.floor((np.array(vol.array.shape) - 1) * old / new + 1e-6).astype(int) + 1
    ratio = new / old
    data = vol.array
    if order > 0:
        size = np.maximum(np.round(ratio).astype(int), 1)
        if np.any(size > 1):
            data = ndimage.uniform_filter(data.astype(np.float32), size=tuple(size), mode="nearest")
    out = ndimage.affine_transform(data, ratio, offset=0.0, output_shape=tuple(shape), order=order,
                                   mode="nearest", prefilter=False)
    return CanonicalVolume(out, tuple(new), vol.origin_mm, vol.source)


def _body_mask(hu: np.ndarray, threshold: float) -> np.ndarray:
    dense = hu > threshold
    opened = ndimage.binary_opening(dense, iterations=1)
    lab, n = ndimage.label(opened if opened.any() else dense)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = ndimage.sum_labels(np.ones(hu.shape), lab, index=np.arange(1, n + 1))
    body = lab == (1 + int(np.argmax(sizes)))
    body = ndimage.binary_dilation(body, iterations=1) & dense  # restore the opened rim
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def _landmarks(seg: np.ndarray, names: dict[int, str], z_mm: np.ndarray) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for c in CERVICAL:
        ids = [i for i, n in names.items() if n == f"vertebrae_{c}"]
        ext = landmark_extent_z_mm(np.isin(seg, ids), z_mm)
        if ext is not None:
            out[c] = ext
    for key, prefix in (("adrenal", "adrenal_gland_"), ("lung", "lung_"), ("kidney", "kidney_")):
        ids = [i for i, n in names.items() if n.startswith(prefix)]
        ext = landmark_extent_z_mm(np.isin(seg, ids), z_mm)
        if ext is not None:
            out[key] = ext
    return out


def import_ct(
    ct: CanonicalVolume,
    seg: CanonicalVolume,
    spacing_mm: float,
    margin_mm: float,
    case_id: str,
    superior: str = "C7",
    ts_version: str = "auto",
    tissue: Mapping[str, CanonicalVolume] | None = None,
    roi: bool = True,
) -> dict[str, Any]:
    """Label a canonical CT + TotalSegmentator volume in the ctdose scheme.

    Parameters
    ----------
    ct, seg : canonical volumes (HU, TotalSegmentator ids) on one grid
    spacing_mm : output voxel edge (mm)
    margin_mm : ROI margin (mm)
    case_id : named in errors
    superior : ROI superior landmark
    ts_version : "v1", "v2" or "auto"
    tissue : optional tissue-type masks by name (``skeletal_muscle``, ``subcutaneous_fat``,
        ``torso_fat``) on the same grid
    roi : crop to the thorax ROI (False: keep the whole volume)

    Returns
    -------
    dict
        ``labels`` (uint8 [z, y, x]), ``spacing_mm``, ``origin_mm``, ``roi_z_mm`` (or None),
        ``ts_version``.
    """
    if not ct.same_grid(seg):
        raise InputError(
            f"case {case_id}: CT {ct.source} {ct!r} and label map {seg.source} {seg!r} are not on the same grid "
            "(different shape or affine)"
        )
    seg_arr = np.asarray(seg.array)
    if seg_arr.min() < 0 or seg_arr.max() > 255:
        raise InputError(f"{seg.source}: label ids outside 0-255")
    seg_arr = seg_arr.astype(np.uint8)
    version = detect_ts_version(seg_arr, ct.array, seg.source) if ts_version == "auto" else ts_version
    lut, names = ts_lookup(version)
    present = set(np.unique(seg_arr).tolist()) - {0}
    unknown = sorted(present - set(names))
    if unknown:
        raise InputError(f"{seg.source}: label ids {unknown} are not TotalSegmentator {version} 'total' classes")
    rules = _rules()
    roi_z = None
    sl = slice(None)
    if roi:
        roi_z = thorax_roi_z_mm(_landmarks(seg_arr, names, ct.axis_mm(0)), margin_mm, case_id, superior)
        sl = crop_z(ct.axis_mm(0), roi_z)
    z0 = ct.axis_mm(0)[sl][0]
    origin = (float(z0), ct.origin_mm[1], ct.origin_mm[2])
    hu = resample(CanonicalVolume(ct.array[sl], ct.spacing_mm, origin), spacing_mm, order=1).array
    mapped = resample(CanonicalVolume(lut[seg_arr[sl]], ct.spacing_mm, origin), spacing_mm, order=0).array
    body = _body_mask(hu, rules["body_threshold"]) | (mapped > 0)
    L = label_id
    labels = np.zeros(hu.shape, np.uint8)
    labels[body] = L("muscle")
    labels[body & (hu <= rules["fat_max"])] = L("subcutaneous_fat")
    labels[body & (hu < rules["air_max"])] = L("air_in_body")
    labels[body & (hu >= rules["bone_min"])] = L("other_bone")
    for name, vol in (tissue or {}).items():
        if name not in _TISSUE_TYPES:
            raise InputError(f"{vol.source}: unknown tissue type {name!r} (known: {', '.join(_TISSUE_TYPES)})")
        if not vol.same_grid(ct):
            raise InputError(f"{vol.source}: tissue-type mask not on the CT grid of {ct.source}")
        m = resample(CanonicalVolume((np.asarray(vol.array) > 0).astype(np.uint8)[sl], ct.spacing_mm, origin),
                     spacing_mm, order=0).array > 0
        labels[m & body & (mapped == 0)] = L(_TISSUE_TYPES[name])
    labels[mapped > 0] = mapped[mapped > 0]
    trachea = labels == L("trachea")
    labels[trachea & (hu >= rules["air_max"])] = L("other_soft_tissue")
    cross = ndimage.generate_binary_structure(3, 1)
    for bone in _MARROW_BONES:
        mask = labels == L(bone)
        if mask.any():
            labels[ndimage.binary_erosion(mask, structure=cross)] = L("red_marrow")
    labels[~body & (hu > rules["body_threshold"])] = L("table")
    return {"labels": labels, "spacing_mm": (float(spacing_mm),) * 3, "origin_mm": origin,
            "roi_z_mm": None if roi_z is None else list(roi_z), "ts_version": version}


def _find(case_dir: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        p = case_dir / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def clinical_case_dirs(folder: str | Path) -> list[Path]:
    """Case folders of a clinical directory (each with ``ct.nii[.gz]`` or ``dicom/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: clinical_dir does not exist")
    cases = sorted(d for d in folder.iterdir() if d.is_dir() and (_find(d, "ct") or (d / "dicom").is_dir()))
    if not cases:
        raise InputError(f"{folder}: no case folders with ct.nii.gz (or dicom/) and seg.nii.gz")
    return cases


def load_clinical_case(
    case_dir: str | Path,
    spacing_mm: float,
    margin_mm: float,
    superior: str = "C7",
    case_id: str | None = None,
    ts_version: str = "auto",
    prov: Mapping[str, Any] | None = None,
    roi: bool = True,
) -> xr.Dataset:
    """Import one clinical case folder into a case Dataset (cohort ``clinical``).

    Parameters
    ----------
    case_dir : folder with ``ct.nii.gz`` or ``dicom/``, ``seg.nii.gz``, optional
        ``tissue_types/`` and ``meta.json``
    spacing_mm, margin_mm, superior : see :func:`import_ct`
    case_id : default ``clinical_<folder name>``
    ts_version : "v1", "v2" or "auto"
    prov : provenance attributes
    roi : crop to the thorax ROI

    Returns
    -------
    xarray.Dataset (not yet written)
    """
    case_dir = Path(case_dir)
    case_id = case_id or f"clinical_{case_dir.name}"
    ct_path = _find(case_dir, "ct")
    if ct_path is not None:
        arr, aff = read_nifti(ct_path)
        source = "nifti"
        ct = to_canonical(arr, aff, str(ct_path))
    elif (case_dir / "dicom").is_dir():
        from ..io.dicom import read_dicom_series

        arr, aff = read_dicom_series(case_dir / "dicom")
        source = "dicom"
        ct = to_canonical(arr, aff, str(case_dir / "dicom"))
    else:
        raise InputError(f"{case_dir}: no ct.nii.gz and no dicom/ folder")
    seg_path = _find(case_dir, "seg")
    if seg_path is None:
        raise InputError(f"{case_dir}: no seg.nii.gz (TotalSegmentator label map)")
    sarr, saff = read_nifti(seg_path, integer=True)
    seg = to_canonical(sarr, saff, str(seg_path))
    tissue = {}
    tdir = case_dir / "tissue_types"
    for name in _TISSUE_TYPES:
        p = _find(tdir, name) if tdir.is_dir() else None
        if p is not None:
            a, f = read_nifti(p, integer=True)
            tissue[name] = to_canonical(a, f, str(p))
    meta = {}
    if (case_dir / "meta.json").is_file():
        try:
            meta = json.loads((case_dir / "meta.json").read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{case_dir / 'meta.json'}: not valid JSON ({exc})") from None
    tube_current = _tube_current(case_dir, source, ct)
    out = import_ct(ct, seg, spacing_mm, margin_mm, case_id, superior, ts_version, tissue, roi)
    labels = out["labels"]
    return make_case(
        labels, out["spacing_mm"], out["origin_mm"], variables=case_variables(labels),
        case_id=case_id, cohort="clinical", sex=str(meta.get("sex", "")),
        height_m=meta.get("height_m"), fat_scale=None, roi_z_mm=out["roi_z_mm"],
        roi_rule=f"{superior} top to adrenal bottom +- {margin_mm} mm" if roi else "none",
        ts_version=out["ts_version"], source=source, tissue_types=sorted(tissue),
        provenance=dict(prov or {}), **({} if tube_current is None else tube_current.to_attrs()),
    )


def _tube_current(case_dir: Path, source: str, ct: CanonicalVolume) -> TubeCurrentProfile | None:
    """The case's tube-current record: ``tube_current.csv`` where given, else the DICOM
    series' per-slice currents, else None. A record that lies wholly outside the CT's z range
    (positions in another frame) is refused."""
    csv = case_dir / TUBE_CURRENT_CSV
    if csv.is_file():
        profile, where = read_tube_current_csv(csv), csv
    elif source == "dicom":
        from ..io.dicom import read_tube_current

        profile, where = read_tube_current(case_dir / "dicom"), case_dir / "dicom"
    else:
        return None
    if profile is None:
        return None
    z = ct.axis_mm(0)
    half = 0.5 * ct.spacing_mm[0]
    lo, hi = float(z.min()) - half, float(z.max()) + half
    if profile.z_mm[-1] < lo or profile.z_mm[0] > hi:
        raise InputError(
            f"{where}: tube-current positions {profile.z_mm[0]:g} to {profile.z_mm[-1]:g} mm lie outside the CT's "
            f"z range {lo:g} to {hi:g} mm; give z in patient coordinates (DICOM ImagePositionPatient z)"
        )
    return profile


def import_clinical_cohort(
    folder: str | Path,
    store,
    spacing_mm: float,
    margin_mm: float,
    superior: str = "C7",
    ts_version: str = "auto",
    prov: Mapping[str, Any] | None = None,
) -> list[str]:
    """Import every case folder of ``folder`` into ``store`` as cohort ``clinical`` (one call).

    Case ids are ``clinical_<folder name>``; cases already in the store are skipped with a
    printed note, unless they were imported with another voxel size, ROI or ``ts_version``, or
    from files that have changed since (their ``labels_settings_sha1``,
    :mod:`ctdose.anatomy.resume`): those are imported again.
    Each case is checked completely before it is written, so a bad case raises ``InputError``
    and leaves the store as it was (cases written before stay).

    Returns
    -------
    list of str
        The case ids of the folder (written or already present).
    """
    return import_cases(store, clinical_import_jobs(folder, spacing_mm, margin_mm, superior, ts_version, prov, store))


def clinical_import_jobs(
    folder: str | Path,
    spacing_mm: float,
    margin_mm: float,
    superior: str = "C7",
    ts_version: str = "auto",
    prov: Mapping[str, Any] | None = None,
    store=None,
) -> list[ImportJob]:
    """The cases of a clinical directory as :class:`~ctdose.anatomy.resume.ImportJob`: case id
    ``clinical_<folder name>``, the digest of its import settings and of every file of its
    folder, and a function that imports it (:func:`load_clinical_case`). Files whose size and
    time match the record of the case in ``store`` are not read."""
    jobs = []
    for d in clinical_case_dirs(folder):
        cid = f"clinical_{d.name}"
        load = partial(load_clinical_case, d, spacing_mm, margin_mm, superior=superior, case_id=cid,
                       ts_version=ts_version, prov=prov)
        jobs.append(import_job(store, cid, source_files(d), d, load, spacing_mm, margin_mm, superior,
                               ts_version=ts_version))
    return jobs
