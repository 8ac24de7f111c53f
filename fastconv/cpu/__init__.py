"""CPU kernels (numba.njit(parallel=True)): direct, im2col, pooling.

Each module exposes the backend functions of docs/internals.md; the numba
kernels inside never parse arguments and compile lazily (cache=True).
"""
