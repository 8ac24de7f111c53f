"""fastconv's kernels inside PyTorch models, with autograd: the torch bridge.

    >>> import torch, fastconv.torch as fct
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.MaxPool2d(2))
    >>> model = fct.convert(model)          # in place: same parameters, same state_dict
    >>> type(model[0]).__module__
    'fastconv.torch'
    >>> model(torch.ones(2, 3, 8, 8)).shape
    torch.Size([2, 8, 4, 4])

Functions with `torch.nn.functional`'s signatures (`conv2d`, `conv_transpose2d`,
`max_pool2d`, `avg_pool2d`; the convolutions take a keyword-only ``algorithm`` too),
modules that subclass the torch.nn ones (`Conv2d`, `ConvTranspose2d`, `MaxPool2d`,
`AvgPool2d`), `convert(model)` and `unconverted(model)`. docs/torch.md has the details.

Each function is a ``torch.library`` custom op (``torch.ops.fastconv.*``) with a fake
(meta) implementation and a registered autograd formula: torch.compile keeps them in
one graph (no graph break) and autograd differentiates them once (first derivatives).
CPU tensors reach the kernels as zero-copy NumPy views (``tensor.numpy()``), results
come back with ``torch.from_numpy``; CUDA tensors go to fastconv's CUDA API as they
are (``__cuda_array_interface__``), on ``torch.cuda.current_stream()``.

Bad arguments raise `FastconvValueError` / `FastconvTypeError`: fastconv's ValueError /
TypeError that are also RuntimeErrors, the class torch raises for most bad inputs.
"""
from __future__ import annotations

try:
    import torch
except ImportError as _exc:  # torch is an optional dependency
    raise ImportError(
        "fastconv.torch needs PyTorch, which is not installed: "
        'pip install "fastconv[bench]" (the tested torch version) or pip install torch'
    ) from _exc

import contextlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import api, shapes

Tensor = torch.Tensor

__all__ = ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "Conv2d",
           "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "convert", "unconverted",
           "FastconvValueError", "FastconvTypeError"]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class FastconvValueError(ValueError, RuntimeError):
    """A bad argument value: a ValueError, and the RuntimeError torch raises."""


class FastconvTypeError(TypeError, RuntimeError):
    """A bad argument type, dtype or device: a TypeError, and a RuntimeError as in torch."""


@contextlib.contextmanager
def _torch_errors(function):
    """fastconv's ValueError/TypeError as the torch-style classes above, named by function."""
    try:
        yield
    except (FastconvValueError, FastconvTypeError):
        raise
    except ValueError as exc:
        raise FastconvValueError(f"{function}(): {exc}") from None
    except TypeError as exc:
        raise FastconvTypeError(f"{function}(): {exc}") from None


# --------------------------------------------------------------------------
# Tensors <-> fastconv arrays (zero-copy)
# --------------------------------------------------------------------------

def _array(t):
    """What fastconv's API takes for tensor t: a NumPy view of a CPU tensor, the CUDA
    tensor itself (fastconv reads its __cuda_array_interface__ and current stream)."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cpu":
        if t.layout != torch.strided:
            raise TypeError(f"fastconv takes dense (strided) tensors, got layout {t.layout}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"fastconv takes float32 or float64 tensors, got {t.dtype}")
        return t.resolve_neg().numpy()
    if t.device.type == "cuda":
        return t
    raise TypeError(f"fastconv takes CPU or CUDA tensors, got a tensor on {t.device}")


def _tensor(result):
    """fastconv's result as a tensor: torch.from_numpy for NumPy (zero-copy)."""
    if isinstance(result, tuple):
        return tuple(_tensor(r) for r in result)
    if isinstance(result, np.ndarray):
        return torch.from_numpy(result)
    return result  # CUDA: fastconv already gave back a torch tensor


def _run(name, function, *args, **kwargs):
    with _torch_errors(name):
        return _tensor(function(*(_array(a) if isinstance(a, Tensor) else a for a in args),
                                **kwargs))


def _sides(padding4):
    top, bottom, left, right = padding4
    return ((top, bottom), (left, right))


