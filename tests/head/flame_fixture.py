"""Synthetic FLAME model files with FLAME's real keys, shapes and pickle layout (no FLAME data exists here).

`write_chumpy_pickle` imitates a real FLAME file as Python 2 wrote it:

* arrays of `v_template`, `shapedirs`, `posedirs`, `J`, `weights` sit in `chumpy.ch.Ch` objects whose
  state is chumpy's `__getstate__` (its `__dict__` minus `_parents`/`_cache`, the value under `'x'`);
* `J_regressor` is an old `scipy.sparse.csc.csc_matrix` (state `_shape`, `data`, `indices`, `indptr`,
  `maxprint`, `format`), `f` and `kintree_table` are numpy arrays, `bs_style`/`bs_type` strings;
* Python 2 names (`copy_reg`, `__builtin__`) and byte strings as Python 2 `str` (BINSTRING opcodes),
  so numpy's raw data arrives as latin-1 text, exactly what `encoding="latin1"` loading must handle.

Fake `chumpy` and `scipy.sparse.csc` modules are put in `sys.modules` only while pickling and removed
again, so the conversion under test runs without chumpy.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.sparse

V, F = 5023, 9976


def flame_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays with FLAME's keys, shapes and dtypes; regressor and weight rows sum to 1."""
    rng = np.random.default_rng(seed)
    v_template = rng.normal(0, 0.06, (V, 3))
    faces = _random_faces(rng)
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
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32),
        "J": regressor @ v_template,
    }


def _random_faces(rng: np.random.Generator) -> np.ndarray:
    """F triangles of three distinct vertices each (FLAME's `f` is uint32)."""
    a = rng.integers(0, V, F)
    b = (a + rng.integers(1, V // 2, F)) % V
    c = (b + rng.integers(1, V // 2, F)) % V
    return np.stack([a, b, c], 1).astype(np.uint32)


# ---------------------------------------------------------------------------------- fake Python-2 classes
class Ch:
    """Pickles like `chumpy.ch.Ch`: NEWOBJ/`copy_reg._reconstructor` plus chumpy's own `__getstate__`."""

    def __init__(self, x: Any):
        d = self.__dict__
        d.update(_dirty_vars={"x"}, _itr=None, _make_dense=False, _make_sparse=False, _depends_on_deps={},
                 _parents={}, _cache={"r": None, "drs": {}}, x=x)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_parents"], state["_cache"]
        return state


class Select:
    """Pickles like a chumpy expression node (`chumpy.reordering.Select`): no stored `'x'` value."""

    def __init__(self, a: Any, idxs: np.ndarray):
        self.__dict__.update(_dirty_vars=set(), a=a, idxs=idxs, preferred_shape=None)


class OldCscMatrix:
    """Pickles like scipy 0.x's `scipy.sparse.csc.csc_matrix` under Python 2."""

    def __init__(self, dense: np.ndarray):
        m = scipy.sparse.csc_matrix(dense)
        self.__dict__.update(_shape=m.shape, data=m.data, indices=m.indices, indptr=m.indptr, maxprint=50, format="csc")


@contextlib.contextmanager
def fake_python2_modules() -> Iterator[None]:
    """Make `chumpy.ch.Ch`, `chumpy.reordering.Select` and `scipy.sparse.csc.csc_matrix` picklable, then undo it."""
    chumpy = types.ModuleType("chumpy")
    ch, reordering, csc = (types.ModuleType(n) for n in ("chumpy.ch", "chumpy.reordering", "scipy.sparse.csc"))
    for cls, module, name in ((Ch, ch, "Ch"), (Select, reordering, "Select"), (OldCscMatrix, csc, "csc_matrix")):
        cls.__module__, cls.__qualname__ = module.__name__, name
        setattr(module, name, cls)
    chumpy.ch, chumpy.reordering = ch, reordering
    fakes = {"chumpy": chumpy, "chumpy.ch": ch, "chumpy.reordering": reordering, "scipy.sparse.csc": csc}
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Py2Pickler(pickle._Pickler):
    """Python's pure pickler writing `bytes` and `str` as Python 2 `str` (SHORT_BINSTRING / BINSTRING)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def dumps_python2(obj: Any, protocol: int = 2) -> bytes:
    """Pickle `obj` the way Python 2 would (protocol 1 or 2); may contain `Ch`, `Select`, `OldCscMatrix`."""
    buffer = io.BytesIO()
    with fake_python2_modules():
        Py2Pickler(buffer, protocol=protocol, fix_imports=True).dump(obj)
    return buffer.getvalue()


def flame_payload(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "v_template": Ch(arrays["v_template"]), "shapedirs": Ch(arrays["shapedirs"]), "posedirs": Ch(arrays["posedirs"]),
        "J": Ch(arrays["J"]), "weights": Ch(arrays["weights"]), "f": arrays["f"],
        "J_regressor": OldCscMatrix(arrays["J_regressor"]), "kintree_table": arrays["kintree_table"],
        "bs_style": "lbs", "bs_type": "lrotmin",
    }


def write_chumpy_pickle(path: Path, arrays: dict[str, np.ndarray], protocol: int = 2) -> Path:
    """A FLAME-like `.pkl` with chumpy objects and an old scipy sparse matrix, as Python 2 pickled it."""
    path = Path(path)
    path.write_bytes(dumps_python2(flame_payload(arrays), protocol=protocol))
    return path


def write_numpy_pickle(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """The same model with plain numpy arrays and today's scipy sparse (what smplx reads without chumpy)."""
    payload = {**arrays, "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]), "bs_style": "lbs", "bs_type": "lrotmin"}
    path = Path(path)
    path.write_bytes(pickle.dumps(payload, protocol=4))
    return path
