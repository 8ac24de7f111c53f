"""Sharing numba's CPU threads between concurrent callers.

Two hazards when fastconv is called from many Python threads at once:
- numba's fallback `workqueue` threading layer (used when neither OpenMP nor
  TBB is present) is not thread-safe: concurrent parallel kernels abort the
  process. There, calls are serialised.
- with OpenMP/TBB, every calling thread gets its own team of
  `config.num_threads` workers: 8 callers on 2 cores would run 16 threads.
  So each call in flight gets an equal share of the threads (at least one).
"""
from __future__ import annotations

import contextlib
import threading

import numba

_lock = threading.Lock()
_serial = threading.Lock()
_in_flight = 0


def _total_threads() -> int:
    from .config import config
    return config.num_threads or numba.config.NUMBA_NUM_THREADS


def _layer_is_threadsafe() -> bool:
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return numba.config.THREADING_LAYER not in ("workqueue",)


@contextlib.contextmanager
def cpu_slot():
    """Run the body with this thread's fair share of numba's threads."""
    global _in_flight
    with _lock:
        _in_flight += 1
        share = max(1, _total_threads() // _in_flight)
    guard = contextlib.nullcontext() if _layer_is_threadsafe() else _serial
    try:
        with guard:
            previous = numba.get_num_threads()
            numba.set_num_threads(share)
            try:
                yield share
            finally:
                numba.set_num_threads(previous)
    finally:
        with _lock:
            _in_flight -= 1
