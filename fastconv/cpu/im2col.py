"""im2col convolution: pack patches into a bounded workspace, then a GEMM.

Backend contract: docs/internals.md. The work is split into tiles of the output
(a chunk of whole images; or, when one image's columns do not fit, a block of
output rows of one image; or, when one row does not fit, a block of columns of
one row). For a tile of `T` output pixels of `B` images the workspace holds

    cols: (C_in * kH * kW, B, T)   patches, rows ordered (c, p, q) like the weight
    buf:  (C_out,          B, T)   GEMM result (forward) or packed grad_out (backward)

so each group is one large GEMM, ``W_g (K_g x C_g*kH*kW) @ cols_g (C_g*kH*kW x B*T)``,
and `workspace_bytes_needed` of them never exceed `fastconv.config.workspace_bytes`
(read at call time). Within the bound, tiles aim at `TILE_TARGET_BYTES` so the
packed columns are still in cache for the GEMM; a tile of exactly one whole
image needs no `buf`: the GEMM writes the output (reads grad_out) in place.

A convolution whose single output pixel would not fit
(a bound below (C_in*kH*kW + C_out) * itemsize) is computed by the direct kernels,
which need no workspace.

1x1, stride 1, unpadded convolutions are a GEMM on the input as it is: no packing.
grad_input packs grad_out, multiplies by the transposed weight and scatters back
with col2im (parallel over (image, channel) planes, so race-free and
deterministic); grad_weight packs both and accumulates one GEMM per tile.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..config import config
from . import direct
from .matmul import gemm
from ._common import HELPER, KERNEL, copy, readonly, valid_range

# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------


@numba.njit(**HELPER)
def _add(dst, src):
    for m in range(dst.shape[0]):
        dst[m] += src[m]


@numba.njit(**KERNEL)
def _pack(x, cols, n0, i0, j0, th, tw, kh, kw, sh, sw, pt, pl, dh, dw):
    """cols[(c, p, q), b, ii*tw + jj] = xpad[n0+b, c, (i0+ii)*sh + p*dh, (j0+jj)*sw + q*dw].

    One work item: kernel row p of one (image, channel) plane. The th input rows it
    reads are first copied into a zero-padded window (th x span_w: numba allocates
    it once per thread), so that each of its kw * th rows of cols is then a plain
    copy (no bounds logic, no zeroing: 1.5-2x faster than copying from the input
    with the padding handled per row, `_pack_unbuffered`)."""
    c_in, height, width = x.shape[1], x.shape[2], x.shape[3]
    nb = cols.shape[1]
    span_w = (tw - 1) * sw + (kw - 1) * dw + 1
    row0, col0 = i0 * sh - pt, j0 * sw - pl           # input row/column of window (0, 0)
    s0, s1 = max(0, -col0), min(span_w, width - col0)  # window columns inside the input
    for t in prange(c_in * nb * kh):
        p = t % kh
        b = (t // kh) % nb
        c = t // (kh * nb)
        plane = x[n0 + b, c]
        window = np.zeros((th, span_w), dtype=cols.dtype)
        for ii in range(th):
            r = row0 + ii * sh + p * dh
            if 0 <= r < height and s1 > s0:
                copy(window[ii, s0:s1], plane[r, col0 + s0:col0 + s1])
        for q in range(kw):
            dst = cols[(c * kh + p) * kw + q, b]
            for ii in range(th):
                if sw == 1:
                    copy(dst[ii * tw:(ii + 1) * tw], window[ii, q * dw:])
                else:
                    copy(dst[ii * tw:(ii + 1) * tw], window[ii, q * dw::sw])


@numba.njit(**KERNEL)
def _pack_unbuffered(x, cols, n0, i0, j0, th, tw, kh, kw, sh, sw, pt, pl, dh, dw):
    """`_pack` without the window, for geometries whose window would not fit the
    workspace bound (`_window_fits`): each row of cols is copied from the input,
    the padding zeroed around it."""
    c_in, height, width = x.shape[1], x.shape[2], x.shape[3]
    nb = cols.shape[1]
    row0, col0 = i0 * sh - pt, j0 * sw - pl
    for t in prange(c_in * nb * kh):
        p = t % kh
        b = (t // kh) % nb
        c = t // (kh * nb)
        plane = x[n0 + b, c]
        for q in range(kw):
            dst = cols[(c * kh + p) * kw + q, b]
            off = col0 + q * dw
            jj0, jj1 = valid_range(off, sw, width, tw)        # columns inside the input
            for ii in range(th):
                row = dst[ii * tw:(ii + 1) * tw]
                row[:] = 0
                r = row0 + ii * sh + p * dh
                if 0 <= r < height:
                    src = plane[r]
                    for jj in range(jj0, jj1):
                        row[jj] = src[off + jj * sw]


@numba.njit(**KERNEL)
def _col2im(dcols, gi, n0, i0, j0, th, tw, kh, kw, sh, sw, pt, pl, dh, dw):
    """gi[n0+b, c] += the patches of dcols scattered back: one plane per thread."""
    c_in, height, width = gi.shape[1], gi.shape[2], gi.shape[3]
    nb = dcols.shape[1]
    for t in prange(nb * c_in):
        c = t % c_in
        b = t // c_in
        plane = gi[n0 + b, c]
        for p in range(kh):
            for q in range(kw):
                src = dcols[(c * kh + p) * kw + q, b]
                off = q * dw - pl
                lo, hi = valid_range(off, sw, width, j0 + tw)
                if lo < j0:
                    lo = j0
                if hi < lo:
                    hi = lo
                for ii in range(th):
                    r = (i0 + ii) * sh - pt + p * dh
                    if r < 0 or r >= height:
                        continue
                    if hi > lo:
                        base = ii * tw - j0
                        _add(plane[r, lo * sw + off:(hi - 1) * sw + off + 1:sw],
                             src[base + lo:base + hi])


def _unpack(buf, bias, out, n0, i0, j0, th, tw):
    """out[n0+b, k, i0+ii, j0+jj] = buf[k, b, ii*tw + jj] (+ bias[k]). A memory-bound
    copy: NumPy does it (one kernel fewer to compile)."""
    k_out, nb = buf.shape[0], buf.shape[1]
    src = buf.reshape(k_out, nb, th, tw).transpose(1, 0, 2, 3)
    dst = out[n0:n0 + nb, :, i0:i0 + th, j0:j0 + tw]
    if bias is None:
        dst[...] = src
    else:
        np.add(src, bias[None, :, None, None], out=dst)


def _pack_out(go, buf, n0, i0, j0, th, tw):
    """buf[k, b, ii*tw + jj] = go[n0+b, k, i0+ii, j0+jj] (grad_out laid out for the GEMM)."""
    k_out, nb = buf.shape[0], buf.shape[1]
    buf.reshape(k_out, nb, th, tw)[...] = go[n0:n0 + nb, :, i0:i0 + th,
                                            j0:j0 + tw].transpose(1, 0, 2, 3)


# --------------------------------------------------------------------------
# planning the workspace
# --------------------------------------------------------------------------


def _ceil_div(a, b):
    return -(-a // b)


def _is_pointwise(kernel_hw, stride, padding):
    return tuple(kernel_hw) == (1, 1) and tuple(stride) == (1, 1) and not any(padding)


# Tiles are kept to about this size when the bound allows more: the packed columns
# are then still in cache when the GEMM reads them (measured: docs/tuning.md).
TILE_TARGET_BYTES = 8 * 2**20
# An image whose packed columns take at least 1/WHOLE_IMAGE_SHARE of the target is a tile
# of its own: its GEMM then writes straight into the output, where a tile of several
# images is multiplied into a buffer and copied out (measured: docs/tuning.md).
WHOLE_IMAGE_SHARE = 8


def plan_tiles(n, c_in, k_out, kernel_hw, out_hw, itemsize, bound=None, target=None):
    """The tile im2col works in: (images, rows, cols) per tile, or None when not even
    one output pixel's columns fit in `bound` (then the direct kernels run).

    `bound` defaults to `fastconv.config.workspace_bytes`, read now; tiles aim at
    `target` (default TILE_TARGET_BYTES) bytes when the bound is larger."""
    if bound is None:
        bound = config.workspace_bytes
    if target is None:
        target = TILE_TARGET_BYTES
    out_h, out_w = out_hw
    per_pixel = (c_in * kernel_hw[0] * kernel_hw[1] + k_out) * itemsize
    if per_pixel > bound:
        return None
    limit = min(bound, max(target, per_pixel))
    per_image = per_pixel * out_h * out_w
    if per_image <= limit:
        nb = min(n, limit // per_image)
        if WHOLE_IMAGE_SHARE * per_image >= target:
            nb = 1  # see WHOLE_IMAGE_SHARE
        nb = _ceil_div(n, _ceil_div(n, nb))          # balance the chunks
        return nb, out_h, out_w
    if per_pixel * out_w <= limit:
        th = limit // (per_pixel * out_w)
        th = _ceil_div(out_h, _ceil_div(out_h, th))
        return 1, th, out_w
    tw = limit // per_pixel
    tw = _ceil_div(out_w, _ceil_div(out_w, tw))
    return 1, 1, tw


def _whole_image(tile, out_hw):
    """A tile of one whole image: the GEMM reads/writes the image's planes in place."""
    return tile[0] == 1 and tuple(tile[1:]) == tuple(out_hw)


