"""An allow-list unpickler for the one pickle format we must read: FLAME model files.

FLAME's `.pkl` files were written by Python 2: a dict whose arrays sit inside chumpy objects, plus a
scipy sparse matrix and plain numpy arrays. chumpy does not install on current Pythons, and
`pickle.load` on a downloaded file runs whatever callable the file names. This unpickler resolves a
global only if it is on a short allow-list, and what it hands back can neither run code nor be
modified by the pickle:

* numpy's array/dtype/scalar reconstruction (`numpy.core` or numpy 2's `numpy._core`, and the
  protocol-5 `_frombuffer`), wrapped so they refuse object dtypes and ndarray subclasses;
* `object`, `set` (chumpy's state holds a set), `_codecs.encode` (latin-1 only);
* `copy_reg._reconstructor` / `copyreg._reconstructor`, only for our stand-ins with base `object`;
* any `chumpy.*` class -> an inert `ChumpyStandIn` subclass whose `__setstate__` records the state;
* scipy's `csc/csr/coo` matrix (or array) classes under `scipy.sparse`, `scipy.sparse.csc`,
  `scipy.sparse._csc`, ... -> an inert `SparseStandIn`, densified afterwards from its recorded state.

Everything else raises `RefusedGlobal` naming the global, before anything is called. The classes and
callables handed to the pickle are sealed (a pickle's BUILD opcode cannot set attributes on them), so
a file cannot tamper with this module for later loads either.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable

import numpy as np

try:  # numpy >= 2 (numpy 1.26 also has this alias for reading numpy-2 pickles)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - older numpy
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list, or misuses an allowed one."""


class StandInError(ValueError):
    """A recorded chumpy / sparse state does not hold what a FLAME file holds."""


