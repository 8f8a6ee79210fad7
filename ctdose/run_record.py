"""Which profile a run directory was last run with: ``<run_dir>/run.json``.

``ctdose run`` writes the record before its first notebook: the profile's name (or YAML path),
the overrides as given, a digest of the resolved profile, the ctdose version and the start
time. ``ctdose status`` names it, and ``ctdose prune`` refuses to remove what another profile
leaves out unless told to (a forgotten ``--set cohort.clinical_dir=...`` would otherwise make
every clinical case, with its Monte Carlo dose, look left out).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from ._atomic import atomic_write_text
from ._plain import to_plain
from .errors import InputError
from .provenance import digest

__all__ = ["RUN_RECORD", "describe_run", "profile_sha1", "read_run_record", "write_run_record"]

#: File name of the record in the run directory.
RUN_RECORD = "run.json"


def profile_sha1(cfg) -> str:
    """Digest of a resolved profile (its name and every value, overrides applied)."""
    return digest({"name": getattr(cfg, "name", None), "profile": cfg.to_dict()})


def write_run_record(run_dir: str | os.PathLike, cfg, profile: str, overrides: Mapping[str, Any]) -> Path:
    """Write ``<run_dir>/run.json`` (atomically) for a run of ``cfg``, named ``profile`` with
    ``overrides`` on the command line; returns its path."""
    record = {"profile": str(profile), "overrides": to_plain(dict(overrides), "overrides"),
              "profile_sha1": profile_sha1(cfg), "ctdose_version": __version__,
              "started_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return atomic_write_text(Path(run_dir) / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def read_run_record(run_dir: str | os.PathLike) -> dict | None:
    """The record of the last ``ctdose run`` into ``run_dir``; None where there is none (a new
    directory, or one run by papermill directly).

    Raises
    ------
    InputError
        The file is not a record (names the file).
    """
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a run record ({exc}); remove it, or run ctdose run again") from None
    if not isinstance(record, dict) or "profile_sha1" not in record:
        raise InputError(f"{path}: not a run record (no profile_sha1); remove it, or run ctdose run again")
    return record


def describe_run(record: Mapping[str, Any]) -> str:
    """``profile 'demo' with --set a=1 --set b=2 (ctdose 0.1.0, 2026-12-05 10:00 UTC)``."""
    sets = "".join(f" --set {k}={json.dumps(v) if not isinstance(v, str) else v}"
                   for k, v in dict(record.get("overrides", {})).items())
    return (f"profile {record.get('profile')!r}{' with' + sets if sets else ''} "
            f"(ctdose {record.get('ctdose_version')}, {record.get('started_utc')})")