def workspace_bytes_needed(x_shape, w_shape, out_hw, stride, padding, itemsize, bound=None):
    """Bytes of scratch one im2col call allocates (for forward and both gradients):
    0 for 1x1/stride-1/unpadded convolutions and when the direct fallback runs.
    Never more than `bound` (default `fastconv.config.workspace_bytes`)."""
    if _is_pointwise(w_shape[2:], stride, padding):
        return 0
    tile = plan_tiles(x_shape[0], x_shape[1], w_shape[0], w_shape[2:], out_hw, itemsize, bound)
    if tile is None:
        return 0
    return _workspace_elements(x_shape, w_shape, out_hw, tile) * itemsize


def _workspace_elements(x_shape, w_shape, out_hw, tile):
    nb, th, tw = tile
    rows = x_shape[1] * w_shape[2] * w_shape[3]
    buf_rows = 0 if _whole_image(tile, out_hw) else w_shape[0]
    return (rows + buf_rows) * nb * th * tw


def _allocate_workspace(nbytes, dtype):
    """The one allocation of scratch (tests wrap this to watch the bound)."""
    return np.empty(nbytes // np.dtype(dtype).itemsize, dtype=dtype)


def _tiles(n, out_hw, tile):
    nb, th, tw = tile
    for n0 in range(0, n, nb):
        for i0 in range(0, out_hw[0], th):
            for j0 in range(0, out_hw[1], tw):
                yield n0, min(nb, n - n0), i0, min(th, out_hw[0] - i0), j0, min(tw, out_hw[1] - j0)


def _workspace(x_shape, w_shape, out_hw, dtype, tile):
    elements = _workspace_elements(x_shape, w_shape, out_hw, tile)
    space = _allocate_workspace(elements * np.dtype(dtype).itemsize, dtype)
    return space, x_shape[1] * w_shape[2] * w_shape[3], w_shape[0]


def _views(space, rows, k_out, nb, th, tw, size):
    """cols (rows, nb, th*tw) and buf (k_out, nb, th*tw) for a tile of `size` pixels per
    image (buf is None for whole-image tiles, which use the caller's arrays)."""
    cols = space[:rows * nb * size].reshape(rows, nb, size)
    start = rows * nb * th * tw
    if space.size == start:
        return cols, None
    buf = space[start:start + k_out * nb * size].reshape(k_out, nb, size)
    return cols, buf


def _grad_out_operand(go3, gor, buf, n0, i0, j0, th, tw):
    """A tile's grad_out as the GEMM operand (k_out, nb*th*tw): image n0 of go3 itself
    for a whole-image tile (no buf), else packed into buf."""
    if buf is None:
        return go3[n0]
    _pack_out(gor, buf, n0, i0, j0, th, tw)
    return buf.reshape(buf.shape[0], buf.shape[1] * th * tw)


def _batched_gemm_wins(rows, pixels):
    """Whether a tile of several whole images is faster as one GEMM per image, written
    into the output, than as one wide GEMM into `buf` then unpacked: when the patch
    rows are few (the GEMM is memory-bound and the unpack copy doubles its traffic)
    or the images large; the wide GEMM wins in between (measured: docs/tuning.md)."""
    return rows <= 32 or pixels >= 2048


def _geometry(stride, padding, dilation):
    top, _, left, _ = padding
    return stride[0], stride[1], top, left, dilation[0], dilation[1]


def _window_fits(th, tw, kw, stride, dilation, itemsize):
    """Whether `_pack`'s per-thread input windows (th x span_w) fit in the workspace
    bound by themselves. They do for any usual layer (a 224-wide image: 0.2 MB); a
    huge dilation or stride makes span_w, mostly padding, unbounded (2**31 dilation:
    16 GB a window)."""
    span_w = (tw - 1) * stride[1] + (kw - 1) * dilation[1] + 1
    return th * span_w * itemsize * numba.get_num_threads() <= config.workspace_bytes


def _packer(tile, kw, stride, dilation, itemsize):
    """The pack kernel for this tile size: `_pack`, or `_pack_unbuffered` where the
    window would not fit (a kernel of its own: a flag would have `_pack` allocate its
    window per work item, not once per thread, 3-13% slower)."""
    fits = _window_fits(tile[1], tile[2], kw, stride, dilation, itemsize)
    return _pack if fits else _pack_unbuffered


# --------------------------------------------------------------------------
# backend functions
# --------------------------------------------------------------------------


def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """Forward convolution by im2col + GEMM; see the module docstring."""
    n, c_in = x.shape[:2]
    k_out, cg, kh, kw = weight.shape
    kg = k_out // groups
    out = np.empty((n, k_out) + tuple(out_hw), dtype=x.dtype)
    w2 = weight.reshape(k_out, cg * kh * kw)
    if _is_pointwise((kh, kw), stride, padding):
        x3 = x.reshape(n, c_in, -1)
        out3 = out.reshape(n, k_out, -1)
        for g in range(groups):
            gemm(w2[g * kg:(g + 1) * kg], x3[:, g * cg:(g + 1) * cg], out3[:, g * kg:(g + 1) * kg])
        if bias is not None:
            out3 += bias[None, :, None]
        return out
    tile = plan_tiles(n, c_in, k_out, (kh, kw), out_hw, x.dtype.itemsize)
    if tile is None:
        return direct.conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw)
    geometry = _geometry(stride, padding, dilation)
    xr = readonly(x)
    pack = _packer(tile, kw, stride, dilation, x.dtype.itemsize)
    space, rows, _ = _workspace(x.shape, weight.shape, out_hw, x.dtype, tile)
    rg = cg * kh * kw
    out3 = out.reshape(n, k_out, -1)
    for n0, nb, i0, th, j0, tw in _tiles(n, out_hw, tile):
        cols, buf = _views(space, rows, k_out, nb, tile[1], tile[2], th * tw)
        pack(xr, cols, n0, i0, j0, th, tw, kh, kw, *geometry)
        if nb > 1 and _batched_gemm_wins(rg, th * tw):
            # one GEMM per image, written straight into the output (no unpacking)
            per_image = cols.transpose(1, 0, 2)
            for g in range(groups):
                gemm(w2[g * kg:(g + 1) * kg], per_image[:, g * rg:(g + 1) * rg],
                     out3[n0:n0 + nb, g * kg:(g + 1) * kg])
            if bias is not None:
                out3[n0:n0 + nb] += bias[:, None]
            continue
        cols2 = cols.reshape(rows, nb * th * tw)
        buf2 = out3[n0] if buf is None else buf.reshape(k_out, nb * th * tw)
        for g in range(groups):
            gemm(w2[g * kg:(g + 1) * kg], cols2[g * rg:(g + 1) * rg], buf2[g * kg:(g + 1) * kg])
        if buf is not None:
            _unpack(buf, bias, out, n0, i0, j0, th, tw)
        elif bias is not None:
            buf2 += bias[:, None]
    return out


