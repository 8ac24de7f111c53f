"""The one place that normalises geometry arguments and computes output sizes.

Every public function, layer and backend takes its stride, padding, dilation,
kernel size and output size from here, so the rules (PyTorch's) live once.

Normalised forms:
    pair      -> (h, w) of Python ints
    padding   -> (top, bottom, left, right) of Python ints

Argument forms accepted, as `torch.nn.functional` accepts them: an int, an (h, w)
pair, or a one-element tuple or list, which applies to both dimensions
(``stride=(2,)`` is ``stride=2``); a pooling ``stride`` of None, ``()`` or ``[]``
is the kernel size.
"""
from __future__ import annotations

import numbers

import numpy as np

_INT64_MAX = 2**63 - 1

# The largest stride, dilation, padding or kernel size accepted (PyTorch keeps these
# in C ints too). Products and sums of a few such values stay far inside int64, the
# kernels' index type, so no index arithmetic can wrap around.
GEOMETRY_MAX = 2**31 - 1


def _is_int(value) -> bool:
    # bool is an int subclass, but `stride=True` is always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value, name: str, minimum: int):
    if not _is_int(value):
        raise TypeError(
            f"{name} must be an int or a pair of ints, got {value!r} "
            f"of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if value > GEOMETRY_MAX:
        raise ValueError(f"{name} must be at most 2**31 - 1, got {value!r}")
    return int(value)


def pair(value, name: str, minimum: int = 1, one_for_both: bool = True) -> tuple[int, int]:
    """Normalise an int or an (h, w) pair to a pair of Python ints >= `minimum`.

    A one-element tuple or list applies to both dimensions, as in PyTorch
    (``one_for_both=False`` refuses it, where PyTorch does: adaptive pooling's size).

    >>> pair(2, "stride"), pair((2, 3), "stride"), pair([2], "stride")
    ((2, 2), (2, 3), (2, 2))
    """
    if isinstance(value, (tuple, list)):
        if len(value) == 1 and one_for_both:
            v = _check_int(value[0], name, minimum)
            return (v, v)
        if len(value) != 2:
            forms = "an int, a pair (h, w) or a one-element tuple" if one_for_both \
                else "an int or a pair (h, w)"
            raise ValueError(
                f"{name} must be {forms}, got {value!r} with {len(value)} entries")
        h, w = value
        return (_check_int(h, name, minimum), _check_int(w, name, minimum))
    v = _check_int(value, name, minimum)
    return (v, v)


def pool_stride(stride, kernel_size) -> tuple[int, int]:
    """A pooling stride: None, ``()`` or ``[]`` mean the kernel size (PyTorch's
    ``stride=None`` default, and what torch.nn.functional makes of an empty
    stride); otherwise as `pair`. `kernel_size` is already a pair.

    >>> pool_stride((), (3, 2)), pool_stride((1,), (3, 2))
    ((3, 2), (1, 1))
    """
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return tuple(kernel_size)
    return pair(stride, "stride")


def divisor(divisor_override) -> int:
    """avg_pool2d's ``divisor_override``: None (0: no override) or a nonzero int,
    negative allowed, as in PyTorch; at most 2**31 - 1 in magnitude.

    >>> divisor(None), divisor(-3)
    (0, -3)
    """
    if divisor_override is None:
        return 0
    if not _is_int(divisor_override):
        raise TypeError(
            f"divisor_override must be an int or None, got {divisor_override!r} "
            f"of type {type(divisor_override).__name__}")
    if divisor_override == 0:
        raise ValueError("divisor_override must not be zero (as in PyTorch), got 0")
    if abs(divisor_override) > GEOMETRY_MAX:
        raise ValueError(
            f"divisor_override must be at most 2**31 - 1 in magnitude, got {divisor_override!r}")
    return int(divisor_override)


def conv_padding(padding, kernel_size, dilation, stride) -> tuple[int, int, int, int]:
    """Normalise a convolution's `padding` to (top, bottom, left, right).

    Accepts an int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same".
    "same" needs stride 1; the total padding dilation*(k-1) is split with the
    odd extra row/column at the bottom/right, as PyTorch does.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' needs stride=1, got stride={stride!r} "
                    "(as in PyTorch; use explicit padding for strided layers)")
            total_h = dilation[0] * (kernel_size[0] - 1)
            total_w = dilation[1] * (kernel_size[1] - 1)
            return (total_h // 2, total_h - total_h // 2,
                    total_w // 2, total_w - total_w // 2)
        raise ValueError(
            f"padding must be an int, a pair, ((top, bottom), (left, right)), "
            f"'valid' or 'same', got {padding!r}")
    return _explicit_padding(padding)


def _explicit_padding(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, (tuple, list)) for p in padding):
        (top, bottom), (left, right) = (_padding_side(p) for p in padding)
        return (top, bottom, left, right)
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def _padding_side(side):
    if len(side) != 2:
        raise ValueError(
            f"padding must be ((top, bottom), (left, right)), got a side {side!r} "
            f"with {len(side)} entries")
    return pair(tuple(side), "padding", minimum=0)


def pool_padding(padding, kernel_size) -> tuple[int, int, int, int]:
    """Normalise a pooling `padding` to (top, bottom, left, right).

    Like PyTorch, each side may be at most half the kernel (so that no window
    lies wholly in the padding). "same" is not accepted, as in PyTorch.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        raise ValueError(
            f"padding must be an int, a pair, ((top, bottom), (left, right)) or "
            f"'valid' for pooling, got {padding!r}")
    top, bottom, left, right = _explicit_padding(padding)
    kh, kw = kernel_size
    if max(top, bottom) > kh // 2 or max(left, right) > kw // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size for pooling, got "
            f"padding={padding!r} with kernel_size={kernel_size!r}")
    return (top, bottom, left, right)


