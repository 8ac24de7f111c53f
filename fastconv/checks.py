"""Argument checks shared by the operators (`fastconv.api`) and the layers (`fastconv.nn`).

Each check raises a `TypeError` (wrong kind: dtype, device, not an int or bool) or a
`ValueError` (wrong size or value) naming the argument and what it got (docs/api.md),
and returns the value normalised.

Array kinds belong to `fastconv.cuda.interop`, the one module that knows CUDA array
types (CuPy, torch, Numba, simulator arrays); the questions below (`is_device_array`,
`device_of`, `dtype_of`, `array_module`) ask it, and nothing else in fastconv sniffs
array types.

    >>> import numpy as np
    >>> from fastconv import checks
    >>> checks.check_bool(np.True_, "ceil_mode")
    True
    >>> checks.device_of(np.zeros(3))
    'cpu'
"""
from __future__ import annotations

import numpy as np

from . import shapes
from .cuda import interop   # cheap: imports neither numba.cuda, CuPy nor torch

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ACCEPTED = "float32 or float64 arrays (NumPy, or CUDA arrays: CuPy, Numba, torch)"


# --------------------------------------------------------------------------
# Array kinds (asked of fastconv.cuda.interop)
# --------------------------------------------------------------------------

def is_device_array(obj) -> bool:
    """True for CUDA arrays (CuPy, CUDA torch tensors, Numba and simulator device arrays)."""
    return type(obj) is not np.ndarray and interop.is_device_array(obj)


def device_of(obj) -> str:
    """"cuda" for a CUDA array, else "cpu" (NumPy and whatever numpy.asarray takes)."""
    return "cuda" if is_device_array(obj) else "cpu"


def kind_of(obj) -> str:
    """"numpy", a CUDA array's kind ("cupy", "torch", "numba" or "cai"), or "other"."""
    if isinstance(obj, np.ndarray):
        return "numpy"
    if interop.is_device_array(obj):
        return interop._kind(obj)
    return "other"


def device_or_none(obj):
    """"cpu" for a NumPy array, "cuda" for a CUDA array, None for anything else (a CPU
    torch tensor, a list): what the layers' own arithmetic can take."""
    kind = kind_of(obj)
    return None if kind == "other" else "cpu" if kind == "numpy" else "cuda"


def type_name(obj) -> str:
    """obj's class for messages, with its top-level package: "torch.Tensor", "list"."""
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module.split('.')[0]}.{cls.__qualname__}"


def dtype_of(arr) -> np.dtype:
    """arr's dtype as a NumPy dtype (torch tensors have torch dtypes)."""
    try:
        return np.dtype(arr.dtype)
    except TypeError:
        if is_device_array(arr):
            return np.dtype(arr.__cuda_array_interface__["typestr"])
        return np.dtype(str(arr.dtype).rpartition(".")[2])   # a CPU torch tensor


def array_module(arr):
    """numpy for NumPy arrays, cupy for CuPy arrays (the layers' array arithmetic)."""
    if isinstance(arr, np.ndarray):
        return np
    if kind_of(arr) == "cupy":
        import cupy
        return cupy
    raise TypeError(
        f"this layer does array arithmetic and takes NumPy arrays (CPU) or CuPy arrays (GPU), "
        f"got {type(arr).__name__}; convert with numpy.asarray / cupy.asarray first "
        "(Conv2d, the poolings, ReLU and Flatten take any CUDA array)")


def to_numpy(x, name="x"):
    """numpy.asarray(x) for a host argument; TypeError naming it if that fails."""
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(
            f"{name} must be an array, got {type(x).__name__} that "
            f"numpy.asarray cannot convert ({exc})") from None


def as_array(x, name="x"):
    """x itself for NumPy and CUDA arrays; other array-likes through numpy.asarray."""
    if isinstance(x, np.ndarray) or is_device_array(x):
        return x
    return to_numpy(x, name)


# --------------------------------------------------------------------------
# Scalars and dtypes
# --------------------------------------------------------------------------

