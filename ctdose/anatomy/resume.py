"""Resuming a cohort build: which cases to build, and the digest each records.

A case records the digest of what it was built from in the attribute ``labels_settings_sha1``
(:mod:`ctdose.provenance`). A re-run skips a case with the same digest, builds again one with
another digest (its later variables go with it), and keeps one written without a digest (by an
older ctdose). Each decision is printed with the case id.
"""

from __future__ import annotations

from ..provenance import digest, settings_attr

__all__ = ["BUILD_STATES", "LABELS_SETTINGS_ATTR", "build_state", "import_cases", "import_digest", "needs_build", "write_built"]

#: Case attribute with the digest of what the case's labels were built from.
LABELS_SETTINGS_ATTR = settings_attr("labels")


#: :func:`build_state` of a case: not in the store, built with the digest of now, built with
#: another digest, or written without one (by an older ctdose; kept).
BUILD_STATES = ("new", "current", "other", "unrecorded")


def build_state(store, case_id: str, key: str) -> str:
    """How ``case_id`` stands against the digest ``key`` of what it would be built from now:
    one of :data:`BUILD_STATES` (nothing is printed or written)."""
    if store is None or case_id not in store:
        return "new"
    stored = store.case_attrs(case_id).get(LABELS_SETTINGS_ATTR)
    if stored is None:
        return "unrecorded"
    return "current" if stored == key else "other"


def needs_build(store, case_id: str, key: str, what: str = "anatomy settings") -> bool:
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
    """
    state = build_state(store, case_id, key)
    if state == "new":
        return True
    if state != "other":
        print(f"{case_id}: already in the store, skipped")
        return False
    print(f"{case_id}: built with other {what}; building it again (its Monte Carlo dose and inputs are computed "
          f"again)")
    return True


def write_built(store, ds, key: str, manifest: bool = True) -> str:
    """Write a case that :func:`needs_build` asked for, with its digest ``key`` (replacing a
    case built with other settings, atomically); returns its id."""
    ds.attrs[LABELS_SETTINGS_ATTR] = key
    store.write_case(ds, overwrite=True, manifest=manifest)
    return ds.attrs["case_id"]


def import_cases(store, jobs) -> list[str]:
    """Import the cases of ``jobs`` (``(case_id, key, load)``, ``load()`` giving the case's
    Dataset) that :func:`needs_build` asks for; returns every job's case id, in order."""
    ids = []
    for case_id, key, load in jobs:
        if needs_build(store, case_id, key, "import settings"):
            write_built(store, load(), key)
        ids.append(case_id)
    return ids


def import_digest(spacing_mm: float, margin_mm: float, superior: str, **settings) -> str:
    """Digest of an imported case's build settings (voxel size, ROI margin and landmark, and
    any ``settings`` of the reader); the source files themselves are not digested."""
    return digest({"spacing_mm": float(spacing_mm), "margin_mm": float(margin_mm), "superior": str(superior),
                   **settings})