def _is_batched(t, name):
    if t.dim() not in (3, 4):
        raise ValueError(
            f"Expected 3D (unbatched) or 4D (batched) input to {name}, but got input of "
            f"size: {list(t.shape)}")
    return t.dim() == 4


def _check_tensor(value, argument, function):
    if not isinstance(value, Tensor):
        raise FastconvTypeError(
            f"{function}(): argument '{argument}' must be Tensor, not {type(value).__name__}")


def _bias_grad(grad, batched):
    return grad.sum((0, 2, 3) if batched else (1, 2))


# --------------------------------------------------------------------------
# Custom ops: convolution
# --------------------------------------------------------------------------

@torch.library.custom_op("fastconv::conv2d", mutates_args=())
def _conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
            padding: List[int], dilation: List[int], groups: int, algorithm: str) -> Tensor:
    return _run("conv2d", api.conv2d, x, weight, bias, tuple(stride), _sides(padding),
                tuple(dilation), groups, algorithm)


@_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, algorithm):
    out_hw = shapes.output_size(tuple(x.shape[-2:]), tuple(weight.shape[2:]), stride, padding,
                                dilation)
    return x.new_empty(tuple(x.shape[:-3]) + (weight.shape[0],) + out_hw)


@torch.library.custom_op("fastconv::conv2d_grad_input", mutates_args=())
def _conv2d_grad_input(grad: Tensor, weight: Tensor, input_shape: List[int],
                       stride: List[int], padding: List[int], dilation: List[int],
                       groups: int, algorithm: str) -> Tensor:
    return _run("conv2d", api.conv2d_grad_input, grad, weight, tuple(input_shape),
                tuple(stride), _sides(padding), tuple(dilation), groups, algorithm)


@_conv2d_grad_input.register_fake
def _(grad, weight, input_shape, stride, padding, dilation, groups, algorithm):
    return grad.new_empty(input_shape)


@torch.library.custom_op("fastconv::conv2d_grad_weight", mutates_args=())
def _conv2d_grad_weight(grad: Tensor, x: Tensor, weight_shape: List[int], stride: List[int],
                        padding: List[int], dilation: List[int], groups: int,
                        algorithm: str) -> Tensor:
    return _run("conv2d", api.conv2d_grad_weight, grad, x, tuple(weight_shape), tuple(stride),
                _sides(padding), tuple(dilation), groups, algorithm)


@_conv2d_grad_weight.register_fake
def _(grad, x, weight_shape, stride, padding, dilation, groups, algorithm):
    return grad.new_empty(weight_shape)


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, *ctx.geometry = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _conv2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _conv2d_grad_input(grad, weight, list(x.shape), *ctx.geometry)
    if needs[1]:
        grad_w = _conv2d_grad_weight(grad, x, list(weight.shape), *ctx.geometry)
    if ctx.has_bias and needs[2]:
        grad_b = _bias_grad(grad, x.dim() == 4)
    return grad_x, grad_w, grad_b, None, None, None, None, None


_conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


@torch.library.custom_op("fastconv::conv_transpose2d", mutates_args=())
def _conv_transpose2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                      padding: List[int], output_padding: List[int], groups: int,
                      dilation: List[int], algorithm: str) -> Tensor:
    return _run("conv_transpose2d", api.conv_transpose2d, x, weight, bias, tuple(stride),
                _sides(padding), tuple(output_padding), groups, tuple(dilation), algorithm)


@_conv_transpose2d.register_fake
def _(x, weight, bias, stride, padding, output_padding, groups, dilation, algorithm):
    out_hw = shapes.conv_transpose_geometry(tuple(x.shape[-2:]), tuple(weight.shape[2:]),
                                            stride, _sides(padding), output_padding,
                                            dilation)[4]
    return x.new_empty(tuple(x.shape[:-3]) + (weight.shape[1] * groups,) + out_hw)


