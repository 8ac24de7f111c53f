"""Direct convolution: loop-nest numba kernels (the simple baseline, no im2col).

Backend contract: docs/internals.md. Every kernel is generic in kernel size,
stride, padding (4 sides), dilation and groups. Padding is never materialised:
the in-bounds output columns of each kernel offset are computed once
(`valid_range`), so inner loops have no bounds checks.

Two loop orders, chosen by the number of channels per group:
- columns-inner (depthwise, small groups): the innermost loop runs over output
  columns (unit stride for stride 1), over blocks of 4 output channels;
- channels-inner (>= CHANNELS_INNER_MIN channels per group, the usual case): the
  weight is transposed (a weight-sized copy) so the innermost loop runs over
  the group's channels, contiguous and long; ~6x faster there. grad_weight
  reads grad_out channels-last, transposed in chunks of whole images that stay
  within `fastconv.config.workspace_bytes` (else the columns-inner kernel runs).

Parallel loops split over independent outputs (rows of output/grad_input
planes, weight-gradient slices) and each output is summed by one thread in a
fixed order, so results are deterministic and independent of the thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..config import config
from ..shapes import taps_in_padding
from ._common import (HELPER, KERNEL, bias_or_zeros, copy, grad_input_as_forward,
                      output_of_tap, readonly, valid_range)

# Groups with at least this many output channels (forward) or input channels
# (grad_input) vectorise over those channels (`*_channels_inner`); fewer
# (depthwise, tiny layers) vectorise over output columns.
CHANNELS_INNER_MIN = 16


# The inner loops below run over views that start at index 0 (`_tap_view`, row[j0:j1]):
# with an offset index (row[j * sw + off]) LLVM cannot rule out a negative index,
# numba's wraparound check stays in the loop and it does not vectorise (measured
# 2-4x slower on depthwise and single-channel layers).

@numba.njit(**HELPER)
def _tap_view(row, j0, off, stride):
    """row[j * stride + off] for j = j0, j0 + 1, ... as a view indexed from 0."""
    start = j0 * stride + off
    if stride == 1:
        return row[start:]
    return row[start::stride]


@numba.njit(**HELPER)
def _axpy(dst, a, src):
    """dst += a * src over the shorter of the two (one is an open-ended tap view)."""
    for j in range(min(dst.shape[0], src.shape[0])):
        dst[j] += a * src[j]


@numba.njit(**HELPER)
def _axpy3(dst, a0, s0, a1, s1, a2, s2):
    """dst += a0 * s0 + a1 * s1 + a2 * s2 over dst's length (the sources may be longer):
    three taps per read-modify-write of dst."""
    for j in range(dst.shape[0]):
        dst[j] += a0 * s0[j] + a1 * s1[j] + a2 * s2[j]


@numba.njit(**HELPER)
def _fma(dst, u, v):
    """dst += u * v elementwise over dst's length (v may be longer)."""
    for j in range(dst.shape[0]):
        dst[j] += u[j] * v[j]


