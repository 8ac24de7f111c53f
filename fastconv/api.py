"""The public functions: check arguments, normalise them, dispatch to a backend.

Nothing here loops over pixels. Every argument is checked before any kernel
runs; geometry is normalised by `fastconv.shapes` (the one place for it); the
work is done by `fastconv.cpu.<algorithm>` or `fastconv.cuda.<algorithm>`
under the contract of docs/internals.md.
"""
from __future__ import annotations

import functools
import importlib
import numbers

import numpy as np

from . import autotune, jitcache, shapes
from .config import ALGORITHMS, choose_algorithm
from .threads import cpu_slot
from .winograd_transforms import winograd_safe

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ACCEPTED = "float32 or float64 arrays (NumPy, or CUDA arrays: CuPy, Numba, torch)"
CONV_OPERATIONS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")


# --------------------------------------------------------------------------
# Arrays: device, dtype, shape
# --------------------------------------------------------------------------

def _is_host(obj) -> bool:
    return isinstance(obj, np.ndarray) or not _looks_like_device(obj)


def _looks_like_device(obj) -> bool:
    if isinstance(obj, (np.ndarray, list, tuple, numbers.Number, str, bytes)) or obj is None:
        return False
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    # Simulator device arrays have no __cuda_array_interface__; only ask the
    # interop module (which imports numba.cuda) when it could be one.
    if type(obj).__module__.startswith("numba"):
        from .cuda import interop
        return interop.is_device_array(obj)
    return False


class _Arrays:
    """The array arguments of one call, on one device, of one float dtype."""

    OPTIONAL = ("bias",)

    def __init__(self, **named):
        for name, obj in named.items():
            if obj is None and name not in self.OPTIONAL:
                raise TypeError(f"{name} must be an array, got None; fastconv accepts {_ACCEPTED}")
        given = {name: obj for name, obj in named.items() if obj is not None}
        kinds = {name: ("cuda" if _looks_like_device(obj) else "cpu")
                 for name, obj in given.items()}
        if len(set(kinds.values())) > 1:
            desc = ", ".join(f"{n} on {d}" for n, d in kinds.items())
            raise TypeError(
                f"all arrays must be on one device, got {desc}; move them with "
                "numpy.asarray / cupy.asarray (or .cpu()/.cuda() for torch) first")
        self.device = next(iter(kinds.values()), "cpu")
        self.template = None
        self.arrays = {}
        for name, obj in given.items():
            if self.device == "cuda":
                from .cuda import interop
                if self.template is None:
                    self.template = obj
                arr = interop.to_numba(obj)
            else:
                try:
                    arr = np.asarray(obj)
                except Exception as exc:  # ragged lists and the like
                    raise TypeError(
                        f"{name} must be an array, got {type(obj).__name__} that "
                        f"numpy.asarray cannot convert ({exc})") from None
            _check_float(arr.dtype, name, obj)
            self.arrays[name] = arr
        dtypes = {name: np.dtype(a.dtype) for name, a in self.arrays.items()}
        if len(set(dtypes.values())) > 1:
            desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
            raise TypeError(
                f"arrays must share one dtype, got {desc}; cast them to float32 "
                "or float64 first")
        self.dtype = next(iter(dtypes.values()), np.dtype(np.float32))

    def __getitem__(self, name):
        return self.arrays.get(name)

    def contiguous(self, name):
        """The array as the backends need it: C-contiguous, 4-D untouched."""
        arr = self.arrays.get(name)
        if arr is None or self.device == "cuda":
            return arr  # interop.to_numba already gave a contiguous device array
        return np.ascontiguousarray(arr)

    def stream(self):
        if self.device != "cuda":
            return None
        from .cuda import interop
        return interop.stream_of(self.template)

    def empty(self, shape):
        if self.device == "cpu":
            return np.zeros(shape, dtype=self.dtype)
        from .cuda import interop
        return interop.device_zeros(shape, self.dtype, self.stream())

    def give_back(self, result, squeeze_batch=False):
        """Return `result` as the caller's kind of array (and 3-D if x was)."""
        if squeeze_batch:
            result = result[0] if self.device == "cpu" else result.reshape(result.shape[1:])
        if self.device == "cuda":
            from .cuda import interop
            return interop.like(result, self.template)
        return result