def _output_length(size, pad_before, pad_after, kernel, stride, dilation,
                   ceil_mode, name) -> int:
    span = dilation * (kernel - 1) + 1
    padded = size + pad_before + pad_after
    numerator = padded - span
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    # PyTorch's rule: in ceil mode the last window must start inside the
    # input or the left/top padding, not in the right/bottom padding.
    if ceil_mode and (out - 1) * stride >= size + pad_before:
        out -= 1
    # In ceil mode a window may reach past the padded input, even when the kernel is
    # larger than it (PyTorch pools 1x5 with 2x2/2 into 1x3): only no window is an error.
    if out < 1:
        raise ValueError(
            f"{name}: the (dilated) kernel extent {span} is larger than the padded "
            f"input size {padded} (input {size} + padding {pad_before}+{pad_after})")
    return out


def output_size(in_hw, kernel_size, stride, padding, dilation=(1, 1),
                ceil_mode=False, name="input") -> tuple[int, int]:
    """Output (height, width) of a convolution or pooling window sweep.

    ``floor((H + top + bottom - dilation*(kH-1) - 1) / stride) + 1``, rounded up
    instead in ceil mode (with PyTorch's last-window rule).

    >>> output_size((5, 5), (3, 3), (1, 1), (1, 1, 1, 1))
    (5, 5)
    """
    top, bottom, left, right = padding
    out_h = _output_length(in_hw[0], top, bottom, kernel_size[0], stride[0],
                           dilation[0], ceil_mode, name)
    out_w = _output_length(in_hw[1], left, right, kernel_size[1], stride[1],
                           dilation[1], ceil_mode, name)
    return out_h, out_w


def taps_in_padding(size, out_size, kernel, pad_before, stride, dilation):
    """Along one axis: in_padding[p, o] tells whether tap p of output o's window lies
    in the padding (outside the input's [0, size)).

    >>> taps_in_padding(3, 3, 3, 1, 1, 1).astype(int)
    array([[1, 0, 0],
           [0, 0, 0],
           [0, 0, 1]])
    """
    position = (np.arange(out_size)[None, :] * stride - pad_before
                + np.arange(kernel)[:, None] * dilation)
    return (position < 0) | (position >= size)


# Index arithmetic the kernels share, in plain Python: each backend compiles these
# (numba.njit in cpu/_common.py, cuda.jit(device=True) in cuda/_kernels.py).

