"""Surviving a broken numba cache.

numba caches compiled kernels on disk (`cache=True`). A read-only or missing
cache directory only costs a recompile, but an index or data file that is
truncated or corrupt (a crash mid-write, a half-copied environment) makes
numba raise while loading it. fastconv then resets the cache of its kernels,
warns once, and compiles afresh instead of failing.
"""
from __future__ import annotations

import os
import sys
import warnings

_NUMBA_CACHING = os.path.join("numba", "core", "caching.py")


def _raised_while_loading_cache(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_NUMBA_CACHING):
            return True
        tb = tb.tb_next
    return False


def _kernel_dispatchers():
    from numba.core.dispatcher import Dispatcher
    for name, module in list(sys.modules.items()):
        if name.startswith("fastconv.cpu") and module is not None:
            # kernels made per parameter set live in the module's `_kernels` dict
            made = list(getattr(module, "_kernels", {}).copy().values())
            for obj in list(vars(module).values()) + made:
                if isinstance(obj, Dispatcher):
                    yield obj


def reset_kernel_caches():
    """Empty the on-disk index of every loaded fastconv CPU kernel; where even
    that fails (unwritable), stop that kernel from using the disk cache."""
    from numba.core.caching import NullCache
    for dispatcher in _kernel_dispatchers():
        try:
            dispatcher._cache.flush()
        except Exception:
            dispatcher._cache = NullCache()


def call(function, *args):
    """function(*args), retried once after a cache reset if numba's cache was unreadable."""
    try:
        return function(*args)
    except Exception as exc:
        if not _raised_while_loading_cache(exc):
            raise
        warnings.warn(
            f"fastconv: numba's kernel cache could not be read ({type(exc).__name__}: {exc}); "
            "it was reset and the kernels are compiled again", RuntimeWarning, stacklevel=3)
        reset_kernel_caches()
        return function(*args)
