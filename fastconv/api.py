"""The public functions: check arguments, normalise them, plan, dispatch to a backend.

Nothing here loops over pixels. Every argument is checked (`fastconv.checks`) before
any kernel runs; geometry is normalised by `fastconv.shapes` (the one place for it);
the algorithm is chosen by `fastconv.plan` (the one place for that); the work is done
by `fastconv.cpu.<algorithm>` or `fastconv.cuda.<algorithm>` under the contract of
docs/internals.md. What repeats per shape and options (the checked geometry, the
plan's shape steps, the backend module) is memoised, so a warm call costs little.
"""
from __future__ import annotations

import functools
import math
import importlib

import numpy as np

from . import checks, jitcache, shapes
from .checks import ACCEPTED as _ACCEPTED
from .plan import (ALGORITHMS, CONV_OPERATIONS, DEVICES, cpu_threads,  # noqa: F401
                   describe, last_plan, plan, winograd_supports)
from .threads import cpu_slot


# --------------------------------------------------------------------------
# Arrays: device, dtype, shape
# --------------------------------------------------------------------------

class _Arrays:
    """The array arguments of one call, on one device, of one float dtype."""

    OPTIONAL = ("bias",)

    def __init__(self, **named):
        arrays = {}
        kinds = {}
        for name, obj in named.items():
            if obj is None:
                if name not in self.OPTIONAL:
                    raise TypeError(
                        f"{name} must be an array, got None; fastconv accepts {_ACCEPTED}")
                continue
            kinds[name] = "cpu" if type(obj) is np.ndarray else checks.device_of(obj)
            arrays[name] = obj
        devices = set(kinds.values())
        if len(devices) > 1:
            desc = ", ".join(f"{n} on {d}" for n, d in kinds.items())
            raise TypeError(
                f"all arrays must be on one device, got {desc}; move them with "
                "numpy.asarray / cupy.asarray (or .cpu()/.cuda() for torch) first")
        self.device = devices.pop() if devices else "cpu"
        self.template = None
        dtype, mixed = None, False
        for name, obj in arrays.items():
            if self.device == "cuda":
                from .cuda import interop
                if self.template is None:
                    self.template = obj
                arr = interop.to_numba(obj)
            elif type(obj) is np.ndarray:
                arr = obj
            else:
                arr = checks.to_numpy(obj, name)
            if arr.dtype is not dtype:       # one dtype (the usual case): checked once
                checks.array_dtype(arr.dtype, name, obj)
                mixed = mixed or (dtype is not None and arr.dtype != dtype)
                dtype = arr.dtype
            arrays[name] = arr
        if mixed:
            desc = ", ".join(f"{n} is {np.dtype(a.dtype)}" for n, a in arrays.items())
            raise TypeError(
                f"arrays must share one dtype, got {desc}; cast them to float32 "
                "or float64 first")
        self.arrays = arrays
        self.dtype = np.dtype(np.float32) if dtype is None else np.dtype(dtype)

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


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------

