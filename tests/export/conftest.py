"""Fixtures for the export tests: small procedural avatars and bundles, and the Node-based readers."""

from __future__ import annotations

import numpy as np
import pytest

from .web_readers import require_web_tool


@pytest.fixture(scope="session")
def procedural_avatar(head):
    """A real procedural avatar (SH degree 0, ~6k Gaussians), bound to the bundled head."""
    from pointillist.synth.procedural import make_procedural_avatar

    return make_procedural_avatar(5, head, hair_style="short", beard=False, density=0.15)


@pytest.fixture(scope="session")
def sh3_avatar(procedural_avatar):
    """The same avatar with random SH bands 1-3, to exercise SH export and rotation."""
    from dataclasses import replace

    g = procedural_avatar.gaussians
    rng = np.random.default_rng(0)
    sh_rest = (rng.normal(size=(g.num, 15, 3)) * 0.2).astype(np.float32)
    return replace(procedural_avatar, gaussians=replace(g, sh_rest=sh_rest))


@pytest.fixture(scope="session")
def bundle(procedural_avatar, tmp_path_factory):
    """The procedural avatar written as a bundle folder."""
    from pointillist.avatar.bundle import write_bundle

    path = tmp_path_factory.mktemp("export") / "avatar"
    write_bundle(procedural_avatar, path)
    return path


@pytest.fixture(scope="session")
def node():
    return require_web_tool("node")


@pytest.fixture(scope="session")
def chromium():
    return require_web_tool("chromium")