@torch.library.custom_op("fastconv::conv_transpose2d_grad_input", mutates_args=())
def _conv_transpose2d_grad_input(grad: Tensor, weight: Tensor, input_shape: List[int],
                                 stride: List[int], padding: List[int],
                                 output_padding: List[int], groups: int,
                                 dilation: List[int], algorithm: str) -> Tensor:
    return _run("conv_transpose2d", api.conv_transpose2d_grad_input, grad, weight,
                tuple(input_shape), tuple(stride), _sides(padding), tuple(output_padding),
                groups, tuple(dilation), algorithm)


@_conv_transpose2d_grad_input.register_fake
def _(grad, weight, input_shape, stride, padding, output_padding, groups, dilation, algorithm):
    return grad.new_empty(input_shape)


@torch.library.custom_op("fastconv::conv_transpose2d_grad_weight", mutates_args=())
def _conv_transpose2d_grad_weight(grad: Tensor, x: Tensor, weight_shape: List[int],
                                  stride: List[int], padding: List[int],
                                  output_padding: List[int], groups: int,
                                  dilation: List[int], algorithm: str) -> Tensor:
    return _run("conv_transpose2d", api.conv_transpose2d_grad_weight, grad, x,
                tuple(weight_shape), tuple(stride), _sides(padding), tuple(output_padding),
                groups, tuple(dilation), algorithm)


@_conv_transpose2d_grad_weight.register_fake
def _(grad, x, weight_shape, stride, padding, output_padding, groups, dilation, algorithm):
    return grad.new_empty(weight_shape)


def _conv_transpose2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _conv_transpose2d_grad_input(grad, weight, list(x.shape), *ctx.geometry)
    if needs[1]:
        grad_w = _conv_transpose2d_grad_weight(grad, x, list(weight.shape), *ctx.geometry)
    if ctx.has_bias and needs[2]:
        grad_b = _bias_grad(grad, x.dim() == 4)
    return grad_x, grad_w, grad_b, None, None, None, None, None, None


_conv_transpose2d.register_autograd(_conv_transpose2d_backward, setup_context=_conv2d_setup)


# --------------------------------------------------------------------------
# Custom ops: pooling
# --------------------------------------------------------------------------

@torch.library.custom_op("fastconv::max_pool2d", mutates_args=())
def _max_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    values, indices = _run("max_pool2d", api.max_pool2d, x, tuple(kernel_size), tuple(stride),
                           _sides(padding), tuple(dilation), ceil_mode, True)
    return values, indices


@_max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    out_hw = shapes.output_size(tuple(x.shape[-2:]), kernel_size, stride, padding, dilation,
                                ceil_mode)
    shape = tuple(x.shape[:-2]) + out_hw
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("fastconv::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(grad: Tensor, x: Tensor, kernel_size: List[int], stride: List[int],
                         padding: List[int], dilation: List[int], ceil_mode: bool) -> Tensor:
    return _run("max_pool2d", api.max_pool2d_backward, grad, x, tuple(kernel_size),
                tuple(stride), _sides(padding), tuple(dilation), ceil_mode)


@_max_pool2d_backward.register_fake
def _(grad, x, kernel_size, stride, padding, dilation, ceil_mode):
    return torch.empty_like(x)


def _max_pool2d_setup(ctx, inputs, output):
    x, *ctx.geometry = inputs
    ctx.save_for_backward(x)
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_backward_formula(ctx, grad, grad_indices):
    (x,) = ctx.saved_tensors
    return _max_pool2d_backward(grad, x, *ctx.geometry), None, None, None, None, None


_max_pool2d.register_autograd(_max_pool2d_backward_formula, setup_context=_max_pool2d_setup)


@torch.library.custom_op("fastconv::avg_pool2d", mutates_args=())
def _avg_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                ceil_mode: bool, count_include_pad: bool,
                divisor_override: Optional[int]) -> Tensor:
    return _run("avg_pool2d", api.avg_pool2d, x, tuple(kernel_size), tuple(stride),
                _sides(padding), ceil_mode, count_include_pad, divisor_override)


@_avg_pool2d.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    out_hw = shapes.output_size(tuple(x.shape[-2:]), kernel_size, stride, padding, (1, 1),
                                ceil_mode)
    return x.new_empty(tuple(x.shape[:-2]) + out_hw)