class _ConvProblem:
    """A convolution's checked and normalised geometry (shared by forward and gradients),
    with the plans made for it (`fastconv.plan`, keyed by device, operation, algorithm)."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, x_name="x"):
        checks.image_shape(x_shape, x_name)
        checks.weight_shape(w_shape)
        self.groups = checks.groups(groups, x_shape[1], w_shape[0], w_shape[1])
        self.stride, self.padding, self.dilation, self.out_hw = shapes.conv_geometry(
            x_shape[2:], w_shape[2:], stride, padding, dilation)
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.out_shape = (x_shape[0], w_shape[0]) + self.out_hw
        shapes.check_element_count(self.out_shape, "the output")
        self.flops = shapes.conv_flops(self.x_shape, self.w_shape, self.out_hw)
        self.plans = {}

    def geometry(self):
        return self.stride, self.padding, self.dilation, self.groups


def _plain(value) -> bool:
    """True for ints, strings and tuples of them: the arguments whose equality means the
    checks treat them alike (True == 1 and 1.0 == 1, but both are refused)."""
    kind = type(value)
    return kind is int or kind is str or (kind is tuple and all(map(_plain, value)))


_problems = {}
_MAX_PROBLEMS = 1024


def conv_problem(x_shape, w_shape, stride, padding, dilation, groups, x_name="x"):
    """The checked `_ConvProblem`, memoised for plain arguments (ints, strings, tuples):
    a layer calling with the same geometry every step is checked and planned once.
    Arguments that fail a check are never stored, so they raise on every call."""
    # Shapes come from arrays or checks.shape_arg: tuples of ints. Only plain user
    # arguments make a key: True == 1 and 1.0 == 1 would find 1's problem.
    plain = _plain(stride) and _plain(padding) and _plain(dilation) and type(groups) is int
    key = (x_shape, w_shape, stride, padding, dilation, groups, x_name)
    if plain:
        problem = _problems.get(key)
        if problem is not None:
            return problem
    problem = _ConvProblem(x_shape, w_shape, stride, padding, dilation, groups, x_name)
    if plain:
        if len(_problems) >= _MAX_PROBLEMS:
            _problems.clear()
        _problems[key] = problem
    return problem


@functools.lru_cache(maxsize=None)
def _module(device, algorithm):
    return importlib.import_module(f"fastconv.{device}.{algorithm}")


def _call(module, name, arrays, *args, work, **options):
    """module.name(*args, **options) on the arrays' device: the caller's stream on
    CUDA; on the CPU the threads the plan gives `work` (`plan.cpu_threads`), surviving
    a broken JIT cache."""
    function = getattr(module, name)     # looked up per call: tests replace backends
    if options:
        function = functools.partial(function, **options)
    if arrays.device == "cuda":
        return function(*args, stream=arrays.stream())
    # Non-finite operands give NaN/Inf results, as in PyTorch, without NumPy's
    # RuntimeWarnings from inside our GEMMs.
    with cpu_slot(cpu_threads(work)), np.errstate(over="ignore", invalid="ignore"):
        return jitcache.call(function, *args)


def _matmul(a, b):
    """a @ b for the layers (`nn.Linear`): 2-D NumPy float arrays of one dtype on
    fastconv's GEMM (`fastconv.cpu.matmul.gemm`), so that no layer wakes OpenBLAS's
    threads against numba's; other arrays (CuPy) through `@`."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == b.ndim == 2
            and a.dtype == b.dtype and a.dtype in checks.FLOAT_DTYPES
            and a.shape[1] == b.shape[0]):
        return a @ b
    from .cpu import matmul
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    with cpu_slot(cpu_threads(2 * a.shape[0] * a.shape[1] * b.shape[1])):
        return matmul.gemm(a, b, out)


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
    x4, squeeze = checks.batched(arrays["x"], "x")
    w = arrays["weight"]
    problem = conv_problem(x4.shape, w.shape, stride, padding, dilation, groups)
    if bias is not None and tuple(arrays["bias"].shape) != (w.shape[0],):
        raise ValueError(
            f"bias must have shape ({w.shape[0]},) to match weight's output channels, "
            f"got {tuple(arrays['bias'].shape)}")
    weight_c = arrays.contiguous("weight")
    chosen = plan(problem, arrays.device, "conv2d", algorithm, (("x", x4), ("weight", w)),
                  weight_c if arrays.device == "cpu" else None)
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(problem.out_shape), squeeze)
    if arrays.device == "cpu":
        x4 = np.ascontiguousarray(x4)
    out = _call(_module(arrays.device, chosen.algorithm), "conv2d", arrays, x4, weight_c,
                arrays.contiguous("bias"), problem.stride, problem.padding,
                problem.dilation, problem.groups, problem.out_hw, work=problem.flops,
                **chosen.options)
    return arrays.give_back(out, squeeze)


