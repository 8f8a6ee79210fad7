"""Fixtures of the learning tests (helpers in ``learn_fakes``)."""

from __future__ import annotations

import pytest

from learn_fakes import make_learning_store


@pytest.fixture(scope="module")
def learning_store(tmp_path_factory):
    return make_learning_store(tmp_path_factory.mktemp("learn_run"))
