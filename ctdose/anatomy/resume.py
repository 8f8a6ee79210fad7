"""Resuming a cohort build: which cases to build, and the digest each records.

A case records the digest of what it was built from in the attribute ``labels_settings_sha1``
(:mod:`ctdose.provenance`). A re-run skips a case with the same digest, builds again one with
another digest (its later variables go with it), and keeps one written without a digest (by an
older ctdose). Each decision is printed with the case id.
"""

from __future__ import annotations

from ..provenance import settings_attr

__all__ = ["LABELS_SETTINGS_ATTR", "needs_build"]

#: Case attribute with the digest of what the case's labels were built from.
LABELS_SETTINGS_ATTR = settings_attr("labels")


def needs_build(store, case_id: str, key: str, what: str = "anatomy settings") -> bool:
    """Whether ``case_id`` has to be built (written with ``overwrite=True`` and ``key``).

    Parameters
    ----------
    store : ctdose.store.CaseStore
    case_id : str
    key : str
        The digest of what the case would be built from now.
    what : str
        What the digest covers, for the printed note.
    """
    if case_id not in store:
        return True
    stored = store.case_attrs(case_id).get(LABELS_SETTINGS_ATTR)
    if stored is None or stored == key:
        print(f"{case_id}: already in the store, skipped")
        return False
    print(f"{case_id}: built with other {what}; building it again (its Monte Carlo dose and inputs are computed "
          f"again)")
    return True
