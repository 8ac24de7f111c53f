"""The numba kernels of the CPU Winograd backend (`fastconv.cpu.winograd` calls them;
they never parse arguments). The transforms of F(m x m, r x r), generic in the tile
sizes, with the passes for alpha = 6 (F(4x4,3x3)) and alpha = 8 (F(4x4,5x5)) written
out (`_mix6`, `_mix8`): all rows of a transform matrix in one pass. Other sizes, F(2x2)
included, make one pass per coefficient (`_combine`): a written-out F(2x2) cost more
compile time than it saved (docs/tuning.md).

The input transform has three kernels, which leave V in the same layout: by phases of
whole padded rows (`_input_transform_rows`, wide images), by gathering each tile's
values (`_input_transform_gather`, narrow ones) and channels-last
(`_input_transform_channels_last`, very narrow images with many channels);
`fastconv.cpu.winograd._input_transform` chooses.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._common import HELPER, KERNEL, copy


@numba.njit(**HELPER)
def _split_phases(src, planes, start, count, m):
    """planes[j, start + u] = src[m*u + j] for j < m, u < count: the column phases of
    a row. Written out for m = 4 and m = 2 (F(4x4), F(2x2)) so that LLVM turns the
    interleaved loads into vector shuffles (faster than the generic loop, which
    serves any other m: docs/tuning.md)."""
    stop = start + count
    if m == 4:
        d0, d1, d2, d3 = (planes[0, start:stop], planes[1, start:stop],
                          planes[2, start:stop], planes[3, start:stop])
        for u in range(count):
            d0[u] = src[4 * u]
            d1[u] = src[4 * u + 1]
            d2[u] = src[4 * u + 2]
            d3[u] = src[4 * u + 3]
    elif m == 2:
        d0, d1 = planes[0, start:stop], planes[1, start:stop]
        for u in range(count):
            d0[u] = src[2 * u]
            d1[u] = src[2 * u + 1]
    else:
        for j in range(m):
            shifted = src[j:]
            row = planes[j, start:stop]
            for u in range(count):
                row[u] = shifted[m * u]


@numba.njit(**HELPER)
def _combine(dst, coefs, planes, m, step):
    """dst[q] = sum_j coefs[j] * planes[j % m][q + (j // m) * step] over dst's length:
    one vector pass per nonzero coefficient (the zeros of B^T are skipped)."""
    dst[:] = 0
    for j in range(coefs.shape[0]):
        coef = coefs[j]
        if coef != 0:
            src = planes[j % m][(j // m) * step:]
            for q in range(dst.shape[0]):
                dst[q] += coef * src[q]


@numba.njit(**HELPER)
def _mix6(C, o0, o1, o2, o3, o4, o5, i0, i1, i2, i3, i4, i5):
    """o_a[q] = sum_j C[a, j] * i_j[q] over o0's length, for a 6x6 matrix C (B^T of
    F(4x4), or A^T padded with zero rows): all six outputs in one pass over the six
    inputs. `_combine` makes one pass per output and nonzero coefficient, reading and
    writing its output each time, so this pass is faster although the zero
    coefficients cost multiplies (docs/tuning.md). Its compile time is paid only by
    calls that run it (`fastconv.cpu.winograd._written_passes`)."""
    c00, c01, c02, c03, c04, c05 = C[0, 0], C[0, 1], C[0, 2], C[0, 3], C[0, 4], C[0, 5]
    c10, c11, c12, c13, c14, c15 = C[1, 0], C[1, 1], C[1, 2], C[1, 3], C[1, 4], C[1, 5]
    c20, c21, c22, c23, c24, c25 = C[2, 0], C[2, 1], C[2, 2], C[2, 3], C[2, 4], C[2, 5]
    c30, c31, c32, c33, c34, c35 = C[3, 0], C[3, 1], C[3, 2], C[3, 3], C[3, 4], C[3, 5]
    c40, c41, c42, c43, c44, c45 = C[4, 0], C[4, 1], C[4, 2], C[4, 3], C[4, 4], C[4, 5]
    c50, c51, c52, c53, c54, c55 = C[5, 0], C[5, 1], C[5, 2], C[5, 3], C[5, 4], C[5, 5]
    for q in range(o0.shape[0]):
        v0, v1, v2, v3, v4, v5 = i0[q], i1[q], i2[q], i3[q], i4[q], i5[q]
        o0[q] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3 + c04 * v4 + c05 * v5
        o1[q] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3 + c14 * v4 + c15 * v5
        o2[q] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3 + c24 * v4 + c25 * v5
        o3[q] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3 + c34 * v4 + c35 * v5
        o4[q] = c40 * v0 + c41 * v1 + c42 * v2 + c43 * v3 + c44 * v4 + c45 * v5
        o5[q] = c50 * v0 + c51 * v1 + c52 * v2 + c53 * v3 + c54 * v4 + c55 * v5


@numba.njit(**HELPER)
def _mix8(C, o0, o1, o2, o3, o4, o5, o6, o7, i0, i1, i2, i3, i4, i5, i6, i7):
    """`_mix6` for an 8x8 matrix C (B^T of F(4x4,5x5), or A^T padded with zero rows)."""
    c00, c01, c02, c03, c04, c05, c06, c07 = (C[0, 0], C[0, 1], C[0, 2], C[0, 3],
                                              C[0, 4], C[0, 5], C[0, 6], C[0, 7])
    c10, c11, c12, c13, c14, c15, c16, c17 = (C[1, 0], C[1, 1], C[1, 2], C[1, 3],
                                              C[1, 4], C[1, 5], C[1, 6], C[1, 7])
    c20, c21, c22, c23, c24, c25, c26, c27 = (C[2, 0], C[2, 1], C[2, 2], C[2, 3],
                                              C[2, 4], C[2, 5], C[2, 6], C[2, 7])
    c30, c31, c32, c33, c34, c35, c36, c37 = (C[3, 0], C[3, 1], C[3, 2], C[3, 3],
                                              C[3, 4], C[3, 5], C[3, 6], C[3, 7])
    c40, c41, c42, c43, c44, c45, c46, c47 = (C[4, 0], C[4, 1], C[4, 2], C[4, 3],
                                              C[4, 4], C[4, 5], C[4, 6], C[4, 7])
    c50, c51, c52, c53, c54, c55, c56, c57 = (C[5, 0], C[5, 1], C[5, 2], C[5, 3],
                                              C[5, 4], C[5, 5], C[5, 6], C[5, 7])
    c60, c61, c62, c63, c64, c65, c66, c67 = (C[6, 0], C[6, 1], C[6, 2], C[6, 3],
                                              C[6, 4], C[6, 5], C[6, 6], C[6, 7])
    c70, c71, c72, c73, c74, c75, c76, c77 = (C[7, 0], C[7, 1], C[7, 2], C[7, 3],
                                              C[7, 4], C[7, 5], C[7, 6], C[7, 7])
    for q in range(o0.shape[0]):
        v0, v1, v2, v3, v4, v5, v6, v7 = i0[q], i1[q], i2[q], i3[q], i4[q], i5[q], i6[q], i7[q]
        o0[q] = (c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3
                 + c04 * v4 + c05 * v5 + c06 * v6 + c07 * v7)
        o1[q] = (c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3
                 + c14 * v4 + c15 * v5 + c16 * v6 + c17 * v7)
        o2[q] = (c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3
                 + c24 * v4 + c25 * v5 + c26 * v6 + c27 * v7)
        o3[q] = (c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3
                 + c34 * v4 + c35 * v5 + c36 * v6 + c37 * v7)
        o4[q] = (c40 * v0 + c41 * v1 + c42 * v2 + c43 * v3
                 + c44 * v4 + c45 * v5 + c46 * v6 + c47 * v7)
        o5[q] = (c50 * v0 + c51 * v1 + c52 * v2 + c53 * v3
                 + c54 * v4 + c55 * v5 + c56 * v6 + c57 * v7)
        o6[q] = (c60 * v0 + c61 * v1 + c62 * v2 + c63 * v3
                 + c64 * v4 + c65 * v5 + c66 * v6 + c67 * v7)
        o7[q] = (c70 * v0 + c71 * v1 + c72 * v2 + c73 * v3
                 + c74 * v4 + c75 * v5 + c76 * v6 + c77 * v7)


@numba.njit(**HELPER)
def _transform_2d(BT, mix6, mix8, d, cols, out, idx):
    """out[a*alpha + b, idx] = (B^T d B)[a, b] for tiles laid out d[i, j, :] (along the
    last axis: tiles, or channels), `cols` (same shape) as scratch: one pass per
    column of d for B^T d, then one per row for (B^T d) B. `mix6` / `mix8`: B^T
    itself where the written-out passes apply, else None (see
    `fastconv.cpu.winograd._written_passes`)."""
    alpha = BT.shape[0]
    if mix6 is not None:
        for j in range(alpha):                    # cols[a, j] = (B^T d)[a, j, :]
            _mix6(mix6, cols[0, j], cols[1, j], cols[2, j], cols[3, j], cols[4, j],
                  cols[5, j], d[0, j], d[1, j], d[2, j], d[3, j], d[4, j], d[5, j])
        for a in range(alpha):                    # out = (cols B)[a, b, :]
            ca = cols[a]
            _mix6(mix6, out[6 * a, idx], out[6 * a + 1, idx], out[6 * a + 2, idx],
                  out[6 * a + 3, idx], out[6 * a + 4, idx], out[6 * a + 5, idx],
                  ca[0], ca[1], ca[2], ca[3], ca[4], ca[5])
    elif mix8 is not None:
        for j in range(alpha):
            _mix8(mix8, cols[0, j], cols[1, j], cols[2, j], cols[3, j], cols[4, j], cols[5, j],
                  cols[6, j], cols[7, j], d[0, j], d[1, j], d[2, j], d[3, j], d[4, j],
                  d[5, j], d[6, j], d[7, j])
        for a in range(alpha):
            ca = cols[a]
            o = 8 * a
            _mix8(mix8, out[o, idx], out[o + 1, idx], out[o + 2, idx], out[o + 3, idx],
                  out[o + 4, idx], out[o + 5, idx], out[o + 6, idx], out[o + 7, idx],
                  ca[0], ca[1], ca[2], ca[3], ca[4], ca[5], ca[6], ca[7])
    else:                                         # other tile sizes: a pass per coefficient
        ca = cols[0]                              # one row a at a time
        for a in range(alpha):
            for j in range(alpha):
                _combine(ca[j], BT[a], d[:, j], alpha, 0)
            for b in range(alpha):
                _combine(out[a * alpha + b, idx], BT[b], ca, alpha, 0)


@numba.njit(**KERNEL)
def _input_transform_rows(x, BT, mix6, V, row0, tiles_h, tiles_w, m, pt, pl):
    """V[a*alpha + b, c, t] = (B^T d B)[a, b] for the input tile d of every tile t of
    this chunk (tile rows row0.. of the flattened (image, tile row) index), for
    images wide enough that a row of tiles makes a long vector loop.

    Tile (ty, tx) reads xpad[m*ty + i, m*tx + j]. Each padded input row is split
    once into its column phases, and phase planes
    P[ry, j][Y*tiles_w + U] = xpad[m*Y + ry, m*U + j]   (j < alpha, so phases j >= m
    are phases j - m shifted by one tile) are laid out band by band, where a band
    is one image's consecutive tile rows. Then both halves of B^T d B are shifted
    vector passes over a whole band: horizontally
    Hz[b, ry] = sum_j BT[b, j] P[ry, j], vertically
    V[a, b] = sum_i BT[a, i] Hz[b, i % m] shifted by i // m tile rows,
    written straight into V. Parallel over channels.
    """
    alpha = BT.shape[0]
    height, width = x.shape[2], x.shape[3]
    chunk_rows = V.shape[2] // tiles_w
    extra = (alpha - 1) // m                      # tile rows a band reads beyond its own
    plane = (chunk_rows + extra) * tiles_w + extra    # + the last row's spill
    span = m * (tiles_w + extra)                  # padded input columns split per row
    lo, hi = max(0, pl), min(span, width + pl)    # ... and those inside the input
    for c in prange(x.shape[1]):
        phases = np.empty((m, alpha, plane), dtype=x.dtype)
        hz = np.empty((alpha, m, plane), dtype=x.dtype)
        padded = np.zeros(span, dtype=x.dtype)
        local = 0
        while local < chunk_rows:                 # bands
            row = row0 + local
            n, ty0 = row // tiles_h, row % tiles_h
            band = min(tiles_h - ty0, chunk_rows - local)
            length = (band + extra) * tiles_w
            for yb in range(band + extra):
                for ry in range(m):
                    y = m * (ty0 + yb) + ry - pt
                    if 0 <= y < height:
                        copy(padded[lo:hi], x[n, c, y, lo - pl:])
                    else:
                        padded[lo:hi] = 0
                    # phases j < m: this row's tiles_w values and `extra` more, which
                    # spill into the next row's start until that row overwrites them;
                    # phases j >= m are phase j - m one tile further on, copied first
                    start = yb * tiles_w
                    _split_phases(padded, phases[ry], start, tiles_w + extra, m)
                    for j in range(m, alpha):
                        copy(phases[ry, j, start:start + tiles_w],
                             phases[ry, j % m, start + j // m:])
            t0, t1 = local * tiles_w, (local + band) * tiles_w
            if mix6 is not None:                  # F(4x4,3x3): written-out passes
                for ry in range(m):
                    p = phases[ry]
                    _mix6(mix6, hz[0, ry, :length], hz[1, ry, :length], hz[2, ry, :length],
                          hz[3, ry, :length], hz[4, ry, :length], hz[5, ry, :length],
                          p[0], p[1], p[2], p[3], p[4], p[5])
                for b in range(alpha):
                    h = hz[b]
                    _mix6(mix6, V[b, c, t0:t1], V[6 + b, c, t0:t1], V[12 + b, c, t0:t1],
                          V[18 + b, c, t0:t1], V[24 + b, c, t0:t1], V[30 + b, c, t0:t1],
                          h[0], h[1], h[2], h[3], h[0, tiles_w:], h[1, tiles_w:])
            else:
                for b in range(alpha):
                    for ry in range(m):
                        _combine(hz[b, ry, :length], BT[b], phases[ry], alpha, 0)
                for a in range(alpha):
                    for b in range(alpha):
                        _combine(V[a * alpha + b, c, t0:t1], BT[a], hz[b], m, tiles_w)
            local += band


@numba.njit(**KERNEL)
def _input_transform_gather(x, BT, mix6, mix8, V, row0, tiles_h, tiles_w, m, pt, pl):
    """V[a*alpha + b, c, t] = (B^T d B)[a, b] for the input tile d of each tile t
    of this chunk (tile rows row0.. of the flattened (image, tile row) index).

    Parallel over channels; per channel the chunk's tiles are first gathered
    into d[i, j, t], so that both transform steps are long vector loops over
    the tiles t (the tile's own 6x6 loops are too short to vectorise).
    """
    alpha = BT.shape[0]
    height, width = x.shape[2], x.shape[3]
    tiles = V.shape[2]
    chunk_rows = tiles // tiles_w
    span = tiles_w * m + alpha - m            # padded input columns a row of tiles reads
    for c in prange(x.shape[1]):
        d = np.empty((alpha, alpha, tiles), dtype=x.dtype)
        cols = np.empty((alpha, alpha, tiles), dtype=x.dtype)   # (B^T d)[a, j, :]
        padded = np.zeros(span, dtype=x.dtype)
        lo, hi = max(0, pl), min(span, width + pl)   # padded columns inside the input
        for local_row in range(chunk_rows):
            row = row0 + local_row
            n = row // tiles_h
            y0 = (row % tiles_h) * m - pt
            t0 = local_row * tiles_w
            for i in range(alpha):
                y = y0 + i
                if 0 <= y < height:
                    copy(padded[lo:hi], x[n, c, y, lo - pl:])
                else:
                    padded[lo:hi] = 0
                d_row = d[i]
                for tx in range(tiles_w):
                    tile_cols = padded[tx * m:]
                    for j in range(alpha):
                        d_row[j, t0 + tx] = tile_cols[j]
        _transform_2d(BT, mix6, mix8, d, cols, V, c)


@numba.njit(**KERNEL)
def _input_transform_channels_last(x, BT, mix6, mix8, V, row0, tiles_h, tiles_w, m, pt, pl,
                                   block):
    """V[a*alpha + b, c, t] = (B^T d B)[a, b] for the input tile d of each tile t of
    this chunk, vectorised over the channels instead of the tiles: for narrow images
    with many channels, where a channel has few tiles. Parallel over blocks of
    `block` tiles; each tile's values are gathered across the channels (reads that
    stay in cache on such small planes), both transform passes run along the
    channels, and the block is written to V transposed, a run of `block` tiles per
    channel, so that the GEMM reads V as the other kernels leave it."""
    alpha = BT.shape[0]
    c_in, height, width = x.shape[1], x.shape[2], x.shape[3]
    tiles = V.shape[2]
    for first in prange((tiles + block - 1) // block):
        t0 = first * block
        count = min(block, tiles - t0)
        d = np.empty((alpha, alpha, c_in), dtype=x.dtype)       # one tile, channels last
        cols = np.empty((alpha, alpha, c_in), dtype=x.dtype)    # (B^T d)[a, j, :]
        v_block = np.empty((alpha * alpha, block, c_in), dtype=x.dtype)
        for u in range(count):
            t = t0 + u
            row = row0 + t // tiles_w
            n, ty, tx = row // tiles_h, row % tiles_h, t % tiles_w
            for i in range(alpha):
                y = ty * m + i - pt
                for j in range(alpha):
                    col = tx * m + j - pl
                    if 0 <= y < height and 0 <= col < width:
                        copy(d[i, j], x[n, :, y, col])
                    else:
                        d[i, j, :] = 0
            _transform_2d(BT, mix6, mix8, d, cols, v_block, u)
        for e in range(alpha * alpha):
            src = v_block[e]
            for c in range(c_in):
                dst = V[e, c, t0:t0 + count]
                for u in range(count):
                    dst[u] = src[u, c]



@numba.njit(**KERNEL)
def _output_transform(M, AT, mix6, mix8, bias, out, row0, tiles_h, tiles_w):
    """out[n, k, tile] = (A^T M A) + bias[k], cropped at the bottom/right border.
    Parallel over output channels; both steps are vector loops over the tiles (for
    F(4x4,3x3) and F(4x4,5x5), alpha rows at a time by `_mix6` / `_mix8` with A^T
    padded to alpha x alpha by zero rows, passed as `mix6` / `mix8`; None where they do
    not apply: see `fastconv.cpu.winograd._written_passes`)."""
    m, alpha = AT.shape
    tiles = M.shape[2]
    chunk_rows = tiles // tiles_w
    out_h, out_w = out.shape[2], out.shape[3]
    # The scatter's integer divisions, once per call instead of once per channel.
    cols_per_phase = np.empty(m, dtype=np.int64)      # tiles whose column j is inside
    for j in range(m):
        cols_per_phase[j] = min(tiles_w, (out_w - j + m - 1) // m)
    row_image = np.empty(chunk_rows, dtype=np.int64)
    row_y0 = np.empty(chunk_rows, dtype=np.int64)
    row_height = np.empty(chunk_rows, dtype=np.int64)  # output rows inside, of m
    for local_row in range(chunk_rows):
        row = row0 + local_row
        row_image[local_row] = row // tiles_h
        row_y0[local_row] = (row % tiles_h) * m
        row_height[local_row] = min(m, out_h - row_y0[local_row])
    for k in prange(M.shape[1]):
        y_tile = np.empty((m, m, tiles), dtype=M.dtype)
        if mix6 is not None:
            tmp6 = np.empty((alpha, alpha, tiles), dtype=M.dtype)
            for b in range(alpha):                    # tmp6[i, b] = (A^T M)[i, b, :]
                _mix6(mix6, tmp6[0, b], tmp6[1, b], tmp6[2, b], tmp6[3, b],
                      tmp6[4, b], tmp6[5, b], M[b, k], M[6 + b, k], M[12 + b, k],
                      M[18 + b, k], M[24 + b, k], M[30 + b, k])
            spare = tmp6[4]                           # A^T's zero rows: free scratch now
            for i in range(m):                        # Y = (tmp A)[i, j, :]
                t = tmp6[i]
                _mix6(mix6, y_tile[i, 0], y_tile[i, 1], y_tile[i, 2], y_tile[i, 3],
                      spare[0], spare[1], t[0], t[1], t[2], t[3], t[4], t[5])
        elif mix8 is not None:
            tmp8 = np.empty((alpha, alpha, tiles), dtype=M.dtype)
            for b in range(alpha):
                _mix8(mix8, tmp8[0, b], tmp8[1, b], tmp8[2, b], tmp8[3, b],
                      tmp8[4, b], tmp8[5, b], tmp8[6, b], tmp8[7, b], M[b, k], M[8 + b, k],
                      M[16 + b, k], M[24 + b, k], M[32 + b, k], M[40 + b, k], M[48 + b, k],
                      M[56 + b, k])
            spare = tmp8[4]
            for i in range(m):
                t = tmp8[i]
                _mix8(mix8, y_tile[i, 0], y_tile[i, 1], y_tile[i, 2], y_tile[i, 3],
                      spare[0], spare[1], spare[2], spare[3], t[0], t[1], t[2], t[3], t[4],
                      t[5], t[6], t[7])
        else:
            tmp = np.empty((alpha, tiles), dtype=M.dtype)   # other tile sizes: generic passes
            for i in range(m):
                for b in range(alpha):                # tmp = (A^T M)[i, b, :]
                    _combine(tmp[b], AT[i], M[b::alpha, k], alpha, 0)
                for j in range(m):                    # Y = (tmp A)[i, j, :]
                    _combine(y_tile[i, j], AT[j], tmp, alpha, 0)
        bias_k = bias[k]
        for local_row in range(chunk_rows):           # scatter + bias, cropped at the border
            t0 = local_row * tiles_w
            plane = out[row_image[local_row], k]
            y0 = row_y0[local_row]
            for i in range(row_height[local_row]):
                dst = plane[y0 + i]
                for j in range(m):
                    src = y_tile[i, j, t0:]
                    for tx in range(cols_per_phase[j]):
                        dst[tx * m + j] = src[tx] + bias_k



@numba.njit(**KERNEL)
def _filter_transform(weight, G, U):
    """U[a*alpha + b, k, c] = (G w[k, c] G^T)[a, b], accumulated in float64, for an
    r x r kernel (G is alpha x r).

    Parallel over output channels; within one, every step is a vector loop
    along the input channels c (zeros of G skipped)."""
    alpha, r = G.shape
    k_count, c_count = weight.shape[0], weight.shape[1]
    for k in prange(k_count):
        wt = np.empty((r * r, c_count), dtype=np.float64)      # w[k] transposed
        for c in range(c_count):
            for q in range(r * r):
                wt[q, c] = weight[k, c, q // r, q % r]
        tmp = np.zeros((alpha * r, c_count), dtype=np.float64)   # G w
        for a in range(alpha):
            for i in range(r):
                coef = G[a, i]
                if coef != 0:
                    for j in range(r):
                        for c in range(c_count):
                            tmp[a * r + j, c] += coef * wt[i * r + j, c]
        row = np.empty(c_count, dtype=np.float64)
        for a in range(alpha):
            for b in range(alpha):                          # (G w) G^T
                row[:] = 0.0
                for j in range(r):
                    coef = G[b, j]
                    if coef != 0:
                        for c in range(c_count):
                            row[c] += coef * tmp[a * r + j, c]
                dst = U[a * alpha + b, k]
                for c in range(c_count):
                    dst[c] = row[c]



@numba.njit(**KERNEL)
def _grad_out_tiles(grad_out, tiles, row0, tiles_h, tiles_w):
    """tiles[k, t] = the m x m block of grad_out under tile t of this chunk (tile rows
    row0.. of the flattened (image, tile row) index), zero beyond its border."""
    m = tiles.shape[2]
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    for k in prange(tiles.shape[0]):
        for t in range(tiles.shape[1]):
            row = row0 + t // tiles_w
            n, y0, x0 = row // tiles_h, (row % tiles_h) * m, (t % tiles_w) * m
            for i in range(m):
                for j in range(m):
                    inside = y0 + i < out_h and x0 + j < out_w
                    tiles[k, t, i, j] = grad_out[n, k, y0 + i, x0 + j] if inside else 0