def _check_float(dtype, name, obj):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} has dtype {dtype!r}; fastconv accepts {_ACCEPTED}") from None
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {dtype} ({type(obj).__name__}); fastconv accepts "
            f"{_ACCEPTED}: cast with .astype(numpy.float32) first")


def _batched(arr, name):
    """View a 3-D (C, H, W) array as 4-D; returns (array, was_3d)."""
    if arr.ndim == 4:
        return arr, False
    if arr.ndim == 3:
        return arr.reshape((1,) + tuple(arr.shape)), True
    raise ValueError(
        f"{name} must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(arr.shape)}")


def _check_shape_arg(shape, name, ndim_options=(4, 3)):
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


def _check_groups(groups, in_channels, out_channels, weight_in_channels):
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


def _check_weight_shape(weight_shape, name="weight"):
    if len(weight_shape) != 4:
        raise ValueError(
            f"{name} must be 4-D (C_out, C_in // groups, kH, kW), got shape {tuple(weight_shape)}")
    if min(weight_shape) < 1:
        raise ValueError(f"{name} must have no zero-size dimension, got shape {tuple(weight_shape)}")


def _check_image_shape(shape, name):
    if shape[1] < 1 or shape[2] < 1 or shape[3] < 1:
        raise ValueError(
            f"{name} must have at least one channel, row and column, got shape {tuple(shape)}")


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------

class _ConvProblem:
    """A convolution's checked and normalised geometry (shared by forward and gradients)."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, x_name="x"):
        _check_image_shape(x_shape, x_name)
        _check_weight_shape(w_shape)
        self.groups = _check_groups(groups, x_shape[1], w_shape[0], w_shape[1])
        self.stride, self.padding, self.dilation, self.out_hw = shapes.conv_geometry(
            x_shape[2:], w_shape[2:], stride, padding, dilation)
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.out_shape = (x_shape[0], w_shape[0]) + self.out_hw
        shapes.check_element_count(self.out_shape, "the output")

    def geometry(self):
        return self.stride, self.padding, self.dilation, self.groups

    def backend(self, device, algorithm, operation="conv2d", operands=(), weight=None):
        """The backend module for `algorithm`. `operands` are the arrays whose
        values `auto` may look at: Winograd mixes whole tiles and magnifies values, so
        `auto` takes im2col where `winograd_safe` finds a NaN/Inf, a possible overflow
        or too large a dynamic range.
        `weight` (C-contiguous, CPU forward): `auto` takes Winograd on layers where it
        wins only with a kept filter when these weights repeat an earlier call's."""
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if algorithm == "auto":
            algorithm, _ = choose_algorithm(device, self.x_shape, self.w_shape, self.stride,
                                            self.dilation, self.groups, operation)
            if (weight is not None and algorithm != "winograd"
                    and autotune.winograd_with_kept_filter(
                        device, self.x_shape, self.w_shape, self.stride, self.dilation,
                        self.groups, operation)):
                from .cpu import winograd
                tile = self._backend_options(device, "winograd", operation)["tile"]
                if winograd.weights_repeat(weight, tile):
                    algorithm = "winograd"
            if algorithm == "winograd" and operands:
                tile = self._backend_options(device, "winograd", operation).get("tile", 4)
                if not winograd_safe(operation, *operands, tile, self.w_shape[2:])[0]:
                    algorithm = "im2col"
        elif algorithm == "winograd":
            ok, why = winograd_supports(self.w_shape, self.stride, self.dilation)
            if not ok:
                raise ValueError(f"algorithm='winograd' is not available here: {why}")
            if operation == "conv2d_grad_weight" and device == "cuda":
                algorithm = "im2col"  # no CUDA Winograd weight gradient; documented
        return _module(device, algorithm), self._backend_options(device, algorithm, operation)

    def _backend_options(self, device, algorithm, operation):
        """Winograd's tile on the CPU: F(4x4), or F(2x2) where whole 4x4 tiles would
        pad the output much more (measured; autotune.winograd_tile). The CUDA module
        picks its own."""
        if algorithm != "winograd" or device != "cpu":
            return {}
        # grad_input is a Winograd convolution whose output is the input's size
        out_hw = self.x_shape[2:] if operation == "conv2d_grad_input" else self.out_hw
        return {"tile": autotune.winograd_tile(self.x_shape, self.w_shape, out_hw)}


