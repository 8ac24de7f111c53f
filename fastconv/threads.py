"""numba's CPU threads: their OpenMP runtime, and sharing them between callers.

At import, numba's OpenMP layer is bound to a libgomp that sleeps when idle, even
when torch has loaded a libgomp of its own first (`_bind_numba_openmp`);
`openmp_runtimes` and `contention` tell `python -m fastconv info` what is loaded
and what will slow fastconv down.

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
import importlib
import os
import sys
import threading

# numba's `omp` threading layer is GNU libgomp, whose idle workers spin for
# ~300k pause instructions (several ms on Zen4) after every parallel region.
# im2col and Winograd follow each numba kernel with a multi-threaded BLAS GEMM,
# which those spinning threads slow by ~50% (measured). So, unless the user
# chose otherwise, idle OpenMP threads sleep. This must happen before numba
# starts its thread pool, hence here, at `import fastconv`.
USER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402


_OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes loaded in this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith(_OPENMP_LIBRARIES))


def _foreign_openmp_loaded() -> bool:
    """Whether another library (torch, scikit-learn, ...) has loaded a libgomp already."""
    return any("libgomp" in os.path.basename(p) for p in openmp_runtimes())


def _bind_numba_openmp():
    """Load numba's OpenMP threading layer now, on a libgomp that reads the wait
    policy above.

    libgomp reads OMP_WAIT_POLICY once, when it loads. If torch was imported first,
    its libgomp is in the process's global symbol scope, and numba's layer would bind
    to it: numba's threads then spin after every kernel and take the cores from the
    BLAS and torch threads that run next (a small layer 5x slower, a training step
    11x: docs/performance.md). RTLD_DEEPBIND makes the layer resolve OpenMP in its
    own dependency, a libgomp loaded now with the passive policy. Without a foreign
    libgomp the layer loads normally, and a libgomp loaded later reuses this one."""
    if numba.config.THREADING_LAYER not in ("default", "omp", "threadsafe", "forksafe"):
        return  # the user chose another layer
    if "numba.np.ufunc.omppool" in sys.modules:
        return  # numba has loaded it already: too late to choose
    deep = getattr(os, "RTLD_DEEPBIND", 0) if _foreign_openmp_loaded() else 0
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deep)
    try:
        importlib.import_module("numba.np.ufunc.omppool")
    except ImportError:
        pass  # no OpenMP build of numba: it falls back to tbb or workqueue
    finally:
        sys.setdlopenflags(flags)


NUMBA_OPENMP_WAS_LOADED = "numba.np.ufunc.omppool" in sys.modules
FOREIGN_OPENMP_AT_IMPORT = _foreign_openmp_loaded()
_bind_numba_openmp()


def contention() -> list[str]:
    """What will make other threads in this process compete with fastconv's kernels."""
    warnings = []
    if NUMBA_OPENMP_WAS_LOADED and len(openmp_runtimes()) > 1:
        warnings.append(
            "numba's OpenMP layer was loaded before fastconv, so it may run on another "
            "library's libgomp and inherit its wait policy; import fastconv earlier")
    if FOREIGN_OPENMP_AT_IMPORT and (USER_WAIT_POLICY or "").upper() != "PASSIVE":
        warnings.append(
            "another OpenMP runtime (torch's) was loaded before fastconv with its idle "
            "threads spinning: after each of its parallel ops they take a core from "
            "fastconv's next kernel for a while; OMP_WAIT_POLICY=PASSIVE set before "
            "importing torch avoids it")
    import fastconv
    if not fastconv.BLAS_WAIT_SET_BEFORE_NUMPY:
        warnings.append(
            "NumPy was imported before fastconv, so OPENBLAS_THREAD_TIMEOUT is not in "
            "effect: OpenBLAS's threads spin after each NumPy matrix product")
    return warnings

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
def cpu_slot(limit=None):
    """Run the body with this thread's fair share of numba's threads, at most `limit`
    (1 for small work: `fastconv.plan.cpu_threads`)."""
    global _in_flight, _taken
    with _lock:
        _in_flight += 1
        total = _total_threads()
        share = max(1, min(total - _taken, total // _in_flight, limit or total))
        _taken += share
    guard = contextlib.nullcontext() if _layer_is_threadsafe() else _serial
    try:
        with guard:
            previous = numba.get_num_threads()
            if share != previous:
                numba.set_num_threads(share)
            try:
                yield share
            finally:
                if share != previous:
                    numba.set_num_threads(previous)
    finally:
        with _lock:
            _in_flight -= 1
            _taken -= share
