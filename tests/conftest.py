"""Shared test fixtures: where ../shared is, and skips with a reason when it is absent."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FROQ_SHARED", REPO.parent / "shared"))

# the tests never read or fill the user's labels cache (baselineFIQA/cache.py): a fresh one per session
os.environ["FROQ_CACHE"] = tempfile.mkdtemp(prefix="froq-test-cache-")
atexit.register(shutil.rmtree, os.environ["FROQ_CACHE"], True)


def shared_path(*parts: str) -> Path:
    """Path inside ../shared; the calling test is skipped (with the reason) if it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the project's ../shared data is not beside this checkout)")
    return p


@pytest.fixture
def shared():
    """The ``shared_path`` helper as a fixture."""
    return shared_path
from lfw_data import *  # noqa: F401,F403
