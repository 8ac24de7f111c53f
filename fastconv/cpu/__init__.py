"""CPU kernels (numba.njit(parallel=True)): direct, im2col, pooling.

Each module exposes the backend functions of docs/internals.md; the numba
kernels inside never parse arguments and compile lazily (cache=True).

OpenMP wait policy: numba's `omp` threading layer is GNU libgomp, whose idle
workers spin for ~300k pause instructions (several ms on Zen4) after every
parallel region. im2col follows each packing kernel with a multi-threaded BLAS
GEMM, which those spinning threads would slow by ~50%. So, unless the user
chose otherwise, idle OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`). This
must happen before numba starts its thread pool (the first parallel kernel
launch), which is why it is done when this package is imported.
"""
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
