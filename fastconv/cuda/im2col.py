"""CUDA im2col convolution: patches into a bounded workspace, then our tiled GEMM.

Backend contract: docs/internals.md (numba device arrays in and out, plus a
``stream`` keyword). Notation: ``N, C, H, W`` input, ``K, Cg, kH, kW`` weight,
``G`` groups (``Kg = K // G``), ``R = Cg*kH*kW`` patch rows per group, ``L =
out_h*out_w`` output pixels per image, and the *columns* are the ``N*L``
``(image, output pixel)`` pairs.

The workspace holds one chunk of the column matrix, ``cols[g, r, j]`` for ``gc``
groups, ``rc`` patch rows and ``jc`` columns, with ``gc*rc*jc*itemsize <=
fastconv.config.workspace_bytes`` (read at call time; :func:`plan_chunks`). A
chunk normally has every group and every row and as many whole-or-partial images'
columns as fit; only when a few hundred columns of all groups do not fit are the
groups, then the rows, split too (the GEMM then accumulates over row chunks).

- forward: ``im2col`` kernel (a thread per column element, int64 indices) fills
  the chunk; the GEMM ``W_g (Kg x rc) @ cols_g (rc x jc)`` writes straight into
  the NCHW output (a "split" C operand, see ``gemm``), adding the bias.
- grad_input: the GEMM ``W_g^T @ grad_out_g`` reads grad_out in place (split B)
  into the chunk; the ``col2im`` kernel gathers it back: each thread owns one
  input pixel and sums the column entries that saw it, in a fixed order (no
  atomics: deterministic and race-free). Chunks are added one after another.
- grad_weight: ``grad_out_g (Kg x jc) @ cols_g^T (jc x rc)`` accumulated over
  column chunks (``beta = 1`` after the first) into the weight gradient.
- 1x1, stride 1, unpadded convolutions need no workspace: the input itself is
  the column matrix (a split operand).

Tuning notes (unmeasured; no GPU was available when this was written)
---------------------------------------------------------------------
- im2col writes ``cols`` once and the GEMM reads it ``K/BM`` times; an implicit
  GEMM (building the B tile from x inside the GEMM main loop) removes the
  workspace traffic entirely and is the next step for large layers.
- The im2col thread order puts consecutive threads on consecutive columns (``j``
  fastest), so writes are coalesced and reads are strided by ``stride_w``.
- col2im is a gather over at most ``kH*kW`` entries per pixel; with stride > 1
  most (p, q) fail the divisibility test: iterating over the output positions
  directly (``p = (h + top) % sh`` stepping) halves the work for stride 2.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from ..config import config
from . import gemm
from ._kernels import empty, fill, kernel_factory, launch_1d, stream_or_default, u64

# A column chunk narrower than this would underfill the GEMM tiles: split the
# groups, then the rows, before going below it.
MIN_COLUMNS = 256


def plan_chunks(groups, rows, ncols, itemsize, bound=None):
    """(gc, rc, jc): groups, patch rows and columns per workspace chunk.

    ``gc*rc*jc*itemsize <= bound`` (``fastconv.config.workspace_bytes`` when
    None, read now), except that a chunk always has at least one element.
    """
    if bound is None:
        bound = config.workspace_bytes
    budget = max(1, int(bound) // int(itemsize))
    want = min(ncols, MIN_COLUMNS)
    if groups * rows * want <= budget:
        return groups, rows, min(ncols, budget // (groups * rows))
    if rows * want <= budget:
        gc = max(1, budget // (rows * want))
        return gc, rows, min(ncols, budget // (gc * rows))
    jc = max(1, min(ncols, want, budget))
    return 1, max(1, min(rows, budget // jc)), jc


def _chunks(total, size):
    for start in range(0, total, size):
        yield start, min(size, total - start)


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

# Rows of the column matrix one im2col thread walks (decoding (c, p, q) once).
IM2COL_ROWS = 16


@kernel_factory
def _make_im2col(dtype_name: str):
    dt = numba.from_dtype(np.dtype(dtype_name))
    RB = IM2COL_ROWS

    @cuda.jit(cache=True)
    def im2col(x, cols, g0, r0, j0, cg_, kh, kw, sh, sw, pt, pl, dh, dw, out_w, plane):
        """cols[g, r, j] = xpad[n, (g0+g)*Cg + c, oh*sh + p*dh, ow*sw + q*dw] with
        (c, p, q) = divmod(r0 + r) and (n, oh, ow) = divmod(j0 + j).

        x of the grid: columns (consecutive threads, consecutive j: coalesced
        writes); y: blocks of RB rows of the flattened (g, r), which a thread walks
        with counters, so the int64 divisions are 2 per column and 3 per RB rows."""
        gc, rc, jc = cols.shape
        height, width = x.shape[2], x.shape[3]
        row_blocks = (gc * rc + RB - 1) // RB
        j = cuda.grid(1)
        while j < jc:
            col = j0 + j
            n = col // plane
            pix = col % plane
            ih0 = (pix // out_w) * sh - pt
            iw0 = (pix % out_w) * sw - pl
            for rb in range(cuda.blockIdx.y, row_blocks, cuda.gridDim.y):
                t = rb * RB
                g = t // rc
                r = t % rc
                rr = r0 + r
                q = rr % kw
                p = (rr // kw) % kh
                cl = rr // (kw * kh)
                for _ in range(RB):
                    if g >= gc:
                        break
                    ih = ih0 + p * dh
                    iw = iw0 + q * dw
                    v = dt(0)
                    if ih >= 0 and ih < height and iw >= 0 and iw < width:
                        v = x[u64(n), u64((g0 + g) * cg_ + cl), u64(ih), u64(iw)]
                    cols[u64(g), u64(r), u64(j)] = v
                    # next row: (c, p, q) counters; at the end of a group, restart
                    r += 1
                    q += 1
                    if q == kw:
                        q = 0
                        p += 1
                        if p == kh:
                            p = 0
                            cl += 1
                    if r == rc:
                        r = 0
                        g += 1
                        q = r0 % kw
                        p = (r0 // kw) % kh
                        cl = r0 // (kw * kh)
            j += cuda.gridDim.x * cuda.blockDim.x
    return im2col


@kernel_factory
def _make_col2im(dtype_name: str):
    dt = numba.from_dtype(np.dtype(dtype_name))

    @cuda.jit(cache=True)
    def col2im(cols, gx, g0, r0, j0, n_lo, n_cnt, cg_lo, cg_cnt, cg_, kh, kw, sh, sw,
               pt, pl, dh, dw, out_h, out_w, accumulate):
        """gx[n, c, h, w] (+)= sum over (p, q) of the chunk's column entries that
        read input pixel (h, w): one thread per pixel, a fixed summation order."""
        gc, rc, jc = cols.shape
        height, width = gx.shape[2], gx.shape[3]
        plane = out_h * out_w
        total = n_cnt * gc * cg_cnt * height * width
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            w = i % width
            t = i // width
            h = t % height
            t = t // height
            cgl = t % cg_cnt
            t = t // cg_cnt
            g = t % gc
            n = n_lo + t // gc
            cg = cg_lo + cgl
            c = (g0 + g) * cg_ + cg
            acc = dt(0)
            # _kernels.output_of_tap inlined, on purpose: this hot loop breaks early
            # (hh only decreases with p) and skips the modulo/division at stride 1
            for p in range(kh):
                hh = h + pt - p * dh
                if hh < 0:
                    break
                if sh == 1:
                    oh = hh
                elif hh % sh != 0:
                    continue
                else:
                    oh = hh // sh
                if oh >= out_h:
                    continue
                for q in range(kw):
                    ww = w + pl - q * dw
                    if ww < 0:
                        break
                    if sw == 1:
                        ow = ww
                    elif ww % sw != 0:
                        continue
                    else:
                        ow = ww // sw
                    if ow >= out_w:
                        continue
                    rr = (cg * kh + p) * kw + q - r0
                    jj = n * plane + oh * out_w + ow - j0
                    if rr >= 0 and rr < rc and jj >= 0 and jj < jc:
                        acc += cols[u64(g), u64(rr), u64(jj)]
            if accumulate:
                gx[u64(n), u64(c), u64(h), u64(w)] += acc
            else:
                gx[u64(n), u64(c), u64(h), u64(w)] = acc
            i += step
    return col2im


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _i(v):
    return np.int64(v)


def _is_pointwise(kernel_hw, stride, padding, dilation):
    return tuple(kernel_hw) == (1, 1) and tuple(stride) == (1, 1) and not any(padding)


def _workspace(size, dtype, stream):
    return empty((size,), dtype, stream)


def _chunk_view(space, gc, rc, jc):
    return space[:gc * rc * jc].reshape(gc, rc, jc)


def _launch_im2col(x, cols, g0, r0, j0, cg, kernel_hw, stride, padding, dilation,
                   out_hw, stream):
    kh, kw = kernel_hw
    gc, rc, jc = cols.shape
    row_blocks = -(-gc * rc // IM2COL_ROWS)
    if gemm._simulator():
        grid, threads = (2, min(row_blocks, 2)), 4
    else:
        threads = 128
        grid = (min(-(-jc // threads), 65535 * 8), min(row_blocks, 65535))
    _make_im2col(np.dtype(x.dtype).name)[grid, threads, stream](
        x, cols, _i(g0), _i(r0), _i(j0), _i(cg), _i(kh), _i(kw), _i(stride[0]),
        _i(stride[1]), _i(padding[0]), _i(padding[2]), _i(dilation[0]), _i(dilation[1]),
        _i(out_hw[1]), _i(out_hw[0] * out_hw[1]))


# --------------------------------------------------------------------------
# backend contract
# --------------------------------------------------------------------------

def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw, stream=0,
           gemm_config=None):
    """(N, K, out_h, out_w) = x (*) weight + bias. See the module docstring."""
    stream = stream_or_default(stream)
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    kg = k // groups
    rows = cg * kh * kw
    plane = out_hw[0] * out_hw[1]
    ncols = n * plane
    out = empty((n, k) + tuple(out_hw), x.dtype, stream)
    out3 = out.reshape(n, k, plane)
    w3 = weight.reshape(groups, kg, rows)
    if _is_pointwise((kh, kw), stride, padding, dilation):
        gemm.launch(w3, x.reshape(n, c, h * w), out3, kg, ncols, rows, groups,
                    bias=bias, split_b=(plane, 0), split_c=(plane, 0),
                    config=gemm_config, stream=stream)
        return out
    gc, rc, jc = plan_chunks(groups, rows, ncols, np.dtype(x.dtype).itemsize)
    space = _workspace(gc * rc * jc, x.dtype, stream)
    for g0, gn in _chunks(groups, gc):
        out_g = out3[:, g0 * kg:(g0 + gn) * kg, :]
        bias_g = None if bias is None else bias[g0 * kg:(g0 + gn) * kg]
        for j0, jn in _chunks(ncols, jc):
            for r0, rn in _chunks(rows, rc):
                cols = _chunk_view(space, gn, rn, jn)
                _launch_im2col(x, cols, g0, r0, j0, cg, (kh, kw), stride, padding,
                               dilation, out_hw, stream)
                gemm.launch(w3[g0:g0 + gn, :, r0:r0 + rn], cols, out_g, kg, jn, rn, gn,
                            beta=0.0 if r0 == 0 else 1.0,
                            bias=bias_g if r0 == 0 else None,
                            split_c=(plane, j0), config=gemm_config, stream=stream)
    return out


def conv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups,
                      stream=0, gemm_config=None):
    """dL/dx of shape input_shape: GEMM W^T @ grad_out per chunk, then col2im."""
    stream = stream_or_default(stream)
    n, c, h, w = (int(s) for s in input_shape)
    k, cg, kh, kw = weight.shape
    kg = k // groups
    rows = cg * kh * kw
    out_hw = tuple(grad_out.shape[2:])
    plane = out_hw[0] * out_hw[1]
    ncols = n * plane
    go3 = grad_out.reshape(n, k, plane)
    w3 = weight.reshape(groups, kg, rows)
    gx = empty((n, c, h, w), grad_out.dtype, stream)
    if _is_pointwise((kh, kw), stride, padding, dilation):
        gemm.launch(w3, go3, gx.reshape(n, c, h * w), cg, ncols, kg, groups,
                    trans_a=True, split_b=(plane, 0), split_c=(plane, 0),
                    config=gemm_config, stream=stream)
        return gx
    gc, rc, jc = plan_chunks(groups, rows, ncols, np.dtype(grad_out.dtype).itemsize)
    single = gc == groups and rc == rows and jc == ncols
    if not single:
        fill(gx, 0, stream)
    space = _workspace(gc * rc * jc, grad_out.dtype, stream)
    col2im = _make_col2im(np.dtype(grad_out.dtype).name)
    for g0, gn in _chunks(groups, gc):
        go_g = go3[:, g0 * kg:(g0 + gn) * kg, :]
        for j0, jn in _chunks(ncols, jc):
            n_lo, n_hi = j0 // plane, (j0 + jn - 1) // plane
            for r0, rn in _chunks(rows, rc):
                cols = _chunk_view(space, gn, rn, jn)
                gemm.launch(w3[g0:g0 + gn, :, r0:r0 + rn], go_g, cols, rn, jn, kg, gn,
                            trans_a=True, split_b=(plane, j0), config=gemm_config,
                            stream=stream)
                cg_lo, cg_hi = r0 // (kh * kw), (r0 + rn - 1) // (kh * kw)
                n_cnt, cg_cnt = n_hi - n_lo + 1, cg_hi - cg_lo + 1
                blocks, threads = launch_1d(n_cnt * gn * cg_cnt * h * w,
                                            small_in_simulator=True)
                col2im[blocks, threads, stream](
                    cols, gx, _i(g0), _i(r0), _i(j0), _i(n_lo), _i(n_cnt), _i(cg_lo),
                    _i(cg_cnt), _i(cg), _i(kh), _i(kw), _i(stride[0]), _i(stride[1]),
                    _i(padding[0]), _i(padding[2]), _i(dilation[0]), _i(dilation[1]),
                    _i(out_hw[0]), _i(out_hw[1]), not single)
    return gx


def conv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups,
                       stream=0, gemm_config=None):
    """dL/dweight of shape weight_shape: sum over column chunks of grad_out_g @ cols_g^T."""
    stream = stream_or_default(stream)
    n, c, h, w = x.shape
    k, cg, kh, kw = (int(s) for s in weight_shape)
    kg = k // groups
    rows = cg * kh * kw
    out_hw = tuple(grad_out.shape[2:])
    plane = out_hw[0] * out_hw[1]
    ncols = n * plane
    go3 = grad_out.reshape(n, k, plane)
    gw = empty((k, cg, kh, kw), x.dtype, stream)
    gw3 = gw.reshape(groups, kg, rows)
    if _is_pointwise((kh, kw), stride, padding, dilation):
        gemm.launch(go3, x.reshape(n, c, h * w), gw3, kg, rows, ncols, groups,
                    trans_b=True, split_a=(plane, 0), split_b=(plane, 0),
                    config=gemm_config, stream=stream)
        return gw
    gc, rc, jc = plan_chunks(groups, rows, ncols, np.dtype(x.dtype).itemsize)
    space = _workspace(gc * rc * jc, x.dtype, stream)
    for g0, gn in _chunks(groups, gc):
        go_g = go3[:, g0 * kg:(g0 + gn) * kg, :]
        for r0, rn in _chunks(rows, rc):
            gw_gr = gw3[g0:g0 + gn, :, r0:r0 + rn]
            for j0, jn in _chunks(ncols, jc):
                cols = _chunk_view(space, gn, rn, jn)
                _launch_im2col(x, cols, g0, r0, j0, cg, (kh, kw), stride, padding,
                               dilation, out_hw, stream)
                gemm.launch(go_g, cols, gw_gr, kg, rn, jn, gn, trans_b=True,
                            beta=0.0 if j0 == 0 else 1.0, split_a=(plane, j0),
                            config=gemm_config, stream=stream)
    return gw


__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "plan_chunks"]
