"""CPU kernels (numba.njit(parallel=True)): direct, im2col, winograd, pooling.

Each module exposes the backend functions of docs/internals.md; the numba
kernels inside never parse arguments and compile lazily (cache=True).
OpenMP's wait policy is set in `fastconv.threads` (see there why).
"""
