"""One pass over an operand for `fastconv.winograd_transforms.winograd_safe`: per
(image, channel) plane the largest |value|, the sum of |values| and the number of
nonzero values, at memory speed (a parallel numba kernel)."""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._common import KERNEL, readonly

# The sum may be reassociated (vectorised): it only measures a magnitude. No other
# fast-math flag: a NaN still makes the sum NaN and an Inf the peak Inf.
_STATS = dict(KERNEL, fastmath={"reassoc"})


@numba.njit(**_STATS)
def _plane_stats(planes, peak, total, count):
    """peak[p], total[p], count[p] = max |v|, sum |v| (float64), #(v != 0) over row p
    of the 2-D C-contiguous `planes`."""
    for p in prange(planes.shape[0]):
        row = planes[p]
        largest = row.dtype.type(0)
        s = 0.0
        nonzero = 0
        for i in range(row.shape[0]):
            a = abs(row[i])
            largest = a if a > largest else largest
            s += a
            nonzero += a != 0
        peak[p] = largest
        total[p] = s
        count[p] = nonzero


def operand_stats(array):
    """(peak, total, count), each of shape array.shape[:2], for an array of 2 or more
    dimensions: the largest |value|, the float64 sum of |values| and the number of
    nonzeros of each array[i, j]. A NaN makes its plane's total NaN, an Inf its peak
    Inf. Non-contiguous arrays are copied first.

    >>> import numpy as np
    >>> from fastconv.cpu.operand_stats import operand_stats
    >>> peak, total, count = operand_stats(np.array([[[1.0, -3.0, 0.0]]]))
    >>> float(peak[0, 0]), float(total[0, 0]), int(count[0, 0])
    (3.0, 4.0, 2)
    """
    lead = tuple(array.shape[:2])
    plane_size = int(np.prod(array.shape[2:]))
    planes = readonly(np.ascontiguousarray(array).reshape(lead[0] * lead[1], plane_size))
    peak = np.empty(planes.shape[0], dtype=array.dtype)
    total = np.empty(planes.shape[0], dtype=np.float64)
    count = np.empty(planes.shape[0], dtype=np.int64)
    if planes.size:
        _plane_stats(planes, peak, total, count)
    else:                                   # an empty batch
        peak[:], total[:], count[:] = 0, 0, 0
    return peak.reshape(lead), total.reshape(lead), count.reshape(lead)
