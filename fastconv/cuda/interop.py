"""The one module that knows CUDA array kinds (CuPy, torch, Numba, simulator arrays).

Everything else in ``fastconv.cuda`` takes and returns Numba device arrays; the API
converts on the way in (`to_numba`) and on the way out (`like`), and runs every kernel
on the caller's stream (`stream_of`).

Importing this module is cheap: it imports neither numba.cuda, CuPy nor torch at
import time. ``is_device_array`` never imports anything; the other functions import
``numba.cuda`` (and CuPy/torch only when handed one of their arrays).

Streams and synchronisation
---------------------------
All the work of one call (a contiguous copy, the kernels, the result's allocation)
is enqueued on ``stream_of(template)``: CuPy's current stream for CuPy arrays,
torch's current stream (of the tensor's device) for torch tensors, the array's
bound stream for Numba arrays, else the default stream. No host synchronisation
happens: inputs are imported with ``sync=False`` (they were produced on the
caller's current stream, or the caller has ordered them as CuPy/torch require),
and results are exported unbound (no ``stream`` entry in their
``__cuda_array_interface__``), so CuPy/torch consumers do not synchronise either;
their next work on the same current stream is ordered after ours.
"""
from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------
# What kind of array is it?
# --------------------------------------------------------------------------

def is_device_array(obj) -> bool:
    """True for objects with ``__cuda_array_interface__`` (CuPy arrays, CUDA torch
    tensors, Numba device arrays) and for Numba simulator device arrays
    (``NUMBA_ENABLE_CUDASIM=1``), which have no interface but are device arrays."""
    if isinstance(obj, np.ndarray):
        return False
    if bool(getattr(type(obj), "__cuda_ndarray__", False)):
        return True  # Numba DeviceNDArray, or the simulator's FakeCUDAArray
    if _kind(obj) == "torch" and hasattr(obj, "is_cuda"):
        # A tensor that requires grad (an nn.Parameter) raises RuntimeError from
        # __cuda_array_interface__; to_numba reads it through .detach().
        return bool(obj.is_cuda)
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception:  # a property that raises something other than AttributeError
        return False


def _kind(obj) -> str:
    if bool(getattr(type(obj), "__cuda_ndarray__", False)):
        return "numba"
    module = type(obj).__module__ or ""
    if module.startswith("cupy"):
        return "cupy"
    if module.startswith("torch"):
        return "torch"
    return "cai"


def cuda_available():
    """(usable, reason) for ``python -m fastconv info`` and the CLI's checks."""
    try:
        from numba import cuda

        from ._kernels import simulated
    except Exception as exc:  # numba-cuda missing or broken
        return False, f"numba.cuda cannot be imported: {exc}"
    try:
        if simulated():
            return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but slow"
        if not cuda.is_available():
            return False, "no CUDA GPU or driver found by numba.cuda"
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        cc = ".".join(map(str, device.compute_capability))
        return True, f"{name} (compute capability {cc})"
    except Exception as exc:
        return False, f"numba.cuda failed: {exc}"


# --------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------

def _external(ptr):
    from numba import cuda
    ptr = int(ptr)
    return 0 if ptr == 0 else cuda.external_stream(ptr)


def stream_of(obj):
    """The stream to run `obj`'s work on: a numba stream object or 0 (default)."""
    kind = _kind(obj)
    if kind == "cupy":
        import cupy
        return _external(cupy.cuda.get_current_stream().ptr)
    if kind == "torch":
        import torch
        return _external(torch.cuda.current_stream(obj.device).cuda_stream)
    if kind == "numba":
        return getattr(obj, "stream", 0) or 0
    return 0


# --------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------

def whole(ndim: int) -> tuple:
    """The index of a whole array, ``(slice(None),) * ndim``: numba device arrays
    (``DeviceNDArray.setitem``, its dummy-array indexing) take no ``Ellipsis``."""
    return (slice(None),) * int(ndim)


def _contiguous_numba(arr, stream):
    """A C-contiguous numba device array with arr's values (arr itself if it is one).
    The copy runs on the device (numba's strided assignment kernel, on `stream`); in
    the simulator, device memory is host memory, so NumPy makes the copy."""
    if arr.is_c_contiguous():
        return arr
    from ._kernels import simulated
    if simulated():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(np.ascontiguousarray(arr._ary))
    from numba import cuda
    out = cuda.device_array(arr.shape, arr.dtype, stream=stream)
    out.setitem(whole(arr.ndim), arr, stream=stream)
    return out


def to_numba(obj):
    """A C-contiguous numba device array with obj's values: a zero-copy view when
    obj is contiguous, else a device-side contiguous copy (never via the host)."""
    kind = _kind(obj)
    stream = stream_of(obj)
    if kind == "numba":
        return _contiguous_numba(obj, stream)
    from numba import cuda
    if kind == "cupy":
        import cupy
        obj = cupy.ascontiguousarray(obj)  # CuPy's own copy kernel when needed
    elif kind == "torch":
        obj = obj.detach().contiguous()    # torch's own copy when needed
    arr = cuda.as_cuda_array(obj, sync=False)
    return _contiguous_numba(arr, stream)


def like(result, template):
    """Wrap the numba device array `result` as `template`'s kind of array, zero-copy:
    a CuPy array for CuPy, a torch tensor on template's device for torch, the
    numba array itself otherwise."""
    kind = _kind(template)
    if kind in ("cupy", "torch") and hasattr(result, "bind"):
        result = result.bind(0)  # exported unbound: consumers need not synchronise
    if kind == "cupy":
        import cupy
        return cupy.asarray(result)
    if kind == "torch":
        import torch
        return torch.as_tensor(result, device=template.device)
    return result


# --------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------

def device_zeros(shape, dtype, stream=0):
    from . import _kernels
    return _kernels.zeros(shape, dtype, stream)


__all__ = ["is_device_array", "cuda_available", "stream_of", "to_numba", "like",
           "device_zeros"]
