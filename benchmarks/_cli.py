"""The command line of a benchmark module whose ``run(quick)`` returns rows (``benchmark``,
``value``, ``unit``, ``note``): ``--quick`` and one printed table."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def quick_main(run: Callable[[bool], list[dict]], doc: str, argv=None) -> int:
    """Parse ``--quick``, call ``run`` and print its rows as a table; returns 0."""
    import pandas as pd

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced sizes (a quick check that it runs)")
    args = ap.parse_args(argv)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 160)
    print(pd.DataFrame(run(args.quick)).to_string(index=False))
    return 0
