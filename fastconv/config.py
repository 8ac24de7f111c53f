"""Run-time settings: workspace bound and threads.

    >>> import fastconv as fc
    >>> fc.config.workspace_bytes = 64 * 2**20   # im2col works in 64 MiB chunks
"""
from __future__ import annotations

import threading

from .plan import ALGORITHMS  # noqa: F401  (re-exported: the algorithm names)
from .shapes import _is_int  # numpy integers count, bool does not, as in the API


class Config:
    """Process-wide settings. Reads are plain attribute reads; writes are checked.

    workspace_bytes: the most extra memory an algorithm may allocate for its
        scratch (im2col columns, Winograd tiles). Larger batches run in chunks.
    num_threads: numba threads for the CPU kernels (None: all of numba's);
        concurrent callers share them (see fastconv.threads).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._workspace_bytes = 256 * 2**20
        self._num_threads = None

    @property
    def workspace_bytes(self) -> int:
        return self._workspace_bytes

    @workspace_bytes.setter
    def workspace_bytes(self, value):
        if not _is_int(value):
            raise TypeError(f"workspace_bytes must be an int, got {value!r}")
        if value < 1024:
            raise ValueError(f"workspace_bytes must be >= 1024, got {value!r}")
        with self._lock:
            self._workspace_bytes = int(value)

    @property
    def num_threads(self):
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value):
        import numba
        if value is not None:
            if not _is_int(value):
                raise TypeError(f"num_threads must be an int or None, got {value!r}")
            if not 1 <= value <= numba.config.NUMBA_NUM_THREADS:
                raise ValueError(
                    f"num_threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, "
                    f"got {value!r}")
            value = int(value)
        with self._lock:
            self._num_threads = value  # applied per call by fastconv.threads


config = Config()


def choose_algorithm(device, x_shape, w_shape, stride, dilation, groups,
                     operation="conv2d"):
    """The shape rule of `auto` alone: (algorithm, reason) from `fastconv.autotune.choose`
    for a normalised convolution (pairs for stride and dilation). It checks nothing and
    sees no operands: what a call runs, fallbacks included, is `fastconv.plan.plan`'s
    answer (`fc.explain` prints it).

    >>> choose_algorithm("cpu", (8, 64, 56, 56), (64, 1, 3, 3), (1, 1), (1, 1), 64)[0]
    'direct'
    """
    from . import autotune
    return autotune.choose(device, tuple(x_shape), tuple(w_shape), tuple(stride),
                           tuple(dilation), groups, operation)
