"""Small helpers shared by the CPU kernels (no kernels compile here at import).

Caution when editing a helper here: numba's on-disk cache of a kernel is keyed
on the kernel's own source file, not on the helpers it calls, so after changing
a helper here, clear the caches (`fastconv.jitcache.reset_kernel_caches()` or
delete `fastconv/cpu/__pycache__/*.nb[ic]`) or the kernels keep the old code.
"""
from __future__ import annotations

import numba
import numpy as np

from .. import shapes

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
    """The bias the direct kernels start each sum from. `+ 0` makes a -0.0 bias +0.0:
    every other algorithm sums from +0.0 and adds the bias last, which never gives
    -0.0, so neither may direct (-0.0 + -0.0 products would stay -0.0)."""
    if bias is None:
        return readonly(np.zeros(channels, dtype=dtype))
    return readonly(np.ascontiguousarray(bias, dtype=dtype) + np.dtype(dtype).type(0))


@numba.njit(**HELPER)
def copy(dst, src):
    """dst[:] = src[:len(dst)]. The copy loops run over views indexed from 0: with an
    offset index LLVM cannot rule out a negative one, numba's wraparound check then
    stays in the loop and it does not vectorise (measured 2-4x slower)."""
    for m in range(dst.shape[0]):
        dst[m] = src[m]


valid_range = numba.njit(**HELPER)(shapes.valid_range)
output_of_tap = numba.njit(**HELPER)(shapes.output_of_tap)


def grad_input_as_forward(grad_out, weight, padding, dilation, groups):
    """grad_input of a stride-1 convolution as a forward one: the 'full' correlation
    of grad_out with the kernel rotated by 180 degrees and its in/out channels
    swapped per group. Returns (grad_out', weight', padding') for a forward call
    whose output is grad_input's shape.

    Forward padding (top, bottom, left, right) becomes (kh-1)*dh - top, ...; where
    that is negative, the grad_out rows/columns that only saw padding are cropped
    instead."""
    c_out, c_per_group, kh, kw = weight.shape
    k_per_group = c_out // groups
    rotated = (weight[:, :, ::-1, ::-1]
               .reshape(groups, k_per_group, c_per_group, kh, kw)
               .transpose(0, 2, 1, 3, 4)
               .reshape(groups * c_per_group, k_per_group, kh, kw))
    reach = ((kh - 1) * dilation[0],) * 2 + ((kw - 1) * dilation[1],) * 2
    new_padding = [r - p for r, p in zip(reach, padding)]
    crops = [max(0, -p) for p in new_padding]
    out_h, out_w = grad_out.shape[2:]
    grad_out = grad_out[:, :, crops[0]:out_h - crops[1], crops[2]:out_w - crops[3]]
    return (np.ascontiguousarray(grad_out), np.ascontiguousarray(rotated),
            tuple(max(0, p) for p in new_padding))
