"""Shared helpers for the CUDA backends (direct, pooling; im2col/gemm/winograd may use them).

For the other CUDA modules
--------------------------
- ``@kernel_factory``: memoise a function that *builds* a ``cuda.jit`` kernel from
  hashable parameters (dtype name, tile sizes, ...), CuPy-ndimage style. The
  compile-time constants are closure variables of the kernel, so each
  specialisation (e.g. shared-memory tile shapes, register-block sizes) is
  built once per process and its dispatcher keeps its compiled code::

      @kernel_factory
      def _make_fill(dtype_name, value):
          @cuda.jit
          def fill(out):
              ...
          return fill

  Call it with hashable arguments only (``np.dtype(x.dtype).name``, ints).
- ``cdiv``, ``pow2_at_most``, ``pow2_at_least``: launch-configuration arithmetic.
- ``stream_or_default(stream)``: ``None`` -> ``0`` (the default stream).
- ``launch_1d(n, threads, small_in_simulator)``: (blocks, threads) for a grid-stride
  1-D loop, with the block count capped (kernels loop with ``cuda.gridsize(1)``;
  indices are int64).
- ``empty(shape, dtype, stream)``, ``zeros(shape, dtype, stream)``: device allocation.
- ``split_index`` (device function): flat grid-stride index -> (plane, row, col).
- ``output_of_tap`` (device function): the output a window tap maps an input index to,
  for gather-style backward kernels.
- ``simulated()``: whether Numba's CUDA simulator is active.
- ``jit_options(...)``: ``cuda.jit`` options (``cache=True``; ``launch_bounds`` where
  the installed numba-cuda has them, else a warning) and ``SHARED_ALIGNMENT``
  (whether ``cuda.shared.array`` takes ``alignment=``).
- ``SHARED_BYTES``: the static/dynamic shared-memory budget a kernel may plan for
  (48 KiB: the default per-block limit without opt-in).
- ``u64``: cast an index known to be non-negative to unsigned. Numba wraps every
  signed index (a negative index counts from the end), which costs an access an
  extra address computation; ``python -m fastconv.cuda.resources`` shows the cost.

Nothing here converts arrays between libraries: that is ``interop``'s job.
"""
from __future__ import annotations

import functools
import inspect
import warnings

import numba
import numpy as np
from numba import cuda

from .. import shapes

SHARED_BYTES = 48 * 1024
u64 = numba.uint64          # see the module docstring
MAX_BLOCKS_1D = 65535 * 8   # grid-stride loops cover the rest
MAX_GRID_YZ = 65535


def simulated() -> bool:
    """True when Numba's CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1)."""
    try:
        from numba.cuda.core import config      # numba-cuda >= 0.2x
    except ImportError:                          # older numba-cuda / numba
        from numba.core import config
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def _numba_cuda_version() -> str:
    try:
        import numba_cuda
        return numba_cuda.__version__
    except Exception:  # numba's bundled numba.cuda (no separate package)
        return f"numba {numba.__version__}"


def _takes(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


# Older numba-cuda has neither `launch_bounds` (cuda.jit) nor `alignment`
# (cuda.shared.array); the kernels then compile without them (slower, same results).
LAUNCH_BOUNDS = _takes(cuda.jit, "launch_bounds") and not simulated()
SHARED_ALIGNMENT = simulated() or _takes(cuda.shared.array, "alignment")


@functools.lru_cache(maxsize=None)
def _warn_missing(feature: str):
    warnings.warn(f"fastconv: numba-cuda {_numba_cuda_version()} lacks {feature}; the CUDA "
                  "kernels compile without it (correct, possibly slower): upgrade numba-cuda",
                  RuntimeWarning, stacklevel=3)


def jit_options(threads=None, blocks_per_sm=1) -> dict:
    """Keyword arguments of ``cuda.jit`` for a kernel: ``cache=True`` (compiled code
    is reused by later processes: NUMBA_CACHE_DIR or __pycache__), and launch bounds
    of (threads, blocks_per_sm) when blocks_per_sm > 1 and numba-cuda supports them."""
    options = {"cache": True}
    if blocks_per_sm > 1 and not simulated():   # the simulator has no launch bounds
        if LAUNCH_BOUNDS:
            options["launch_bounds"] = (int(threads), int(blocks_per_sm))
        else:
            _warn_missing("cuda.jit(launch_bounds=...)")
    return options


def shared_alignment(nbytes: int):
    """The ``alignment=`` for ``cuda.shared.array``: None in the simulator (it refuses
    one) and where numba-cuda lacks the option (kernels then take the branch without it)."""
    if simulated():
        return None
    if not SHARED_ALIGNMENT:
        _warn_missing("cuda.shared.array(alignment=...)")
        return None
    return int(nbytes)


def kernel_factory(fn):
    """Memoise a kernel builder on its (hashable) arguments. See the module docstring."""
    return functools.lru_cache(maxsize=None)(fn)


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def pow2_at_most(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def stream_or_default(stream):
    return 0 if stream is None else stream


def launch_1d(n: int, threads: int = 256, small_in_simulator: bool = False):
    """(blocks, threads) for a grid-stride loop over n items (n >= 1).

    small_in_simulator: under the simulator (a Python thread per CUDA thread, started
    per block) use 2 blocks of 8 threads: the grid-stride loop still runs on several
    threads and blocks, 40x faster.
    """
    if small_in_simulator and simulated():
        return 2, 8
    threads = min(threads, pow2_at_least(max(32, min(n, threads))))
    return max(1, min(cdiv(n, threads), MAX_BLOCKS_1D)), threads


@kernel_factory
def _make_fill(dtype_name: str):
    @cuda.jit(cache=True)
    def fill(out, value):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            out[i] = value
            i += step
    return fill


def empty(shape, dtype, stream=0):
    return cuda.device_array(tuple(int(s) for s in shape), np.dtype(dtype),
                             stream=stream_or_default(stream))


def fill(arr, value, stream=0):
    """Fill a C-contiguous device array in place (on the device, no host copy)."""
    if arr.size:
        flat = arr.reshape(arr.size)
        blocks, threads = launch_1d(arr.size)
        _make_fill(np.dtype(arr.dtype).name)[blocks, threads, stream_or_default(stream)](
            flat, arr.dtype.type(value))
    return arr


def zeros(shape, dtype, stream=0):
    return fill(empty(shape, dtype, stream), 0, stream)


@cuda.jit(device=True)
def split_index(i, rows, cols):
    """A flat index over (planes, rows, cols) -> (plane, row, col)."""
    t = i // cols
    return t // rows, t % rows, i % cols


output_of_tap = cuda.jit(device=True)(shapes.output_of_tap)
valid_range = cuda.jit(device=True)(shapes.valid_range)


def grid_yz(n: int) -> int:
    """A gridDim.y/z of at most 65535 for n work items; kernels loop over the rest."""
    return max(1, min(int(n), MAX_GRID_YZ))


__all__ = ["simulated", "jit_options", "shared_alignment", "kernel_factory", "cdiv",
           "pow2_at_least", "pow2_at_most", "stream_or_default", "launch_1d", "empty", "zeros", "fill", "grid_yz", "split_index", "output_of_tap",
           "SHARED_BYTES", "u64"]
