"""Layers with explicit forward and backward, on top of fastconv's kernels.

There is no autograd: each layer's ``forward(x)`` keeps what its
``backward(grad_out)`` needs (the input, or its shape), and ``backward``
returns the gradient with respect to the input while *adding* the gradients of
the layer's parameters into ``Parameter.grad`` (as PyTorch accumulates into
``.grad``; ``SGD.zero_grad()`` clears them).

    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                       nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    >>> x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    >>> logits = model(x)
    >>> logits.shape
    (2, 10)
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> loss = loss_fn(logits, np.array([3, 7]))
    >>> grad_x = model.backward(loss_fn.backward())
    >>> grad_x.shape
    (2, 1, 8, 8)
    >>> model.num_parameters()
    690

Convolution, pooling and ReLU call the public functions (`fastconv.conv2d`,
`conv2d_grad_input`, `conv2d_grad_weight`, `conv2d_grad_bias`, `max_pool2d`, ...),
so a layer runs wherever its input lives: NumPy arrays on the CPU kernels, CUDA
arrays on the CUDA kernels. For the GPU the parameters must live there too:
``model.to("cuda")`` moves them as CuPy arrays (CuPy is needed for whole models,
because `Linear`, `Dropout`, the loss and `SGD` do plain array arithmetic);
``model.to("cpu")`` brings them back. `Conv2d`, the poolings, `ReLU` and `Flatten`
take any CUDA array (Numba device arrays, CUDA torch tensors) when their parameters
are on the device too (``p.data = numba.cuda.to_device(p.data)``).

Shapes are NCHW, as in the rest of fastconv. Parameters are float32 unless the
layer is built with ``dtype=np.float64`` (or moved with ``model.to(dtype=np.float64)``,
which the gradient checks use).
"""
from __future__ import annotations

import math
import numbers
import os
import zipfile
import zlib

import numpy as np

from . import api as F
from . import shapes
from .checks import FLOAT_DTYPES as _FLOATS
from .checks import array_module as _array_module, as_array as _as_array
from .checks import check_bool as _check_bool, check_grad_out as _check_grad_out
from .checks import device_of as _device_of, dtype_of as _dtype_of, grad_spec as _grad_spec
from .checks import float_dtype as _check_dtype, kind_of as _kind_of
from .checks import device_or_none as _device_or_none, type_name as _type_name

def _where(arr) -> str:
    return _device_or_none(arr) or f"{_type_name(arr)} (neither a NumPy nor a CUDA array)"


_ARRAY_KINDS = ("a NumPy array for a CPU parameter, a CuPy (or other CUDA) array for a GPU "
                "one")
from .config import ALGORITHMS

__all__ = ["Parameter", "Module", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "ReLU", "Flatten", "Linear", "Dropout", "Identity", "Sequential",
           "CrossEntropyLoss", "SGD", "Summary", "manual_seed"]

_INITS = ("kaiming_normal", "kaiming_uniform", "zeros")

# --------------------------------------------------------------------------
# Random numbers
# --------------------------------------------------------------------------

_default_rng = np.random.default_rng()


def manual_seed(seed) -> None:
    """Seed the generator that layers use when built without ``rng=``
    (initial weights, dropout masks): ``nn.manual_seed(0)`` makes a model reproducible.
    ``seed`` is an int >= 0, or None for a fresh unpredictable one."""
    global _default_rng
    _default_rng = np.random.default_rng(None if seed is None else _seed(seed, "seed"))


def _int_at_least(value, name, minimum, what):
    if not shapes._is_int(value):
        raise TypeError(f"{name} must be {what}, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _seed(value, name):
    return _int_at_least(value, name, 0, "an int >= 0")


def _rng(rng):
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if shapes._is_int(rng):
        return np.random.default_rng(_seed(rng, "rng"))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


# --------------------------------------------------------------------------
# Arrays: NumPy on the CPU, CuPy on the GPU
# --------------------------------------------------------------------------

def _to_device(arr, device):
    if device == "cpu":
        if isinstance(arr, np.ndarray):
            return arr
        return arr.get()
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "moving layers to the GPU needs CuPy (pip install 'fastconv[cuda]'); "
            "the layers' array arithmetic (Linear, SGD, the loss) runs on CuPy arrays") from None
    return cupy.asarray(arr)


def _positive_int(value, name):
    return _int_at_least(value, name, 1, "a positive int")