@numba.njit(**KERNEL)
def _forward(x, w, bias, out, sh, sw, pt, pl, dh, dw, groups):
    n_img, c_in, height, width = x.shape
    k_out, cg, kh, kw = w.shape
    out_h, out_w = out.shape[2], out.shape[3]
    kg = k_out // groups
    # One work item: a block of up to 4 output channels of one output row.
    kblocks = (kg + 3) // 4
    total = n_img * groups * kblocks * out_h
    for t in prange(total):
        i = t % out_h
        rest = t // out_h
        kb = rest % kblocks
        rest = rest // kblocks
        g = rest % groups
        n = rest // groups
        k0 = g * kg + kb * 4
        nk = min(4, g * kg + kg - k0)
        for kk in range(nk):
            row = out[n, k0 + kk, i]
            b = bias[k0 + kk]
            for j in range(out_w):
                row[j] = b
        for p in range(kh):
            r = i * sh - pt + p * dh
            if r < 0 or r >= height:
                continue
            for q in range(kw):
                off = q * dw - pl
                j0, j1 = valid_range(off, sw, width, out_w)
                if j1 <= j0:
                    continue
                for cc in range(cg):
                    xs = _tap_view(x[n, g * cg + cc, r], j0, off, sw)
                    if nk == 4:
                        w0 = w[k0, cc, p, q]
                        w1 = w[k0 + 1, cc, p, q]
                        w2 = w[k0 + 2, cc, p, q]
                        w3 = w[k0 + 3, cc, p, q]
                        o0 = out[n, k0, i, j0:j1]
                        o1 = out[n, k0 + 1, i, j0:j1]
                        o2 = out[n, k0 + 2, i, j0:j1]
                        o3 = out[n, k0 + 3, i, j0:j1]
                        for j in range(j1 - j0):
                            v = xs[j]
                            o0[j] += w0 * v
                            o1[j] += w1 * v
                            o2[j] += w2 * v
                            o3[j] += w3 * v
                    else:
                        for kk in range(nk):
                            _axpy(out[n, k0 + kk, i, j0:j1], w[k0 + kk, cc, p, q], xs)


