"""Shared pytest fixtures: keep tests on CPU, single-threaded and headless."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("CTDOSE_PROGRESS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The project's ``shared/`` folder beside the checkout (skips when absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} not present")
    return SHARED


# One intra-op thread for the whole session (module-scoped fixtures included): results are
# bit-for-bit reproducible for a seed at a fixed thread count, and CPU reductions (convolution
# backward, sums) may round differently with another number of threads.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
