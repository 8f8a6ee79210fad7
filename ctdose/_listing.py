"""Short listings of names in messages."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["first_names"]

#: Names a message lists before it cuts the list short.
SHOWN_NAMES = 3


def first_names(names: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """The first ``shown`` names, comma-separated, with ``", ..."`` when there are more.

    >>> first_names(["a", "b"])
    'a, b'
    >>> first_names(["a", "b", "c", "d"])
    'a, b, c, ...'
    """
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
