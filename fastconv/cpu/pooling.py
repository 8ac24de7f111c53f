"""Max and average pooling kernels (PyTorch's semantics), parallel over (n, c) planes.

Backend contract: docs/internals.md. Each kernel walks an output row at a time:
for every kernel offset the in-bounds output columns are computed once, so the
innermost loop runs over output columns with no bounds checks (unit stride in
the input for stride 1). Padding is never materialised (it is -inf for max
pooling, so it never wins; average pooling applies PyTorch's divisor rules).
Average pooling first sums a window's input rows into one row (contiguous vector
passes), then makes kW strided passes over that row.

Max pooling: a NaN wins (the last NaN of a window, as PyTorch); among equal
maxima the first in row-major window order wins (strictly-greater updates in
(p, q) order). Backward recomputes that argmax from x and scatter-adds
grad_out serially within each plane: deterministic, race-free, and
overlapping windows accumulate.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._common import HELPER, KERNEL, readonly, valid_range


@numba.njit(**HELPER)
def _column_taps(kw, dw, pl, sw, width, out_w):
    """[q0, q1): the kernel columns q whose offset q*dw - pl reads the input for some
    output column; the others read only padding. A kernel far wider than the input
    then costs its overlap, not its width (2**31 - 1 wide: 11 s before)."""
    reach = (out_w - 1) * sw
    return valid_range(reach - pl, dw, width + reach, kw)


@numba.njit(**HELPER)
def _max_row(plane, i, best, pos, idx, kh, kw, sh, sw, pt, pl, dh, dw):
    """best[j], idx[j] = the winner of output (i, j)'s window and its flat index r*W + s.

    The sweep keeps the winner's window position p*kw + q in `pos` (int32: the
    loop vectorises with float32 values at full width) and converts it to the
    int64 flat index once per output at the end. With `idx` None (the caller wants
    no indices; numba compiles that case apart) only the values are swept."""
    height, width = plane.shape
    out_w = best.shape[0]
    for j in range(out_w):
        best[j] = -np.inf
        pos[j] = -1
    p0, p1 = valid_range(i * sh - pt, dh, height, kh)     # the rows inside the input
    q0, q1 = _column_taps(kw, dw, pl, sw, width, out_w)
    for p in range(p0, p1):
        xrow = plane[i * sh - pt + p * dh]
        for q in range(q0, q1):
            off = q * dw - pl
            j0, j1 = valid_range(off, sw, width, out_w)
            if idx is None:
                for j in range(j0, j1):
                    v = xrow[j * sw + off]
                    b = best[j]
                    best[j] = v if (v > b) | (v != v) else b    # same values as below
                continue
            here = np.int32(p * kw + q)
            for j in range(j0, j1):
                v = xrow[j * sw + off]
                b = best[j]
                ps = pos[j]
                # strictly greater keeps the first maximum; a NaN replaces anything
                # and then stays; the first in-bounds element always enters.
                # Unconditional stores of selects: the loop vectorises.
                take = (v > b) | (v != v) | (ps < 0)
                best[j] = v if take else b
                pos[j] = here if take else ps
    if idx is None:
        return
    for j in range(out_w):
        if pos[j] < 0:
            # A window wholly in the padding (possible with dilation): -inf and
            # no winner, index -1 (PyTorch reports a position outside the window);
            # backward sends its gradient nowhere.
            idx[j] = -1
            continue
        p = pos[j] // kw
        q = pos[j] - p * kw
        idx[j] = (i * sh - pt + p * dh) * width + j * sw - pl + q * dw


@numba.njit(**KERNEL)
def _max_forward(x, values, indices, kh, kw, sh, sw, pt, pl, dh, dw):
    n_img, c_in = x.shape[0], x.shape[1]
    out_h, out_w = values.shape[2], values.shape[3]
    for t in prange(n_img * c_in):
        c = t % c_in
        n = t // c_in
        plane = x[n, c]
        pos = np.empty(out_w, dtype=np.int32)
        for i in range(out_h):
            if indices is None:
                _max_row(plane, i, values[n, c, i], pos, None, kh, kw, sh, sw, pt, pl, dh, dw)
            else:
                _max_row(plane, i, values[n, c, i], pos, indices[n, c, i],
                         kh, kw, sh, sw, pt, pl, dh, dw)


@numba.njit(**KERNEL)
def _max_backward(go, x, gi, kh, kw, sh, sw, pt, pl, dh, dw):
    n_img, c_in, height, width = x.shape
    out_h, out_w = go.shape[2], go.shape[3]
    for t in prange(n_img * c_in):
        c = t % c_in
        n = t // c_in
        plane = x[n, c]
        flat = gi[n, c].reshape(height * width)
        for s in range(height * width):
            flat[s] = 0
        best = np.empty(out_w, dtype=x.dtype)
        pos = np.empty(out_w, dtype=np.int32)
        idx = np.empty(out_w, dtype=np.int64)
        for i in range(out_h):
            _max_row(plane, i, best, pos, idx, kh, kw, sh, sw, pt, pl, dh, dw)
            grow = go[n, c, i]
            for j in range(out_w):
                if idx[j] >= 0:
                    flat[idx[j]] += grow[j]


@numba.njit(**HELPER)
def _avg_columns(width, out_w, kw, sw, pl, pr):
    """PyTorch's per-column window sizes: (with padding, clipped to the input)."""
    pool_w = np.empty(out_w, dtype=np.int64)
    clip_w = np.empty(out_w, dtype=np.int64)
    for j in range(out_w):
        wstart = j * sw - pl
        wend = min(wstart + kw, width + pr)
        pool_w[j] = wend - wstart
        clip_w[j] = min(wend, width) - max(wstart, 0)
    return pool_w, clip_w