def check_bool(value, name):
    """value as a bool; numpy.bool_ counts, 0/1 and None do not."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def float_dtype(dtype, name="dtype"):
    """A dtype argument (or an array's dtype) as float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def array_dtype(dtype, name, obj):
    """The dtype of the operator argument `name` (the array `obj`): float32 or float64."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} has dtype {dtype!r}; fastconv accepts {ACCEPTED}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {dtype} ({type(obj).__name__}); fastconv accepts "
            f"{ACCEPTED}: cast with .astype(numpy.float32) first")
    return dtype


def divisor(divisor_override):
    """avg_pool2d's divisor_override as an int, 0 for None (`shapes.divisor`)."""
    return shapes.divisor(divisor_override)


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------

def batched(arr, name):
    """View a 3-D (C, H, W) array as 4-D; returns (array, was_3d)."""
    if arr.ndim == 4:
        return arr, False
    if arr.ndim == 3:
        return arr.reshape((1,) + tuple(arr.shape)), True
    raise ValueError(
        f"{name} must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(arr.shape)}")


def shape_arg(shape, name, ndim_options=(4, 3)):
    """A shape argument (input_shape, weight_shape) as a tuple of ints >= 0."""
    if not isinstance(shape, (tuple, list)) or len(shape) not in ndim_options:
        raise ValueError(
            f"{name} must be a tuple of {' or '.join(map(str, ndim_options))} ints, "
            f"got {shape!r}")
    for s in shape:
        if not shapes._is_int(s):
            raise TypeError(f"{name} must hold ints, got {shape!r}")
        if s < 0:
            raise ValueError(f"{name} must hold sizes >= 0, got {shape!r}")
    return tuple(int(s) for s in shape)


def groups(groups, in_channels, out_channels, weight_in_channels):
    """groups as an int dividing both channel counts and matching the weight."""
    if not shapes._is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups!r}")
    if in_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels {in_channels}")
    if out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide weight's output channels {out_channels}")
    if weight_in_channels * groups != in_channels:
        raise ValueError(
            f"weight has {weight_in_channels} input channels per group, but the input "
            f"has {in_channels} channels with groups={groups} "
            f"(expected weight.shape[1] == {in_channels // groups})")
    return int(groups)


def weight_shape(shape, name="weight"):
    """A convolution weight's shape: 4-D (C_out, C_in // groups, kH, kW), no zero size."""
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be 4-D (C_out, C_in // groups, kH, kW), got shape {tuple(shape)}")
    if min(shape) < 1:
        raise ValueError(f"{name} must have no zero-size dimension, got shape {tuple(shape)}")


def image_shape(shape, name):
    """A 4-D image shape with at least one channel, row and column (N may be 0)."""
    if shape[1] < 1 or shape[2] < 1 or shape[3] < 1:
        raise ValueError(
            f"{name} must have at least one channel, row and column, got shape {tuple(shape)}")


def grad_out_shape(got, expected):
    """grad_out's shape must be the forward output's (never broadcast)."""
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"grad_out must have the forward output's shape {tuple(expected)}, "
            f"got {tuple(got)}")


# --------------------------------------------------------------------------
# grad_out of the layers that do their own backward arithmetic
# --------------------------------------------------------------------------

def grad_spec(out):
    """What `check_grad_out` holds grad_out to: the forward output's shape, dtype, device."""
    return tuple(out.shape), dtype_of(out), device_of(out)


def check_grad_out(grad_out, spec, layer):
    """grad_out as an array matching the forward output (`grad_spec`), for layers whose
    backward does its own arithmetic: the checks the API's backward functions make, so
    that a wrong gradient is refused rather than broadcast or promoted to another dtype."""
    if spec is None:
        raise RuntimeError(f"{layer}.backward called before forward")
    if grad_out is None:
        raise TypeError("grad_out must be an array, got None")
    grad_out = as_array(grad_out, "grad_out")
    shape, dtype, device = spec
    if device_of(grad_out) != device:
        raise TypeError(f"grad_out is on the {device_of(grad_out)}, but the forward output "
                        f"was on the {device}; move it first")
    if dtype_of(grad_out) != dtype:
        raise TypeError(f"grad_out has dtype {dtype_of(grad_out)}, but the forward output "
                        f"has dtype {dtype}; cast it with .astype(numpy.{dtype}) first")
    grad_out_shape(grad_out.shape, shape)
    return grad_out
