"""numba's CPU threads: their OpenMP runtime, and sharing them between callers.

At import, numba's OpenMP layer is loaded with a short spin of its idle threads, the
one OpenMP runtime of the process (`_load_numba_openmp`); `openmp_runtimes` and
`contention` tell `python -m fastconv info` what is loaded and what will slow
fastconv down.

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
import threading

# numba's `omp` threading layer is GNU libgomp. After a parallel region its idle
# threads spin for GOMP_SPINCOUNT pause instructions, then sleep: 300000 by default
# (~16 ms on the Intel kind), none with OMP_WAIT_POLICY=PASSIVE. Woken from sleep,
# they cost ~40 us per kernel (a small layer 1.7x slower); spinning long, they take
# the cores from other thread pools (OpenBLAS's, in the user's NumPy code). A short
# spin serves the kernels of one call and of consecutive layers (docs/tuning.md).
# fastconv's own GEMMs are numba kernels (cpu/matmul.py), so no OpenBLAS pool runs
# inside a call. libgomp reads these variables once, when it loads: hence here, at
# `import fastconv`; a policy the user chose is kept.
SPIN_COUNT = 30000
USER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
USER_SPIN_COUNT = os.environ.get("GOMP_SPINCOUNT")
if USER_WAIT_POLICY is None and USER_SPIN_COUNT is None:
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)

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


def _load_numba_openmp():
    """Load numba's OpenMP threading layer now, so that the libgomp it brings reads the
    spin count above, and one OpenMP runtime serves the whole process: a libgomp
    loaded later (torch's) reuses this one. If torch was imported first, numba's layer
    binds to torch's libgomp, which is in the global symbol scope: one team of threads
    then runs torch's ops and fastconv's kernels in turn, with no second team spinning
    against it (docs/performance.md, "Thread pools")."""
    if numba.config.THREADING_LAYER not in ("default", "omp", "threadsafe", "forksafe"):
        return  # the user chose another layer
    try:
        importlib.import_module("numba.np.ufunc.omppool")
    except ImportError:
        pass  # no OpenMP build of numba: it falls back to tbb or workqueue


FOREIGN_OPENMP_AT_IMPORT = _foreign_openmp_loaded()
_load_numba_openmp()


def contention() -> list[str]:
    """What will make other threads in this process compete with fastconv's kernels."""
    warnings = []
    if FOREIGN_OPENMP_AT_IMPORT and USER_WAIT_POLICY is None and USER_SPIN_COUNT is None:
        warnings.append(
            "another library (torch) loaded its OpenMP runtime before fastconv, and "
            "fastconv's kernels share its threads, which spin for ~16 ms after each "
            "parallel region and slow NumPy's OpenBLAS products that follow; "
            f"GOMP_SPINCOUNT={SPIN_COUNT} set before importing torch shortens it")
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