def _input_shape(input_shape, name="input_shape"):
    if not isinstance(input_shape, (tuple, list)) or not all(
            shapes._is_int(s) and s >= 0 for s in input_shape):
        raise ValueError(f"{name} must be a tuple of sizes, got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


def _image_shape(input_shape, layer):
    """(N, C, H, W) from a 4-D or 3-D (C, H, W) shape; N is None for 3-D."""
    input_shape = _input_shape(input_shape)
    if len(input_shape) == 3:
        return (None,) + input_shape
    if len(input_shape) == 4:
        return input_shape
    raise ValueError(
        f"{layer} needs a 4-D (N, C, H, W) or 3-D (C, H, W) input shape, got {input_shape}")


def _check_in_channels(layer, shape, what):
    """ValueError unless a 3-D or 4-D `shape` has the layer's input channels (other ranks
    are left to the operator's own check)."""
    shape = tuple(shape)
    if len(shape) in (3, 4) and shape[-3] != layer.in_channels:
        raise ValueError(
            f"{layer!r} expects {layer.in_channels} input channels, got {what} {shape}")


def _restore_batch(shape, batched_shape):
    return shape if batched_shape[0] is not None else shape[1:]


# --------------------------------------------------------------------------
# Inputs kept for backward
# --------------------------------------------------------------------------

# Positions sampled in a kept input: any in-place change of a contiguous run of at
# least size / SAVED_SAMPLE elements (a data loader refilling its buffer) is seen.
SAVED_SAMPLE = 4096


def _sample_bytes(x):
    """The bytes of up to SAVED_SAMPLE evenly spaced elements of a NumPy or CuPy array
    (None for other arrays); a few microseconds, whatever x's size."""
    if isinstance(x, np.ndarray):
        xp = np
    elif type(x).__module__.split(".")[0] == "cupy":
        import cupy as xp
    else:
        return None
    if x.size == 0:
        return None
    step = max(1, x.size // SAVED_SAMPLE)
    if x.flags.c_contiguous:
        picked = x.reshape(-1)[::step]              # a view: only the sample is copied
    else:
        picked = x[xp.unravel_index(xp.arange(0, x.size, step), x.shape)]
    return picked.copy().view(xp.uint8)       # a copy even where picked is all of x


class _SavedInput:
    """A forward input kept for backward. NumPy counts no in-place changes (torch's
    version counter does), so a sample of its values is kept with it and compared at
    backward; torch tensors' own version counter is compared too."""

    __slots__ = ("array", "_sample", "_version")

    def __init__(self, array):
        self.array = array
        self._version = getattr(array, "_version", None)
        self._sample = _sample_bytes(array)

    def get(self, layer):
        """The kept array; RuntimeError if it was modified in place since forward."""
        x, changed = self.array, False
        if self._version is not None and getattr(x, "_version", None) != self._version:
            changed = True
        elif self._sample is not None:
            xp = np if isinstance(x, np.ndarray) else _array_module(x)
            now = _sample_bytes(x)
            changed = now is None or now.shape != self._sample.shape \
                or not bool(xp.array_equal(now, self._sample))
        if changed:
            raise RuntimeError(
                f"{layer}.backward: the input that forward kept was modified in place "
                "before backward, so the gradients would come from other data (torch: "
                "'modified by an inplace operation'); keep it unchanged until backward, "
                "or pass forward a copy")
        return x


# --------------------------------------------------------------------------
# Parameters and modules
# --------------------------------------------------------------------------

class Parameter:
    """A trainable array: ``data`` (the values), ``grad`` (their gradient, same shape,
    accumulated by ``backward``) and ``name`` (e.g. ``"3.weight"`` inside a Sequential).
    ``requires_grad=False`` freezes it (SGD skips it; summary counts it as non-trainable)."""

    __slots__ = ("data", "grad", "name", "requires_grad")

    def __init__(self, data, name="", requires_grad=True):
        self.data = data
        self.grad = None
        self.name = name
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    @property
    def size(self) -> int:
        return int(math.prod(self.data.shape))

    def accumulate(self, grad):
        """grad += g (allocating on first use). g must have the parameter's shape, dtype
        and device (`check_grad`)."""
        self.check_grad(grad)
        if self.grad is None:
            if _kind_of(grad) in ("numpy", "cupy"):
                grad = grad.copy()  # the caller may hold on to it
            self.grad = grad  # other CUDA arrays: the API's result is a fresh array
        else:
            self.grad += grad

    def check_grad(self, grad):
        """Raise unless ``grad`` fits this parameter exactly: an array (TypeError), of its
        dtype and device (TypeError) and shape (ValueError). Broadcasting or casting a
        gradient would hide a bug in a backward pass or a hand-set ``p.grad``."""
        what = f"the gradient of parameter {self.name!r}" if self.name else "the gradient"
        self._check_grad(grad, what)

    def _check_grad(self, grad, what):
        kind = _device_or_none(grad)
        if kind is None:
            raise TypeError(f"{what} must be {_ARRAY_KINDS}, got a {_type_name(grad)}; "
                            "convert it with numpy.asarray (or .numpy() for a CPU torch tensor)")
        if kind != _device_of(self.data):
            raise TypeError(f"{what} is on the {kind}, "
                            f"the parameter on the {_device_of(self.data)}")
        if _dtype_of(grad) != self.dtype:
            raise TypeError(f"{what} must have the parameter's dtype {self.dtype}, "
                            f"got {_dtype_of(grad)}")
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"{what} must have the parameter's shape {self.shape}, "
                             f"got {tuple(grad.shape)}")

    def zero_grad(self):
        if self.grad is not None:
            self.grad[...] = 0

    def __repr__(self):
        # data may be anything a user assigned (SGD says what it must be): never fail here
        return (f"Parameter(name={self.name!r}, shape={self.shape}, "
                f"dtype={getattr(self.data, 'dtype', None)}, device={_where(self.data)!r})")


class Module:
    """Base of every layer: ``forward``/``backward``, parameters, train/eval mode, devices."""

    training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape``, from the geometry alone
        (`fastconv.shapes`); no data runs. Raises ValueError if the input does not fit."""
        return _input_shape(input_shape)

    # parameters ----------------------------------------------------------------
    def named_parameters(self, prefix=""):
        """[(name, Parameter)], names like ``"0.weight"`` (PyTorch's state_dict keys)."""
        return [(prefix + key, p) for key, p in vars(self).items() if isinstance(p, Parameter)]

    def parameters(self):
        """The layer's `Parameter` objects (for SGD)."""
        return [p for _, p in self.named_parameters()]

    def num_parameters(self, trainable_only=False) -> int:
        """How many numbers the parameters hold (``Conv2d(3, 10, 5)``: 760)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # modes -----------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (Dropout drops). Returns self."""
        self.training = _check_bool(mode, "mode")
        return self

    def eval(self):
        """Evaluation mode (Dropout is the identity). Returns self."""
        return self.train(False)

    # devices and dtypes ------------------------------------------------------------
    def to(self, device=None, dtype=None):
        """Move parameters to ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy) and/or cast them to
        ``dtype`` (float32/float64). Gradients are dropped. Returns self."""
        if device is not None and device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if dtype is not None:
            dtype = _check_dtype(dtype)
        for p in self.parameters():
            data = p.data
            if dtype is not None and np.dtype(data.dtype) != dtype:
                data = data.astype(dtype)
            if device is not None:
                data = _to_device(data, device)
            p.data, p.grad = data, None
        if dtype is not None:
            self._set_dtype(dtype)
        return self

    def _set_dtype(self, dtype):
        if hasattr(self, "dtype"):
            self.dtype = dtype

    # printing --------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def _fmt_pair(p):
    return p[0] if p[0] == p[1] else p


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------

def _kaiming(rng, shape, fan_in, init, dtype):
    try:
        if init == "zeros":
            return np.zeros(shape, dtype=dtype)  # calloc: costs no memory until written
        gain = math.sqrt(2.0)  # ReLU
        if init == "kaiming_normal":
            std = gain / math.sqrt(fan_in)
            return (rng.standard_normal(shape, dtype=np.float32 if dtype == np.float32 else np.float64)
                    * dtype.type(std)).astype(dtype, copy=False)
        bound = gain * math.sqrt(3.0 / fan_in)
        return rng.uniform(-bound, bound, shape).astype(dtype)
    except ValueError as exc:  # numpy's "array is too big" would not say which layer
        raise ValueError(f"a weight of shape {shape} ({dtype}) is too large to allocate: "
                         f"{exc}") from None


def _check_init(init):
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")
    return init


class Conv2d(Module):
    """2-D convolution layer, ``torch.nn.Conv2d``'s arguments and weight layout.

    weight: ``(out_channels, in_channels // groups, kH, kW)``, bias: ``(out_channels,)``.
    He initialisation (``init="kaiming_normal"``: N(0, 2 / fan_in), or
    ``"kaiming_uniform"``; ``"zeros"`` for tests), bias zero; ``fan_in = in_channels //
    groups * kH * kW``. ``rng``: a numpy Generator or seed (default: `manual_seed`'s).
    ``algorithm`` is passed to `fastconv.conv2d` and its gradients.

    >>> from fastconv import nn
    >>> conv = nn.Conv2d(3, 10, 5, rng=0)
    >>> conv
    Conv2d(3, 10, kernel_size=5, stride=1)
    >>> conv.num_parameters()
    760
    >>> conv.output_shape((8, 3, 32, 32))
    (8, 10, 28, 28)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, algorithm="auto", dtype=np.float32,
                 rng=None, init="kaiming_normal"):
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.stride = shapes.pair(stride, "stride")
        self.dilation = shapes.pair(dilation, "dilation")
        shapes.conv_padding(padding, self.kernel_size, self.dilation, self.stride)  # checks it
        self.padding = padding
        self.groups = _positive_int(groups, "groups")
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels={in_channels} must be divisible by groups={groups}")
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels={out_channels} must be divisible by groups={groups}")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if algorithm == "winograd":
            ok, why = F.winograd_supports((1, 1) + self.kernel_size, self.stride, self.dilation)
            if not ok:
                raise ValueError(f"algorithm='winograd' is not available for this layer: {why}")
        self.algorithm = algorithm
        self.dtype = _check_dtype(dtype)
        init = _check_init(init)
        bias = _check_bool(bias, "bias")
        gen = _rng(rng)
        cg = self.in_channels // self.groups
        fan_in = cg * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(_kaiming(gen, (self.out_channels, cg) + self.kernel_size,
                                         fan_in, init, self.dtype), "weight")
        self.bias = Parameter(np.zeros(self.out_channels, self.dtype), "bias") if bias else None
        self._x = None

    def _geometry(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def forward(self, x):
        x = _as_array(x)
        _check_in_channels(self, x.shape, "input of shape")
        out = F.conv2d(x, self.weight.data, None if self.bias is None else self.bias.data,
                       algorithm=self.algorithm, **self._geometry())
        self._x = _SavedInput(x)
        return out

    def backward(self, grad_out):
        if self._x is None:
            raise RuntimeError("Conv2d.backward called before forward")
        x = self._x.get("Conv2d")
        g = self._geometry()
        # The input gradient first: the API checks grad_out (type, dtype, shape, device)
        # there, before any parameter gradient is touched, even with a frozen weight.
        grad_x = F.conv2d_grad_input(grad_out, self.weight.data, tuple(x.shape),
                                     algorithm=self.algorithm, **g)
        grad_out = _as_array(grad_out, "grad_out")
        if self.weight.requires_grad:
            self.weight.accumulate(F.conv2d_grad_weight(
                grad_out, x, self.weight.shape, algorithm=self.algorithm, **g))
        if self.bias is not None and self.bias.requires_grad:
            go = grad_out if grad_out.ndim == 4 else grad_out.reshape((1,) + tuple(grad_out.shape))
            self.bias.accumulate(F.conv2d_grad_bias(go))
        return grad_x

    def output_shape(self, input_shape):
        n, c, h, w = _image_shape(input_shape, "Conv2d")
        _check_in_channels(self, tuple(input_shape), "input shape")
        _, _, _, out_hw = shapes.conv_geometry((h, w), self.kernel_size, self.stride,
                                               self.padding, self.dilation)
        return _restore_batch((n, self.out_channels) + out_hw, (n,))

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={_fmt_pair(self.kernel_size)}, "
             f"stride={_fmt_pair(self.stride)}")
        if self.padding not in (0, (0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={_fmt_pair(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s


class ConvTranspose2d(Module):
    """2-D transposed convolution layer, ``torch.nn.ConvTranspose2d``'s arguments (in its
    order: ``output_padding, groups, bias, dilation``) and weight layout.

    weight: ``(in_channels, out_channels // groups, kH, kW)``, bias: ``(out_channels,)``.
    He initialisation as `Conv2d`'s, with ``fan_in`` the number of products that reach
    one output: ``in_channels // groups * kH * kW / (sH * sW)`` (at least 1).
    Forward is `fastconv.conv_transpose2d`, backward its gradients.

    >>> from fastconv import nn
    >>> up = nn.ConvTranspose2d(16, 8, 2, stride=2, rng=0)
    >>> up
    ConvTranspose2d(16, 8, kernel_size=2, stride=2)
    >>> up.output_shape((1, 16, 7, 7))
    (1, 8, 14, 14)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, algorithm="auto",
                 dtype=np.float32, rng=None, init="kaiming_normal"):
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.groups = _positive_int(groups, "groups")
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels={in_channels} must be divisible by groups={groups}")
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels={out_channels} must be divisible by groups={groups}")
        # checks stride, padding, output_padding and dilation (output size: at forward)
        geometry = shapes.conv_transpose_geometry((2**20, 2**20), self.kernel_size, stride,
                                                  padding, output_padding, dilation)
        self.stride, _, self.output_padding, self.dilation = geometry[:4]
        self.padding = padding
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.dtype = _check_dtype(dtype)
        init = _check_init(init)
        bias = _check_bool(bias, "bias")
        og = self.out_channels // self.groups
        fan_in = max(1, (self.in_channels // self.groups) * self.kernel_size[0]
                     * self.kernel_size[1] // (self.stride[0] * self.stride[1]))
        self.weight = Parameter(_kaiming(_rng(rng), (self.in_channels, og) + self.kernel_size,
                                         fan_in, init, self.dtype), "weight")
        self.bias = Parameter(np.zeros(self.out_channels, self.dtype), "bias") if bias else None
        self._x = None

    def _geometry(self):
        return dict(stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation, algorithm=self.algorithm)

    def forward(self, x):
        x = _as_array(x)
        _check_in_channels(self, x.shape, "input of shape")
        out = F.conv_transpose2d(x, self.weight.data,
                                  None if self.bias is None else self.bias.data,
                                  **self._geometry())
        self._x = _SavedInput(x)
        return out

    def backward(self, grad_out):
        if self._x is None:
            raise RuntimeError("ConvTranspose2d.backward called before forward")
        x = self._x.get("ConvTranspose2d")
        # the input gradient first: it checks grad_out before any parameter is touched
        grad_x = F.conv_transpose2d_grad_input(grad_out, self.weight.data, tuple(x.shape),
                                               **self._geometry())
        grad_out = _as_array(grad_out, "grad_out")
        if self.weight.requires_grad:
            self.weight.accumulate(F.conv_transpose2d_grad_weight(
                grad_out, x, self.weight.shape, **self._geometry()))
        if self.bias is not None and self.bias.requires_grad:
            go = grad_out if grad_out.ndim == 4 else grad_out.reshape((1,) + tuple(grad_out.shape))
            self.bias.accumulate(F.conv_transpose2d_grad_bias(go))
        return grad_x

    def output_shape(self, input_shape):
        n, c, h, w = _image_shape(input_shape, "ConvTranspose2d")
        _check_in_channels(self, tuple(input_shape), "input shape")
        out_hw = shapes.conv_transpose_geometry((h, w), self.kernel_size, self.stride,
                                                self.padding, self.output_padding,
                                                self.dilation)[4]
        return _restore_batch((n, self.out_channels) + out_hw, (n,))

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={_fmt_pair(self.kernel_size)}, "
             f"stride={_fmt_pair(self.stride)}")
        if self.padding not in (0, (0, 0)):
            s += f", padding={self.padding!r}"
        if self.output_padding != (0, 0):
            s += f", output_padding={_fmt_pair(self.output_padding)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.dilation != (1, 1):
            s += f", dilation={_fmt_pair(self.dilation)}"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

class MaxPool2d(Module):
    """Max pooling layer, ``torch.nn.MaxPool2d``'s arguments (``stride=None`` means kernel_size).

    >>> from fastconv import nn
    >>> nn.MaxPool2d(2).output_shape((1, 16, 8, 8))
    (1, 16, 4, 4)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.stride = shapes.pool_stride(stride, self.kernel_size)
        self.dilation = shapes.pair(dilation, "dilation")
        shapes.pool_padding(padding, self.kernel_size)
        self.padding = padding
        self.ceil_mode = _check_bool(ceil_mode, "ceil_mode")
        self._x = None

    def _args(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, ceil_mode=self.ceil_mode)

    def forward(self, x):
        x = _as_array(x)
        out = F.max_pool2d(x, **self._args())
        self._x = _SavedInput(x)
        return out

    def backward(self, grad_out):
        if self._x is None:
            raise RuntimeError("MaxPool2d.backward called before forward")
        return F.max_pool2d_backward(grad_out, self._x.get("MaxPool2d"), **self._args())

    def output_shape(self, input_shape):
        n, c, h, w = _image_shape(input_shape, "MaxPool2d")
        *_, out_hw = shapes.pool_geometry((h, w), self.kernel_size, self.stride, self.padding,
                                          self.dilation, self.ceil_mode)
        return _restore_batch((n, c) + out_hw, (n,))

    def extra_repr(self):
        s = f"kernel_size={_fmt_pair(self.kernel_size)}, stride={_fmt_pair(self.stride)}"
        if self.padding not in (0, (0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={_fmt_pair(self.dilation)}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s


class AvgPool2d(Module):
    """Average pooling layer, ``torch.nn.AvgPool2d``'s arguments and divisor rules.

    >>> from fastconv import nn
    >>> nn.AvgPool2d(2).output_shape((16, 8, 8))
    (16, 4, 4)
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.stride = shapes.pool_stride(stride, self.kernel_size)
        shapes.pool_padding(padding, self.kernel_size)
        self.padding = padding
        self.ceil_mode = _check_bool(ceil_mode, "ceil_mode")
        self.count_include_pad = _check_bool(count_include_pad, "count_include_pad")
        self.divisor_override = shapes.divisor(divisor_override) or None
        self._input_shape = None
        self._spec = None

    def _args(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)

    def forward(self, x):
        x = _as_array(x)
        self._input_shape = tuple(x.shape)
        out = F.avg_pool2d(x, **self._args())
        self._spec = _grad_spec(out)
        return out

    def backward(self, grad_out):
        # avg_pool2d_backward sees no input array, so it cannot refuse a grad_out of
        # another dtype: that check is here.
        grad_out = _check_grad_out(grad_out, self._spec, "AvgPool2d")
        return F.avg_pool2d_backward(grad_out, self._input_shape, **self._args())

    def output_shape(self, input_shape):
        n, c, h, w = _image_shape(input_shape, "AvgPool2d")
        *_, out_hw = shapes.pool_geometry((h, w), self.kernel_size, self.stride, self.padding,
                                          (1, 1), self.ceil_mode)
        return _restore_batch((n, c) + out_hw, (n,))

    def extra_repr(self):
        s = f"kernel_size={_fmt_pair(self.kernel_size)}, stride={_fmt_pair(self.stride)}"
        if self.padding not in (0, (0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        if self.divisor_override is not None:
            s += f", divisor_override={self.divisor_override}"
        return s


class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` for the sizes where it is a plain pooling:
    the identity when the input already has ``output_size``, else an `AvgPool2d` with
    ``kernel = stride = input // output`` when the input size is a multiple of it (for
    those sizes PyTorch's adaptive windows are exactly these). Other sizes raise
    ValueError (PyTorch's uneven, overlapping adaptive windows are not implemented).

    >>> from fastconv import nn
    >>> nn.AdaptiveAvgPool2d(7).output_shape((1, 512, 14, 14))
    (1, 512, 7, 7)
    """

    def __init__(self, output_size):
        # torch refuses a one-element output_size here, unlike kernel sizes and strides
        self.output_size = shapes.pair(output_size, "output_size", one_for_both=False)
        self._pool = None
        self._spec = None  # set by an identity forward

    def _plan(self, hw):
        (h, w), (oh, ow) = hw, self.output_size
        if (h, w) == (oh, ow):
            return None
        if h % oh or w % ow:
            raise ValueError(
                f"AdaptiveAvgPool2d(output_size={self.output_size}) supports inputs whose "
                f"height and width are multiples of the output size, got {h}x{w}")
        return AvgPool2d((h // oh, w // ow))

    def forward(self, x):
        x = _as_array(x)
        self._pool, self._spec = None, None
        if len(x.shape) not in (3, 4):
            raise ValueError(
                f"x must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
        self._pool = self._plan(tuple(x.shape[-2:]))
        if self._pool is not None:
            return self._pool.forward(x)
        # as the identity, take (and check) what the pooling would
        _check_dtype(_dtype_of(x), "x")
        self._spec = _grad_spec(x)
        return x

    def backward(self, grad_out):
        if self._pool is not None:
            return self._pool.backward(grad_out)
        return _check_grad_out(grad_out, self._spec, "AdaptiveAvgPool2d")

    def output_shape(self, input_shape):
        n, c, h, w = _image_shape(input_shape, "AdaptiveAvgPool2d")
        self._plan((h, w))
        return _restore_batch((n, c) + self.output_size, (n,))

    def extra_repr(self):
        return f"output_size={_fmt_pair(self.output_size)}"


# --------------------------------------------------------------------------
# Elementwise and reshaping
# --------------------------------------------------------------------------

class ReLU(Module):
    """max(x, 0), `fastconv.relu`; backward is `fastconv.relu_backward`. Any shape."""

    def __init__(self):
        self._x = None

    def forward(self, x):
        x = _as_array(x)
        out = F.relu(x)
        self._x = _SavedInput(x)
        return out

    def backward(self, grad_out):
        if self._x is None:
            raise RuntimeError("ReLU.backward called before forward")
        return F.relu_backward(grad_out, self._x.get("ReLU"))


class Identity(Module):
    """Passes its input through (a placeholder, like ``torch.nn.Identity``)."""

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


class Flatten(Module):
    """Flattens dimensions ``start_dim..`` into one: ``(N, C, H, W) -> (N, C*H*W)``.

    >>> from fastconv import nn
    >>> nn.Flatten().output_shape((8, 16, 4, 4))
    (8, 256)
    """

    def __init__(self, start_dim=1):
        if not shapes._is_int(start_dim) or start_dim < 0:
            raise ValueError(f"start_dim must be an int >= 0, got {start_dim!r}")
        self.start_dim = int(start_dim)
        self._shape = None
        self._spec = None

    def forward(self, x):
        x = _as_array(x)
        if x.ndim <= self.start_dim:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}) needs at least {self.start_dim + 1} "
                f"dimensions, got shape {tuple(x.shape)}")
        self._shape = tuple(x.shape)
        out = x.reshape(self._shape[:self.start_dim] + (-1,))
        self._spec = _grad_spec(out)
        return out

    def backward(self, grad_out):
        grad_out = _check_grad_out(grad_out, self._spec, "Flatten")
        return grad_out.reshape(self._shape)

    def output_shape(self, input_shape):
        shape = _input_shape(input_shape)
        if len(shape) <= self.start_dim:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}) needs at least {self.start_dim + 1} "
                f"dimensions, got shape {shape}")
        rest = shape[self.start_dim:]
        return shape[:self.start_dim] + (int(math.prod(rest)),)

    def extra_repr(self):
        return "" if self.start_dim == 1 else f"start_dim={self.start_dim}"


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias``, ``torch.nn.Linear``'s layout:
    weight ``(out_features, in_features)``. He initialisation, zero bias. x is ``(N, in_features)``.

    >>> from fastconv import nn
    >>> nn.Linear(9216, 4096).num_parameters()
    37752832
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None,
                 init="kaiming_normal"):
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.dtype = _check_dtype(dtype)
        bias = _check_bool(bias, "bias")
        self.weight = Parameter(_kaiming(_rng(rng), (self.out_features, self.in_features),
                                         self.in_features, _check_init(init), self.dtype),
                                "weight")
        self.bias = Parameter(np.zeros(self.out_features, self.dtype), "bias") if bias else None
        self._x = None
        self._spec = None

    def forward(self, x):
        x = _as_array(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{self!r} expects input of shape (N, {self.in_features}), got {tuple(x.shape)}")
        if np.dtype(x.dtype) != np.dtype(self.weight.data.dtype):
            raise TypeError(
                f"{self!r} has {np.dtype(self.weight.data.dtype)} parameters, got a "
                f"{np.dtype(x.dtype)} input; cast one of them")
        y = F._matmul(x, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        self._x = _SavedInput(x)
        self._spec = _grad_spec(y)
        return y

    def backward(self, grad_out):
        grad_out = _check_grad_out(grad_out, self._spec, "Linear")
        x = self._x.get("Linear")
        if self.weight.requires_grad:
            self.weight.accumulate(F._matmul(grad_out.T, x))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate(grad_out.sum(axis=0))
        return F._matmul(grad_out, self.weight.data)

    def output_shape(self, input_shape):
        shape = _input_shape(input_shape)
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ValueError(
                f"{self!r} expects input of shape (N, {self.in_features}), got {shape}")
        return (shape[0], self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + ("" if self.bias is not None else ", bias=False"))


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode and scales the rest
    by ``1 / (1 - p)`` (inverted dropout, as PyTorch); the identity in eval mode.
    The input must be float32 or float64 (TypeError otherwise, as for ReLU).

    >>> import numpy as np
    >>> from fastconv import nn
    >>> nn.Dropout(0.5, rng=0)(np.ones(4, np.float32))
    array([2., 0., 0., 0.], dtype=float32)
    """

    def __init__(self, p=0.5, rng=None):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        # a seed becomes one Generator here: made afresh in each forward, it would drop
        # the same elements every step. None stays None, to follow manual_seed.
        self._gen = None if rng is None else _rng(rng)
        self._mask = None
        self._spec = None

    def forward(self, x):
        x = _as_array(x)
        dropping = self.training and self.p != 0
        xp = _array_module(x) if dropping else None
        # the 1/(1-p) scale is float math: an integer input would truncate it (torch
        # refuses it too), so only float input, in every mode, as ReLU
        _check_dtype(_dtype_of(x), "Dropout's input x")
        if not dropping:
            self._mask = None
        else:
            if self.p == 1:
                self._mask = xp.zeros(x.shape, dtype=x.dtype)
            else:
                keep = _rng(self._gen).random(x.shape) >= self.p
                self._mask = xp.asarray((keep / (1.0 - self.p)).astype(x.dtype))
        self._spec = _grad_spec(x)  # the output has x's shape, dtype and device
        return x if self._mask is None else x * self._mask

    def backward(self, grad_out):
        grad_out = _check_grad_out(grad_out, self._spec, "Dropout")
        return grad_out if self._mask is None else grad_out * self._mask

    def extra_repr(self):
        return f"p={self.p}"


# --------------------------------------------------------------------------
# Sequential
# --------------------------------------------------------------------------

class Summary(str):
    """The text of `Sequential.summary`; prints as the table (also in a REPL).
    ``rows`` holds ``(name, layer, output_shape, params)``; ``total_params``,
    ``trainable_params`` and ``output_shape`` the totals."""

    def __repr__(self):
        return str(self)


def _fmt_shape(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    Parameter names are ``"<index>.<name>"`` (``"0.weight"``), PyTorch's state_dict keys.
    ``save_state(path)``/``load_state(path)`` store them in an ``.npz``;
    ``summary(input_shape)`` is a Keras-style table computed by shape propagation.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} must be a fastconv.nn.Module, got {type(layer).__name__}")
        self.layers = list(layers)
        self._name_parameters()

    def _name_parameters(self):
        for name, p in self.named_parameters():
            p.name = name

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"layer must be a fastconv.nn.Module, got {type(layer).__name__}")
        self.layers.append(layer)
        self._name_parameters()
        return self

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def output_shape(self, input_shape):
        shape = _input_shape(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def named_parameters(self, prefix=""):
        out = []
        for i, layer in enumerate(self.layers):
            out.extend(layer.named_parameters(f"{prefix}{i}."))
        return out

    def train(self, mode=True):
        super().train(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def _set_dtype(self, dtype):
        for layer in self.layers:
            layer._set_dtype(dtype)

    # ----------------------------------------------------------------- summary
    def summary(self, input_shape) -> Summary:
        """A Keras-style table: each layer, its output shape and parameter count, then the
        totals. ``input_shape`` is ``(C, H, W)`` (batch shown as None) or ``(N, C, H, W)``.
        Shapes come from each layer's ``output_shape`` (no data runs), so it is instant even
        for VGG-16. Returns a `Summary` (a str): ``print(model.summary((3, 224, 224)))``."""
        shape = _input_shape(input_shape)
        batched = (None,) + shape if len(shape) == 3 else shape
        rows = []
        current = batched
        for i, layer in enumerate(self.layers):
            try:
                current = _propagate(layer, current)
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer!r}) cannot take input {_fmt_shape(current)}: {exc}") from None
            rows.append((str(i), layer, current, layer.num_parameters()))
        total = self.num_parameters()
        trainable = self.num_parameters(trainable_only=True)
        nbytes = sum(p.size * p.dtype.itemsize for p in self.parameters())
        head = ("Layer (type)", "Output Shape", "Param #")
        body = [(f"{name} {type(layer).__name__}", _fmt_shape(shp), f"{n:,}")
                for name, layer, shp, n in rows]
        w0 = max([len(head[0])] + [len(r[0]) for r in body]) + 2
        w1 = max([len(head[1])] + [len(r[1]) for r in body]) + 2
        w2 = max([len(head[2])] + [len(r[2]) for r in body])
        width = w0 + w1 + w2
        lines = [f"Sequential: input {_fmt_shape(batched)}", "=" * width,
                 f"{head[0]:<{w0}}{head[1]:<{w1}}{head[2]:>{w2}}", "=" * width]
        for r in body:
            lines.append(f"{r[0]:<{w0}}{r[1]:<{w1}}{r[2]:>{w2}}")
        lines += ["=" * width,
                  f"Total params: {total:,} ({nbytes / 2**20:.2f} MiB)",
                  f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}",
                  "-" * width]
        result = Summary("\n".join(lines))
        result.rows = rows
        result.total_params = total
        result.trainable_params = trainable
        result.output_shape = current
        return result

    # ---------------------------------------------------------------- state
    def state_dict(self):
        """{name: host (NumPy) copy of the parameter's values}."""
        return {name: np.array(_to_device(p.data, "cpu"), copy=True)
                for name, p in self.named_parameters()}

    def save_state(self, path):
        """Write the parameters to an ``.npz`` (names as `named_parameters`)."""
        path = os.fspath(path)
        with open(path, "wb") as f:
            np.savez(f, **self.state_dict())

    def load_state(self, path):
        """Load parameters saved by `save_state`. The file must hold exactly this model's
        parameter names with the same shapes and dtypes; otherwise ValueError naming the
        parameter (and both shapes/dtypes). A truncated or corrupt file is a ValueError
        too, and the model is left untouched (everything is read before anything is set)."""
        path = os.fspath(path)
        params = dict(self.named_parameters())
        try:
            npz = np.load(path, allow_pickle=False)
            # an .npy file loads as a bare array, which is no context manager
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise _StateMismatch(
                    f"path {path!r} is an .npy file holding a single array, not an .npz "
                    "state file saved by save_state")
            with npz:
                names = list(npz.files)
                missing = [n for n in params if n not in names]
                unexpected = [n for n in names if n not in params]
                if missing or unexpected:
                    raise _StateMismatch(
                        f"{path} does not match this model: missing parameters {missing}, "
                        f"unexpected {unexpected}")
                arrays = {}
                for name, p in params.items():
                    arr = npz[name]
                    if tuple(arr.shape) != p.shape:
                        raise _StateMismatch(
                            f"parameter {name!r}: the file has shape {tuple(arr.shape)}, "
                            f"the model has shape {p.shape}")
                    if np.dtype(arr.dtype) != p.dtype:
                        raise _StateMismatch(
                            f"parameter {name!r}: the file has dtype {arr.dtype}, "
                            f"the model has dtype {p.dtype}")
                    arrays[name] = arr
        except (_StateMismatch, FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile,
                zipfile.LargeZipFile, zlib.error) as exc:
            # truncated or corrupt zip, a non-.npz file (numpy calls it pickled data), ...
            raise ValueError(
                f"cannot read {path} as a saved fastconv state (.npz): "
                f"{type(exc).__name__}: {exc}") from None
        for name, p in params.items():
            p.data = _to_device(arrays[name], _device_of(p.data))
            p.grad = None
        return self

    # ---------------------------------------------------------------- printing
    def __repr__(self):
        lines = ["Sequential("]
        for i, layer in enumerate(self.layers):
            inner = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({i}): {inner}")
        lines.append(")")
        return "\n".join(lines)


class _StateMismatch(ValueError):
    """A readable state file that does not fit the model."""


def _propagate(layer, shape):
    """output_shape with a batch of None: propagate with N=1, put None back."""
    if shape and shape[0] is None:
        out = layer.output_shape((1,) + tuple(shape[1:]))
        return (None,) + tuple(out[1:])
    return tuple(layer.output_shape(shape))


# --------------------------------------------------------------------------
# Loss and optimiser
# --------------------------------------------------------------------------

class CrossEntropyLoss:
    """Softmax cross-entropy on logits, mean over the batch (``torch.nn.CrossEntropyLoss``).

    ``loss = loss_fn(logits, targets)`` with logits ``(N, classes)`` and integer class
    targets ``(N,)`` returns a Python float, computed stably via log-softmax
    (``logits - max - log(sum(exp(...)))``); ``loss_fn.backward()`` returns the
    gradient with respect to the logits, ``(softmax - one_hot) / N``.

    >>> import numpy as np
    >>> from fastconv import nn
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> round(loss_fn(np.zeros((2, 4)), np.array([0, 3])), 6)  # log(4)
    1.386294
    """

    def __init__(self):
        self._probs = None
        self._targets = None

    def __call__(self, logits, targets):
        return self.forward(logits, targets)

    def forward(self, logits, targets):
        logits = _as_array(logits, "logits")
        xp = _array_module(logits)
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise ValueError(f"logits must be 2-D (N, classes) with N >= 1, got shape {tuple(logits.shape)}")
        if np.dtype(logits.dtype) not in _FLOATS:
            raise TypeError(f"logits must be float32 or float64, got {logits.dtype}")
        targets = xp.asarray(targets)
        if targets.shape != (logits.shape[0],) or targets.dtype.kind not in "iu":
            raise ValueError(
                f"targets must be integer class indices of shape ({logits.shape[0]},), got "
                f"shape {tuple(targets.shape)} dtype {targets.dtype}")
        n, classes = logits.shape
        if int(targets.min()) < 0 or int(targets.max()) >= classes:
            raise ValueError(f"targets must lie in [0, {classes}), got values "
                             f"{int(targets.min())}..{int(targets.max())}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        rows = xp.arange(n)
        loss = -log_probs[rows, targets].mean()
        self._probs = xp.exp(log_probs)
        self._targets = targets
        return float(loss)

    def backward(self):
        """d loss / d logits, same shape and dtype as the logits."""
        if self._probs is None:
            raise RuntimeError("CrossEntropyLoss.backward called before the loss was computed")
        xp = _array_module(self._probs)
        grad = self._probs.copy()
        n = grad.shape[0]
        grad[xp.arange(n), self._targets] -= 1
        grad /= n
        return grad

    def __repr__(self):
        return "CrossEntropyLoss()"


class SGD:
    """Stochastic gradient descent with momentum and weight decay, PyTorch's update::

        g = grad + weight_decay * p
        buf = momentum * buf + g        (buf = g on the first step)
        p -= lr * buf

    ``params`` is an iterable of `Parameter`: ``model.parameters()``, or a selection of
    them. As in PyTorch, a Module itself is refused (TypeError saying what to pass).
    ``step()`` applies it to every parameter that has a gradient and ``requires_grad``,
    after checking every such parameter: its data a writable float NumPy (or CuPy) array,
    its gradient of the same kind, shape and dtype (`Parameter.check_grad`), its momentum
    buffer (if any) still of the data's shape and dtype. A bad one raises an error that
    names it (``"0.weight"``, or ``params[i]`` for an unnamed one), and leaves every
    parameter and momentum buffer untouched; ``zero_grad()`` clears the gradients (call
    it before each backward).

    >>> import numpy as np
    >>> from fastconv import nn
    >>> p = nn.Parameter(np.ones(2, np.float32), "w")
    >>> p.grad = np.full(2, 0.5, np.float32)
    >>> nn.SGD([p], lr=0.1).step()
    >>> p.data
    array([0.95, 0.95], dtype=float32)
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        if isinstance(params, (Module, Parameter)):
            raise TypeError(
                f"params must be an iterable of fastconv.nn.Parameter such as "
                f"model.parameters(), got a {type(params).__name__}")
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(
                f"params must be an iterable of fastconv.nn.Parameter such as "
                f"model.parameters(), got {params!r}") from None
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a fastconv.nn.Parameter, got {type(p).__name__}")
        for name, value, low in (("lr", lr, 0.0), ("momentum", momentum, 0.0),
                                 ("weight_decay", weight_decay, 0.0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= low \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self._buffers = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _check_step(self, p, label):
        """Everything `step` needs of `p`, checked before any parameter moves."""
        data = p.data
        if not (isinstance(data, np.ndarray) or type(data).__module__.split(".")[0] == "cupy"):
            raise TypeError(
                f"{label}: SGD updates the data in place with array arithmetic and takes a "
                f"NumPy (CPU) or CuPy (GPU) array, got a {_type_name(data)}")
        if np.dtype(data.dtype) not in _FLOATS:
            raise TypeError(f"{label}: the data must be float32 or float64, got {data.dtype}")
        if isinstance(data, np.ndarray) and not data.flags.writeable:
            raise ValueError(
                f"{label}: the data is read-only, and SGD updates it in place; give the "
                "parameter a writable array (p.data = p.data.copy())")
        grad = p.grad
        p._check_grad(grad, f"{label}: the gradient")
        if type(grad).__module__.split(".")[0] != type(data).__module__.split(".")[0]:
            raise TypeError(f"{label}: the gradient is a {_type_name(grad)}, the data a "
                            f"{_type_name(data)}; SGD needs two arrays of one kind")
        buf = self._buffers.get(id(p))
        if buf is not None and (tuple(buf.shape) != p.shape or buf.dtype != data.dtype
                                or type(buf) is not type(data)):
            raise ValueError(
                f"{label}: its momentum buffer has shape {tuple(buf.shape)} and dtype "
                f"{buf.dtype}, but the data now has shape {p.shape} and dtype {p.dtype}; "
                "make a new SGD for a model whose parameters were replaced")

    def step(self):
        active = [(i, p) for i, p in enumerate(self.params)
                  if p.grad is not None and p.requires_grad]
        for i, p in active:
            self._check_step(p, f"parameter {p.name!r}" if p.name else f"params[{i}]")
        for _, p in active:
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = self._buffers.get(id(p))
                if buf is None:
                    buf = g.copy()
                else:
                    buf *= self.momentum
                    buf += g
                self._buffers[id(p)] = buf
                g = buf
            p.data -= p.data.dtype.type(self.lr) * g

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}, params={len(self.params)})")