class _Sealed(type):
    """Metaclass of everything the pickle can name: its classes cannot be modified after creation."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise RefusedGlobal(f"refused to set attribute {name!r} on {cls.__name__}")

    def __delattr__(cls, name: str) -> None:
        raise RefusedGlobal(f"refused to delete attribute {name!r} on {cls.__name__}")


class StandIn(metaclass=_Sealed):
    """An inert object: unpickling it records its state and does nothing else."""

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setattr__(self, name: str, value: Any) -> None:
        raise RefusedGlobal(f"refused to set attribute {name!r} on {type(self).__name__}")

    def recorded(self) -> Any:
        return getattr(self, "state", None)


class ChumpyStandIn(StandIn):
    """A pickled chumpy object. A plain `chumpy.ch.Ch` keeps its numpy value in `state['x']`."""

    __slots__ = ()
    chumpy_class = "chumpy"

    def value(self, _depth: int = 0) -> np.ndarray:
        state = self.recorded()
        if not isinstance(state, dict) or "x" not in state:
            raise StandInError(f"a {self.chumpy_class} object without a stored 'x' array (a chumpy expression, not a value)")
        x = state["x"]
        if isinstance(x, ChumpyStandIn) and _depth < 8:
            return x.value(_depth + 1)
        if not isinstance(x, (np.ndarray, int, float)):
            raise StandInError(f"a {self.chumpy_class} object whose 'x' is a {type(x).__name__}, not an array")
        return np.asarray(x)


class SparseStandIn(StandIn):
    """A pickled scipy.sparse matrix; `dense()` rebuilds it from data/indices/indptr (or row/col)."""

    __slots__ = ()
    sparse_format = ""

    def dense(self, max_elements: int = 50_000_000) -> np.ndarray:
        s = self.recorded()
        if not isinstance(s, dict):
            raise StandInError("a sparse matrix without recorded state")
        fmt = self.sparse_format
        if s.get("format", fmt) != fmt:
            raise StandInError(f"a {fmt}_matrix whose state says format {s.get('format')!r}")
        shape = s.get("_shape", s.get("shape"))
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape)):
            raise StandInError(f"a sparse matrix with an invalid shape {shape!r}")
        rows, cols = int(shape[0]), int(shape[1])
        if rows * cols > max_elements:
            raise StandInError(f"a sparse matrix of shape {shape} is too large to densify")
        data = np.asarray(s.get("data"))
        if data.ndim != 1 or data.dtype.kind not in "biuf":
            raise StandInError("a sparse matrix whose 'data' is not a numeric vector")
        out = np.zeros((rows, cols), dtype=np.float64)
        if fmt == "coo":
            if "coords" in s:
                row, col = (np.asarray(c, dtype=np.int64) for c in s["coords"])
            else:
                row, col = np.asarray(s.get("row"), dtype=np.int64), np.asarray(s.get("col"), dtype=np.int64)
            _check_indices(row, rows, len(data))
            _check_indices(col, cols, len(data))
            np.add.at(out, (row, col), data)
            return out
        major = cols if fmt == "csc" else rows
        minor = rows if fmt == "csc" else cols
        indices = np.asarray(s.get("indices"), dtype=np.int64)
        indptr = np.asarray(s.get("indptr"), dtype=np.int64)
        if indptr.shape != (major + 1,) or indptr[0] != 0 or indptr[-1] != len(data) or np.any(np.diff(indptr) < 0):
            raise StandInError(f"a {fmt}_matrix with an inconsistent 'indptr'")
        _check_indices(indices, minor, len(data))
        outer = np.repeat(np.arange(major), np.diff(indptr))
        if fmt == "csc":
            np.add.at(out, (indices, outer), data)
        else:
            np.add.at(out, (outer, indices), data)
        return out


def _check_indices(idx: np.ndarray, bound: int, n: int) -> None:
    if idx.shape != (n,) or (n and (idx.min() < 0 or idx.max() >= bound)):
        raise StandInError("a sparse matrix with out-of-range or mis-sized indices")


def _standin_class(base: type, name: str, **attrs: Any) -> type:
    return _Sealed(name, (base,), {"__slots__": (), **attrs})


_SPARSE = {
    f"{fmt}_{kind}": _standin_class(SparseStandIn, f"Sparse{fmt.capitalize()}StandIn", sparse_format=fmt)
    for fmt in ("csc", "csr", "coo")
    for kind in ("matrix", "array")
}
_SPARSE_MODULES = {"scipy.sparse"} | {f"scipy.sparse.{p}{fmt}" for p in ("", "_") for fmt in ("csc", "csr", "coo")}


class _Guarded(metaclass=_Sealed):
    """A callable handed to the pickle: checks its arguments, then calls the real function."""

    __slots__ = ("_fn", "_label")

    def __init__(self, fn: Callable[..., Any], label: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_label", label)

    def __setattr__(self, name: str, value: Any) -> None:
        raise RefusedGlobal(f"refused to set attribute {name!r} on {self._label}")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<allowed {self._label}>"


def _plain_dtype(dtype: Any, what: str) -> np.dtype:
    dt = dtype if isinstance(dtype, np.dtype) else None
    if dt is None or dt.hasobject:
        raise RefusedGlobal(f"refused {what} with dtype {dtype!r}")
    return dt


def _dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(obj, (str, bytes)):
        raise RefusedGlobal(f"refused numpy.dtype({type(obj).__name__})")
    dt = np.dtype(obj, bool(align), bool(copy))
    return _plain_dtype(dt, "numpy.dtype")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise RefusedGlobal(f"refused numpy _reconstruct of {getattr(subtype, '__name__', type(subtype).__name__)!r}")
    return _multiarray._reconstruct(np.ndarray, shape, dtype)


def _scalar(dtype: Any, *data: Any) -> Any:
    return _multiarray.scalar(_plain_dtype(dtype, "numpy scalar"), *data)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):
        raise RefusedGlobal("refused numpy _frombuffer on a non-bytes buffer")
    return _numeric._frombuffer(buf, _plain_dtype(dtype, "numpy _frombuffer"), shape, order)


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> StandIn:
    """copyreg._reconstructor (Python 2 protocol 0/1 pickles of new-style objects), stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)) or base is not object or state is not None:
        raise RefusedGlobal(f"refused copy_reg._reconstructor({getattr(cls, '__name__', type(cls).__name__)}, "
                            f"{getattr(base, '__name__', type(base).__name__)}, ...)")
    return object.__new__(cls)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _Guarded(_dtype, "numpy.dtype"),
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("_codecs", "encode"): _Guarded(_latin1_encode, "_codecs.encode"),
    ("copy_reg", "_reconstructor"): _Guarded(_reconstructor, "copy_reg._reconstructor"),
    ("copyreg", "_reconstructor"): _Guarded(_reconstructor, "copyreg._reconstructor"),
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _Guarded(_reconstruct, "numpy _reconstruct")
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _Guarded(_scalar, "numpy scalar")
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _Guarded(_frombuffer, "numpy _frombuffer")


class AllowListUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` only resolves the allow-list above."""

    def __init__(self, file: Any, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._chumpy: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module == "chumpy" or module.startswith("chumpy.")) and name.isidentifier():
            key = f"{module}.{name}"
            if key not in self._chumpy:
                self._chumpy[key] = _standin_class(ChumpyStandIn, f"Chumpy_{name}", chumpy_class=key)
            return self._chumpy[key]
        if module in _SPARSE_MODULES and name in _SPARSE:
            return _SPARSE[name]
        raise RefusedGlobal(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("refused persistent id")


def safe_load(payload: bytes) -> Any:
    """Unpickle `payload` with the allow-list (Python 2 strings decoded as latin-1, as FLAME needs)."""
    return AllowListUnpickler(io.BytesIO(payload), encoding="latin1").load()
