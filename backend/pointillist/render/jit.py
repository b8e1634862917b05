"""numba, when it can be imported, and the one way the renderers compile their parallel CPU kernels.

numpy only otherwise: `AVAILABLE` is False without numba, `parallel_jit` then returns the plain function
(which callers avoid calling per pixel: they take their numpy or torch path instead) and `prange` is `range`.
"""

from __future__ import annotations

from typing import Callable

try:
    import numba
    from numba import prange

    AVAILABLE = True
except Exception:  # pragma: no cover - exercised only where numba is missing
    numba = None
    prange = range
    AVAILABLE = False


def parallel_jit(fn: Callable) -> Callable:
    """Parallel njit with an on-disk cache when one can be written (JIT takes seconds).

    numba refuses ``cache=True`` at decoration time if it finds no writable cache location
    (read-only install, no home directory); the kernel then simply compiles per process.
    """
    if not AVAILABLE:
        return fn
    try:
        return numba.njit(parallel=True, cache=True, nogil=True)(fn)
    except Exception:
        return numba.njit(parallel=True, nogil=True)(fn)
