"""Winograd convolution F(m x m, r x r) on the CPU (Lavin & Gray, 2015).

Backend contract: docs/internals.md. For an r x r kernel (3x3: `algorithm="winograd"`;
5x5: chosen by `auto` only, see autotune.py), stride 1, dilation 1, each m x m
output tile is computed from an alpha x alpha input tile (alpha = m + r - 1) as

    Y = A^T [ (G g G^T)  (.)  (B^T d B) ] A

and the elementwise product, summed over input channels, becomes alpha^2
independent GEMMs:  M[e] (K x T) = U[e] (K x C) @ V[e] (C x T)  for every
tile element e, over all T tiles at once. The steps:

1. filter transform  U = G w G^T            numba, parallel over K; kept for the next
                                            call with the same weights
                                            (`winograd_cache.kept_filter`)
2. input transform   V = B^T d B            numba, parallel over channels (over tiles
                                            in the channels-last kernel)
3. alpha^2 GEMMs     M = U @ V              (alpha^2, K, C) @ (alpha^2, C, T): gemm.py's
                                            micro-kernel, or matmul.gemm (packed) where
                                            gemm.tile_for says it is faster
4. output transform  Y = A^T M A (+ bias)   numba, parallel over output channels

`conv2d_grad_input` is the same with the rotated kernel; `conv2d_grad_weight` is
F(r x r, m x m), these steps with filter and output swapped (see its docstring).

The parts: the matrices A^T, G, B^T and their error and range bounds are
device-neutral (`fastconv.winograd_transforms`); the numba kernels are in
`winograd_kernels` (three input transforms, chosen here by `_input_transform`); what
is kept between calls (scratch, transformed filters) in `winograd_cache`. Tiles are
processed in chunks of tile rows so that V and M stay within `config.workspace_bytes`
(and near CHUNK_TARGET_BYTES). Accuracy: docs/reliability.md ("Winograd").
"""
from __future__ import annotations

import numba
import numpy as np

from ..config import config
from ..winograd_transforms import winograd_matrices
from . import direct, gemm, matmul
from . import winograd_cache as cache
from ._common import bias_or_zeros, grad_input_as_forward
from .winograd_cache import release_workspace, transform_filter, weights_repeat
from .winograd_kernels import (_filter_transform, _grad_out_tiles, _input_transform_channels_last,
                               _input_transform_gather, _input_transform_rows,
                               _output_transform)

R = 3                               # kernel size of algorithm="winograd"
DEFAULT_TILE = cache.DEFAULT_TILE   # F(4x4, 3x3)
# Tuned constants: each one's measurements are in docs/tuning.md.
CHUNK_TARGET_BYTES = 64 * 2**20     # V + M of one chunk: bigger chunks, wider GEMMs
# Tiles per row from which the row-phase input transform beats the gather, by the input
# tile size alpha (4: F(2x2,3x3), 6: F(4x4,3x3), 8: F(4x4,5x5): never, the gather's
# written-out passes win).
ROW_KERNEL_MIN_TILES = {4: 6, 6: 14, 8: 2**31}
ROW_KERNEL_MIN_TILES_OTHER = 7     # other tile sizes (not measured)
# Chunks of images at most CHANNELS_LAST_MAX_TILES_W tiles wide, with at least
# CHANNELS_LAST_MIN_CHANNELS channels and at most CHANNELS_LAST_MAX_VALUES tiles x
# channels take the channels-last input transform: its vector loops run over the
# channels instead of a channel's few tiles; with more tiles x channels, or wider
# images, reads across the channels leave the cache and the gather wins.
CHANNELS_LAST_MAX_VALUES = 128 * 256
CHANNELS_LAST_MAX_TILES_W = 4
CHANNELS_LAST_MIN_CHANNELS = 256
CHANNELS_LAST_BLOCK = 8         # tiles per work item


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



