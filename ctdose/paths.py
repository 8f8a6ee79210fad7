"""Where things live: the project root, run directories, notebooks and figures.

Notebooks run with different working directories (papermill from the project root,
JupyterLab and nbval from ``notebooks/``). Relative run directories such as
``runs/smoke`` are therefore resolved against the project root, found by walking up from
the working directory to the folder that holds ``notebooks/`` and ``pyproject.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "resolve_path", "notebooks_dir"]


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The compendium's root folder (holding ``notebooks/`` and ``pyproject.toml``).

    Falls back to the working directory when no such folder is found (an installed
    package used outside the compendium).
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    source_tree = Path(__file__).resolve().parents[1]
    if (source_tree / "notebooks").is_dir() and (source_tree / "pyproject.toml").is_file():
        return source_tree
    return here


def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path; relative paths are taken from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def notebooks_dir() -> Path:
    """The folder of the ordered chain notebooks."""
    return project_root() / "notebooks"
