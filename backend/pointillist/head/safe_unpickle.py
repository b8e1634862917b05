"""An allow-list unpickler for the one pickle format we must read: FLAME model files.

FLAME's `.pkl` files hold chumpy objects and a scipy sparse matrix, pickled by Python 2. chumpy cannot
be installed on Python 3.11, and `pickle.load` on a file a user downloaded would execute whatever it
names. This unpickler resolves only numpy's array reconstruction, `object`, and inert stand-ins for the
chumpy and scipy.sparse classes; every other global is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class ChumpyStandIn:
    """Holds the state of a pickled chumpy object; the numpy value is in `state['x']`."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def value(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict) or "x" not in state:
            raise pickle.UnpicklingError("chumpy object without an 'x' array")
        return np.asarray(state["x"])


class SparseStandIn:
    """Holds the state of a pickled scipy.sparse matrix; rebuilt as a dense array, nothing executed."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def dense(self) -> np.ndarray:
        s = getattr(self, "state", None)
        if not isinstance(s, dict):
            raise pickle.UnpicklingError("sparse matrix without state")
        shape = s.get("_shape", s.get("shape"))
        data, indices, indptr = (np.asarray(s.get(k)) for k in ("data", "indices", "indptr"))
        fmt = s.get("format") or self.__class__.__name__[:3]
        if shape is None or data.ndim != 1:
            raise pickle.UnpicklingError("sparse matrix state is missing shape or data")
        rows, cols = int(shape[0]), int(shape[1])
        out = np.zeros((rows, cols), dtype=np.float64)
        if fmt == "csr":
            for r in range(rows):
                out[r, indices[indptr[r]:indptr[r + 1]]] = data[indptr[r]:indptr[r + 1]]
        elif fmt == "coo":
            out[np.asarray(s["row"]), np.asarray(s["col"])] = data
        else:  # csc
            for c in range(cols):
                out[indices[indptr[c]:indptr[c + 1]], c] = data[indptr[c]:indptr[c + 1]]
        return out


class CscStandIn(SparseStandIn):
    pass


class CsrStandIn(SparseStandIn):
    pass


class CooStandIn(SparseStandIn):
    pass


_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): np.core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np.core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_SPARSE_CLASSES = {"csc_matrix": CscStandIn, "csr_matrix": CsrStandIn, "coo_matrix": CooStandIn}


def _reconstructor(cls, base, state):
    """copyreg._reconstructor restricted to our stand-ins (what Python 2 pickles of new-style objects use)."""
    if base is not object or cls not in (ChumpyStandIn, CscStandIn, CsrStandIn, CooStandIn):
        raise RefusedGlobal(f"refused to reconstruct {getattr(cls, '__name__', cls)!r}")
    return object.__new__(cls)


class AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY:
            return _NUMPY[(module, name)]
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _reconstructor
        if module in ("__builtin__", "builtins") and name in ("object", "set", "frozenset"):
            return {"object": object, "set": set, "frozenset": frozenset}[name]  # chumpy state holds sets
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module.split(".")[0] == "chumpy":
            return ChumpyStandIn
        if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
            return _SPARSE_CLASSES[name]
        raise RefusedGlobal(f"refused global {module}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def safe_load(payload: bytes) -> Any:
    """Unpickle `payload` with the allow-list (Python 2 strings decoded as latin-1, like FLAME needs)."""
    return AllowListUnpickler(io.BytesIO(payload), encoding="latin1").load()
