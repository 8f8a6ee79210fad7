"""Profiles: the scale of a run (``smoke``, ``demo``, ``paper``) as YAML data.

A profile is a nested mapping shipped in ``ctdose/profiles/<name>.yaml``. Any leaf key
can be overridden with a dotted path, from the command line (``--set mc.n_photons=1e6``)
or from a notebook's papermill parameters (``overrides = {"mc.n_photons": 1e6}``).
Unknown keys and values of the wrong type are refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import ConfigError

__all__ = ["Profile", "as_int", "as_real", "available_profiles", "load_profile", "number_from_text", "parse_override"]


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    folder = resources.files("ctdose") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


class Profile(dict):
    """A nested profile mapping with dotted-path access.

    Examples
    --------
    >>> cfg = load_profile("smoke")
    >>> cfg["name"]
    'smoke'
    >>> cfg.get_path("train.batch_size") == cfg["train"]["batch_size"]
    True
    """

    @property
    def name(self) -> str:
        return str(self["name"])

    def get_path(self, dotted: str) -> Any:
        """Value at a dotted path such as ``"mc.n_photons"``."""
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"profile {self.get('name')!r}: unknown key {dotted!r}")
            node = node[part]
        return node

    def to_dict(self) -> dict:
        """A plain, deep-copied ``dict`` (for provenance attributes and checkpoints)."""
        return copy.deepcopy(dict(self))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``"key.path=value"``; the value is read as YAML (``1e6``, ``true``, ``[0, 10]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. mc.n_photons=1e6")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def number_from_text(value: Any) -> Any:
    """A number written as text as a float (YAML 1.1 reads ``1e6`` as a string); anything else
    as given."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (Python, numpy, or an integral finite float), else
    None (text too: pass it through :func:`number_from_text` first to read it)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    v = float(value)
    return int(v) if math.isfinite(v) and v.is_integer() else None


def as_real(value: Any) -> float | None:
    """``value`` as a finite float if it is a real number (not a bool), else None."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _scalar(value: Any) -> Any:
    """A 0-d numpy array's item; anything else as given."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Check that an override has the type of the profile's value (ints may become floats)."""
    if old is None or new is None:
        return new
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        new = number_from_text(new)
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
        return new
    elif isinstance(old, int) and isinstance(new, float) and float(new).is_integer():
        return int(new)
    elif isinstance(old, str) and isinstance(new, (str, int, float)) and not isinstance(new, bool):
        return str(new)
    elif isinstance(old, list) and isinstance(new, list):
        return new
    elif isinstance(old, dict) and isinstance(new, dict):
        return new
    raise ConfigError(
        f"override {key}={new!r}: expected a value of type {type(old).__name__} (profile has {old!r})"
    )


def _apply(profile: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = profile
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown override key {key!r} in profile {profile.get('name')!r}")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        known = ", ".join(sorted(node)) if node is not profile else ", ".join(sorted(profile))
        raise ConfigError(f"unknown override key {key!r} (known here: {known})")
    node[leaf] = _coerce(key, node[leaf], value)


def load_profile(
    name: str | Path = "demo",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> Profile:
    """Load a shipped profile (or a YAML file) and apply overrides.

    Parameters
    ----------
    name : str or Path
        ``"smoke"``, ``"demo"``, ``"paper"``, or a path to a YAML file with the same keys.
    overrides : mapping or iterable of str, optional
        ``{"mc.n_photons": 1e6}`` or ``["mc.n_photons=1e6"]``.

    Returns
    -------
    Profile

    Raises
    ------
    ConfigError
        Unknown profile, unknown key, or a value of the wrong type.
    """
    path = Path(str(name))
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"profile file {path}: not found")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    else:
        ref = resources.files("ctdose") / "profiles" / f"{name}.yaml"
        if not ref.is_file():
            raise ConfigError(
                f"unknown profile {str(name)!r}; choose one of {', '.join(available_profiles())} "
                "or give a path to a .yaml file"
            )
        text = ref.read_text(encoding="utf-8")
        source = f"ctdose/profiles/{name}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"profile {source}: expected a mapping with a 'name' key")
    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
        for key, value in items:
            _apply(data, str(key), value)
    return Profile(data)
