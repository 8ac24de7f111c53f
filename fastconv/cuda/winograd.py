"""CUDA Winograd convolution F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray 2015).

Backend contract: docs/internals.md (numba device arrays, plus ``stream``). Only
3x3 kernels, stride 1, dilation 1; any 4-sided padding; groups.

With ``m`` the output tile (2 or 4) and ``a = m + 2`` the input tile,

    Y = A^T [ (G g G^T) . (B^T d B) ] A      per (tile, output channel),

summed over input channels. Four steps, each its own kernel:

1. filter transform: ``U[xi*a + nu, k, c] = (G g_kc G^T)[xi, nu]`` (a thread per
   (k, c); computed in float64, stored in the input dtype);
2. input transform: ``V[xi*a + nu, c, t] = (B^T d_ct B)[xi, nu]`` for the ``a x a``
   input patch of tile ``t`` (a thread per (c, t); zeros outside the image);
3. ``a^2 * groups`` GEMMs ``M[e, g] (Kg x T) = U[e, g] (Kg x Cg) @ V[e, g] (Cg x T)``:
   one batched launch of our tiled GEMM (``fastconv.cuda.gemm``);
4. output transform: ``out[n, k, tile] = A^T M A (+ bias[k])``, cropped at the
   bottom/right edge (a thread per (k, t)).

The transform matrices are data, the CPU backend's: built exactly (fractions) by
``fastconv.winograd_transforms.winograd_matrices`` from the interpolation points
``0, 1, -1, 2, -2`` (Toom-Cook), not typed in. ``V`` and ``M`` live in a workspace
of at most ``fastconv.config.workspace_bytes`` together with ``U`` (read at call time): the
tiles (over the whole batch) are processed in chunks; a chunk has at least one
tile, so a bound below ``U`` plus one tile's ``a^2 * (C + K)`` values is exceeded
by that much.

grad_input is a Winograd convolution too: the correlation of grad_out, padded by
``2 - padding`` on each side (a negative amount crops), with the kernel rotated by
180 degrees and its channel axes swapped per group (done inside the filter
transform; nothing is materialised).

Accuracy: F(2x2) loses little; F(4x4) in float32 has errors of about 5e-6 of the
output's scale for unit-scale data with He-scaled weights (a NumPy float32
emulation of these kernels at C = 64 and 512; the transform entries reach 8 and
1/24); the documented float32 bound is 1e-3. NaN/Inf anywhere in a tile spreads over the
whole output tile, and large values can overflow in the transforms; the API's ``auto``
does not inspect device arrays (docs/reliability.md, "Winograd").

Tuning notes (nothing measured: written without a GPU)
------------------------------------------------------
- The transforms are generic ``a x a x a`` matrix loops over constant-memory
  matrices: unrolled, zero-skipping straight-line code (generated from the same
  matrices) would cut the transform FLOPs ~3x; they are memory-bound anyway.
- ``V`` and ``M`` make a round trip through global memory; fusing the input
  transform into the GEMM's B-tile load and the output transform into its
  epilogue (as cuDNN does) removes most of that traffic.
- The ``a^2`` GEMMs are ``Kg x Cg x T``: small channel counts underfill
  128x128 tiles; ``choose_config`` then picks 64x64.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ..config import config
from ..winograd_transforms import winograd_matrices
from . import gemm
from ._kernels import empty, kernel_factory, launch_1d, stream_or_default, u64

TILES = (2, 4)


def default_tile(out_hw) -> int:
    """F(4x4) unless the output is at most 2 pixels high and wide (then F(2x2))."""
    return 4 if max(out_hw) > 2 else 2


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

@kernel_factory
def _make_kernels(dtype_name: str, m: int):
    at_np, g_np, bt_np = winograd_matrices(m)
    a = m + 2
    dt = numba.from_dtype(np.dtype(dtype_name))
    at_c = at_np.astype(dtype_name)
    bt_c = bt_np.astype(dtype_name)
    g_c = g_np.copy()                    # the filter transform runs in float64

    @cuda.jit(cache=True)
    def filter_transform(w, u, groups, keg, flip):
        """u[e*G + g, kl, cl] = (G w_eff G^T)[e] for effective weight w_eff, whose
        (ke, ce) is w[ke, ce] or, when flip, w[g*ceg + ce, ke % keg] rotated 180."""
        gmat = cuda.const.array_like(g_c)
        ceg = u.shape[2]
        ke_total = keg * groups
        kern = cuda.local.array((3, 3), dtype=numba.float64)
        tmp = cuda.local.array((a, 3), dtype=numba.float64)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < ke_total * ceg:
            ce = i % ceg
            ke = i // ceg
            grp = ke // keg
            kl = ke % keg
            for p in range(3):
                for q in range(3):
                    if flip:
                        kern[p, q] = w[u64(grp * ceg + ce), u64(kl), u64(2 - p), u64(2 - q)]
                    else:
                        kern[p, q] = w[u64(ke), u64(ce), u64(p), u64(q)]
            for x in range(a):
                for q in range(3):
                    s = 0.0
                    for p in range(3):
                        s += gmat[x, p] * kern[p, q]
                    tmp[x, q] = s
            for x in range(a):
                for y in range(a):
                    s = 0.0
                    for q in range(3):
                        s += tmp[x, q] * gmat[y, q]
                    u[u64((x * a + y) * groups + grp), u64(kl), u64(ce)] = s
            i += step

    @cuda.jit(cache=True)
    def input_transform(x, v, groups, t0, n_tiles, pt, pl, tiles_w, tiles_img):
        """v[e*G + g, cl, t] = (B^T d B)[e] of the a x a patch of tile t0 + t (channel
        g*Cg + cl) whose top-left input pixel is (ti*m - pt, tj*m - pl)."""
        btm = cuda.const.array_like(bt_c)
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
        ceg = v.shape[1]
        tc = v.shape[2]
        d = cuda.local.array((a, a), dtype=dt)
        tmp = cuda.local.array((a, a), dtype=dt)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < channels * tc:
            t = i % tc
            c = i // tc
            tt = t0 + t
            n = tt // tiles_img
            rest = tt % tiles_img
            h0 = (rest // tiles_w) * m - pt
            w0 = (rest % tiles_w) * m - pl
            for y in range(a):
                hh = h0 + y
                row_inside = tt < n_tiles and hh >= 0 and hh < height
                for z in range(a):
                    ww = w0 + z
                    val = dt(0)
                    if row_inside and ww >= 0 and ww < width:
                        val = x[u64(n), u64(c), u64(hh), u64(ww)]
                    d[y, z] = val
            for y in range(a):
                for z in range(a):
                    s = dt(0)
                    for k in range(a):
                        s += btm[y, k] * d[k, z]
                    tmp[y, z] = s
            grp = c // ceg
            cl = c % ceg
            for y in range(a):
                for z in range(a):
                    s = dt(0)
                    for k in range(a):
                        s += tmp[y, k] * btm[z, k]
                    v[u64((y * a + z) * groups + grp), u64(cl), u64(t)] = s
            i += step

    @cuda.jit(cache=True)
    def output_transform(mm, out, bias, has_bias, groups, t0, n_tiles, tiles_w, tiles_img):
        """out[n, k, ti*m + i, tj*m + j] = (A^T M A)[i, j] (+ bias[k]), cropped."""
        atm = cuda.const.array_like(at_c)
        channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
        keg = mm.shape[1]
        tc = mm.shape[2]
        e = cuda.local.array((a, a), dtype=dt)
        tmp = cuda.local.array((m, a), dtype=dt)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < channels * tc:
            t = i % tc
            k = i // tc
            tt = t0 + t
            if tt < n_tiles:
                n = tt // tiles_img
                rest = tt % tiles_img
                h0 = (rest // tiles_w) * m
                w0 = (rest % tiles_w) * m
                grp = k // keg
                kl = k % keg
                for y in range(a):
                    for z in range(a):
                        e[y, z] = mm[u64((y * a + z) * groups + grp), u64(kl), u64(t)]
                for y in range(m):
                    for z in range(a):
                        s = dt(0)
                        for j in range(a):
                            s += atm[y, j] * e[j, z]
                        tmp[y, z] = s
                b = bias[k] if has_bias else dt(0)
                for y in range(m):
                    if h0 + y < out_h:
                        for z in range(m):
                            if w0 + z < out_w:
                                s = dt(0)
                                for j in range(a):
                                    s += tmp[y, j] * atm[z, j]
                                out[u64(n), u64(k), u64(h0 + y), u64(w0 + z)] = s + b
            i += step

    return filter_transform, input_transform, output_transform


# --------------------------------------------------------------------------
# the convolution
# --------------------------------------------------------------------------

def plan_tiles(n_tiles, alpha2, in_channels, out_channels, u_elems, itemsize, bound=None):
    """Tiles per chunk: ``u_elems + alpha2*(C + K)*tc`` values within the bound
    (at least one tile), balanced so that chunks are equal to within one tile."""
    if bound is None:
        bound = config.workspace_bytes
    budget = int(bound) // int(itemsize) - u_elems
    per_tile = alpha2 * (in_channels + out_channels)
    tc = max(1, min(n_tiles, budget // per_tile if budget > 0 else 1))
    chunks = math.ceil(n_tiles / tc)
    return math.ceil(n_tiles / chunks)


def _winograd(x, weight, bias, pt, pl, out_shape, groups, flip, m, stream, gemm_config):
    """out (out_shape) = correlation of x (padded by pt on top, pl on the left; the
    bottom/right follows from out_shape) with the effective 3x3 weight."""
    stream = stream_or_default(stream)
    dtype = np.dtype(x.dtype)
    filt, inp, outp = _make_kernels(dtype.name, int(m))
    a = m + 2
    alpha2 = a * a
    n, k_eff, out_h, out_w = out_shape
    c_in = x.shape[1]
    keg, ceg = k_eff // groups, c_in // groups
    out = empty(out_shape, dtype, stream)

    u = empty((alpha2 * groups, keg, ceg), dtype, stream)
    blocks, threads = launch_1d(k_eff * ceg, small_in_simulator=True)
    filt[blocks, threads, stream](weight, u, np.int64(groups), np.int64(keg), bool(flip))

    tiles_h, tiles_w = math.ceil(out_h / m), math.ceil(out_w / m)
    tiles_img = tiles_h * tiles_w
    n_tiles = n * tiles_img
    tc = plan_tiles(n_tiles, alpha2, c_in, k_eff, u.size, dtype.itemsize)
    v = empty((alpha2 * groups, ceg, tc), dtype, stream)
    mm = empty((alpha2 * groups, keg, tc), dtype, stream)
    has_bias = bias is not None
    bias_arr = bias if has_bias else empty((1,), dtype, stream)
    i64 = np.int64
    for t0 in range(0, n_tiles, tc):
        blocks, threads = launch_1d(c_in * tc, small_in_simulator=True)
        inp[blocks, threads, stream](x, v, i64(groups), i64(t0), i64(n_tiles), i64(pt),
                                     i64(pl), i64(tiles_w), i64(tiles_img))
        gemm.launch(u, v, mm, keg, tc, ceg, alpha2 * groups, config=gemm_config,
                    stream=stream)
        blocks, threads = launch_1d(k_eff * tc, small_in_simulator=True)
        outp[blocks, threads, stream](mm, out, bias_arr, has_bias, i64(groups), i64(t0),
                                      i64(n_tiles), i64(tiles_w), i64(tiles_img))
    return out


def _check(weight_shape, stride, dilation, tile):
    if (tuple(weight_shape[2:]) != (3, 3) or tuple(stride) != (1, 1)
            or tuple(dilation) != (1, 1)):
        raise ValueError(
            f"winograd needs a 3x3 kernel, stride 1 and dilation 1, got kernel "
            f"{tuple(weight_shape[2:])}, stride {tuple(stride)}, dilation {tuple(dilation)}")
    if tile not in TILES:
        raise ValueError(f"tile must be 2 or 4 (F(2x2,3x3) or F(4x4,3x3)), got {tile!r}")


def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw, stream=0,
           tile=None, gemm_config=None):
    """(N, K, out_h, out_w) = x (*) weight + bias with F(tile x tile, 3x3)."""
    tile = default_tile(out_hw) if tile is None else tile
    _check(weight.shape, stride, dilation, tile)
    top, _, left, _ = padding
    out_shape = (x.shape[0], weight.shape[0]) + tuple(out_hw)
    return _winograd(x, weight, bias, top, left, out_shape, groups, False, tile, stream,
                     gemm_config)


def conv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups,
                      stream=0, tile=None, gemm_config=None):
    """dL/dx: grad_out padded by (2 - padding) correlated with the rotated,
    channel-swapped kernel, with F(tile x tile, 3x3)."""
    input_shape = tuple(int(s) for s in input_shape)
    tile = default_tile(input_shape[2:]) if tile is None else tile
    _check(weight.shape, stride, dilation, tile)
    top, _, left, _ = padding
    return _winograd(grad_out, weight, None, 2 - top, 2 - left, input_shape, groups,
                     True, tile, stream, gemm_config)


__all__ = ["conv2d", "conv2d_grad_input", "default_tile", "plan_tiles", "TILES"]
