"""``python -m ctdose`` is the ``ctdose`` command."""

import sys

from .pipeline import main

sys.exit(main())
