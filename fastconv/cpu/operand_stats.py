"""One pass over an operand for `fastconv.winograd_transforms.winograd_safe`: per
plane the largest |value|, the sum of |values| and the number of nonzero values, at
memory speed (a numba kernel)."""
from __future__ import annotations

import numba
import numpy as np
from ._common import HELPER, readonly

LANES = 16          # independent accumulators: the loop vectorises without fast-math


@numba.njit(**HELPER)
def _short_row(row):
    largest = row.dtype.type(0)
    total = 0.0
    count = 0
    for i in range(row.shape[0]):
        a = abs(row[i])
        largest = a if a > largest else largest
        total += a
        count += a != 0
    return largest, total, count


@numba.njit(**HELPER)
def _long_row(row, lane_peak, lane_total, lane_count):
    lane_peak[:] = 0
    lane_total[:] = 0
    lane_count[:] = 0
    whole = row.shape[0] // LANES * LANES
    for i in range(0, whole, LANES):
        for j in range(LANES):
            a = abs(row[i + j])
            lane_peak[j] = a if a > lane_peak[j] else lane_peak[j]
            lane_total[j] += a
            lane_count[j] += a != 0
    largest, total, count = _short_row(row[whole:])
    for j in range(LANES):
        largest = lane_peak[j] if lane_peak[j] > largest else largest
    return largest, total + lane_total.sum(), count + lane_count.sum()


@numba.njit(**HELPER)
def _plane_stats(planes, peak, total, count):
    """peak[p], total[p], count[p] = max |v|, sum |v| (float64), #(v != 0) over row p
    of the 2-D C-contiguous `planes`. A NaN is never the peak but makes the total NaN.
    One thread: the pass runs at memory speed, and threads would only add their
    start-up (and, on a loaded machine, waits)."""
    lane_peak = np.empty(LANES, planes.dtype)
    lane_total = np.empty(LANES, np.float64)
    lane_count = np.empty(LANES, np.int64)
    for p in range(planes.shape[0]):
        if planes.shape[1] < 2 * LANES:
            peak[p], total[p], count[p] = _short_row(planes[p])
        else:
            peak[p], total[p], count[p] = _long_row(planes[p], lane_peak, lane_total,
                                                    lane_count)


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