def conv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups):
    """Gradient with respect to the input: W^T @ packed grad_out, then col2im."""
    n, c_in = input_shape[:2]
    k_out, cg, kh, kw = weight.shape
    kg = k_out // groups
    out_hw = grad_out.shape[2:]
    dtype = grad_out.dtype
    w2 = weight.reshape(k_out, cg * kh * kw)
    if _is_pointwise((kh, kw), stride, padding):
        gi = np.empty(tuple(input_shape), dtype=dtype)
        gi3 = gi.reshape(n, c_in, -1)
        go3 = grad_out.reshape(n, k_out, -1)
        for g in range(groups):
            gemm(w2[g * kg:(g + 1) * kg].T, go3[:, g * kg:(g + 1) * kg],
                 gi3[:, g * cg:(g + 1) * cg])
        return gi
    tile = plan_tiles(n, c_in, k_out, (kh, kw), out_hw, dtype.itemsize)
    if tile is None:
        return direct.conv2d_grad_input(grad_out, weight, input_shape, stride, padding,
                                        dilation, groups)
    geometry = _geometry(stride, padding, dilation)
    gi = np.zeros(tuple(input_shape), dtype=dtype)
    gor = readonly(grad_out)
    space, rows, _ = _workspace(input_shape, weight.shape, out_hw, dtype, tile)
    rg = cg * kh * kw
    go3 = grad_out.reshape(n, k_out, -1)
    for n0, nb, i0, th, j0, tw in _tiles(n, out_hw, tile):
        dcols, buf = _views(space, rows, k_out, nb, tile[1], tile[2], th * tw)
        buf2 = _grad_out_operand(go3, gor, buf, n0, i0, j0, th, tw)
        dcols2 = dcols.reshape(rows, nb * th * tw)
        for g in range(groups):
            gemm(w2[g * kg:(g + 1) * kg].T, buf2[g * kg:(g + 1) * kg], dcols2[g * rg:(g + 1) * rg])
        _col2im(readonly(dcols), gi, n0, i0, j0, th, tw, kh, kw, *geometry)
    return gi


