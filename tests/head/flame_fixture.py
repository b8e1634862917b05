"""Synthetic FLAME model files with FLAME's real keys and shapes (no real FLAME data exists here).

`write_chumpy_pickle` imitates a real FLAME file: Python-2-style protocol-2 pickle whose arrays sit
inside chumpy `Ch` objects and whose `J_regressor` is a scipy sparse matrix. A fake `chumpy` module is
injected only while pickling, so loading must work without chumpy (as on Python 3.11).
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse

V, F = 5023, 9976


def flame_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # a plausible head-sized cloud; vertices of the lip rings sit near the mouth so teeth are sane
    v_template = rng.normal(0, 0.06, (V, 3))
    faces = np.stack([rng.permutation(V)[:3] for _ in range(F)]).astype(np.uint32)
    regressor = np.zeros((5, V))
    for j in range(5):
        idx = rng.choice(V, 12, replace=False)
        w = rng.random(12)
        regressor[j, idx] = w / w.sum()
    weights = rng.random((V, 5)) ** 4
    weights /= weights.sum(1, keepdims=True)
    return {
        "v_template": v_template,
        "f": faces,
        "shapedirs": rng.normal(0, 1e-3, (V, 3, 400)),
        "posedirs": rng.normal(0, 1e-3, (V, 3, 36)),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": regressor @ v_template,
    }


class _Ch:
    """Stands in for chumpy.ch.Ch while pickling: state holds the array under 'x', like chumpy's."""

    def __init__(self, x):
        self.x = x
        self._dirty_vars = set()
        self.label = None


def write_chumpy_pickle(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    _Ch.__module__ = "chumpy.ch"
    _Ch.__qualname__ = _Ch.__name__ = "Ch"
    ch.Ch = _Ch
    chumpy.ch = ch
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        payload = {
            "v_template": _Ch(arrays["v_template"]), "shapedirs": _Ch(arrays["shapedirs"]), "posedirs": _Ch(arrays["posedirs"]),
            "J": _Ch(arrays["J"]), "f": arrays["f"], "weights": _Ch(arrays["weights"]),
            "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]), "kintree_table": arrays["kintree_table"],
            "bs_style": "lbs", "bs_type": "lrotmin",
        }
        path.write_bytes(pickle.dumps(payload, protocol=2))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


def write_numpy_pickle(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """The same model as plain numpy (what smplx's loader can read without chumpy): the test's oracle input."""
    payload = {**arrays, "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]), "bs_style": "lbs", "bs_type": "lrotmin"}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return path