def _grad_out_4d(arrays, expected_shape, was_3d):
    """grad_out, checked against the forward output's shape, as a contiguous 4-D array."""
    checks.grad_out_shape(arrays["grad_out"].shape,
                          expected_shape[1:] if was_3d else expected_shape)
    go = arrays.contiguous("grad_out")
    return go.reshape((1,) + tuple(go.shape)) if was_3d else go


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
    input_shape = checks.shape_arg(input_shape, "input_shape")
    was_3d = len(input_shape) == 3
    x_shape = (1,) + input_shape if was_3d else input_shape
    w = arrays["weight"]
    problem = conv_problem(x_shape, w.shape, stride, padding, dilation, groups,
                           x_name="input_shape")
    go = _grad_out_4d(arrays, problem.out_shape, was_3d)
    chosen = plan(problem, arrays.device, "conv2d_grad_input", algorithm,
                  (("grad_out", go), ("weight", w)))
    if x_shape[0] == 0:
        return arrays.give_back(arrays.empty(x_shape), was_3d)
    grad_input = _call(_module(arrays.device, chosen.algorithm), "conv2d_grad_input", arrays,
                       go, arrays.contiguous("weight"), x_shape, *problem.geometry(),
                       work=problem.flops, **chosen.options)
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
    weight_shape = checks.shape_arg(weight_shape, "weight_shape", (4,))
    checks.weight_shape(weight_shape, "weight_shape")
    x4, was_3d = checks.batched(arrays["x"], "x")
    problem = conv_problem(x4.shape, weight_shape, stride, padding, dilation, groups)
    go = _grad_out_4d(arrays, problem.out_shape, was_3d)
    chosen = plan(problem, arrays.device, "conv2d_grad_weight", algorithm,
                  (("grad_out", go), ("x", arrays["x"])))
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(weight_shape))
    if arrays.device == "cpu":
        x4 = np.ascontiguousarray(x4)
    grad_weight = _call(_module(arrays.device, chosen.algorithm), "conv2d_grad_weight", arrays,
                        go, x4, weight_shape, *problem.geometry(), work=problem.flops,
                        **chosen.options)
    return arrays.give_back(grad_weight)


def conv2d_grad_bias(grad_out):
    """Gradient of `conv2d` with respect to its bias: ``grad_out.sum((0, 2, 3))``
    (``sum((1, 2))`` for a 3-D grad_out). Summed in float64 on the CPU.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv2d_grad_bias(np.ones((2, 3, 4, 4), dtype=np.float32))
    array([32., 32., 32.], dtype=float32)
    """
    arrays = _Arrays(grad_out=grad_out)
    go, _ = checks.batched(arrays["grad_out"], "grad_out")
    if arrays.device == "cuda":
        from .cuda import elementwise
        return arrays.give_back(elementwise.channel_sum(go, stream=arrays.stream()))
    with np.errstate(invalid="ignore", over="ignore"):     # Inf - Inf is NaN, silently
        return go.sum(axis=(0, 2, 3), dtype=np.float64).astype(arrays.dtype)


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

