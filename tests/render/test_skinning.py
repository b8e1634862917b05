"""The bridge's compiled rotation skinning equals the head model's torch LBS maths (and a rotation's own)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pointillist.render import skinning


def _case(p=300, n=2000, j=5, seed=0, spread=0.5):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(j) * 0.4, p)
    weights[:7] = 0.0  # patterns that do not move
    weights[7:20] = np.eye(j)[rng.integers(0, j, 13)]  # single-bone patterns
    bones = Rotation.random(j, random_state=seed).as_matrix() * spread + np.eye(3) * (1 - spread)
    bones = np.stack([Rotation.from_matrix(b).as_matrix() for b in bones])
    rest = rng.normal(size=(n, 4)).astype(np.float32)
    post = Rotation.random(random_state=seed + 1).as_quat()[[3, 0, 1, 2]]
    return weights, rng.integers(0, p, n), rest, bones, post


@pytest.mark.parametrize("seed,spread", [(0, 0.3), (1, 0.7), (2, 1.0)])
def test_compiled_skinning_matches_the_torch_lbs(seed, spread):
    weights, index, rest, bones, post = _case(seed=seed, spread=spread)
    got = skinning.skin_quaternions(weights, index, rest, bones, post)
    want = skinning._skin_quaternions_torch(weights, index, rest, bones, post)
    # sign-agnostic: q and -q are the same rotation
    dots = np.abs(np.einsum("ni,ni->n", got, want)) / np.einsum("ni,ni->n", want, want)
    np.testing.assert_allclose(dots, 1.0, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(rest, axis=1), rtol=1e-5)


def test_a_single_bone_turns_its_splats_by_that_bone_exactly():
    bone = Rotation.from_euler("xyz", [30, -50, 80], degrees=True)
    weights = np.array([[1.0, 0.0], [0.0, 0.0]])
    rest = np.array([[1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    out = skinning.skin_quaternions(weights, np.array([0, 1]), rest, np.stack([bone.as_matrix(), np.eye(3)]),
                                    np.array([1.0, 0, 0, 0]))
    want0 = bone.as_quat()[[3, 0, 1, 2]]
    assert abs(abs(float(out[0] @ want0)) - 1.0) < 1e-6
    np.testing.assert_allclose(np.abs(out[1]), rest[1], atol=1e-7)  # the unweighted pattern keeps its rest rotation