def winograd_supports(w_shape, stride, dilation):
    """(ok, reason): Winograd F(m x m, 3x3) needs a 3x3 kernel, stride 1, dilation 1."""
    if tuple(w_shape[2:]) != (3, 3):
        hint = (" (algorithm='auto' runs Winograd F(4x4,5x5) on 5x5 layers where it "
                "measured faster)" if tuple(w_shape[2:]) == (5, 5) else "")
        return False, f"it needs a 3x3 kernel, got {w_shape[2]}x{w_shape[3]}{hint}"
    if tuple(stride) != (1, 1):
        return False, f"it needs stride 1, got stride={tuple(stride)}"
    if tuple(dilation) != (1, 1):
        return False, f"it needs dilation 1, got dilation={tuple(dilation)}"
    return True, "3x3, stride 1, dilation 1"


def _module(device, algorithm):
    return importlib.import_module(f"fastconv.{device}.{algorithm}")


def _call(module, name, arrays, *args, **options):
    """module.name(*args, **options) on the arrays' device: the caller's stream on
    CUDA; on the CPU a fair share of the threads, surviving a broken JIT cache."""
    function = functools.partial(getattr(module, name), **options)
    if arrays.device == "cuda":
        return function(*args, stream=arrays.stream())
    # Non-finite operands give NaN/Inf results, as in PyTorch, without NumPy's
    # RuntimeWarnings from inside our GEMMs.
    with cpu_slot(), np.errstate(over="ignore", invalid="ignore"):
        return jitcache.call(function, *args)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           algorithm="auto"):
    """2-D cross-correlation, exactly `torch.nn.functional.conv2d`.

    Parameters
    ----------
    x : array (N, C_in, H, W) or (C_in, H, W), float32 or float64
    weight : array (C_out, C_in // groups, kH, kW), same dtype
    bias : array (C_out,) or None
    stride, dilation : int or (h, w)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
    groups : int dividing C_in and C_out (groups == C_in is depthwise)
    algorithm : "auto", "direct", "im2col" or "winograd". "winograd", asked for, keeps
        only its documented bound (1e-3 of the largest output in float32) and may
        overflow on values near the dtype's limit; "auto" runs it only where it cannot
        (docs/reliability.md, "Winograd").

    Returns an array (N, C_out, out_h, out_w) of x's kind, device and dtype, with
    ``out_h = floor((H + top + bottom - dilation*(kH-1) - 1) / stride) + 1``.

    Example
    -------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> w = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> fc.conv2d(x, w)
    array([[[[ 8., 12.],
             [20., 24.]]]], dtype=float32)
    """
    arrays = _Arrays(x=x, weight=weight, bias=bias)
    x4, squeeze = _batched(arrays["x"], "x")
    w = arrays["weight"]
    problem = _ConvProblem(x4.shape, w.shape, stride, padding, dilation, groups)
    if bias is not None and tuple(arrays["bias"].shape) != (w.shape[0],):
        raise ValueError(
            f"bias must have shape ({w.shape[0]},) to match weight's output channels, "
            f"got {tuple(arrays['bias'].shape)}")
    weight_c = arrays.contiguous("weight")
    module, options = problem.backend(arrays.device, algorithm, "conv2d", (x4, w),
                                      weight_c if arrays.device == "cpu" else None)
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(problem.out_shape), squeeze)
    x4 = _batched(arrays.contiguous("x"), "x")[0]
    out = _call(module, "conv2d", arrays, x4, weight_c,
                arrays.contiguous("bias"), problem.stride, problem.padding,
                problem.dilation, problem.groups, problem.out_hw, **options)
    return arrays.give_back(out, squeeze)


def _grad_out_4d(arrays, expected_shape, was_3d):
    go = arrays["grad_out"]
    if go.ndim != (3 if was_3d else 4) or tuple(_batched(go, "grad_out")[0].shape) != tuple(expected_shape):
        want = expected_shape[1:] if was_3d else expected_shape
        raise ValueError(
            f"grad_out must have the forward output's shape {tuple(want)}, "
            f"got {tuple(go.shape)}")
    return _batched(arrays.contiguous("grad_out"), "grad_out")[0]


