"""Shared test set-up: import the package from backend/, keep Blender and caches out of $HOME."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="pointillist-blender-"))


@pytest.fixture(scope="session")
def head():
    """The bundled procedural head template as a torch `HeadModel`."""
    from pointillist.head.model import HeadModel

    return HeadModel.load()
