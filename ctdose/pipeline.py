"""The chain runner and the ``ctdose`` command line.

``ctdose run --profile demo`` executes the ordered notebooks of ``notebooks/`` with
papermill, each with the parameters ``profile``, ``run_dir`` and ``overrides`` (and
``figures_dir`` where a notebook declares it), and writes every executed copy into the run
directory. Nothing is skipped silently: a notebook left out by ``--from``/``--only`` is named
with what is reused from it, and each notebook says itself what it reuses from the store.

Examples
--------
Run the whole demo chain::

    ctdose run --profile demo

Re-run training only, with more epochs::

    ctdose run --profile demo --only 03 --set train.epochs=20

See first what a run with more photons would compute again (nothing is run)::

    ctdose status --profile demo --set mc.n_photons=4e6

List what a run with fewer mixes leaves out (cases, models, predictions of earlier settings),
then remove it::

    ctdose prune --profile demo --set "train.mixes_percent_real=[0, 100]"
    ctdose prune --profile demo --set "train.mixes_percent_real=[0, 100]" --yes
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import __version__
from .config import available_profiles, load_profile, parse_override
from .errors import ConfigError, CtdoseError
from .paths import notebooks_dir, resolve_path
from .run_record import describe_run, profile_sha1, read_run_record, write_run_record

__all__ = ["list_notebooks", "select_notebooks", "run_chain", "main"]

DEFAULT_KERNEL = "python3"


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The chain's notebooks in order (``NN_name.ipynb``, sorted by their number)."""
    folder = Path(folder) if folder else notebooks_dir()
    if not folder.is_dir():
        raise ConfigError(f"notebook folder {folder}: not found")
    books = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise ConfigError(f"notebook folder {folder}: no chain notebooks (NN_name.ipynb)")
    return books


def _match(books: Sequence[Path], key: str) -> Path:
    key = key.removesuffix(".ipynb")
    hits = [b for b in books if b.stem == key or b.stem.split("_", 1)[0] == key.zfill(2) or b.stem.startswith(key)]
    if len(hits) != 1:
        names = ", ".join(b.stem for b in books)
        what = "no" if not hits else "more than one"
        raise ConfigError(f"notebook {key!r}: {what} notebook matches (chain: {names})")
    return hits[0]


def select_notebooks(
    books: Sequence[Path], start: str | None = None, only: Sequence[str] | None = None
) -> list[Path]:
    """Pick the notebooks to run: all, those from ``start`` on, or ``only`` the named ones."""
    if start and only:
        raise ConfigError("--from and --only exclude each other")
    if only:
        chosen = {_match(books, k) for k in only}
        return [b for b in books if b in chosen]
    if start:
        first = _match(books, start)
        return [b for b in books if b >= first]
    return list(books)


def _declared_parameters(path: Path) -> set[str]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    names: set[str] = set()
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            for line in cell.source.splitlines():
                name = line.split("=", 1)[0].strip()
                if "=" in line and name.isidentifier():
                    names.add(name)
    return names