def _tile_grid(out_hw, tile):
    """(tile rows, tile columns) covering an output of size out_hw."""
    return -(-out_hw[0] // tile), -(-out_hw[1] // tile)


def _chunk_rows(total_rows, tiles_w, alpha, c_in, c_out, itemsize, extra_per_tile=0,
                reserved=0):
    """Tile rows per chunk: V and M (and `extra_per_tile` bytes more per tile) within the
    workspace bound less `reserved` bytes, and near the target; 0 if not one row fits.

    Unlike im2col's tiles, bigger is better here even past the caches: every chunk
    costs alpha^2 GEMM calls (each waking BLAS's threads) and wider GEMMs run faster
    (docs/tuning.md); CHUNK_TARGET_BYTES keeps the per-thread scratch that `conv2d`
    retains between calls moderate."""
    row_bytes = tiles_w * (alpha * alpha * (c_in + c_out) * itemsize + extra_per_tile)
    bound = min(config.workspace_bytes - reserved, max(CHUNK_TARGET_BYTES, row_bytes))
    return min(total_rows, max(0, bound) // row_bytes)


def workspace_bytes_needed(x_shape, weight_shape, out_hw, tile=DEFAULT_TILE, itemsize=4):
    """Scratch bytes `conv2d` uses for these shapes (V and M of one chunk)."""
    alpha = tile + weight_shape[2] - 1
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
        matmul.gemm(U, V, M)
    elif c_per_group == 1 and k_per_group == 1:     # depthwise: elementwise
        np.multiply(U, V, out=M)
    else:
        for g in range(groups):
            ks = slice(g * k_per_group, (g + 1) * k_per_group)
            cs = slice(g * c_per_group, (g + 1) * c_per_group)
            matmul.gemm(U[:, ks], V[:, cs], M[:, ks])


def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw, tile=DEFAULT_TILE,
           transformed_filter=None, keep_filter=True):
    """Forward convolution by Winograd F(tile x tile, r x r) for an r x r weight
    (3x3, or 5x5 from `auto`). Within 1e-3 of the largest output in float32 for
    finite results; large values can overflow and NaN/Inf spread over a tile: `auto`
    calls it only where `fastconv.winograd_transforms.winograd_safe` holds. `transformed_filter`
    (from `transform_filter`) skips step 1 when the caller keeps it; otherwise the
    transform is kept for the next call with the same weights unless `keep_filter`
    is False (weights made for this call alone)."""
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    AT, _, BT = winograd_matrices(tile, weight.shape[2])
    alpha = tile + weight.shape[2] - 1
    tiles_h, tiles_w = _tile_grid(out_hw, tile)
    total_rows = n * tiles_h
    rows = _chunk_rows(total_rows, tiles_w, alpha, c_in, c_out, x.dtype.itemsize)
    if rows == 0:   # not even one tile row fits the workspace bound
        return direct.conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw)
    if transformed_filter is not None:
        U = transformed_filter
    else:
        U = (cache.kept_filter if keep_filter else cache.transient_filter)(weight, tile)
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
        mm = cache.scratch("M", (alpha * alpha, c_out, count * tiles_w), x.dtype)
        v = cache.scratch("V", (alpha * alpha, c_in, count * tiles_w), x.dtype)
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
        v = cache.scratch("V", (alpha * alpha, c_in, count * tiles_w), x.dtype)
        _input_transform(x, BT, v, row0, tiles_h, tiles_w, tile, padding[0], padding[2])
        go_tiles = cache.scratch("G", (k_out, count * tiles_w, tile, tile), x.dtype)
        _grad_out_tiles(grad_out, go_tiles, row0, tiles_h, tiles_w)
        u_go = cache.scratch("M", (alpha * alpha, k_out, count * tiles_w), x.dtype)
        _filter_transform(go_tiles, G, u_go)
        for g in range(groups):
            ks = slice(g * k_per_group, (g + 1) * k_per_group)
            cs = slice(g * c_per_group, (g + 1) * c_per_group)
            # the first chunk writes dW, later ones add to it
            matmul.gemm(u_go[:, ks], v[:, cs].transpose(0, 2, 1), dW[:, ks],
                        accumulate=row0 > 0)
    # grad_weight[k, c, p, q] = sum_ab A^T[p, a] dW[a, b, k, c] A^T[q, b]: two GEMMs
    # that copy nothing (dW is dropped before the second, so no more than dW and one
    # array of its size are held, as `_grad_weight_reserved_bytes` counts)
    AT = AT.astype(x.dtype)
    kc = k_out * c_per_group
    half = AT @ dW.reshape(alpha, alpha * kc)                 # (p, b * k * c)
    del dW
    full = np.matmul(AT, half.reshape(r, alpha, kc))          # (p, q, k * c)
    return np.ascontiguousarray(full.reshape(r, r, k_out, c_per_group).transpose(2, 3, 0, 1))


__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "transform_filter",
           "release_workspace", "weights_repeat", "workspace_bytes_needed",
           "DEFAULT_TILE", "R"]