@numba.njit(**KERNEL)
def _forward_planes(x, w, bias, out, sh, sw, pt, pl, dh, dw, groups, k_block):
    """Forward for one input channel per group (depthwise, single-channel inputs): a
    thread owns up to `k_block` output planes of one image that read the same input
    plane. That plane is copied once into a zero-padded buffer of width `span_w`;
    then every kernel tap is ONE long vector loop over the flattened plane,
    acc[u] += w * xpad[u + tap offset], u = row * span_w + column, which also
    computes (and later drops) the columns between output columns and the rows
    between output rows of a strided convolution: at most sh*sw times the
    multiplies, all in long unit-stride loops instead of a short loop per row."""
    n_img, c_in, height, width = x.shape
    k_out, _, kh, kw = w.shape
    out_h, out_w = out.shape[2], out.shape[3]
    kg = k_out // groups
    blocks = -(-kg // k_block)                        # output-channel blocks per group
    span_h = (out_h - 1) * sh + (kh - 1) * dh + 1     # padded input rows read
    span_w = (out_w - 1) * sw + (kw - 1) * dw + 1
    length = ((out_h - 1) * sh) * span_w + (out_w - 1) * sw + 1
    r0, r1 = max(0, -pt), min(height, span_h - pt)    # input rows inside the span
    s0, s1 = max(0, -pl), min(width, span_w - pl)
    for t in prange(n_img * groups * blocks):
        block = t % blocks
        g = (t // blocks) % groups
        n = t // (blocks * groups)
        xpad = np.zeros(span_h * span_w, dtype=out.dtype)
        if s1 > s0:
            for r in range(r0, r1):
                start = (r + pt) * span_w + s0 + pl
                copy(xpad[start:start + s1 - s0], x[n, g, r, s0:s1])
        acc = np.empty(length, dtype=out.dtype)
        for k in range(g * kg + block * k_block, g * kg + min(kg, (block + 1) * k_block)):
            acc[:] = bias[k]
            for p in range(kh):     # a kernel row's taps three per pass over acc
                base = p * dh * span_w
                q = 0
                while q + 3 <= kw:
                    o = base + q * dw
                    _axpy3(acc, w[k, 0, p, q], xpad[o:], w[k, 0, p, q + 1], xpad[o + dw:],
                           w[k, 0, p, q + 2], xpad[o + 2 * dw:])
                    q += 3
                for q in range(q, kw):
                    start = base + q * dw
                    _axpy(acc, w[k, 0, p, q], xpad[start:start + length])
            for i in range(out_h):
                if sw == 1:   # a copy between views indexed from 0 vectorises
                    copy(out[n, k, i], acc[i * sh * span_w:])
                else:
                    dst = out[n, k, i]
                    src = acc[i * sh * span_w:]
                    for j in range(out_w):
                        dst[j] = src[j * sw]


@numba.njit(**KERNEL)
def _forward_channels_inner(x, wt, bias, out, sh, sw, pt, pl, dh, dw, groups):
    """Forward for groups with many output channels: wt is the weight laid out
    (C_in/g, kH, kW, groups, C_out/g), so the innermost loop runs over the group's output
    channels (contiguous, long: vectorised). A thread owns one output row of one
    group and accumulates it as acc[j, k] before writing it out."""
    n_img, c_in, height, width = x.shape
    cg, kh, kw, kg = wt.shape[0], wt.shape[1], wt.shape[2], wt.shape[4]
    out_h, out_w = out.shape[2], out.shape[3]
    total = n_img * groups * out_h
    for t in prange(total):
        i = t % out_h
        rest = t // out_h
        g = rest % groups
        n = rest // groups
        k0 = g * kg
        acc = np.empty((out_w, kg), dtype=out.dtype)
        for j in range(out_w):
            a = acc[j]
            for kk in range(kg):
                a[kk] = bias[k0 + kk]
        for p in range(kh):
            r = i * sh - pt + p * dh
            if r < 0 or r >= height:
                continue
            for q in range(kw):
                off = q * dw - pl
                j0, j1 = valid_range(off, sw, width, out_w)
                for cc in range(cg):
                    xrow = x[n, g * cg + cc, r]
                    wrow = wt[cc, p, q, g]
                    for j in range(j0, j1):
                        v = xrow[j * sw + off]
                        a = acc[j]
                        for kk in range(kg):
                            a[kk] += v * wrow[kk]
        for kk in range(kg):
            orow = out[n, k0 + kk, i]
            for j in range(out_w):
                orow[j] = acc[j, kk]


@numba.njit(**KERNEL)
def _grad_input(go, w, gi, sh, sw, pt, pl, dh, dw, groups):
    """Each thread owns one row of grad_input and gathers every (k, p, q) term
    landing on it: race-free and in a fixed order."""
    n_img, c_in, height, width = gi.shape
    k_out, cg, kh, kw = w.shape
    out_h, out_w = go.shape[2], go.shape[3]
    kg = k_out // groups
    total = n_img * c_in * height
    for t in prange(total):
        r = t % height
        rest = t // height
        c = rest % c_in
        n = rest // c_in
        g = c // cg
        cc = c - g * cg
        girow = gi[n, c, r]
        for s in range(width):
            girow[s] = 0
        for p in range(kh):
            i = output_of_tap(r, p, pt, dh, sh, out_h)
            if i < 0:
                continue
            for q in range(kw):
                off = q * dw - pl
                j0, j1 = valid_range(off, sw, width, out_w)
                if j1 <= j0:
                    continue
                dst = _tap_view(girow, j0, off, sw)
                for kk in range(kg):
                    k = g * kg + kk
                    _axpy(dst, w[k, cc, p, q], go[n, k, i, j0:j1])


@numba.njit(**KERNEL)
def _grad_input_channels_inner(go, wt, gi, sh, sw, pt, pl, dh, dw, groups):
    """grad_input for groups with many input channels: wt is the weight laid out
    (C_out, kH, kW, C_in/g), so the innermost loop runs over the group's input
    channels. A thread owns one input row of one group (acc[s, c]) and gathers
    every (k, p, q) term landing on it: race-free, fixed order."""
    n_img, c_in, height, width = gi.shape
    k_out, kh, kw, cg = wt.shape
    out_h, out_w = go.shape[2], go.shape[3]
    kg = k_out // groups
    total = n_img * groups * height
    for t in prange(total):
        r = t % height
        rest = t // height
        g = rest % groups
        n = rest // groups
        acc = np.zeros((width, cg), dtype=gi.dtype)
        for p in range(kh):
            i = output_of_tap(r, p, pt, dh, sh, out_h)
            if i < 0:
                continue
            for q in range(kw):
                off = q * dw - pl
                j0, j1 = valid_range(off, sw, width, out_w)
                for kk in range(kg):
                    k = g * kg + kk
                    gorow = go[n, k, i]
                    wrow = wt[k, p, q]
                    for j in range(j0, j1):
                        v = gorow[j]
                        a = acc[j * sw + off]
                        for cc in range(cg):
                            a[cc] += v * wrow[cc]
        for cc in range(cg):
            girow = gi[n, g * cg + cc, r]
            for s in range(width):
                girow[s] = acc[s, cc]


@numba.njit(**KERNEL)
def _grad_weight(go, x, gw, sh, sw, pt, pl, dh, dw, groups):
    """One thread per (k, c) slice of the weight; per-column partial sums
    (acc[p, q, j]) keep the innermost loop elementwise (vectorised without
    fastmath), summed over j at the end in a fixed order."""
    n_img, c_in, height, width = x.shape
    k_out, cg, kh, kw = gw.shape
    out_h, out_w = go.shape[2], go.shape[3]
    kg = k_out // groups
    total = k_out * cg
    for t in prange(total):
        cc = t % cg
        k = t // cg
        g = k // kg
        c = g * cg + cc
        acc = np.zeros((kh * kw, out_w), dtype=gw.dtype)
        for n in range(n_img):
            for i in range(out_h):
                gorow = go[n, k, i]
                for p in range(kh):
                    r = i * sh - pt + p * dh
                    if r < 0 or r >= height:
                        continue
                    xrow = x[n, c, r]
                    for q in range(kw):
                        off = q * dw - pl
                        j0, j1 = valid_range(off, sw, width, out_w)
                        if j1 > j0:
                            _fma(acc[p * kw + q, j0:j1], gorow[j0:j1],
                                 _tap_view(xrow, j0, off, sw))
        for p in range(kh):
            for q in range(kw):
                a = acc[p * kw + q]
                s = a[0]        # (not a zero made as a[0] * 0: that is NaN for an Inf)
                for j in range(1, out_w):
                    s += a[j]
                gw[k, cc, p, q] = s


@numba.njit(**HELPER)
def _grad_weight_slice(got, x, gwt, n0, g, c_lo, c_hi, p, sh, sw, pt, pl, dh, dw, groups):
    """gwt[c_lo:c_hi, p, :, g] += the images of got (one thread's work)."""
    height, width = x.shape[2], x.shape[3]
    cg, kw, kg = gwt.shape[0], gwt.shape[2], gwt.shape[4]
    nb, out_h, out_w = got.shape[0], got.shape[1], got.shape[2]
    for b in range(nb):
        for i in range(out_h):
            r = i * sh - pt + p * dh
            if r < 0 or r >= height:
                continue
            grows = got[b, i]
            for cc in range(c_lo, c_hi):
                xrow = x[n0 + b, g * cg + cc, r]
                for q in range(kw):
                    off = q * dw - pl
                    j0, j1 = valid_range(off, sw, width, out_w)
                    acc = gwt[cc, p, q, g]
                    for j in range(j0, j1):
                        v = xrow[j * sw + off]
                        gvec = grows[j, g]
                        # a group is an axis of its own: slicing [k0:k0 + kg] here took
                        # 5-10x longer to compile, and indexing [k0 + kk] does not vectorise
                        for kk in range(kg):
                            acc[kk] += v * gvec[kk]


@numba.njit(**KERNEL)
def _grad_weight_channels_inner(got, x, gwt, n0, sh, sw, pt, pl, dh, dw, groups):
    """Adds images n0.. n0+len(got) to gwt[c, p, q, g, k] (the weight gradient laid out
    (C_in/g, kH, kW, groups, C_out/g)). got is grad_out laid out
    (N, out_h, out_w, groups, C_out/g), so
    the innermost loop runs over the group's output channels. One thread owns a
    (group, block of 4 input channels, kernel row p) slice: race-free, fixed order.
    (The loop nest lives in a helper, which keeps numba's parallel passes quick.)"""
    cg, kh = gwt.shape[0], gwt.shape[1]
    cblocks = (cg + 3) // 4
    total = groups * cblocks * kh
    for t in prange(total):
        p = t % kh
        rest = t // kh
        cb = rest % cblocks
        g = rest // cblocks
        _grad_weight_slice(got, x, gwt, n0, g, cb * 4, min(cb * 4 + 4, cg), p,
                           sh, sw, pt, pl, dh, dw, groups)


def _planes_fit(weight, stride, dilation, out_hw, itemsize, groups):
    """Whether `_forward_planes` serves this convolution: one input channel per group,
    with few output channels per group or stride 1 (it computes every stride-1
    position and drops the others: with many output channels the channels-inner
    kernel is faster then), and its two per-thread plane buffers within the
    workspace bound."""
    if weight.shape[1] != 1:
        return False
    if weight.shape[0] // groups >= CHANNELS_INNER_MIN and tuple(stride) != (1, 1):
        return False
    span_h = (out_hw[0] - 1) * stride[0] + (weight.shape[2] - 1) * dilation[0] + 1
    span_w = (out_hw[1] - 1) * stride[1] + (weight.shape[3] - 1) * dilation[1] + 1
    per_thread = 2 * span_h * span_w * itemsize
    return per_thread * numba.get_num_threads() <= config.workspace_bytes


def _planes_block(n, groups, k_per_group):
    """Output planes per `_forward_planes` task: all of a group's (its input plane is
    copied once per task) unless that leaves fewer than 8 tasks per thread."""
    wanted = 8 * numba.get_num_threads()
    blocks = min(k_per_group, max(1, -(-wanted // (n * groups))))
    return -(-k_per_group // blocks)


# The kernels skip the padding instead of multiplying its zeros, which gives the same
# sums except that PyTorch's 0 * Inf or 0 * NaN over the padding is NaN. These two
# restore that, only for calls where an operand is not finite (one isfinite pass).

def _padding_taps(in_hw, out_hw, kernel_hw, stride, padding, dilation):
    top, _, left, _ = padding
    return (taps_in_padding(in_hw[0], out_hw[0], kernel_hw[0], top, stride[0], dilation[0]),
            taps_in_padding(in_hw[1], out_hw[1], kernel_hw[1], left, stride[1], dilation[1]))


def _nan_where_padding_meets_nonfinite_weights(out, weight, in_hw, stride, padding,
                                               dilation):
    """out[:, k, i, j] = NaN where a non-finite weight tap of filter k lies over the
    padding in output (i, j)'s window."""
    finite = np.isfinite(weight)
    if finite.all():
        return
    rows, cols = _padding_taps(in_hw, out.shape[2:], weight.shape[2:], stride, padding,
                               dilation)
    bad = ~finite.all(axis=1)                                    # (K, kH, kW)
    nan_rows = bad.any(axis=2).astype(np.int64) @ rows > 0        # (K, out_h)
    nan_cols = bad.any(axis=1).astype(np.int64) @ cols > 0        # (K, out_w)
    out[:, nan_rows[:, :, None] | nan_cols[:, None, :]] = np.nan


def _nan_where_padding_meets_nonfinite_grad_out(grad_weight, grad_out, in_hw, stride,
                                                padding, dilation):
    """grad_weight[k, :, p, q] = NaN where tap (p, q) lies over the padding in the
    window of an output whose grad_out[:, k] is not finite."""
    bad = ~np.isfinite(grad_out)                                  # (N, K, out_h, out_w)
    if not bad.any():
        return
    rows, cols = _padding_taps(in_hw, grad_out.shape[2:], grad_weight.shape[2:], stride,
                               padding, dilation)
    nan_p = bad.any(axis=(0, 3)).astype(np.int64) @ rows.T > 0    # (K, kH)
    nan_q = bad.any(axis=(0, 2)).astype(np.int64) @ cols.T > 0    # (K, kW)
    k, p, q = np.nonzero(nan_p[:, :, None] | nan_q[:, None, :])
    grad_weight[k, :, p, q] = np.nan


def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """Forward convolution (cross-correlation); see docs/internals.md."""
    n = x.shape[0]
    out = np.empty((n, weight.shape[0]) + tuple(out_hw), dtype=x.dtype)
    top, _, left, _ = padding
    b = bias_or_zeros(bias, weight.shape[0], x.dtype)
    geometry = (stride[0], stride[1], top, left, dilation[0], dilation[1], groups)
    k_per_group = weight.shape[0] // groups
    if _planes_fit(weight, stride, dilation, out_hw, x.dtype.itemsize, groups):
        _forward_planes(readonly(x), readonly(weight), b, out, *geometry,
                        _planes_block(n, groups, k_per_group))
    elif k_per_group >= CHANNELS_INNER_MIN:
        k_out, cg, kh, kw = weight.shape
        wt = np.ascontiguousarray(weight.transpose(1, 2, 3, 0))
        wt = readonly(wt.reshape(cg, kh, kw, groups, k_per_group))
        _forward_channels_inner(readonly(x), wt, b, out, *geometry)
    else:
        _forward(readonly(x), readonly(weight), b, out, *geometry)
    _nan_where_padding_meets_nonfinite_weights(out, weight, x.shape[2:], stride, padding,
                                               dilation)
    return out


def conv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups):
    """Gradient with respect to the input, gathered per input row; depthwise at
    stride 1 as the forward `_forward_planes` of the rotated kernel (with finite
    weights: that forward multiplies them by grad_out's zero padding, which has no
    counterpart in the gradient)."""
    if (tuple(stride) == (1, 1) and weight.shape[0] == groups and weight.shape[1] == 1
            and np.isfinite(weight).all()):
        grad_out, rotated, new_padding = grad_input_as_forward(grad_out, weight, padding,
                                                               dilation, groups)
        return conv2d(grad_out, rotated, None, (1, 1), new_padding, dilation, groups,
                      tuple(input_shape[2:]))
    gi = np.empty(tuple(input_shape), dtype=grad_out.dtype)
    top, _, left, _ = padding
    if weight.shape[1] >= CHANNELS_INNER_MIN:
        wt = readonly(np.ascontiguousarray(weight.transpose(0, 2, 3, 1)))
        _grad_input_channels_inner(readonly(grad_out), wt, gi, stride[0], stride[1], top,
                                   left, dilation[0], dilation[1], groups)
    else:
        _grad_input(readonly(grad_out), readonly(weight), gi, stride[0], stride[1], top,
                    left, dilation[0], dilation[1], groups)
    return gi


def conv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups):
    """Gradient with respect to the weight; each weight slice summed by one thread."""
    top, _, left, _ = padding
    n, k_out = grad_out.shape[:2]
    per_image = grad_out[0].nbytes  # grad_out laid out channels-last, one image
    bound = config.workspace_bytes  # read once: it may change during the call
    if k_out // groups >= CHANNELS_INNER_MIN and per_image <= bound:
        # channels-last grad_out in chunks of images within the workspace bound
        nb = min(n, bound // per_image)
        cg, kh, kw = weight_shape[1:]
        gwt = np.zeros((cg, kh, kw, groups, k_out // groups), x.dtype)
        xr = readonly(x)
        for n0 in range(0, n, nb):
            got = np.ascontiguousarray(grad_out[n0:n0 + nb].transpose(0, 2, 3, 1))
            got = readonly(got.reshape(got.shape[:3] + (groups, k_out // groups)))
            _grad_weight_channels_inner(got, xr, gwt, n0, stride[0], stride[1], top, left,
                                        dilation[0], dilation[1], groups)
        gw = np.ascontiguousarray(gwt.reshape(cg, kh, kw, k_out).transpose(3, 0, 1, 2))
    else:
        gw = np.empty(tuple(weight_shape), dtype=x.dtype)
        _grad_weight(readonly(grad_out), readonly(x), gw, stride[0], stride[1], top, left,
                     dilation[0], dilation[1], groups)
    _nan_where_padding_meets_nonfinite_grad_out(gw, grad_out, x.shape[2:], stride, padding,
                                                dilation)
    return gw
