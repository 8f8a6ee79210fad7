"""Resuming a cohort build: which cases to build, and the digest each records.

A case records the digest of what it was built from in the attribute ``labels_settings_sha1``
(:mod:`ctdose.provenance`). A re-run skips a case with the same digest, builds again one with
another digest (its later variables go with it), and keeps one written without a digest (by an
older ctdose). Each decision is printed with the case id.

An imported case (clinical CT, XCAT) is built from files as well as settings: its digest covers
the bytes of its source files (:func:`ctdose.provenance.files_digest`), so that a corrected
segmentation or a replaced CT is imported again, and the case records which files it was read
from (``labels_sources``, digests only) so that unchanged files are not read again to tell.
A case imported before ctdose digested the files (its digest is that of the settings alone) is
kept, as a case without a digest is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..provenance import digest, files_digest, settings_attr

__all__ = [
    "BUILD_STATES", "ImportJob", "LABELS_SETTINGS_ATTR", "SOURCES_ATTR", "build_state", "import_cases",
    "import_digest", "import_job", "needs_build", "source_files", "write_built",
]

#: Case attribute with the digest of what the case's labels were built from.
LABELS_SETTINGS_ATTR = settings_attr("labels")

#: Case attribute with the record of an imported case's source files
#: (:func:`ctdose.provenance.files_digest`).
SOURCES_ATTR = "labels_sources"

#: :func:`build_state` of a case: not in the store, built with the digest of now, built with
#: another digest, or written without one (by an older ctdose; kept).
BUILD_STATES = ("new", "current", "other", "unrecorded")


@dataclass(frozen=True)
class ImportJob:
    """One case to import (:func:`import_cases`).

    Attributes
    ----------
    case_id : str
    key : str
        Digest of the settings and source files it is imported from.
    load : callable
        ``load()`` reads the files and returns the case's Dataset.
    sources : dict
        The record of its source files (:func:`ctdose.provenance.files_digest`).
    legacy_key : str
        The digest an earlier ctdose recorded for these settings (without the files): such a
        case is kept.
    """

    case_id: str
    key: str
    load: Callable
    sources: dict
    legacy_key: str


def build_state(store, case_id: str, key: str, legacy_key: str | None = None) -> str:
    """How ``case_id`` stands against the digest ``key`` of what it would be built from now:
    one of :data:`BUILD_STATES` (nothing is printed or written). A case recorded with
    ``legacy_key`` counts as ``unrecorded``."""
    if store is None or case_id not in store:
        return "new"
    stored = store.case_attrs(case_id).get(LABELS_SETTINGS_ATTR)
    if stored is None or (legacy_key is not None and stored == legacy_key):
        return "unrecorded"
    return "current" if stored == key else "other"


def needs_build(store, case_id: str, key: str, what: str = "anatomy settings", legacy_key: str | None = None) -> bool:
    """Whether ``case_id`` has to be built (written with ``overwrite=True`` and ``key``); the
    decision (:func:`build_state`) is printed for a case already in the store.

    Parameters
    ----------
    store : ctdose.store.CaseStore
    case_id : str
    key : str
        The digest of what the case would be built from now.
    what : str
        What the digest covers, for the printed note.
    legacy_key : str, optional
        See :func:`build_state`.
    """
    state = build_state(store, case_id, key, legacy_key)
    if state == "new":
        return True
    if state != "other":
        print(f"{case_id}: already in the store, skipped")
        return False
    print(f"{case_id}: built with other {what}; building it again (its Monte Carlo dose and inputs are computed "
          f"again)")
    return True


def write_built(store, ds, key: str, manifest: bool = True, sources: Mapping | None = None) -> str:
    """Write a case that :func:`needs_build` asked for, with its digest ``key`` (and the record
    of its source files), replacing a case built with other settings, atomically; returns its id."""
    ds.attrs[LABELS_SETTINGS_ATTR] = key
    if sources is not None:
        ds.attrs[SOURCES_ATTR] = dict(sources)
    store.write_case(ds, overwrite=True, manifest=manifest)
    return ds.attrs["case_id"]


def import_cases(store, jobs: Iterable[ImportJob]) -> list[str]:
    """Import the cases of ``jobs`` that :func:`needs_build` asks for; returns every job's case
    id, in order.

    A case that is kept gets the record of its files of now (``labels_sources``) where that
    differs from the one it holds: files copied or touched with unchanged bytes are then not
    read again on the next run, and a case of an older ctdose (kept, no record) is read once.
    Only the case's metadata is rewritten.
    """
    ids = []
    for job in jobs:
        if needs_build(store, job.case_id, job.key, "import settings or files", job.legacy_key):
            write_built(store, job.load(), job.key, sources=job.sources)
        elif store.case_attrs(job.case_id).get(SOURCES_ATTR) != job.sources:
            # the same files with new times (copied, touched), or a case of an older ctdose:
            # the new record spares the next run reading them again
            store.update_case_attrs(job.case_id, {SOURCES_ATTR: job.sources})
        ids.append(job.case_id)
    return ids


def import_digest(spacing_mm: float, margin_mm: float, superior: str, **settings) -> str:
    """Digest of an imported case's build settings: voxel size, ROI margin and landmark, and
    any ``settings`` of the reader (``files``: the digest of its source files)."""
    return digest({"spacing_mm": float(spacing_mm), "margin_mm": float(margin_mm), "superior": str(superior),
                   **settings})


def source_files(folder: Path) -> list[Path]:
    """The files below ``folder`` (recursively), without hidden files and folders."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def import_job(store, case_id: str, files: Sequence[Path], root: Path, load: Callable, spacing_mm: float,
               margin_mm: float, superior: str, **settings) -> ImportJob:
    """The :class:`ImportJob` of a case read from ``files`` (below ``root``) with these settings.

    The files' digest reuses the record the case holds in ``store`` (None: no store) for files
    whose size and time are unchanged, so that only new or changed files are read.
    """
    known = store.case_attrs(case_id).get(SOURCES_ATTR) if store is not None and case_id in store else None
    files_sha1, record = files_digest(files, root, known)
    return ImportJob(case_id, import_digest(spacing_mm, margin_mm, superior, files=files_sha1, **settings), load,
                     record, import_digest(spacing_mm, margin_mm, superior, **settings))