def conv2d_grad_input(grad_out, weight, input_shape, stride=1, padding=0, dilation=1,
                      groups=1, algorithm="auto"):
    """Gradient of `conv2d` with respect to its input (what torch's autograd gives x.grad).

    `input_shape` is the forward input's shape (4-D, or 3-D for an unbatched call);
    the other arguments are the forward's.

    >>> import numpy as np, fastconv as fc
    >>> g = fc.conv2d_grad_input(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), (1, 1, 3, 3))
    >>> g[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    arrays = _Arrays(grad_out=grad_out, weight=weight)
    input_shape = _check_shape_arg(input_shape, "input_shape")
    was_3d = len(input_shape) == 3
    x_shape = (1,) + input_shape if was_3d else input_shape
    w = arrays["weight"]
    problem = _ConvProblem(x_shape, w.shape, stride, padding, dilation, groups,
                           x_name="input_shape")
    go = _grad_out_4d(arrays, problem.out_shape, was_3d)
    module, options = problem.backend(arrays.device, algorithm, "conv2d_grad_input", (go, w))
    if x_shape[0] == 0:
        return arrays.give_back(arrays.empty(x_shape), was_3d)
    grad_input = _call(module, "conv2d_grad_input", arrays, go, arrays.contiguous("weight"),
                       x_shape, *problem.geometry(), **options)
    return arrays.give_back(grad_input, was_3d)


def conv2d_grad_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1,
                       groups=1, algorithm="auto"):
    """Gradient of `conv2d` with respect to its weight (torch's weight.grad).

    On the CPU `algorithm="winograd"` runs Winograd F(3x3, m x m), the forward's
    algorithm with the roles of filter and output swapped; on CUDA it is served by
    im2col.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv2d_grad_weight(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), (1, 1, 2, 2))
    array([[[[4., 4.],
             [4., 4.]]]])
    """
    arrays = _Arrays(grad_out=grad_out, x=x)
    weight_shape = _check_shape_arg(weight_shape, "weight_shape", (4,))
    _check_weight_shape(weight_shape, "weight_shape")
    x4, was_3d = _batched(arrays["x"], "x")
    problem = _ConvProblem(x4.shape, weight_shape, stride, padding, dilation, groups)
    go = _grad_out_4d(arrays, problem.out_shape, was_3d)
    module, options = problem.backend(arrays.device, algorithm, "conv2d_grad_weight",
                                      (go, arrays["x"]))
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(weight_shape))
    x4 = _batched(arrays.contiguous("x"), "x")[0]
    grad_weight = _call(module, "conv2d_grad_weight", arrays, go, x4, weight_shape,
                        *problem.geometry(), **options)
    return arrays.give_back(grad_weight)


def conv2d_grad_bias(grad_out):
    """Gradient of `conv2d` with respect to its bias: ``grad_out.sum((0, 2, 3))``
    (``sum((1, 2))`` for a 3-D grad_out). Summed in float64 on the CPU.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv2d_grad_bias(np.ones((2, 3, 4, 4), dtype=np.float32))
    array([32., 32., 32.], dtype=float32)
    """
    arrays = _Arrays(grad_out=grad_out)
    go, _ = _batched(arrays["grad_out"], "grad_out")
    if arrays.device == "cuda":
        from .cuda import elementwise
        return arrays.give_back(elementwise.channel_sum(go, stream=arrays.stream()))
    with np.errstate(invalid="ignore", over="ignore"):     # Inf - Inf is NaN, silently
        return go.sum(axis=(0, 2, 3), dtype=np.float64).astype(arrays.dtype)


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _pool_problem(x_shape, kernel_size, stride, padding, dilation, ceil_mode, x_name="x"):
    _check_image_shape(x_shape, x_name)
    ceil_mode = _check_bool(ceil_mode, "ceil_mode")
    kernel_size, stride, padding, dilation, out_hw = shapes.pool_geometry(
        x_shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    out_shape = tuple(x_shape[:2]) + out_hw
    return kernel_size, stride, padding, dilation, out_hw, out_shape


def _divisor(divisor_override):
    if divisor_override is None:
        return 0
    if not shapes._is_int(divisor_override):
        raise TypeError(f"divisor_override must be an int or None, got {divisor_override!r}")
    if not 1 <= divisor_override <= shapes.GEOMETRY_MAX:
        raise ValueError(
            f"divisor_override must be between 1 and 2**31 - 1, got {divisor_override!r}")
    return int(divisor_override)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling, exactly `torch.nn.functional.max_pool2d`.

    Padding counts as -inf; a NaN in a window wins (the last NaN, as PyTorch);
    a window wholly in the padding (dilation) gives -inf, index -1; among equal maxima the
    first in row-major window order wins. With ``return_indices=True`` also
    returns int64 indices ``h * W + w`` into each input plane.

    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[[[1., 2.], [4., 3.]]]])
    >>> fc.max_pool2d(x, 2, return_indices=True)
    (array([[[[4.]]]]), array([[[[2]]]]))
    """
    arrays = _Arrays(x=x)
    x4, squeeze = _batched(arrays["x"], "x")
    return_indices = _check_bool(return_indices, "return_indices")
    kernel_size, stride, padding, dilation, out_hw, out_shape = _pool_problem(
        x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if x4.shape[0] == 0:
        values = arrays.give_back(arrays.empty(out_shape), squeeze)
        if not return_indices:
            return values
        return values, _empty_indices(arrays, out_shape, squeeze)
    module = _module(arrays.device, "pooling")
    x4 = _batched(arrays.contiguous("x"), "x")[0]
    values, indices = _call(module, "max_pool2d", arrays, x4, kernel_size, stride,
                            padding, dilation, out_hw, return_indices=return_indices)
    values = arrays.give_back(values, squeeze)
    return (values, arrays.give_back(indices, squeeze)) if return_indices else values


def _empty_indices(arrays, out_shape, squeeze):
    if arrays.device == "cpu":
        empty = np.zeros(out_shape, dtype=np.int64)
        return empty[0] if squeeze else empty
    from .cuda import interop
    return arrays.give_back(interop.device_zeros(out_shape, np.int64, arrays.stream()), squeeze)


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Gradient of `max_pool2d` with respect to x: each output's gradient goes to
    its window's winner (the same one `max_pool2d` reports); overlapping windows add.

    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[[[1., 2.], [4., 3.]]]])
    >>> fc.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, 2)
    array([[[[0., 0.],
             [1., 0.]]]])
    """
    arrays = _Arrays(grad_out=grad_out, x=x)
    x4, was_3d = _batched(arrays["x"], "x")
    kernel_size, stride, padding, dilation, _, out_shape = _pool_problem(
        x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    go = _grad_out_4d(arrays, out_shape, was_3d)
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(x4.shape), was_3d)
    x4 = _batched(arrays.contiguous("x"), "x")[0]
    grad_input = _call(_module(arrays.device, "pooling"), "max_pool2d_backward", arrays,
                       go, x4, kernel_size, stride, padding, dilation)
    return arrays.give_back(grad_input, was_3d)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Average pooling, exactly `torch.nn.functional.avg_pool2d` (divisor rules included).

    >>> import numpy as np, fastconv as fc
    >>> fc.avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    """
    arrays = _Arrays(x=x)
    x4, squeeze = _batched(arrays["x"], "x")
    count_include_pad = _check_bool(count_include_pad, "count_include_pad")
    divisor = _divisor(divisor_override)
    kernel_size, stride, padding, _, out_hw, out_shape = _pool_problem(
        x4.shape, kernel_size, stride, padding, 1, ceil_mode)
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(out_shape), squeeze)
    x4 = _batched(arrays.contiguous("x"), "x")[0]
    out = _call(_module(arrays.device, "pooling"), "avg_pool2d", arrays, x4, kernel_size,
                stride, padding, out_hw, count_include_pad, divisor)
    return arrays.give_back(out, squeeze)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of `avg_pool2d` with respect to its input of shape `input_shape`.

    >>> import numpy as np, fastconv as fc
    >>> fc.avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 1, 2, 2), 2)
    array([[[[0.25, 0.25],
             [0.25, 0.25]]]])
    """
    arrays = _Arrays(grad_out=grad_out)
    input_shape = _check_shape_arg(input_shape, "input_shape")
    was_3d = len(input_shape) == 3
    x_shape = (1,) + input_shape if was_3d else input_shape
    count_include_pad = _check_bool(count_include_pad, "count_include_pad")
    divisor = _divisor(divisor_override)
    kernel_size, stride, padding, _, _, out_shape = _pool_problem(
        x_shape, kernel_size, stride, padding, 1, ceil_mode, x_name="input_shape")
    go = _grad_out_4d(arrays, out_shape, was_3d)
    if x_shape[0] == 0:
        return arrays.give_back(arrays.empty(x_shape), was_3d)
    grad_input = _call(_module(arrays.device, "pooling"), "avg_pool2d_backward", arrays,
                       go, x_shape, kernel_size, stride, padding, count_include_pad, divisor)
    return arrays.give_back(grad_input, was_3d)


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------

def relu(x):
    """max(x, 0) elementwise; NaN propagates (as torch.relu). Any shape.

    >>> import numpy as np, fastconv as fc
    >>> fc.relu(np.array([-1.0, 0.5]))
    array([0. , 0.5])
    """
    arrays = _Arrays(x=x)
    if arrays.device == "cuda":
        from .cuda import elementwise
        return arrays.give_back(elementwise.relu(arrays["x"], stream=arrays.stream()))
    # np.maximum propagates NaN, unlike a comparison-and-select; `out` keeps a 0-d
    # input a 0-d array (not a NumPy scalar)
    x = arrays["x"]
    return np.maximum(x, x.dtype.type(0), out=np.empty(x.shape, x.dtype))


def relu_backward(grad_out, x):
    """0 where x <= 0, else grad_out (torch's threshold_backward, so where x is NaN
    the gradient passes). Any shape.

    >>> import numpy as np, fastconv as fc
    >>> fc.relu_backward(np.array([5.0, 5.0]), np.array([-1.0, 2.0]))
    array([0., 5.])
    """
    arrays = _Arrays(grad_out=grad_out, x=x)
    if tuple(arrays["grad_out"].shape) != tuple(arrays["x"].shape):
        raise ValueError(
            f"grad_out must have x's shape {tuple(arrays['x'].shape)}, "
            f"got {tuple(arrays['grad_out'].shape)}")
    if arrays.device == "cuda":
        from .cuda import elementwise
        return arrays.give_back(elementwise.relu_backward(
            arrays["grad_out"], arrays["x"], stream=arrays.stream()))
    return np.where(arrays["x"] <= 0, arrays.dtype.type(0), arrays["grad_out"])


# --------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------

def explain(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, device="cpu",
            operation="conv2d"):
    """Say which algorithm `algorithm="auto"` picks for a convolution, and why.

    >>> import fastconv as fc
    >>> print(fc.explain((8, 64, 56, 56), (64, 64, 3, 3), padding=1))  # doctest: +ELLIPSIS
    conv2d (8, 64, 56, 56) * (64, 64, 3, 3) -> (8, 64, 56, 56) on cpu: ...
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if operation not in CONV_OPERATIONS:
        raise ValueError(f"operation must be one of {CONV_OPERATIONS}, got {operation!r}")
    x_shape = _check_shape_arg(x_shape, "x_shape", (4,))
    w_shape = _check_shape_arg(w_shape, "w_shape", (4,))
    problem = _ConvProblem(x_shape, w_shape, stride, padding, dilation, groups)
    algorithm, reason = choose_algorithm(device, problem.x_shape, problem.w_shape,
                                         problem.stride, problem.dilation, problem.groups,
                                         operation)
    tile = problem._backend_options(device, algorithm, operation).get("tile")
    if tile is not None:
        sizes = [f"{tile}x{tile}", f"{w_shape[2]}x{w_shape[3]}"]
        if operation == "conv2d_grad_weight":     # F(r x r, m x m): the roles swap
            sizes.reverse()
        algorithm += f" F({sizes[0]},{sizes[1]})"
    return (f"{operation} {problem.x_shape} * {problem.w_shape} -> {problem.out_shape} "
            f"on {device}: {algorithm} ({reason})")
