"""Max and average pooling on the GPU, forward and backward (numba.cuda kernels).

Backend contract: docs/internals.md (normalised geometry, C-contiguous numba device
arrays in, new numba device arrays out). Rules, as PyTorch and fastconv.reference:

- max: padding counts as -inf; a NaN wins (the last NaN in row-major window order, as PyTorch);
  among equal maxima the first in row-major window order wins; an all -inf window
  reports its first in-bounds element. Indices are flat ``h * W + w`` per plane, int64.
- avg: ``hstart = oh*sh - top; hend = min(hstart + kh, H + bottom)``, ``pool`` is the
  window inside the padded input, then the window is clipped to the input; the divisor
  is ``divisor`` if non-zero, else ``pool`` if ``count_include_pad`` else the clipped size.

Forward kernels: one thread per output element (a grid-stride loop over the flat
(plane, oh, ow) index, int64). Backward kernels **gather**: one thread per input
pixel sums, in a fixed (p, q) order, the gradient of every window that covers it
(for max: whose winner it is, from the indices of a forward pass). No atomics, so
results are deterministic. See docs/cuda.md.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import _kernels
from ._kernels import (kernel_factory, output_of_tap, split_index, stream_or_default, u64,
                       valid_range)


@kernel_factory
def _make_max_forward(dtype_name: str, write_values: bool, write_indices: bool):
    cast = np.dtype(dtype_name).type
    ninf = cast(-np.inf)

    @cuda.jit(cache=True)
    def max_forward(x, values, indices, kh, kw, sh, sw, pt, pl, dh, dw):
        # x: (planes, H, W); values/indices: (planes, out_h, out_w) (without
        # write_indices, `indices` is `values` again and only gives the shape)
        planes, height, width = x.shape
        out_h, out_w = indices.shape[1], indices.shape[2]
        total = planes * out_h * out_w
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            plane, oh, ow = split_index(i, out_h, out_w)
            best = ninf
            best_index = -1
            p0, p1 = valid_range(oh * sh - pt, dh, height, kh)    # taps inside the input
            q0, q1 = valid_range(ow * sw - pl, dw, width, kw)
            for p in range(p0, p1):
                r = oh * sh - pt + p * dh
                for q in range(q0, q1):
                    c = ow * sw - pl + q * dw
                    v = x[u64(plane), u64(r), u64(c)]
                    # strictly greater keeps the first maximum; a NaN replaces
                    # anything (the last NaN wins, as PyTorch); the first valid element
                    # is taken in any case (all -inf windows).
                    if best_index < 0 or v > best or v != v:
                        best = v
                        best_index = r * width + c
            if write_values:
                values[u64(plane), u64(oh), u64(ow)] = best
            if write_indices:
                indices[u64(plane), u64(oh), u64(ow)] = best_index
            i += step

    return max_forward


@kernel_factory
def _make_max_backward(dtype_name: str):
    zero = np.dtype(dtype_name).type(0)

    @cuda.jit(cache=True)
    def max_backward(grad_out, indices, gx, kh, kw, sh, sw, pt, pl, dh, dw):
        # gather: gx[plane, r, c] = sum of grad_out over windows covering (r, c)
        # whose winner (from indices) is (r, c)
        planes, height, width = gx.shape
        out_h, out_w = grad_out.shape[1], grad_out.shape[2]
        total = planes * height * width
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            plane, r, c = split_index(i, height, width)
            me = r * width + c
            acc = zero
            # the taps p that some output's window reads (r) with: (out_h-1)*sh >=
            # r + pt - p*dh >= 0; output_of_tap then checks the stride
            p0, p1 = valid_range((out_h - 1) * sh - r - pt, dh, (out_h - 1) * sh + 1, kh)
            q0, q1 = valid_range((out_w - 1) * sw - c - pl, dw, (out_w - 1) * sw + 1, kw)
            for p in range(p0, p1):
                oh = output_of_tap(r, p, pt, dh, sh, out_h)
                if oh < 0:
                    continue
                for q in range(q0, q1):
                    ow = output_of_tap(c, q, pl, dw, sw, out_w)
                    if ow < 0:
                        continue
                    if indices[u64(plane), u64(oh), u64(ow)] == me:
                        acc += grad_out[u64(plane), u64(oh), u64(ow)]
            gx[u64(plane), u64(r), u64(c)] = acc
            i += step

    return max_backward


@cuda.jit(device=True)
def _avg_window(oh, ow, height, width, kh, kw, sh, sw, pt, pb, pl, pr,
                count_include_pad, divisor):
    """(hstart, hend, wstart, wend, divisor) of one output, PyTorch's rule."""
    hstart = oh * sh - pt
    wstart = ow * sw - pl
    hend = min(hstart + kh, height + pb)
    wend = min(wstart + kw, width + pr)
    pool = (hend - hstart) * (wend - wstart)
    hstart = max(hstart, 0)
    wstart = max(wstart, 0)
    hend = min(hend, height)
    wend = min(wend, width)
    if divisor != 0:
        div = divisor
    elif count_include_pad:
        div = pool
    else:
        div = (hend - hstart) * (wend - wstart)
    return hstart, hend, wstart, wend, div


