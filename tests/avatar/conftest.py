"""Fixtures for the avatar-format tests: small synthetic avatars and a synthetic head model."""

from __future__ import annotations

import pytest

from .synthetic import make_avatar, make_head_data


@pytest.fixture
def avatar_factory():
    """`make_avatar(n=..., sh_degree=..., seed=..., with_source=...)` -> a random valid Avatar."""
    return make_avatar


@pytest.fixture(scope="session")
def synthetic_head():
    """A 642-vertex icosphere `HeadModel` with random shape/expression bases and LBS weights."""
    from pointillist.head.model import HeadModel

    return HeadModel(make_head_data(seed=0))