@numba.njit(**HELPER)
def _avg_rows(i, height, kh, sh, pt, pb):
    """(h0, h1, pool_h): the clipped input rows of output row i and the padded window height."""
    hstart = i * sh - pt
    hend = min(hstart + kh, height + pb)
    return max(hstart, 0), min(hend, height), hend - hstart


@numba.njit(**HELPER)
def _divisor(divisor, count_include_pad, pool_h, pool_w, clip_h, clip_w):
    if divisor != 0:
        return divisor
    if count_include_pad:
        return pool_h * pool_w
    return clip_h * clip_w


@numba.njit(**KERNEL)
def _avg_forward(x, out, kh, kw, sh, sw, pt, pb, pl, pr, count_include_pad, divisor):
    n_img, c_in, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    pool_w, clip_w = _avg_columns(width, out_w, kw, sw, pl, pr)
    q0, q1 = _column_taps(kw, 1, pl, sw, width, out_w)
    for t in prange(n_img * c_in):
        c = t % c_in
        n = t // c_in
        plane = x[n, c]
        column_sums = np.empty(width, dtype=x.dtype)
        for i in range(out_h):
            row = out[n, c, i]
            for j in range(out_w):
                row[j] = 0
            h0, h1, pool_h = _avg_rows(i, height, kh, sh, pt, pb)
            # the window's rows summed first (contiguous vector passes), then kw
            # strided passes over that sum instead of kh * kw over the input rows
            for col in range(width):
                column_sums[col] = 0
            for r in range(h0, h1):
                xrow = plane[r]
                for col in range(width):
                    column_sums[col] += xrow[col]
            for q in range(q0, q1):
                off = q - pl
                j0, j1 = valid_range(off, sw, width, out_w)
                for j in range(j0, j1):
                    row[j] += column_sums[j * sw + off]
            for j in range(out_w):
                row[j] /= _divisor(divisor, count_include_pad, pool_h, pool_w[j],
                                   h1 - h0, clip_w[j])


@numba.njit(**KERNEL)
def _avg_backward(go, gi, kh, kw, sh, sw, pt, pb, pl, pr, count_include_pad, divisor):
    n_img, c_in, height, width = gi.shape
    out_h, out_w = go.shape[2], go.shape[3]
    pool_w, clip_w = _avg_columns(width, out_w, kw, sw, pl, pr)
    q0, q1 = _column_taps(kw, 1, pl, sw, width, out_w)
    for t in prange(n_img * c_in):
        c = t % c_in
        n = t // c_in
        plane = gi[n, c]
        for r in range(height):
            for s in range(width):
                plane[r, s] = 0
        share = np.empty(out_w, dtype=gi.dtype)
        for i in range(out_h):
            h0, h1, pool_h = _avg_rows(i, height, kh, sh, pt, pb)
            grow = go[n, c, i]
            for j in range(out_w):
                share[j] = grow[j] / _divisor(divisor, count_include_pad, pool_h, pool_w[j],
                                              h1 - h0, clip_w[j])
            for r in range(h0, h1):
                girow = plane[r]
                for q in range(q0, q1):
                    off = q - pl
                    j0, j1 = valid_range(off, sw, width, out_w)
                    for j in range(j0, j1):
                        girow[j * sw + off] += share[j]


def max_pool2d(x, kernel_size, stride, padding, dilation, out_hw, return_indices=True):
    """(values, int64 indices h*W + w per plane, or None unless `return_indices`); see
    the module docstring. Without indices the kernel sweeps only the values and
    writes a third of the memory."""
    shape = tuple(x.shape[:2]) + tuple(out_hw)
    values = np.empty(shape, dtype=x.dtype)
    indices = np.empty(shape, dtype=np.int64) if return_indices else None
    top, _, left, _ = padding
    _max_forward(readonly(x), values, indices, kernel_size[0], kernel_size[1], stride[0],
                 stride[1], top, left, dilation[0], dilation[1])
    return values, indices


def max_pool2d_backward(grad_out, x, kernel_size, stride, padding, dilation):
    """Each output's gradient added to its window's winner (recomputed from x)."""
    gi = np.empty(x.shape, dtype=x.dtype)
    top, _, left, _ = padding
    _max_backward(readonly(grad_out), readonly(x), gi, kernel_size[0], kernel_size[1],
                  stride[0], stride[1], top, left, dilation[0], dilation[1])
    return gi


def avg_pool2d(x, kernel_size, stride, padding, out_hw, count_include_pad, divisor):
    """Average pooling with PyTorch's divisor rules (`divisor` 0: none given)."""
    out = np.empty(tuple(x.shape[:2]) + tuple(out_hw), dtype=x.dtype)
    _avg_forward(readonly(x), out, kernel_size[0], kernel_size[1], stride[0], stride[1],
                 *padding, bool(count_include_pad), int(divisor))
    return out


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding,
                        count_include_pad, divisor):
    """Each output's gradient / its divisor, spread over its clipped window."""
    gi = np.empty(tuple(input_shape), dtype=grad_out.dtype)
    _avg_backward(readonly(grad_out), gi, kernel_size[0], kernel_size[1], stride[0],
                  stride[1], *padding, bool(count_include_pad), int(divisor))
    return gi