@kernel_factory
def _make_avg_forward(dtype_name: str):
    cast = np.dtype(dtype_name).type
    zero = cast(0)

    @cuda.jit(cache=True)
    def avg_forward(x, out, kh, kw, sh, sw, pt, pb, pl, pr, count_include_pad, divisor):
        planes, height, width = x.shape
        out_h, out_w = out.shape[1], out.shape[2]
        total = planes * out_h * out_w
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            plane, oh, ow = split_index(i, out_h, out_w)
            h0, h1, w0, w1, div = _avg_window(oh, ow, height, width, kh, kw, sh, sw,
                                              pt, pb, pl, pr, count_include_pad, divisor)
            acc = zero
            for r in range(h0, h1):
                for c in range(w0, w1):
                    acc += x[u64(plane), u64(r), u64(c)]
            out[u64(plane), u64(oh), u64(ow)] = acc / cast(div)
            i += step

    return avg_forward


@kernel_factory
def _make_avg_backward(dtype_name: str):
    cast = np.dtype(dtype_name).type
    zero = cast(0)

    @cuda.jit(cache=True)
    def avg_backward(grad_out, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_include_pad,
                     divisor):
        # gather: gx[plane, r, c] = sum over windows covering (r, c) of grad/divisor
        planes, height, width = gx.shape
        out_h, out_w = grad_out.shape[1], grad_out.shape[2]
        total = planes * height * width
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            plane, r, c = split_index(i, height, width)
            acc = zero
            p0, p1 = valid_range((out_h - 1) * sh - r - pt, 1, (out_h - 1) * sh + 1, kh)
            q0, q1 = valid_range((out_w - 1) * sw - c - pl, 1, (out_w - 1) * sw + 1, kw)
            for p in range(p0, p1):      # as in max_backward
                oh = output_of_tap(r, p, pt, 1, sh, out_h)
                if oh < 0:
                    continue
                for q in range(q0, q1):
                    ow = output_of_tap(c, q, pl, 1, sw, out_w)
                    if ow < 0:
                        continue
                    _, _, _, _, div = _avg_window(oh, ow, height, width, kh, kw, sh, sw,
                                                  pt, pb, pl, pr, count_include_pad,
                                                  divisor)
                    acc += grad_out[u64(plane), u64(oh), u64(ow)] / cast(div)
            gx[u64(plane), u64(r), u64(c)] = acc
            i += step

    return avg_backward


def _planes(arr):
    n, c, h, w = arr.shape
    return arr.reshape(n * c, h, w)


def max_pool2d(x, kernel_size, stride, padding, dilation, out_hw, return_indices=True,
               stream=0):
    """-> (values (N, C, out_h, out_w), indices int64 of the same shape, or None unless
    `return_indices`: then no index array is allocated or written)."""
    stream = stream_or_default(stream)
    n, c = x.shape[0], x.shape[1]
    shape = (n, c) + tuple(out_hw)
    values = _kernels.empty(shape, x.dtype, stream)
    indices = _kernels.empty(shape, np.int64, stream) if return_indices else None
    _launch_max_forward(x, values, indices, kernel_size, stride, padding, dilation,
                        True, stream)
    return values, indices


def _launch_max_forward(x, values, indices, kernel_size, stride, padding, dilation,
                        write_values, stream):
    """indices None: values only."""
    write_indices = indices is not None
    target = indices if write_indices else values
    blocks, threads = _kernels.launch_1d(target.size)
    _make_max_forward(np.dtype(x.dtype).name, write_values, write_indices)[
        blocks, threads, stream](
        _planes(x), _planes(values), _planes(target), kernel_size[0], kernel_size[1],
        stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])


def max_pool2d_backward(grad_out, x, kernel_size, stride, padding, dilation, stream=0):
    """Gradient with respect to x: recomputes the winners, then gathers."""
    stream = stream_or_default(stream)
    indices = _kernels.empty(grad_out.shape, np.int64, stream)
    # values are not written (write_values=False): grad_out stands in for the array
    _launch_max_forward(x, grad_out, indices, kernel_size, stride, padding, dilation,
                        False, stream)
    gx = _kernels.empty(x.shape, x.dtype, stream)
    blocks, threads = _kernels.launch_1d(gx.size)
    _make_max_backward(np.dtype(x.dtype).name)[blocks, threads, stream](
        _planes(grad_out), _planes(indices), _planes(gx), kernel_size[0], kernel_size[1],
        stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])
    return gx


def avg_pool2d(x, kernel_size, stride, padding, out_hw, count_include_pad, divisor,
               stream=0):
    stream = stream_or_default(stream)
    n, c = x.shape[0], x.shape[1]
    out = _kernels.empty((n, c) + tuple(out_hw), x.dtype, stream)
    blocks, threads = _kernels.launch_1d(out.size)
    _make_avg_forward(np.dtype(x.dtype).name)[blocks, threads, stream](
        _planes(x), _planes(out), kernel_size[0], kernel_size[1], stride[0], stride[1],
        padding[0], padding[1], padding[2], padding[3], bool(count_include_pad),
        int(divisor))
    return out


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding,
                        count_include_pad, divisor, stream=0):
    stream = stream_or_default(stream)
    gx = _kernels.empty(tuple(input_shape), grad_out.dtype, stream)
    blocks, threads = _kernels.launch_1d(gx.size)
    _make_avg_backward(np.dtype(grad_out.dtype).name)[blocks, threads, stream](
        _planes(grad_out), _planes(gx), kernel_size[0], kernel_size[1], stride[0],
        stride[1], padding[0], padding[1], padding[2], padding[3], bool(count_include_pad),
        int(divisor))
    return gx


__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"]