def _pool_problem(x_shape, kernel_size, stride, padding, dilation, ceil_mode, x_name="x"):
    """(kernel_size, stride, padding, dilation, out_hw, out_shape), checked; memoised
    for plain arguments as `conv_problem` is."""
    plain = (_plain(kernel_size) and (stride is None or _plain(stride)) and _plain(padding)
             and _plain(dilation) and type(ceil_mode) is bool)
    key = ("pool", x_shape, kernel_size, stride, padding, dilation, ceil_mode, x_name)
    if plain:
        problem = _problems.get(key)
        if problem is not None:
            return problem
    checks.image_shape(x_shape, x_name)
    ceil_mode = checks.check_bool(ceil_mode, "ceil_mode")
    kernel_size, stride, padding, dilation, out_hw = shapes.pool_geometry(
        x_shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    problem = kernel_size, stride, padding, dilation, out_hw, tuple(x_shape[:2]) + out_hw
    if plain:
        if len(_problems) >= _MAX_PROBLEMS:
            _problems.clear()
        _problems[key] = problem
    return problem


def _pool_work(out_shape, kernel_size):
    """Window reads of a pooling call, the work `plan.cpu_threads` sizes threads by."""
    return math.prod(out_shape) * kernel_size[0] * kernel_size[1]


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
    x4, squeeze = checks.batched(arrays["x"], "x")
    return_indices = checks.check_bool(return_indices, "return_indices")
    kernel_size, stride, padding, dilation, out_hw, out_shape = _pool_problem(
        x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if x4.shape[0] == 0:
        values = arrays.give_back(arrays.empty(out_shape), squeeze)
        if not return_indices:
            return values
        return values, _empty_indices(arrays, out_shape, squeeze)
    module = _module(arrays.device, "pooling")
    if arrays.device == "cpu":
        x4 = np.ascontiguousarray(x4)
    values, indices = _call(module, "max_pool2d", arrays, x4, kernel_size, stride,
                            padding, dilation, out_hw, return_indices=return_indices,
                            work=_pool_work(out_shape, kernel_size))
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
    x4, was_3d = checks.batched(arrays["x"], "x")
    kernel_size, stride, padding, dilation, _, out_shape = _pool_problem(
        x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    go = _grad_out_4d(arrays, out_shape, was_3d)
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(x4.shape), was_3d)
    if arrays.device == "cpu":
        x4 = np.ascontiguousarray(x4)
    grad_input = _call(_module(arrays.device, "pooling"), "max_pool2d_backward", arrays,
                       go, x4, kernel_size, stride, padding, dilation,
                       work=_pool_work(go.shape, kernel_size))
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
    x4, squeeze = checks.batched(arrays["x"], "x")
    count_include_pad = checks.check_bool(count_include_pad, "count_include_pad")
    divisor = checks.divisor(divisor_override)
    kernel_size, stride, padding, _, out_hw, out_shape = _pool_problem(
        x4.shape, kernel_size, stride, padding, 1, ceil_mode)
    if x4.shape[0] == 0:
        return arrays.give_back(arrays.empty(out_shape), squeeze)
    if arrays.device == "cpu":
        x4 = np.ascontiguousarray(x4)
    out = _call(_module(arrays.device, "pooling"), "avg_pool2d", arrays, x4, kernel_size,
                stride, padding, out_hw, count_include_pad, divisor,
                work=_pool_work(out_shape, kernel_size))
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
    input_shape = checks.shape_arg(input_shape, "input_shape")
    was_3d = len(input_shape) == 3
    x_shape = (1,) + input_shape if was_3d else input_shape
    count_include_pad = checks.check_bool(count_include_pad, "count_include_pad")
    divisor = checks.divisor(divisor_override)
    kernel_size, stride, padding, _, _, out_shape = _pool_problem(
        x_shape, kernel_size, stride, padding, 1, ceil_mode, x_name="input_shape")
    go = _grad_out_4d(arrays, out_shape, was_3d)
    if x_shape[0] == 0:
        return arrays.give_back(arrays.empty(x_shape), was_3d)
    grad_input = _call(_module(arrays.device, "pooling"), "avg_pool2d_backward", arrays,
                       go, x_shape, kernel_size, stride, padding, count_include_pad, divisor,
                       work=_pool_work(go.shape, kernel_size))
    return arrays.give_back(grad_input, was_3d)


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------

def relu(x):
    """max(x, 0) elementwise, as torch.relu: NaN propagates and -0.0 stays -0.0
    (x where x is not below 0). Any shape.

    >>> import numpy as np, fastconv as fc
    >>> fc.relu(np.array([-1.0, -0.0, 0.5]))
    array([ 0. , -0. ,  0.5])
    """
    arrays = _Arrays(x=x)
    if arrays.device == "cuda":
        from .cuda import elementwise
        return arrays.give_back(elementwise.relu(arrays["x"], stream=arrays.stream()))
    # np.maximum propagates NaN and is 10x faster than np.where, but makes -0.0 +0.0:
    # zeros are copied back. `out` keeps a 0-d input a 0-d array (not a NumPy scalar)
    x = arrays["x"]
    out = np.maximum(x, x.dtype.type(0), out=np.empty(x.shape, x.dtype))
    zero = x == 0
    if zero.any():
        np.copyto(out, x, where=zero)
    return out


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

def explain(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, device=None,
            operation="conv2d", algorithm="auto", grad_out=None):
    """Say which algorithm runs a convolution, and why: the plan the call itself runs
    (`fastconv.plan`).

    `x_shape` and `w_shape` are the input's and the weight's shapes, or the arrays
    themselves; `grad_out` is the gradient array of the backward operations. Given the
    operands a call looks at (conv2d: x and the weight; conv2d_grad_input: grad_out
    and the weight; conv2d_grad_weight: grad_out and x), explain applies the plan's
    value step too: `auto` takes im2col instead of Winograd for operands with a NaN or
    Inf, values that could overflow in its transforms, or an outlier whose error would
    spread over its tile (with one of the two arrays, its NaN or Inf only). Given
    shapes, it answers for ordinary finite operands. It never records the weights, so
    it cannot tell whether a call would repeat an earlier call's; where that matters
    (a kept Winograd filter) the reason says so.
    `device` defaults to the arrays' device, else "cpu".

    >>> import numpy as np, fastconv as fc
    >>> print(fc.explain((8, 64, 56, 56), (64, 64, 3, 3), padding=1))  # doctest: +ELLIPSIS
    conv2d (8, 64, 56, 56) * (64, 64, 3, 3) -> (8, 64, 56, 56) on cpu: winograd F(4x4,3x3) (...)
    >>> x = np.full((8, 64, 56, 56), np.nan, np.float32)
    >>> print(fc.explain(x, (64, 64, 3, 3), padding=1))  # doctest: +ELLIPSIS
    conv2d (8, 64, 56, 56) * (64, 64, 3, 3) -> (8, 64, 56, 56) on cpu: im2col (x holds a NaN...)
    """
    if device is not None and device not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if operation not in CONV_OPERATIONS:
        raise ValueError(f"operation must be one of {CONV_OPERATIONS}, got {operation!r}")
    given = {name: value for name, value in (("x", x_shape), ("weight", w_shape),
                                             ("grad_out", grad_out))
             if value is not None and not isinstance(value, (tuple, list))}
    arrays = _Arrays(**given) if given else None
    if arrays is not None and device is not None and device != arrays.device:
        raise ValueError(f"device={device!r}, but the arrays given are on {arrays.device}")
    device = arrays.device if arrays is not None else (device or "cpu")
    was_3d = False
    if "x" in given:
        x4, was_3d = checks.batched(arrays["x"], "x")
        x_shape = tuple(x4.shape)
    x_shape = checks.shape_arg(x_shape, "x_shape", (4,))
    w_shape = checks.shape_arg(w_shape if "weight" not in given else
                               tuple(arrays["weight"].shape), "w_shape", (4,))
    problem = conv_problem(x_shape, w_shape, stride, padding, dilation, groups)
    if "grad_out" in given:
        arrays.arrays["grad_out"] = _grad_out_4d(arrays, problem.out_shape, was_3d)
    looked_at = {"conv2d": ("x", "weight"), "conv2d_grad_input": ("grad_out", "weight"),
                 "conv2d_grad_weight": ("grad_out", "x")}[operation]
    operands = tuple((name, x4 if name == "x" else arrays[name])
                     for name in looked_at if name in given)
    chosen = plan(problem, device, operation, algorithm, operands, record=False)
    return describe(problem, device, operation, chosen)


# --------------------------------------------------------------------------
# Transposed convolution: conv2d's input gradient, and its own gradients through
# the conv2d functions (no kernels of its own; shapes.conv_transpose_geometry maps
# the geometry)
# --------------------------------------------------------------------------

class _TransposeProblem:
    """A transposed convolution's checked geometry and the conv2d it transposes."""

    def __init__(self, x_shape, w_shape, stride, padding, output_padding, dilation,
                 groups, x_name="x"):
        if len(w_shape) != 4:
            raise ValueError(
                f"weight must be 4-D (C_in, C_out // groups, kH, kW), got shape "
                f"{tuple(w_shape)}")
        if min(w_shape) < 1:
            raise ValueError(
                f"weight must have no zero-size dimension, got shape {tuple(w_shape)}")
        checks.image_shape(x_shape, x_name)
        if not shapes._is_int(groups):
            raise TypeError(f"groups must be an int, got {groups!r}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups!r}")
        if w_shape[0] % groups:
            raise ValueError(
                f"groups={groups} must divide weight's input channels {w_shape[0]} "
                "(weight is (C_in, C_out // groups, kH, kW))")
        if x_shape[1] != w_shape[0]:
            raise ValueError(
                f"weight of shape {tuple(w_shape)} expects {w_shape[0]} input channels "
                f"(weight is (C_in, C_out // groups, kH, kW)), but {x_name} has "
                f"{x_shape[1]} channels (shape {tuple(x_shape)})")
        self.groups = int(groups)
        (self.stride, self.padding, self.output_padding, self.dilation, out_hw,
         conv_pad, conv_in_hw) = shapes.conv_transpose_geometry(
            x_shape[2:], w_shape[2:], stride, padding, output_padding, dilation)
        self.out_shape = (x_shape[0], w_shape[1] * self.groups) + out_hw
        shapes.check_element_count(self.out_shape, "the output")
        # the conv2d whose input gradient this is: input conv_shape, padding conv_pad
        self.conv_shape = self.out_shape[:2] + conv_in_hw
        self.conv_padding = ((conv_pad[0], conv_pad[1]), (conv_pad[2], conv_pad[3]))
        self.cropped = conv_in_hw != out_hw

    def conv_kwargs(self, algorithm):
        return dict(stride=self.stride, padding=self.conv_padding, dilation=self.dilation,
                    groups=self.groups, algorithm=algorithm)

    def crop(self, grad_out):
        """grad_out without the rows/columns that no input reaches (a view)."""
        if not self.cropped:
            return grad_out
        return grad_out[..., :self.conv_shape[2], :self.conv_shape[3]]


def _transpose_grad_out(arrays, problem, was_3d):
    go = arrays["grad_out"]
    want = problem.out_shape[1:] if was_3d else problem.out_shape
    if tuple(go.shape) != tuple(want):
        raise ValueError(
            f"grad_out must have the forward output's shape {tuple(want)}, "
            f"got {tuple(go.shape)}")


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, algorithm="auto"):
    """2-D transposed convolution, exactly `torch.nn.functional.conv_transpose2d`
    (argument order included: output_padding, groups, dilation).

    weight is ``(C_in, C_out // groups, kH, kW)``; the output has
    ``(H - 1)*stride - 2*padding + dilation*(kH - 1) + output_padding + 1`` rows
    (``padding`` may also be ``((top, bottom), (left, right))``). It is
    `conv2d_grad_input` of the matching conv2d, run by the same kernels;
    ``algorithm`` chooses that operation's algorithm.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), stride=2)[0, 0]
    array([[1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.]])
    """
    arrays = _Arrays(x=x, weight=weight, bias=bias)
    x4, was_3d = checks.batched(arrays["x"], "x")
    problem = _TransposeProblem(x4.shape, arrays["weight"].shape, stride, padding,
                                output_padding, dilation, groups)
    c_out = problem.out_shape[1]
    if bias is not None and tuple(arrays["bias"].shape) != (c_out,):
        raise ValueError(
            f"bias must have shape ({c_out},) to match the output channels "
            f"(weight.shape[1] * groups), got {tuple(arrays['bias'].shape)}")
    conv_shape = problem.conv_shape[1:] if was_3d else problem.conv_shape
    out = conv2d_grad_input(x, weight, conv_shape, **problem.conv_kwargs(algorithm))
    if problem.cropped:
        out_shape = problem.out_shape[1:] if was_3d else problem.out_shape
        full = arrays.give_back(arrays.empty(out_shape))
        full[..., :conv_shape[-2], :conv_shape[-1]] = out
        out = full
    if bias is not None:
        out = _add_channel_bias(out, bias, arrays)
    return out


def _add_channel_bias(out, bias, arrays):
    """out + bias per channel, in place on the fresh result (the caller's stream on CUDA)."""
    if arrays.device == "cpu":
        out += arrays["bias"].reshape((-1, 1, 1))
        return out
    from .cuda import elementwise, interop
    result = interop.to_numba(out)      # a view: out is a fresh contiguous result
    if result.ndim == 3:
        result = result.reshape((1,) + tuple(result.shape))
    elementwise.add_channel_bias(result, arrays["bias"], stream=arrays.stream())
    return out


def conv_transpose2d_grad_input(grad_out, weight, input_shape, stride=1, padding=0,
                                output_padding=0, groups=1, dilation=1, algorithm="auto"):
    """Gradient of `conv_transpose2d` with respect to its input: `conv2d` of grad_out.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv_transpose2d_grad_input(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)),
    ...                                (1, 1, 2, 2), stride=2)[0, 0]
    array([[4., 4.],
           [4., 4.]])
    """
    arrays = _Arrays(grad_out=grad_out, weight=weight)
    input_shape = checks.shape_arg(input_shape, "input_shape")
    was_3d = len(input_shape) == 3
    x_shape = (1,) + input_shape if was_3d else input_shape
    problem = _TransposeProblem(x_shape, arrays["weight"].shape, stride, padding,
                                output_padding, dilation, groups, x_name="input_shape")
    _transpose_grad_out(arrays, problem, was_3d)
    return conv2d(problem.crop(grad_out), weight, None, **problem.conv_kwargs(algorithm))


def conv_transpose2d_grad_weight(grad_out, x, weight_shape, stride=1, padding=0,
                                 output_padding=0, groups=1, dilation=1, algorithm="auto"):
    """Gradient of `conv_transpose2d` with respect to its weight: `conv2d_grad_weight`
    with the roles of input and output gradient swapped.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv_transpose2d_grad_weight(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)),
    ...                                 (1, 1, 2, 2), stride=2)
    array([[[[4., 4.],
             [4., 4.]]]])
    """
    arrays = _Arrays(grad_out=grad_out, x=x)
    weight_shape = checks.shape_arg(weight_shape, "weight_shape", (4,))
    x4, was_3d = checks.batched(arrays["x"], "x")
    problem = _TransposeProblem(x4.shape, weight_shape, stride, padding, output_padding,
                                dilation, groups)
    _transpose_grad_out(arrays, problem, was_3d)
    return conv2d_grad_weight(x, problem.crop(grad_out), weight_shape,
                              **problem.conv_kwargs(algorithm))


def conv_transpose2d_grad_bias(grad_out):
    """Gradient of `conv_transpose2d` with respect to its bias: `conv2d_grad_bias`.

    >>> import numpy as np, fastconv as fc
    >>> fc.conv_transpose2d_grad_bias(np.ones((2, 3, 4, 4), dtype=np.float32))
    array([32., 32., 32.], dtype=float32)
    """
    return conv2d_grad_bias(grad_out)
