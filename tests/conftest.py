"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture
def shared_data() -> Path:
    """The workplace's shared/data folder; tests using it skip on a user's clone."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not present (only in the developers' workplace)")
    return path