@torch.library.custom_op("fastconv::avg_pool2d_backward", mutates_args=())
def _avg_pool2d_backward(grad: Tensor, input_shape: List[int], kernel_size: List[int],
                         stride: List[int], padding: List[int], ceil_mode: bool,
                         count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    return _run("avg_pool2d", api.avg_pool2d_backward, grad, tuple(input_shape),
                tuple(kernel_size), tuple(stride), _sides(padding), ceil_mode,
                count_include_pad, divisor_override)


@_avg_pool2d_backward.register_fake
def _(grad, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override):
    return grad.new_empty(input_shape)


def _avg_pool2d_setup(ctx, inputs, output):
    x, *ctx.geometry = inputs
    ctx.input_shape = list(x.shape)


def _avg_pool2d_backward_formula(ctx, grad):
    return (_avg_pool2d_backward(grad, ctx.input_shape, *ctx.geometry),
            None, None, None, None, None, None)


_avg_pool2d.register_autograd(_avg_pool2d_backward_formula, setup_context=_avg_pool2d_setup)


# --------------------------------------------------------------------------
# The functions (torch.nn.functional's signatures): check and normalise, call the ops
# --------------------------------------------------------------------------

def _weight_4d(weight, layout):
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D {layout}, got shape {list(weight.shape)}")


def _check_scalars(function, groups, algorithm):
    """What the ops' schemas need (int groups, str algorithm), as torch-style errors."""
    if not shapes._is_int(groups):
        raise FastconvTypeError(f"{function}(): groups must be an int, got {groups!r}")
    if not isinstance(algorithm, str):
        raise FastconvTypeError(f"{function}(): algorithm must be a str, got {algorithm!r}")
    return int(groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto"):
    """`torch.nn.functional.conv2d` on fastconv's kernels, differentiable.

    ``padding`` may also be ``((top, bottom), (left, right))``; ``algorithm`` is
    fastconv's (``"auto"``, ``"direct"``, ``"im2col"``, ``"winograd"``), for the
    forward and both gradients.

    >>> import torch, fastconv.torch as fct
    >>> x = torch.ones(1, 1, 3, 3, requires_grad=True)
    >>> fct.conv2d(x, torch.ones(1, 1, 2, 2)).sum().backward()
    >>> x.grad[0, 0]
    tensor([[1., 2., 1.],
            [2., 4., 2.],
            [1., 2., 1.]])
    """
    for value, argument in ((input, "input"), (weight, "weight")):
        _check_tensor(value, argument, "conv2d")
    if bias is not None:
        _check_tensor(bias, "bias", "conv2d")
    groups = _check_scalars("conv2d", groups, algorithm)
    with _torch_errors("conv2d"):
        _is_batched(input, "conv2d")
        _weight_4d(weight, "(C_out, C_in // groups, kH, kW)")
        stride, padding, dilation, _ = shapes.conv_geometry(
            tuple(input.shape[-2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    return _conv2d(input, weight, bias, list(stride), list(padding), list(dilation), groups,
                   algorithm)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, *, algorithm="auto"):
    """`torch.nn.functional.conv_transpose2d` on fastconv's kernels, differentiable.

    >>> import torch, fastconv.torch as fct
    >>> fct.conv_transpose2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), stride=2).shape
    torch.Size([1, 1, 4, 4])
    """
    for value, argument in ((input, "input"), (weight, "weight")):
        _check_tensor(value, argument, "conv_transpose2d")
    if bias is not None:
        _check_tensor(bias, "bias", "conv_transpose2d")
    groups = _check_scalars("conv_transpose2d", groups, algorithm)
    with _torch_errors("conv_transpose2d"):
        _is_batched(input, "conv_transpose2d")
        _weight_4d(weight, "(C_in, C_out // groups, kH, kW)")
        stride, padding, output_padding, dilation, *_ = shapes.conv_transpose_geometry(
            tuple(input.shape[-2:]), tuple(weight.shape[2:]), stride, padding,
            output_padding, dilation)
    return _conv_transpose2d(input, weight, bias, list(stride), list(padding),
                             list(output_padding), groups, list(dilation), algorithm)


def _pool_arguments(function, input, kernel_size, stride, padding, dilation, ceil_mode):
    _check_tensor(input, "input", function)
    with _torch_errors(function):
        if input.dim() not in (3, 4):
            raise ValueError(f"Expected 3D or 4D (batch mode) tensor for {function}, got "
                             f"input of size: {list(input.shape)}")
        if stride is not None and isinstance(stride, (tuple, list)) and len(stride) == 0:
            stride = None  # torch's "stride=[]": the kernel size
        kernel_size, stride, padding, dilation, _ = shapes.pool_geometry(
            tuple(input.shape[-2:]), kernel_size, stride, padding, dilation, ceil_mode)
        return list(kernel_size), list(stride), list(padding), list(dilation), bool(ceil_mode)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """`torch.nn.functional.max_pool2d` on fastconv's kernels, differentiable.

    >>> import torch, fastconv.torch as fct
    >>> fct.max_pool2d(torch.arange(16.).reshape(1, 1, 4, 4), 2)
    tensor([[[[ 5.,  7.],
              [13., 15.]]]])
    """
    arguments = _pool_arguments("max_pool2d", input, kernel_size, stride, padding, dilation,
                                ceil_mode)
    values, indices = _max_pool2d(input, *arguments)
    return (values, indices) if return_indices else values


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """`torch.nn.functional.avg_pool2d` on fastconv's kernels, differentiable.

    >>> import torch, fastconv.torch as fct
    >>> fct.avg_pool2d(torch.arange(16.).reshape(1, 1, 4, 4), 2)
    tensor([[[[ 2.5000,  4.5000],
              [10.5000, 12.5000]]]])
    """
    kernel_size, stride, padding, _, ceil_mode = _pool_arguments(
        "avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise FastconvTypeError(
            f"avg_pool2d(): count_include_pad must be a bool, got {count_include_pad!r}")
    if divisor_override is not None and not shapes._is_int(divisor_override):
        raise FastconvTypeError(
            f"avg_pool2d(): divisor_override must be an int or None, got {divisor_override!r}")
    return _avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                       bool(count_include_pad), divisor_override)


# --------------------------------------------------------------------------
# Modules: drop-in subclasses of the torch.nn ones
# --------------------------------------------------------------------------

_FLOATS = (torch.float32, torch.float64)


def _conv_unsupported(module):
    """Why fastconv cannot serve this convolution module, or None."""
    if module.padding_mode != "zeros":
        return (f"padding_mode={module.padding_mode!r}: fastconv pads with zeros only "
                "(the module stays torch's)")
    weight = module.weight
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        return "its parameters are not initialised yet (a lazy module)"
    if weight.dtype not in _FLOATS:
        return f"dtype {weight.dtype}: fastconv computes in float32 and float64"
    if weight.device.type not in ("cpu", "cuda"):
        return f"device {weight.device}: fastconv runs on CPU and CUDA tensors"
    return None


class Conv2d(torch.nn.Conv2d):
    """`torch.nn.Conv2d` on fastconv's kernels: the same constructor, parameters and
    state_dict keys. ``algorithm`` (an attribute, default ``"auto"``) is fastconv's.
    padding_mode must be ``"zeros"`` (ValueError otherwise).

    >>> import torch, fastconv.torch as fct
    >>> conv = fct.Conv2d(3, 4, 3, padding="same")
    >>> list(conv.state_dict())
    ['weight', 'bias']
    >>> conv(torch.ones(1, 3, 5, 5)).shape
    torch.Size([1, 4, 5, 5])
    """

    algorithm = "auto"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        reason = _conv_unsupported(self)
        if reason is not None:
            raise ValueError(f"fastconv.torch.Conv2d cannot serve this layer: {reason}; "
                             "use torch.nn.Conv2d")

    def _conv_forward(self, input, weight, bias):
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation,
                      self.groups, algorithm=self.algorithm)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """`torch.nn.ConvTranspose2d` on fastconv's kernels (``forward(input, output_size=None)``
    included): the same constructor, parameters and state_dict keys.

    >>> import torch, fastconv.torch as fct
    >>> up = fct.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    >>> up(torch.ones(1, 4, 5, 5), output_size=[10, 10]).shape
    torch.Size([1, 2, 10, 10])
    """

    algorithm = "auto"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        reason = _conv_unsupported(self)
        if reason is not None:
            raise ValueError(f"fastconv.torch.ConvTranspose2d cannot serve this layer: "
                             f"{reason}; use torch.nn.ConvTranspose2d")

    def forward(self, input, output_size=None):
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation,
                                algorithm=self.algorithm)


class MaxPool2d(torch.nn.MaxPool2d):
    """`torch.nn.MaxPool2d` on fastconv's kernels (return_indices included)."""

    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """`torch.nn.AvgPool2d` on fastconv's kernels (count_include_pad, divisor_override)."""

    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


_REPLACEMENTS = {torch.nn.Conv2d: Conv2d, torch.nn.ConvTranspose2d: ConvTranspose2d,
                 torch.nn.MaxPool2d: MaxPool2d, torch.nn.AvgPool2d: AvgPool2d}
# torch modules of the families fastconv serves in part: listed by `unconverted`
_RELATED = (torch.nn.modules.conv._ConvNd, torch.nn.modules.pooling._MaxPoolNd,
            torch.nn.modules.pooling._AvgPoolNd, torch.nn.modules.pooling._AdaptiveAvgPoolNd,
            torch.nn.modules.pooling._AdaptiveMaxPoolNd, torch.nn.modules.pooling._LPPoolNd)

UNCONVERTED_ATTRIBUTE = "fastconv_unconverted"


def _why_not(module):
    """None if `convert` can replace module, else the reason it stays torch's."""
    kind = type(module)
    if kind in _REPLACEMENTS:
        if kind in (torch.nn.Conv2d, torch.nn.ConvTranspose2d):
            return _conv_unsupported(module)
        return None
    for base, _ in _REPLACEMENTS.items():
        if isinstance(module, base):
            if isinstance(module, tuple(_REPLACEMENTS.values())):
                return None  # already fastconv's
            return (f"{kind.__name__} subclasses torch.nn.{base.__name__}; its forward may "
                    "differ, so it is left as it is")
    return f"fastconv has no {kind.__name__}"


def convert(model):
    """Replace, in place, every module of `model` (itself included) that fastconv can
    serve: torch.nn.Conv2d, ConvTranspose2d, MaxPool2d and AvgPool2d become this module's
    subclasses. The module objects stay the same (their class changes), so parameters,
    buffers, hooks, state_dict keys and optimisers holding the parameters are unaffected.
    Modules that stay torch's get a ``fastconv_unconverted`` attribute with the reason;
    `unconverted(model)` lists them. Returns `model`.

    >>> import torch, fastconv.torch as fct
    >>> m = fct.convert(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding_mode="reflect")))
    >>> fct.unconverted(m)
    [('0', 'Conv2d', "padding_mode='reflect': fastconv pads with zeros only (the module stays torch's)")]
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for _, module in model.named_modules():
        if type(module) in _REPLACEMENTS.values() or not isinstance(module, _RELATED):
            continue
        reason = _why_not(module)
        if reason is None:
            module.__class__ = _REPLACEMENTS[type(module)]
            if hasattr(module, UNCONVERTED_ATTRIBUTE):
                delattr(module, UNCONVERTED_ATTRIBUTE)
        else:
            setattr(module, UNCONVERTED_ATTRIBUTE, reason)
    return model


def unconverted(model) -> List[Tuple[str, str, str]]:
    """[(name, torch class name, reason)] for the convolution and pooling modules of
    `model` that run on torch's kernels (after `convert`, or why `convert` would leave
    them). The root module's name is ``""``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    result = []
    for name, module in model.named_modules():
        if isinstance(module, _RELATED) and type(module) not in _REPLACEMENTS.values():
            reason = getattr(module, UNCONVERTED_ATTRIBUTE, None) or _why_not(module)
            if reason is None:
                reason = "not converted yet: call fastconv.torch.convert(model)"
            result.append((name, type(module).__name__, reason))
    return result
