"""Sharing numba's CPU threads between concurrent callers.

Two hazards when fastconv is called from many Python threads at once:
- numba's fallback `workqueue` threading layer (used when neither OpenMP nor
  TBB is present) is not thread-safe: concurrent parallel kernels abort the
  process. There, calls are serialised.
- with OpenMP/TBB, every calling thread gets its own team of
  `config.num_threads` workers: 8 callers on 2 cores would run 16 threads.
  So a call takes its share of the threads still free (at least one, at
  most total / calls in flight) and gives them back when it ends: with C
  concurrent callers at most total + C - 1 threads run, instead of C * total.
"""
from __future__ import annotations

import contextlib
import os
import threading

# numba's `omp` threading layer is GNU libgomp, whose idle workers spin for
# ~300k pause instructions (several ms on Zen4) after every parallel region.
# im2col and Winograd follow each numba kernel with a multi-threaded BLAS GEMM,
# which those spinning threads slow by ~50% (measured). So, unless the user
# chose otherwise, idle OpenMP threads sleep. This must happen before numba
# starts its thread pool, hence here, at `import fastconv`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

_lock = threading.Lock()
_serial = threading.Lock()
_in_flight = 0
_taken = 0


def _total_threads() -> int:
    from .config import config
    return config.num_threads or numba.config.NUMBA_NUM_THREADS


def _layer_is_threadsafe() -> bool:
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen,
        return False    # so serialise until it is known


@contextlib.contextmanager
def cpu_slot():
    """Run the body with this thread's fair share of numba's threads."""
    global _in_flight, _taken
    with _lock:
        _in_flight += 1
        total = _total_threads()
        share = max(1, min(total - _taken, total // _in_flight))
        _taken += share
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
            _taken -= share
