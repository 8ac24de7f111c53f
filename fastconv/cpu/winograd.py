"""Winograd convolution F(m x m, r x r) on the CPU (Lavin & Gray, 2015).

Backend contract: docs/internals.md. For an r x r kernel (3x3: `algorithm="winograd"`;
5x5: chosen by `auto` only, see autotune.py), stride 1, dilation 1, each m x m
output tile is computed from an alpha x alpha input tile (alpha = m + r - 1) as

    Y = A^T [ (G g G^T)  (.)  (B^T d B) ] A

and the elementwise product, summed over input channels, becomes alpha^2
independent GEMMs:  M[e] (K x T) = U[e] (K x C) @ V[e] (C x T)  for every
tile element e, over all T tiles at once. The steps:

1. filter transform  U = G w G^T            numba, parallel over K; kept for the next
                                            call with the same weights (_kept_filter)
2. input transform   V = B^T d B            numba, parallel over channels (over tiles
                                            in the channels-last kernel)
3. alpha^2 GEMMs     M = U @ V              (alpha^2, K, C) @ (alpha^2, C, T): gemm.py's
                                            micro-kernel, or np.matmul (OpenBLAS) where
                                            gemm.tile_for says it is faster
4. output transform  Y = A^T M A (+ bias)   numba, parallel over output channels

`conv2d_grad_input` is the same with the rotated kernel; `conv2d_grad_weight` is
F(r x r, m x m), these steps with filter and output swapped (see its docstring).

The input transform has three kernels: for wide images (a row of at least
ROW_KERNEL_MIN_TILES[alpha] tiles) it splits padded rows into column phases so that
each step is a shifted vector pass over a whole band of tile rows (input
transform 1.5-3x faster on 224-, 56- and 28-wide layers); for narrow ones it
gathers each tile's alpha x alpha values first (a band is then too short to
vectorise); for very narrow images with many channels (ResNet's 7x7 and 14x14) it
gathers each tile across the channels and vectorises over them. All three leave V
in the same layout.

The matrices A^T, G, B^T are data, built by `winograd_matrices` from the
interpolation points (0, 1, -1, 2, -2, ... and infinity) by Toom-Cook; the
kernels are generic in alpha, with alpha = 6 (F(4x4,3x3)) and alpha = 8
(F(4x4,5x5)) written out in `_mix6` and `_mix8`: all rows of a transform matrix in
one pass (the others, F(2x2,3x3) included, make one pass per coefficient: a
written-out version for F(2x2), now rarely chosen, cost more compile time than it
saved). Tiles are processed in chunks of tile rows so that V and M stay within
`config.workspace_bytes` (and near CHUNK_TARGET_BYTES).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from fractions import Fraction
from functools import lru_cache

import numba
import numpy as np
from numba import prange

from ..config import config
from . import direct, gemm
from ._common import HELPER, KERNEL, bias_or_zeros, copy, grad_input_as_forward

R = 3                               # kernel size of algorithm="winograd"
DEFAULT_TILE = 4                    # F(4x4, 3x3)
CHUNK_TARGET_BYTES = 64 * 2**20     # V + M of one chunk (measured: see _chunk_rows)
# Tiles per row from which the row-phase input transform wins, by the input tile size
# alpha (4: F(2x2,3x3), 6: F(4x4,3x3), 8: F(4x4,5x5)) (measured
# interleaved, ms rows/gather; F(2x2): 8x256x10x10 (5 tiles) 0.74/0.66, 8x256x12x12
# 1.31/1.55, 8x256x14x14 1.57/2.03, 8x64x56x56 (28) 1.97/3.94; F(4x4): 8x128x28x28 (7)
# 2.58/2.08, 8x128x48x48 (12) 3.59/3.36, 8x64x56x56 (14) 2.1/2.2, 2x128x112x112 (28)
# 3.28/4.44, 1x64x224x224 (56) 3.0/14.3: the gather's per-channel tiles outgrow the cache).
# F(4x4,5x5) (alpha 8), ms rows/gather: 8x32x32x32 (8 tiles) 1.52/0.83, 2x64x56x56 (14)
# 1.78/1.15, 1x32x112x112 (28) 1.17/1.00, 1x16x224x224 (56) 1.64/1.48: the gather, with
# its written-out passes (`_mix8`), against the row kernel's generic ones.
ROW_KERNEL_MIN_TILES = {4: 6, 6: 14, 8: 2**31}     # by alpha (input tile size)
ROW_KERNEL_MIN_TILES_OTHER = 7     # other tile sizes (not measured)
# Chunks of images at most CHANNELS_LAST_MAX_TILES_W tiles wide, with at least
# CHANNELS_LAST_MIN_CHANNELS channels and at most CHANNELS_LAST_MAX_VALUES tiles x
# channels (V of the chunk at most 4.7 MB for F(4x4)), take the channels-last input
# transform: its vector loops run over the channels
# instead of a channel's few tiles. Measured interleaved (F(4x4,3x3) unless noted, ms),
# input transform alone, gather / channels-last (both leave the same V): 8x512x7x7 (32
# tiles) 0.75/0.39, 1x256x14x14 (16) 0.25/0.15, 8x256x14x14 (128) 1.02/0.64, 8x128x14x14
# (128) 0.48/0.47; the gather wins with fewer channels (8x64x14x14 0.25/0.41; F(4x4,5x5)
# 2x128x16x16 0.42/0.51) and on wider images, where reads across the channels leave the
# cache (2x256x28x28, 7 tiles wide: 0.65/1.52; 8x128x28x28 1.11/1.35). Whole calls,
# tile-major / channels-last: 8x512x7x7 8.9/8.4, 8.6/8.3, 9.5/8.6; 4x256x14x14 4.5/4.2;
# 8x256x14x14 (128 tiles x 256 channels) 6.9/6.9, 7.7/7.4, 8.0/7.6, 6.59/6.44; 4x512x14x14
# 12.07/11.98; but with more tiles x channels the gather: 8x512x14x14 19.6/20.2, 19.8/20.9,
# 22.2/23.2, 19.4/19.9; 16x256x14x14 11.3/11.7; 8x384x14x14 12.2/12.5.
CHANNELS_LAST_MAX_VALUES = 128 * 256
CHANNELS_LAST_MAX_TILES_W = 4
CHANNELS_LAST_MIN_CHANNELS = 256
CHANNELS_LAST_BLOCK = 8         # tiles per work item (16 measured 0-6% slower)


# --------------------------------------------------------------------------
# transform matrices, as data
# --------------------------------------------------------------------------

def _points(count):
    """0, 1, -1, 2, -2, 1/2, -1/2, ...: small points keep the transforms accurate."""
    candidates = [Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2),
                  Fraction(1, 2), Fraction(-1, 2), Fraction(3), Fraction(-3)]
    if count > len(candidates):
        raise ValueError(f"no Winograd points for {count} finite points")
    return candidates[:count]


def _evaluation(points, n):
    """(alpha x n): row j evaluates a polynomial with n coefficients at point j;
    the last row, the point at infinity, picks its leading coefficient."""
    rows = [[p ** i for i in range(n)] for p in points]
    rows.append([Fraction(int(i == n - 1)) for i in range(n)])
    return rows


def _inverse(matrix):
    """Exact inverse of a small square matrix of Fractions (Gauss-Jordan)."""
    n = len(matrix)
    work = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if work[r][col] != 0)
        work[col], work[pivot] = work[pivot], work[col]
        scale = work[col][col]
        work[col] = [v / scale for v in work[col]]
        for r in range(n):
            if r != col and work[r][col] != 0:
                factor = work[r][col]
                work[r] = [a - factor * b for a, b in zip(work[r], work[col])]
    return [row[n:] for row in work]


def _lcm(values):
    result = 1
    for v in values:
        result = result * v // np.gcd(result, v)
    return result


@lru_cache(maxsize=None)
def winograd_matrices(m, r=R):
    """(A^T, G, B^T) of F(m, r) as float64 arrays of shapes (m, a), (a, r), (a, a),
    a = m + r - 1: 1-D correlation y[i] = sum_k g[k] d[i + k] = A^T [(G g) * (B^T d)].

    Toom-Cook: a linear convolution is c = C [(G g) * (H h)] with G, H the
    evaluations at the points `_points(a - 1)` and infinity and C = inverse of the
    a x a evaluation (the interpolation); correlation is its transpose,
    A^T = H^T and B^T = C^T. Each row of B^T is scaled to integers (its
    factor moved into G), so the input transform adds and multiplies exactly.
    """
    alpha = m + r - 1
    points = _points(alpha - 1)
    G = _evaluation(points, r)
    AT = [list(col) for col in zip(*_evaluation(points, m))]
    BT = [list(col) for col in zip(*_inverse(_evaluation(points, alpha)))]
    for j, row in enumerate(BT):
        scale = _lcm([v.denominator for v in row])
        BT[j] = [v * scale for v in row]
        G[j] = [v / scale for v in G[j]]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (AT, G, BT))


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

@numba.njit(**HELPER)
def _split_phases(src, planes, start, count, m):
    """planes[j, start + u] = src[m*u + j] for j < m, u < count: the column phases of
    a row. Written out for m = 4 and m = 2 (F(4x4), F(2x2)) so that LLVM turns the
    interleaved loads into vector shuffles: 3-10x faster than the generic loop,
    which serves any other m."""
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
    writing its output each time; written out for alpha = 6, this pass is 1.4-1.5x
    faster per transform (the zero coefficients cost multiplies, not memory). It
    costs compile time (about 1.5 s for each kernel that inlines it), paid only by
    calls that run it (`_written_passes`)."""
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
    """`_mix6` for an 8x8 matrix C (B^T of F(4x4,5x5), or A^T padded with zero rows).
    Input transform 2.8x and output transform 2x faster than `_combine`'s passes on
    8x32x32x32 -> 64 (1.56 -> 0.56 ms, 1.80 -> 0.89 ms)."""
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
    itself where the written-out passes apply, else None (see `_written_passes`)."""
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


def _written_passes(C):
    """(mix6, mix8): the square matrix C as the argument that selects the written-out
    pass for its size (`_mix6` or `_mix8`), None for the other; (None, None) for other
    sizes (the generic passes). The kernels branch on `is not None`, which numba
    decides at compile time from the argument types: each call compiles only the
    passes it runs (an F(4x4,3x3) call does not compile F(4x4,5x5)'s, nor the generic
    ones), which keeps the first call's compile time down."""
    return (C if C.shape[0] == 6 else None), (C if C.shape[0] == 8 else None)