def _peak_child_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the largest finished child (the notebook kernels)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def run_chain(
    profile: str = "demo",
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    start: str | None = None,
    only: Sequence[str] | None = None,
    kernel: str = DEFAULT_KERNEL,
    figures_dir: str | os.PathLike | None = None,
    notebooks: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Execute the chain's notebooks with papermill.

    Parameters
    ----------
    profile : str
        Profile name or YAML path (``smoke``, ``demo``, ``paper``).
    out : path, optional
        Run directory; default ``runs/<profile>``.
    overrides : sequence of str
        ``key=value`` overrides (dotted profile keys).
    start, only : str, optional
        First notebook to run, or the only notebooks to run (number or name).
    kernel : str
        Jupyter kernel name used for every notebook (the notebooks' own kernelspec is ignored).
    figures_dir : path, optional
        Where the figure notebook writes (notebooks that declare ``figures_dir``). Default:
        ``figures/`` of the compendium for the ``demo`` profile (its figures are committed),
        ``<run_dir>/figures`` for every other profile.

    Returns
    -------
    pandas.DataFrame
        One row per notebook: name, status, wall time (s), executed copy.

    Raises
    ------
    CtdoseError
        Bad profile/override/notebook name, a Monte Carlo setting out of range or a device
        this machine lacks (checked before the first notebook, see
        :func:`ctdose.physics.cohort_mc.check_mc_profile`), or a failing notebook (the
        message names the notebook, the cell and the executed copy).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    cfg = load_profile(profile, list(overrides))  # validates profile and overrides up front
    _check_values(cfg, device_available=True)  # and the MC settings, before notebook 01 runs for minutes
    override_map = dict(parse_override(o) for o in overrides)
    run_dir = _run_dir(cfg, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_record(run_dir, cfg, profile, override_map)
    if figures_dir is None:
        figures_dir = "figures" if cfg.name == "demo" else run_dir / "figures"
    books = list_notebooks(notebooks)
    chosen = select_notebooks(books, start, only)
    say = print if progress else (lambda *a, **k: None)
    say(f"ctdose {__version__}: profile {cfg.name!r}, run directory {run_dir}")
    for book in books:
        if book not in chosen:
            say(f"  not run: {book.stem} (reusing what it wrote in {run_dir}, if anything)")
    # figures go into the executed notebooks: the kernels use the inline backend even when
    # the caller runs headless with another MPLBACKEND (pytest, a batch job)
    env_before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    rows = []
    log_path = run_dir / "chain_log.csv"
    try:
        for i, book in enumerate(chosen, 1):
            executed = run_dir / book.name
            note = " (replacing the previous executed copy)" if executed.exists() else ""
            say(f"[{i}/{len(chosen)}] {book.stem}{note}")
            params = {"profile": str(profile), "run_dir": str(run_dir), "overrides": override_map}
            if "figures_dir" in _declared_parameters(book):
                params["figures_dir"] = str(resolve_path(figures_dir))
                Path(params["figures_dir"]).mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(
                    str(book),
                    str(executed),
                    parameters=params,
                    kernel_name=kernel,
                    progress_bar=progress and sys.stderr.isatty(),
                    cwd=str(resolve_path(".")),
                )
            except PapermillExecutionError as exc:
                wall = time.perf_counter() - t0
                rows.append({"notebook": book.stem, "status": "failed", "wall_s": round(wall, 1),
                             "executed": str(executed)})
                _write_log(rows, log_path)
                raise CtdoseError(
                    f"notebook {book.stem} failed in cell {exc.cell_index} (execution count "
                    f"{exc.exec_count}): {exc.ename}: {exc.evalue}; executed copy: {executed}"
                ) from None
            except CtdoseError:
                raise
            except Exception as exc:  # kernel failed to start, unreadable notebook, ...
                raise CtdoseError(f"notebook {book.stem} could not be executed: {type(exc).__name__}: {exc}") from None
            wall = time.perf_counter() - t0
            rows.append({"notebook": book.stem, "status": "ok", "wall_s": round(wall, 1),
                         "peak_kernel_rss_mb": round(_peak_child_rss_mb(), 0), "executed": str(executed)})
            _write_log(rows, log_path)
            say(f"      done in {wall:.1f} s -> {executed}")
    finally:
        if env_before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_before
    total = sum(r["wall_s"] for r in rows)
    say(f"chain finished: {len(rows)} notebook(s) in {total:.1f} s; log {log_path}")
    return pd.DataFrame(rows)


def _check_values(cfg, device_available: bool) -> None:
    """Refuse out-of-range Monte Carlo settings, protocol keys, training settings and unknown
    devices of a loaded profile (ConfigError). ``device_available`` (the chain runs here): the
    device must exist, and the scanner is built (its spectrum and bowtie files read and
    checked)."""
    from .learn.settings import check_train_profile
    from .physics.cohort_mc import check_mc_profile
    from .physics.scanner import check_protocol_profile

    check_mc_profile(cfg, device_available=device_available)
    check_protocol_profile(cfg)
    check_train_profile(cfg)
    if device_available:
        from .physics.scanner import scanner_from_profile

        scanner_from_profile(cfg)


def _write_log(rows: list[dict], path: Path) -> None:
    df = pd.DataFrame(rows)
    df["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    df.to_csv(path, index=False)


def _every_row(table: pd.DataFrame) -> str:
    """A table with every row (``--all``)."""
    with pd.option_context("display.max_rows", None, "display.width", 200):
        return table.to_string(index=False)


def _status(args) -> int:
    """``ctdose status``: print what a run would compute; 1 with ``--check`` when anything is
    (or a step will fail)."""
    from .status import STEPS, chain_status, format_status

    cfg = load_profile(args.profile, args.overrides)
    _check_values(cfg, device_available=False)
    run_dir = _run_dir(cfg, args.out)
    chosen = {b.stem[:2] for b in select_notebooks(list_notebooks(), args.start, args.only)}
    table = chain_status(cfg, run_dir, steps=[s for s in STEPS if s[:2] in chosen])
    which = f" --from {args.start}" if args.start else f" --only {' '.join(args.only)}" if args.only else ""
    print(f"ctdose {__version__}: what `ctdose run{which}` of profile {cfg.name!r} into {run_dir} would compute "
          f"(nothing is computed or written)")
    record = read_run_record(run_dir)
    if record is not None:
        same = " (the same settings)" if record["profile_sha1"] == profile_sha1(cfg) else ""
        print(f"last run: {describe_run(record)}{same}")
    print(_every_row(table) if args.every else format_status(table))
    return 1 if args.check and table["state"].isin(["to compute", "will fail"]).any() else 0


def _add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--from`` and ``--only``: which notebooks a run executes."""
    parser.add_argument("--from", dest="start", default=None, metavar="NB", help="first notebook to run")
    parser.add_argument("--only", nargs="+", default=None, metavar="NB", help="run only these notebooks")


def _prune(args) -> int:
    """``ctdose prune``: list what the profile's run leaves out; remove it with ``--yes`` (refused
    where the run directory was last run with other settings, unless ``--force``)."""
    from .prune import format_plan, prune, prune_plan

    cfg = load_profile(args.profile, args.overrides)
    run_dir = _run_dir(cfg, args.out)
    record = read_run_record(run_dir)
    other = None
    if record is not None and record["profile_sha1"] != profile_sha1(cfg):
        other = (f"{run_dir} was last run with {describe_run(record)}, not with these settings: what they leave "
                 "out may be what that run uses")
        if args.yes and not args.force:
            raise ConfigError(f"{other}. Prune with its --profile and --set, or pass --force")
    plan = (prune if args.yes else prune_plan)(cfg, run_dir)
    print(f"ctdose {__version__}: what the run of profile {cfg.name!r} in {run_dir} leaves out")
    if other and not args.yes:
        print(f"note: {other}")
    print(_every_row(plan) if args.every and not plan.empty else format_plan(plan))
    if not plan.empty:
        print("removed" if args.yes else "nothing was removed; pass --yes to remove these")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name a run: ``--profile``, ``--out`` and ``--set``."""
    parser.add_argument("--profile", default="demo", help="smoke | demo | paper | path/to/profile.yaml")
    parser.add_argument("--out", default=None, help="run directory (default runs/<profile>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile key, e.g. --set train.epochs=20 (repeatable)")


def _run_dir(cfg, out: str | os.PathLike | None) -> Path:
    """The run directory: ``out``, or ``runs/<profile name>`` (relative ones from the project root)."""
    return resolve_path(out or f"runs/{cfg.name}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctdose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"ctdose {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebook chain with papermill")
    _add_run_arguments(run)
    _add_selection_arguments(run)
    run.add_argument("--kernel", default=DEFAULT_KERNEL, help="Jupyter kernel name (default python3)")
    run.add_argument("--figures-dir", default=None,
                     help="where figures are written (default: figures/ for demo, <run_dir>/figures otherwise)")
    run.add_argument("--notebooks", default=None, help="folder of the chain notebooks (default notebooks/)")
    run.add_argument("--quiet", action="store_true", help="no progress output")

    stat = sub.add_parser("status", help="what `ctdose run` would compute, without running anything")
    _add_run_arguments(stat)
    _add_selection_arguments(stat)
    stat.add_argument("--all", dest="every", action="store_true", help="list every item, not a summary")
    stat.add_argument("--check", action="store_true",
                      help="exit with status 1 when anything is to compute (or a step will fail)")

    prune = sub.add_parser("prune", help="list (or, with --yes, remove) what the profile's run leaves out")
    _add_run_arguments(prune)
    prune.add_argument("--yes", action="store_true", help="remove them (default: only list them)")
    prune.add_argument("--force", action="store_true",
                       help="also when the run directory was last run with other settings")
    prune.add_argument("--all", dest="every", action="store_true", help="list every item, not a summary")

    prof = sub.add_parser("profile", help="print a profile (with overrides applied) as YAML")
    prof.add_argument("name", nargs="?", default="demo")
    prof.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("profiles", help="list the shipped profiles")
    sub.add_parser("notebooks", help="list the chain's notebooks in order")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctdose`` command; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "run":
            run_chain(args.profile, args.out, args.overrides, args.start, args.only, args.kernel,
                      args.figures_dir, args.notebooks, progress=not args.quiet)
        elif args.command == "status":
            return _status(args)
        elif args.command == "prune":
            return _prune(args)
        elif args.command == "profile":
            import yaml

            cfg = load_profile(args.name, args.overrides)
            _check_values(cfg, device_available=False)  # a profile may be printed here and run elsewhere
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        elif args.command == "profiles":
            print("\n".join(available_profiles()))
        elif args.command == "notebooks":
            print("\n".join(b.stem for b in list_notebooks()))
    except CtdoseError as exc:
        print(f"ctdose: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctdose: interrupted; completed cases stay in the store, re-run to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
