"""Small helpers shared by the CPU kernels (no kernels compile here at import).

Caution when editing a helper here: numba's on-disk cache of a kernel is keyed
on the kernel's own source file, not on the helpers it calls, so after changing
a helper here, clear the caches (`fastconv.jitcache.reset_kernel_caches()` or
delete `fastconv/cpu/__pycache__/*.nb[ic]`) or the kernels keep the old code.
"""
from __future__ import annotations

import numba
import numpy as np

# Every CPU kernel uses these options: parallel, cached, IEEE-exact (no fastmath,
# so NaN/Inf follow the references and results are reproducible), no GIL.
KERNEL = dict(parallel=True, cache=True, fastmath=False, nogil=True, error_model="numpy")
HELPER = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")


def readonly(array):
    """A read-only view: every kernel input has one numba type whatever the caller
    passed (so a read-only input never triggers a second compilation), and numba
    refuses at compile time any kernel that would write into an input."""
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def bias_or_zeros(bias, channels, dtype):
    if bias is None:
        bias = np.zeros(channels, dtype=dtype)
    return readonly(np.ascontiguousarray(bias, dtype=dtype))


@numba.njit(**HELPER)
def valid_range(offset, stride, size, out_size):
    """[j0, j1): the outputs j in [0, out_size) with 0 <= j*stride + offset < size."""
    j0 = -((offset) // stride)          # ceil(-offset / stride)
    if j0 < 0:
        j0 = 0
    j1 = (size - 1 - offset) // stride + 1
    if j1 > out_size:
        j1 = out_size
    if j1 < j0:
        j1 = j0
    return j0, j1


@numba.njit(**HELPER)
def output_of_tap(i, tap, pad, dil, stride, out_size):
    """Along one axis: the output whose window's tap `tap` reads input `i`, or -1
    (gather-style backward kernels invert i = o*stride - pad + tap*dil with it)."""
    t = i + pad - tap * dil
    if t < 0 or t % stride != 0:
        return -1
    o = t // stride
    return o if o < out_size else -1