def _channels_last_wins(c_in, tiles, tiles_w):
    """Whether the channels-last input transform beats the tile-major ones for a chunk
    of `tiles` tiles (see CHANNELS_LAST_MAX_VALUES)."""
    return (tiles_w <= CHANNELS_LAST_MAX_TILES_W and c_in >= CHANNELS_LAST_MIN_CHANNELS
            and tiles * c_in <= CHANNELS_LAST_MAX_VALUES)


def _input_transform(x, BT, V, row0, tiles_h, tiles_w, m, pt, pl):
    """V[a*alpha + b, c, t] = (B^T d B)[a, b] for the input tile d of each tile t of
    this chunk: channels-last for narrow images with many channels, the row-phase
    kernel where rows of tiles are long, else the gather."""
    tiles = V.shape[2]
    mix6, mix8 = _written_passes(BT)
    if _channels_last_wins(x.shape[1], tiles, tiles_w):
        # blocks of up to CHANNELS_LAST_BLOCK tiles, at least one per thread
        block = max(1, min(CHANNELS_LAST_BLOCK, -(-tiles // numba.get_num_threads())))
        _input_transform_channels_last(x, BT, mix6, mix8, V, row0, tiles_h, tiles_w, m, pt,
                                       pl, block)
    elif tiles_w >= ROW_KERNEL_MIN_TILES.get(BT.shape[0], ROW_KERNEL_MIN_TILES_OTHER):
        # its written-out passes assume that B^T's last two rows are the next tile's first
        _input_transform_rows(x, BT, mix6 if m == 4 else None, V, row0, tiles_h, tiles_w,
                              m, pt, pl)
    else:
        _input_transform_gather(x, BT, mix6, mix8, V, row0, tiles_h, tiles_w, m, pt, pl)


@numba.njit(**KERNEL)
def _output_transform(M, AT, mix6, mix8, bias, out, row0, tiles_h, tiles_w):
    """out[n, k, tile] = (A^T M A) + bias[k], cropped at the bottom/right border.
    Parallel over output channels; both steps are vector loops over the tiles (for
    F(4x4,3x3) and F(4x4,5x5), alpha rows at a time by `_mix6` / `_mix8` with A^T
    padded to alpha x alpha by zero rows, passed as `mix6` / `mix8`; None where they do
    not apply: see `_written_passes`)."""
    m, alpha = AT.shape
    tiles = M.shape[2]
    chunk_rows = tiles // tiles_w
    out_h, out_w = out.shape[2], out.shape[3]
    # The scatter's integer divisions, once per call instead of once per channel: they
    # made it ~1.6x slower (8x256x14x14: output transform 0.69 -> 0.52 ms).
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


# --------------------------------------------------------------------------
# wrappers
# --------------------------------------------------------------------------

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


_pool = threading.local()


def _scratch(slot, shape, dtype):
    """A scratch array of `shape` for this thread, reused across calls (fresh pages
    cost a page fault each: ~10% of a call on the ResNet layers). Only this call
    sees it; results are always new arrays. `release_workspace()` frees it."""
    buffers = getattr(_pool, "buffers", None)
    if buffers is None:
        buffers = _pool.buffers = {}
    size = int(np.prod(shape))
    dtype = np.dtype(dtype)
    buf = buffers.get((slot, dtype))
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        buffers[(slot, dtype)] = buf
    return buf[:size].reshape(shape)


def release_workspace():
    """Free this thread's kept scratch buffers and the kept transformed filters."""
    _pool.buffers = {}
    with _filters_lock:
        _filters.clear()
        _sightings.clear()


# Transformed filters kept between calls, so that a convolution called again with the
# same weights (inference, benchmarks) skips step 1, which writes K*C*alpha^2 values:
# 6.4 of 15.3 ms on 8x512x7x7 with F(4x4). An entry serves only weights bitwise equal
# to those it was made from (compared in full: 0.6 ms for 512x512x3x3), so weights
# changed in place, or a new array at a reused address, are transformed again.
FILTER_CACHE_BYTES = 128 * 2**20
_filters = OrderedDict()        # (address, shape, dtype, tile) -> (weight copy, U), LRU
_filters_lock = threading.Lock()


def _bits(array):
    """The array's bits as integers: equality without float rules (-0.0 vs 0.0, NaN).
    64-bit words where the length allows: np.array_equal then compares half as many
    (512x512x3x3 float32 weights: 0.47 instead of 0.80 ms)."""
    flat = array.reshape(-1)
    return flat.view(np.int64 if flat.nbytes % 8 == 0 else np.int32)


def _transient_filter(weight, tile):
    """U for weights that will not be seen again (or too big to keep): transformed
    into this thread's scratch, which the next call overwrites."""
    u_shape = (_alpha(tile, weight.shape) ** 2,) + weight.shape[:2]
    return transform_filter(weight, tile, out=_scratch("U", u_shape, weight.dtype))


def _kept_filter(weight, tile):
    """U for `weight`: from the cache when these exact weights were transformed
    before; for an array seen before whose values changed (a training step updates
    weights in place), transformed again into that entry's own buffers; else
    transformed now and kept, least recently used entries dropped beyond
    FILTER_CACHE_BYTES. Like the weights, the returned U must not change while a
    call uses it."""
    key = (weight.ctypes.data, weight.shape, weight.dtype.str, tile)
    with _filters_lock:
        entry = _filters.get(key)
        if entry is not None:
            _filters.move_to_end(key)
    if entry is not None:
        kept_weight, U = entry
        if not np.array_equal(_bits(kept_weight), _bits(weight)):
            np.copyto(kept_weight, weight)
            transform_filter(weight, tile, out=U)
        return U
    r = weight.shape[2]
    u_bytes = weight.nbytes // (r * r) * _alpha(tile, weight.shape) ** 2   # alpha^2 per r x r
    if weight.nbytes + u_bytes > FILTER_CACHE_BYTES:
        return _transient_filter(weight, tile)
    U = transform_filter(weight, tile)
    with _filters_lock:
        _filters[key] = (weight.copy(), U)
        while sum(w.nbytes + u.nbytes for w, u in _filters.values()) > FILTER_CACHE_BYTES:
            _filters.popitem(last=False)
    return U


# `auto` on layers where a per-call filter transform would cost more than Winograd saves
# (autotune.winograd_with_kept_filter): Winograd wins there only when the transform is
# kept, i.e. when the same weights come back (inference, evaluation, frozen layers). A
# call tells that from the weights themselves: it records a sample of their values, and
# a later call with the same array holding the same sampled values is taken to repeat
# them. A training step changes the values, so training keeps im2col. A wrong guess
# costs only speed: Winograd's kept filter is checked against the weights in full.
SAMPLE_SIZE = 1024
MAX_SIGHTINGS = 256
_sightings = OrderedDict()      # (address, shape, dtype, tile) -> sampled bits, LRU


def _sample(weight):
    flat = weight.reshape(-1)
    return _bits(np.ascontiguousarray(flat[::max(1, flat.size // SAMPLE_SIZE)]))


def weights_repeat(weight, tile):
    """True when C-contiguous `weight` is an array an earlier call used, with the same
    sampled values: its transformed filter is kept, or an earlier call of this
    function recorded them. Records this call's sample for the next one."""
    key = (weight.ctypes.data, weight.shape, weight.dtype.str, tile)
    sample = _sample(weight)
    with _filters_lock:
        entry = _filters.get(key)
        if entry is not None and np.array_equal(_sample(entry[0]), sample):
            return True
        # changed since its filter was kept (a training step): repeats from now on
        # are seen by the sightings, as for an array never seen before
        previous = _sightings.pop(key, None)
        _sightings[key] = sample
        while len(_sightings) > MAX_SIGHTINGS:
            _sightings.popitem(last=False)
    return previous is not None and np.array_equal(previous, sample)


def transform_filter(weight, tile=DEFAULT_TILE, out=None):
    """U (alpha^2, K, C_per_group) = (G w G^T) for every r x r filter (numba, parallel
    over K; float64 arithmetic, rounded once to the weight's dtype)."""
    _, G, _ = winograd_matrices(tile, weight.shape[2])
    alpha = G.shape[0]
    weight = np.ascontiguousarray(weight)
    U = np.empty((alpha * alpha,) + weight.shape[:2], dtype=weight.dtype) if out is None else out
    _filter_transform(weight, G, U)
    return U


def _alpha(tile, weight_shape):
    """Input tile size of F(tile x tile, r x r) for an r x r weight."""
    return tile + weight_shape[2] - 1


def _tile_grid(out_hw, tile):
    """(tile rows, tile columns) covering an output of size out_hw."""
    return -(-out_hw[0] // tile), -(-out_hw[1] // tile)


def _chunk_rows(total_rows, tiles_w, alpha, c_in, c_out, itemsize, extra_per_tile=0,
                reserved=0):
    """Tile rows per chunk: V and M (and `extra_per_tile` bytes more per tile) within the
    workspace bound less `reserved` bytes, and near the target; 0 if not one row fits.

    Unlike im2col's tiles, bigger is better here even past the caches: every chunk
    costs alpha^2 GEMM calls (each waking BLAS's threads) and wider GEMMs run faster.
    Measured interleaved (2-core Zen4, float32, ms for 16/32/64/128 MiB chunks):
    8x64x56x56 11.3/9.9/10.1/9.9, 1x64x224x224 18.0/17.1/15.6/15.2, 8x128x112x112
    103/98/93/88; 28x28 and 14x14 layers flat. 64 MiB keeps the per-thread scratch
    that `conv2d` retains between calls moderate."""
    row_bytes = tiles_w * (alpha * alpha * (c_in + c_out) * itemsize + extra_per_tile)
    bound = min(config.workspace_bytes - reserved, max(CHUNK_TARGET_BYTES, row_bytes))
    return min(total_rows, max(0, bound) // row_bytes)


def workspace_bytes_needed(x_shape, weight_shape, out_hw, tile=DEFAULT_TILE, itemsize=4):
    """Scratch bytes `conv2d` uses for these shapes (V and M of one chunk)."""
    alpha = _alpha(tile, weight_shape)
    tiles_h, tiles_w = _tile_grid(out_hw, tile)
    rows = _chunk_rows(x_shape[0] * tiles_h, tiles_w, alpha, x_shape[1], weight_shape[0],
                       itemsize)
    return rows * alpha * alpha * tiles_w * (x_shape[1] + weight_shape[0]) * itemsize


def _multiply(U, V, M, groups):
    """M[e] = U[e] @ V[e] for every tile element e, per group."""
    c_per_group, k_per_group = U.shape[2], U.shape[1] // groups
    tile = gemm.tile_for(c_per_group, V.shape[2], gemm.HOST)
    if c_per_group * k_per_group > 1 and tile is not None and U.dtype == V.dtype:
        gemm.batched_matmul(U, V, M, groups, tile)
    elif groups == 1:
        np.matmul(U, V, out=M)
    elif c_per_group == 1 and k_per_group == 1:     # depthwise: elementwise
        np.multiply(U, V, out=M)
    else:
        for g in range(groups):
            ks = slice(g * k_per_group, (g + 1) * k_per_group)
            cs = slice(g * c_per_group, (g + 1) * c_per_group)
            M[:, ks] = np.matmul(U[:, ks], V[:, cs])


def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw, tile=DEFAULT_TILE,
           transformed_filter=None, keep_filter=True):
    """Forward convolution by Winograd F(tile x tile, r x r) for an r x r weight
    (3x3, or 5x5 from `auto`). `transformed_filter`
    (from `transform_filter`) skips step 1 when the caller keeps it; otherwise the
    transform is kept for the next call with the same weights unless `keep_filter`
    is False (weights made for this call alone)."""
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    AT, _, BT = winograd_matrices(tile, weight.shape[2])
    alpha = _alpha(tile, weight.shape)
    tiles_h, tiles_w = _tile_grid(out_hw, tile)
    total_rows = n * tiles_h
    rows = _chunk_rows(total_rows, tiles_w, alpha, c_in, c_out, x.dtype.itemsize)
    if rows == 0:   # not even one tile row fits the workspace bound
        return direct.conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw)
    if transformed_filter is not None:
        U = transformed_filter
    else:
        U = (_kept_filter if keep_filter else _transient_filter)(weight, tile)
    AT, BT = AT.astype(x.dtype), BT.astype(x.dtype)
    # A^T padded with zero rows to a square for the written-out passes, which spill
    # the zero rows into scratch (they need m = 4)
    AT_square = np.zeros((alpha, alpha), dtype=x.dtype)
    AT_square[:tile] = AT
    out_passes = _written_passes(AT_square) if tile == 4 else (None, None)
    bias = bias_or_zeros(bias, c_out, x.dtype)
    out = np.empty((n, c_out) + tuple(out_hw), dtype=x.dtype)
    for row0 in range(0, total_rows, rows):
        count = min(rows, total_rows - row0)
        # contiguous, also for a shorter last chunk (one kernel specialisation)
        mm = _scratch("M", (alpha * alpha, c_out, count * tiles_w), x.dtype)
        v = _scratch("V", (alpha * alpha, c_in, count * tiles_w), x.dtype)
        _input_transform(x, BT, v, row0, tiles_h, tiles_w, tile, padding[0], padding[2])
        _multiply(U, v, mm, groups)
        _output_transform(mm, AT, *out_passes, bias, out, row0, tiles_h, tiles_w)
    return out


def conv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups,
                      tile=DEFAULT_TILE):
    """grad_input of an r x r stride-1 convolution: a forward Winograd convolution of
    grad_out with the rotated kernel (`_common.grad_input_as_forward`)."""
    grad_out, rotated, new_padding = grad_input_as_forward(grad_out, weight, padding,
                                                           (1, 1), groups)
    return conv2d(grad_out, rotated, None, (1, 1), new_padding, (1, 1), groups,
                  tuple(input_shape[2:]), tile, keep_filter=False)


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


def _grad_weight_reserved_bytes(weight_shape, tile, itemsize):
    """Bytes `conv2d_grad_weight` holds besides its chunks: dW (alpha^2 x K x C) and one
    more array of that size at a time (a later chunk's product before it is added; the
    output transform's (r, alpha, K, C) temporary)."""
    k_out, c_per_group, r, _ = weight_shape
    alpha = tile + r - 1
    return 2 * alpha * alpha * k_out * c_per_group * itemsize


def conv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups,
                       tile=DEFAULT_TILE):
    """Weight gradient of an r x r stride-1 convolution by Winograd F(r x r, m x m)
    (Lavin & Gray 2015, section 5), m = `tile`: the roles of the forward's F(m, r) swap.

    grad_weight[k, c] = sum over images and m x m tiles of grad_out of the correlation
    of the tile's alpha x alpha input patch d (alpha = m + r - 1) with the tile g of
    grad_out, an r x r result:  A^T [ (G g G^T) (.) (B^T d B) ] A  with the matrices of
    F(r, m). B^T depends only on alpha's points, so the input transform is the
    forward's (tiles of step m); the grad_out tiles go through the filter transform's
    kernel, and the sum over tiles is alpha^2 GEMMs reducing over the tiles:
    dW[e] (K x C) = U_go[e] (K x T) @ V[e]^T (T x C), accumulated over chunks of tile
    rows, then transformed back once. The chunks' scratch, dW and one more array of
    dW's size at a time stay within the workspace bound (else im2col serves)."""
    n, c_in = x.shape[:2]
    k_out, c_per_group, r, _ = weight_shape
    k_per_group = k_out // groups
    out_hw = grad_out.shape[2:]
    AT, G, BT = winograd_matrices(r, tile)        # F(r, m): r outputs, m taps
    alpha = tile + r - 1
    tiles_h, tiles_w = _tile_grid(out_hw, tile)
    total_rows = n * tiles_h
    itemsize = x.dtype.itemsize
    # Scratch within the workspace bound: per chunk V, the transformed and the plain
    # grad_out tiles; for the whole call dW and one more array of its size at a time.
    rows = _chunk_rows(total_rows, tiles_w, alpha, c_in, k_out, itemsize,
                       extra_per_tile=k_out * tile * tile * itemsize,
                       reserved=_grad_weight_reserved_bytes(weight_shape, tile, itemsize))
    if rows == 0:   # not even one tile row fits the workspace bound
        from . import im2col
        return im2col.conv2d_grad_weight(grad_out, x, weight_shape, stride, padding,
                                         dilation, groups)
    BT = BT.astype(x.dtype)
    grad_out = np.ascontiguousarray(grad_out)
    dW = np.empty((alpha * alpha, k_out, c_per_group), dtype=x.dtype)
    for row0 in range(0, total_rows, rows):
        count = min(rows, total_rows - row0)
        v = _scratch("V", (alpha * alpha, c_in, count * tiles_w), x.dtype)
        _input_transform(x, BT, v, row0, tiles_h, tiles_w, tile, padding[0], padding[2])
        go_tiles = _scratch("G", (k_out, count * tiles_w, tile, tile), x.dtype)
        _grad_out_tiles(grad_out, go_tiles, row0, tiles_h, tiles_w)
        u_go = _scratch("M", (alpha * alpha, k_out, count * tiles_w), x.dtype)
        _filter_transform(go_tiles, G, u_go)
        for g in range(groups):
            ks = slice(g * k_per_group, (g + 1) * k_per_group)
            cs = slice(g * c_per_group, (g + 1) * c_per_group)
            if row0 == 0:       # the first chunk writes dW, later ones add to it
                np.matmul(u_go[:, ks], v[:, cs].transpose(0, 2, 1), out=dW[:, ks])
            else:
                dW[:, ks] += np.matmul(u_go[:, ks], v[:, cs].transpose(0, 2, 1))
    # grad_weight[k, c, p, q] = sum_ab A^T[p, a] dW[a, b, k, c] A^T[q, b]: two GEMMs
    # that copy nothing (dW is dropped before the second, so no more than dW and one
    # array of its size are held, as `_grad_weight_reserved_bytes` counts)
    AT = AT.astype(x.dtype)
    kc = k_out * c_per_group
    half = AT @ dW.reshape(alpha, alpha * kc)                 # (p, b * k * c)
    del dW
    full = np.matmul(AT, half.reshape(r, alpha, kc))          # (p, q, k * c)
    return np.ascontiguousarray(full.reshape(r, r, k_out, c_per_group).transpose(2, 3, 0, 1))