def conv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups):
    """Gradient with respect to the weight: packed grad_out @ cols^T, summed over tiles."""
    n, c_in = x.shape[:2]
    k_out, cg, kh, kw = weight_shape
    kg = k_out // groups
    rg = cg * kh * kw
    out_hw = grad_out.shape[2:]
    dtype = x.dtype
    gw = np.zeros(tuple(weight_shape), dtype=dtype)
    gw2 = gw.reshape(k_out, rg)
    if _is_pointwise((kh, kw), stride, padding):
        x3 = x.reshape(n, c_in, -1)
        go3 = grad_out.reshape(n, k_out, -1)
        for g in range(groups):
            for i in range(n):
                gemm(go3[i, g * kg:(g + 1) * kg], x3[i, g * cg:(g + 1) * cg].T,
                     gw2[g * kg:(g + 1) * kg], accumulate=True)
        return gw
    tile = plan_tiles(n, c_in, k_out, (kh, kw), out_hw, dtype.itemsize)
    if tile is None:
        return direct.conv2d_grad_weight(grad_out, x, weight_shape, stride, padding,
                                         dilation, groups)
    geometry = _geometry(stride, padding, dilation)
    xr, gor = readonly(x), readonly(grad_out)
    pack = _packer(tile, kw, stride, dilation, x.dtype.itemsize)
    space, rows, _ = _workspace(x.shape, weight_shape, out_hw, dtype, tile)
    go3 = grad_out.reshape(n, k_out, -1)
    for n0, nb, i0, th, j0, tw in _tiles(n, out_hw, tile):
        cols, buf = _views(space, rows, k_out, nb, tile[1], tile[2], th * tw)
        pack(xr, cols, n0, i0, j0, th, tw, kh, kw, *geometry)
        buf2 = _grad_out_operand(go3, gor, buf, n0, i0, j0, th, tw)
        cols2 = cols.reshape(rows, nb * th * tw)
        for g in range(groups):
            gemm(buf2[g * kg:(g + 1) * kg], cols2[g * rg:(g + 1) * rg].T,
                 gw2[g * kg:(g + 1) * kg], accumulate=True)
    return gw