def valid_range(offset, stride, size, count):
    """[j0, j1): the j in [0, count) with 0 <= j*stride + offset < size (the outputs
    whose tap at `offset` reads the input; or the taps of a window inside it).

    >>> valid_range(-1, 1, 5, 5)        # a tap one column left: outputs 1..4 read inside
    (1, 5)
    """
    j0 = -(offset // stride)            # ceil(-offset / stride)
    if j0 < 0:
        j0 = 0
    j1 = (size - 1 - offset) // stride + 1
    if j1 > count:
        j1 = count
    if j1 < j0:
        j1 = j0
    return j0, j1


def output_of_tap(i, tap, pad, dil, stride, out_size):
    """Along one axis: the output whose window's tap `tap` reads input `i`, or -1
    (gather-style backward kernels invert i = o*stride - pad + tap*dil with it).

    >>> output_of_tap(3, 0, 1, 1, 2, 4), output_of_tap(2, 0, 1, 1, 2, 4)
    (2, -1)
    """
    t = i + pad - tap * dil
    if t < 0 or t % stride != 0:
        return -1
    o = t // stride
    return o if o < out_size else -1


def check_element_count(shape, name: str):
    """Refuse shapes whose element count would overflow int64 indexing."""
    count = 1
    for s in shape:
        count *= int(s)
    if count > _INT64_MAX // 8:
        raise ValueError(
            f"{name} would have shape {tuple(shape)} with {count} elements, "
            "too large to index with int64")
    return count


def conv_geometry(in_hw, weight_hw, stride, padding, dilation):
    """Normalise conv arguments. Returns (stride, padding4, dilation, (out_h, out_w))."""
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    padding = conv_padding(padding, weight_hw, dilation, stride)
    out_hw = output_size(in_hw, weight_hw, stride, padding, dilation, name="weight")
    return stride, padding, dilation, out_hw


def pool_geometry(in_hw, kernel_size, stride, padding, dilation, ceil_mode):
    """Normalise pooling arguments.

    Returns (kernel_size, stride, padding4, dilation, (out_h, out_w)).
    """
    kernel_size = pair(kernel_size, "kernel_size")
    if kernel_size[0] * kernel_size[1] > GEOMETRY_MAX:
        # the max-pool kernels keep a window position in an int32
        raise ValueError(
            f"kernel_size must hold at most 2**31 - 1 elements, got {kernel_size!r}")
    stride = pool_stride(stride, kernel_size)
    dilation = pair(dilation, "dilation")
    if not isinstance(ceil_mode, (bool, numbers.Integral)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    padding = pool_padding(padding, kernel_size)
    out_hw = output_size(in_hw, kernel_size, stride, padding, dilation,
                         ceil_mode=bool(ceil_mode), name="kernel_size")
    return kernel_size, stride, padding, dilation, out_hw


def conv_flops(x_shape, w_shape, out_hw, groups=1) -> int:
    """Multiply-adds x2 of a direct convolution (the usual GFLOP/s convention)."""
    n = x_shape[0]
    k, c_per_group, kh, kw = w_shape
    return 2 * n * k * out_hw[0] * out_hw[1] * c_per_group * kh * kw


__all__ = ["pair", "pool_stride", "divisor", "conv_padding", "pool_padding", "output_size",
           "conv_geometry",
           "pool_geometry", "check_element_count", "conv_flops"]



def conv_transpose_geometry(in_hw, weight_hw, stride, padding, output_padding, dilation):
    """Normalise `conv_transpose2d` arguments and map them onto the conv2d it transposes.

    Output size (PyTorch's): ``(H - 1)*stride - top - bottom + dilation*(kH - 1)
    + output_padding + 1``; each output_padding must be smaller than its stride or its
    dilation. The transposed convolution is the input gradient of the conv2d with padding
    `conv_pad` whose input is `conv_in_hw` and whose output is ``in_hw``: the bottom/right
    padding only sets that conv2d's output size, so it is chosen to give exactly ``in_hw``;
    where output_padding >= stride, `conv_in_hw` stops short of `out_hw` (the rows and
    columns past it receive no input and are zero).

    Returns (stride, padding4, output_padding, dilation, out_hw, conv_pad, conv_in_hw).

    >>> conv_transpose_geometry((4, 4), (3, 3), 2, 1, 1, 1)[4]
    (8, 8)
    """
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    if isinstance(padding, str):
        raise ValueError(
            f"padding must be an int, a pair or ((top, bottom), (left, right)) for a "
            f"transposed convolution, got {padding!r} (as in PyTorch)")
    padding = conv_padding(padding, weight_hw, dilation, stride)
    output_padding = pair(output_padding, "output_padding", minimum=0)
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"output_padding must be smaller than either stride or dilation, got "
            f"output_padding={output_padding} with stride={stride} and dilation={dilation}")
    out_hw, conv_pad, conv_in_hw = [], [], []
    for axis in range(2):
        size, kernel, s, d, op = (in_hw[axis], weight_hw[axis], stride[axis],
                                  dilation[axis], output_padding[axis])
        before, after = padding[2 * axis], padding[2 * axis + 1]
        out = (size - 1) * s - before - after + d * (kernel - 1) + op + 1
        if out < 1:
            raise ValueError(
                f"the transposed convolution's output would have size {out} along "
                f"{'HW'[axis]} (input {size}, kernel {kernel}, stride {s}, dilation {d}, "
                f"padding {before}+{after}, output_padding {op}); it must be >= 1")
        # conv2d's output is floor((in + before + after' - d*(k-1) - 1) / s) + 1 == size
        # when 0 <= op + after' - after < s
        conv_after = after if op < s else after - op + s - 1
        missing = max(0, -conv_after)
        out_hw.append(out)
        conv_pad.append((before, max(0, conv_after)))
        conv_in_hw.append(out - missing)
    return (stride, padding, output_padding, dilation, tuple(out_hw),
            (conv_pad[0][0], conv_pad[0][1], conv_pad[1][0], conv_pad[1][1]),
            tuple(conv_in_hw))


__all__.append("conv_transpose_geometry")
