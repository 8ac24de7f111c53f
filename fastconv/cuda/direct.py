"""Direct convolution on the GPU: numba.cuda kernels, tiled in shared memory, register-blocked.

Backend contract: docs/internals.md (arguments already validated and normalised;
C-contiguous numba device arrays in, a new numba device array out). Every kernel is
generic in kernel size, stride, 4-sided padding, dilation and groups, for float32
and float64; padding is never materialised. How they work: docs/cuda.md.

- forward: a block computes a tile of TH x (TW*PX) output pixels for KB output
  channels of one (image, group). Per chunk of input channels it stages the input
  patch the tile reads and the KB x chunk x kh x kw weights in (dynamic) shared
  memory; each thread accumulates KB channels x PX pixels in registers (PX pixels
  TW apart, so a warp's loads and stores are contiguous). When the patch would not
  fit in shared memory (huge dilation/stride) the input is read from global memory.
- grad_input: a gather, no atomics. A thread owns CB input channels x PX input
  pixels and sums, over the kernel offsets and the output channels of its group,
  grad_out at the output positions that read the pixel; weight chunks are staged in
  shared memory.
- grad_weight: a block owns KB output channels x one input channel x all kh*kw
  offsets, its threads stride over a slice of the (image, output pixel) reduction,
  then reduce all their accumulators in shared memory in a fixed tree order. Large
  reductions are split over `splits` blocks that write partial sums; a second
  kernel adds them in a fixed order. Deterministic: the same inputs give the same
  bits.

Indexing: device arrays are indexed with numba's intp (int64) and their strides, and
every index derived from block/thread ids is promoted to int64, so tensors over 2**31
elements index correctly. Kernels are built per (dtype, block sizes) by memoised
factories (`_kernels.kernel_factory`); geometry is a runtime argument, so one compiled
kernel per dtype and block shape serves every layer.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import _kernels
from ._kernels import (SHARED_BYTES, cdiv, kernel_factory, pow2_at_least, pow2_at_most,
                       stream_or_default, u64)

_NUMBA_DTYPES = {"float32": "float32", "float64": "float64"}


def _nb_dtype(name):
    import numba
    return getattr(numba, _NUMBA_DTYPES[name])



# --------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------

@cuda.jit(device=True)
def _stage_weights(w, s_w, wsize, k0, nk, c0, nc, c_len, tid, nthreads):
    """The block's threads copy w[k0:k0+nk, c0:c0+nc] into shared s_w[:wsize], laid out
    [k, c_len, kh, kw]; slots past nk or nc are zeroed (they are multiplied, not skipped)."""
    kh, kw = w.shape[2], w.shape[3]
    for e in range(tid, wsize, nthreads):
        q = e % kw
        t = e // kw
        p = t % kh
        t = t // kh
        c = t % c_len
        k = t // c_len
        if k < nk and c < nc:
            s_w[e] = w[k0 + k, c0 + c, p, q]
        else:
            s_w[e] = 0


@kernel_factory
def _make_forward(dtype_name: str, KB: int, PX: int):
    dt = _nb_dtype(dtype_name)
    zero = np.dtype(dtype_name).type(0)
    NACC = KB * PX    # accumulators per thread (a compile-time constant)

    @cuda.jit(cache=True)
    def forward(x, w, bias, has_bias, out, sh, sw, pt, pl, dh, dw, groups, kblocks,
                cc_chunk, pr, pc, use_smem):
        height, width = x.shape[2], x.shape[3]
        k_out, cg, kh, kw = w.shape
        n_img, out_h, out_w = out.shape[0], out.shape[2], out.shape[3]
        kg = k_out // groups
        tw = cuda.blockDim.x
        th = cuda.blockDim.y
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tw + tx
        nthreads = tw * th
        smem = cuda.shared.array(0, dt)
        wsize = KB * cc_chunk * kh * kw
        s_w = smem[:wsize]
        s_x = smem[wsize:]
        acc = cuda.local.array(NACC, dt)
        ow0 = cuda.blockIdx.x * (tw * PX) + tx
        col0 = cuda.blockIdx.x * (tw * PX) * sw - pl
        nby = (out_h + th - 1) // th
        # z enumerates (image, group, channel block, row block); a grid-stride
        # loop covers more than gridDim.z (65535) of them
        total_z = n_img * groups * kblocks * nby
        for z in range(cuda.blockIdx.z, total_z, cuda.gridDim.z):
            by = z % nby
            oh = by * th + ty
            row0 = by * th * sh - pt                  # input row of the patch origin
            rest = z // nby
            kb = rest % kblocks
            rest = rest // kblocks
            g = rest % groups
            n = rest // groups
            k0 = g * kg + kb * KB
            nk = min(KB, g * kg + kg - k0)
            for a in range(NACC):
                acc[a] = zero
            for c0 in range(0, cg, cc_chunk):
                ncc = min(cc_chunk, cg - c0)
                cbase = g * cg + c0
                _stage_weights(w, s_w, wsize, k0, nk, c0, ncc, cc_chunk, tid, nthreads)
                if use_smem:
                    for e in range(tid, cc_chunk * pr * pc, nthreads):
                        col = e % pc
                        t = e // pc
                        r = t % pr
                        cc = t // pr
                        ir = row0 + r
                        ic = col0 + col
                        v = zero
                        if cc < ncc and ir >= 0 and ir < height and ic >= 0 and ic < width:
                            v = x[n, cbase + cc, ir, ic]
                        s_x[e] = v
                cuda.syncthreads()
                if oh < out_h:
                    for cc in range(ncc):
                        for p in range(kh):
                            for q in range(kw):
                                wbase = (cc * kh + p) * kw + q
                                for j in range(PX):
                                    if use_smem:
                                        xv = s_x[u64((cc * pr + ty * sh + p * dh) * pc
                                                     + (tx + j * tw) * sw + q * dw)]
                                    else:
                                        ir = oh * sh - pt + p * dh
                                        ic = (ow0 + j * tw) * sw - pl + q * dw
                                        xv = zero
                                        if ir >= 0 and ir < height and ic >= 0 and ic < width:
                                            xv = x[n, cbase + cc, ir, ic]
                                    for kk in range(KB):
                                        acc[kk * PX + j] += (
                                            s_w[u64(kk * cc_chunk * kh * kw + wbase)] * xv)
                cuda.syncthreads()
            if oh < out_h:
                # constant trip counts (KB, PX) keep acc in registers once unrolled
                for kk in range(KB):
                    if kk < nk:
                        b = bias[k0 + kk] if has_bias else zero
                        for j in range(PX):
                            ow = ow0 + j * tw
                            if ow < out_w:
                                out[n, k0 + kk, oh, ow] = acc[kk * PX + j] + b

    return forward


# Block-shape caps (module constants so that tests can shrink them to exercise
# multi-block grids with tiny tensors).
_TW_MAX = 16      # threads along output columns (each does PX columns)
_TH_MAX = 8       # threads along output rows
_GW_THREADS = 256 # threads of a grad_weight block


def _block_kb(per_group):
    return 4 if per_group >= 3 else per_group


def _fit_block(kb, kh, kw, itemsize):
    """Shrink a channel block (4 -> 2 -> 1) until kb kernels fit in shared memory."""
    while kb > 1 and kb * kh * kw * itemsize > SHARED_BYTES:
        kb = 2 if kb == 4 else 1
    if kh * kw * itemsize > SHARED_BYTES:
        raise ValueError(
            f"algorithm='direct' on CUDA needs one {kh}x{kw} kernel ({kh * kw * itemsize} "
            f"bytes) to fit in {SHARED_BYTES} bytes of shared memory; use "
            "algorithm='im2col' for kernels this large")
    return kb


def _forward_plan(x_shape, w_shape, stride, dilation, groups, out_hw, itemsize):
    """Launch plan: block (tw, th), register block (KB, PX), channel chunk, patch."""
    k_out, cg, kh, kw = w_shape
    out_h, out_w = out_hw
    kb = _fit_block(_block_kb(k_out // groups), kh, kw, itemsize)
    px = 2 if out_w >= 2 else 1
    tw = min(_TW_MAX, pow2_at_least(cdiv(out_w, px)))
    th = min(_TH_MAX, pow2_at_least(out_h))
    pr = (th - 1) * stride[0] + (kh - 1) * dilation[0] + 1
    pc = (tw * px - 1) * stride[1] + (kw - 1) * dilation[1] + 1
    cc = min(cg, 8)
    while cc > 1 and (kb * cc * kh * kw + cc * pr * pc) * itemsize > SHARED_BYTES:
        cc //= 2
    use_smem = (kb * cc * kh * kw + cc * pr * pc) * itemsize <= SHARED_BYTES
    if not use_smem:
        cc = min(cg, 8)
        while cc > 1 and kb * cc * kh * kw * itemsize > SHARED_BYTES:
            cc //= 2
    shared = (kb * cc * kh * kw + (cc * pr * pc if use_smem else 0)) * itemsize
    return dict(kb=kb, px=px, tw=tw, th=th, cc=cc, pr=pr, pc=pc,
                use_smem=use_smem, shared=shared)


def conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw, stream=0):
    """(N, C_in, H, W) * (C_out, C_in/groups, kh, kw) -> (N, C_out, out_h, out_w)."""
    stream = stream_or_default(stream)
    n_img = x.shape[0]
    k_out = weight.shape[0]
    out = _kernels.empty((n_img, k_out) + tuple(out_hw), x.dtype, stream)
    plan = _forward_plan(x.shape, weight.shape, stride, dilation, groups, out_hw,
                         x.dtype.itemsize)
    kblocks = cdiv(k_out // groups, plan["kb"])
    grid = (cdiv(out_hw[1], plan["tw"] * plan["px"]), 1,
            _kernels.grid_yz(n_img * groups * kblocks * cdiv(out_hw[0], plan["th"])))
    kernel = _make_forward(np.dtype(x.dtype).name, plan["kb"], plan["px"])
    has_bias = bias is not None
    bias_arg = bias if has_bias else weight.reshape(weight.size)
    kernel[grid, (plan["tw"], plan["th"]), stream, plan["shared"]](
        x, weight, bias_arg, has_bias, out, stride[0], stride[1], padding[0], padding[2],
        dilation[0], dilation[1], groups, kblocks, plan["cc"], plan["pr"], plan["pc"],
        plan["use_smem"])
    return out


# --------------------------------------------------------------------------
# grad_input (gather)
# --------------------------------------------------------------------------

@kernel_factory
def _make_grad_input(dtype_name: str, CB: int, PX: int):
    dt = _nb_dtype(dtype_name)
    zero = np.dtype(dtype_name).type(0)
    NACC = CB * PX

    @cuda.jit(cache=True)
    def grad_input(grad_out, w, gx, sh, sw, pt, pl, dh, dw, groups, cblocks, kc_chunk):
        n_img, c_in, height, width = gx.shape
        k_out, cg, kh, kw = w.shape
        out_h, out_w = grad_out.shape[2], grad_out.shape[3]
        kg = k_out // groups
        tw = cuda.blockDim.x
        th = cuda.blockDim.y
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tw + tx
        nthreads = tw * th
        s_w = cuda.shared.array(0, dt)     # [kc, cb, p, q]
        wsize = kc_chunk * CB * kh * kw
        acc = cuda.local.array(NACC, dt)
        iw0 = cuda.blockIdx.x * (tw * PX) + tx
        nby = (height + th - 1) // th
        # z enumerates (image, group, channel block, row block), grid-stride
        total_z = n_img * groups * cblocks * nby
        for z in range(cuda.blockIdx.z, total_z, cuda.gridDim.z):
            ih = (z % nby) * th + ty
            rest = z // nby
            cb0 = rest % cblocks
            rest = rest // cblocks
            g = rest % groups
            n = rest // groups
            c0 = cb0 * CB                   # first channel within the group
            ncb = min(CB, cg - c0)
            for a in range(NACC):
                acc[a] = zero
            for k0 in range(0, kg, kc_chunk):
                nkc = min(kc_chunk, kg - k0)
                _stage_weights(w, s_w, wsize, g * kg + k0, nkc, c0, ncb, CB, tid, nthreads)
                cuda.syncthreads()
                if ih < height:
                    for p in range(kh):
                        t_h = ih + pt - p * dh
                        if t_h < 0 or t_h % sh != 0:
                            continue
                        oh = t_h // sh
                        if oh >= out_h:
                            continue
                        for q in range(kw):
                            for j in range(PX):
                                t_w = iw0 + j * tw + pl - q * dw
                                if t_w < 0 or t_w % sw != 0:
                                    continue
                                ow = t_w // sw
                                if ow >= out_w or iw0 + j * tw >= width:
                                    continue
                                for kc in range(nkc):
                                    go = grad_out[u64(n), u64(g * kg + k0 + kc), u64(oh), u64(ow)]
                                    wb = ((kc * CB) * kh + p) * kw + q
                                    for cb in range(CB):
                                        acc[cb * PX + j] += go * s_w[u64(wb + cb * kh * kw)]
                cuda.syncthreads()
            if ih < height:
                for cb in range(CB):
                    if cb < ncb:
                        for j in range(PX):
                            iw = iw0 + j * tw
                            if iw < width:
                                gx[n, g * cg + c0 + cb, ih, iw] = acc[cb * PX + j]

    return grad_input


def conv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation, groups,
                      stream=0):
    """Gradient with respect to x, of shape `input_shape`; deterministic gather."""
    stream = stream_or_default(stream)
    n_img, c_in, height, width = input_shape
    k_out, cg, kh, kw = weight.shape
    gx = _kernels.empty(input_shape, grad_out.dtype, stream)
    itemsize = grad_out.dtype.itemsize
    cb = _fit_block(_block_kb(cg), kh, kw, itemsize)
    px = 2 if width >= 2 else 1
    tw = min(_TW_MAX, pow2_at_least(cdiv(width, px)))
    th = min(_TH_MAX, pow2_at_least(height))
    kc = min(k_out // groups, 16)
    while kc > 1 and kc * cb * kh * kw * itemsize > SHARED_BYTES:
        kc //= 2
    cblocks = cdiv(cg, cb)
    grid = (cdiv(width, tw * px), 1, _kernels.grid_yz(n_img * groups * cblocks * cdiv(height, th)))
    kernel = _make_grad_input(np.dtype(grad_out.dtype).name, cb, px)
    kernel[grid, (tw, th), stream, kc * cb * kh * kw * itemsize](
        grad_out, weight, gx, stride[0], stride[1], padding[0], padding[2],
        dilation[0], dilation[1], groups, cblocks, kc)
    return gx


# --------------------------------------------------------------------------
# grad_weight (block reduction, optional deterministic split)
# --------------------------------------------------------------------------

@kernel_factory
def _make_grad_weight(dtype_name: str, KB: int, KH: int, KW: int):
    dt = _nb_dtype(dtype_name)
    zero = np.dtype(dtype_name).type(0)
    KHW = KH * KW     # compile-time kernel size: the offset loops unroll
    NACC = KB * KHW

    @cuda.jit(cache=True)
    def grad_weight(grad_out, x, partial, sh, sw, pt, pl, dh, dw, groups, kblocks,
                    per_split):
        # partial: (splits, K, cg, KH*KW); block (b, s) owns KB output channels x one
        # input channel, reduction items [s*per_split, (s+1)*per_split).
        n_img, c_in, height, width = x.shape
        k_out, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
        cg = c_in // groups
        kg = k_out // groups
        nt = cuda.blockDim.x
        tid = cuda.threadIdx.x
        red = cuda.shared.array(0, dt)     # [NACC, nt]
        acc = cuda.local.array(NACC, dt)
        gov = cuda.local.array(KB, dt)
        plane = out_h * out_w
        total = n_img * plane
        nwork = groups * kblocks * cg
        splits = partial.shape[0]
        for work in range(cuda.blockIdx.x, nwork * splits, cuda.gridDim.x):
            s = work // nwork
            b = work % nwork
            c = b % cg
            rest = b // cg
            kb = rest % kblocks
            g = rest // kblocks
            k0 = g * kg + kb * KB
            nk = min(KB, g * kg + kg - k0)
            cin = g * cg + c
            for a in range(NACC):
                acc[a] = zero
            r_end = min(total, (s + 1) * per_split)
            for r in range(s * per_split + tid, r_end, nt):
                n = r // plane
                pix = r % plane
                oh = pix // out_w
                ow = pix % out_w
                for kk in range(KB):
                    gov[kk] = zero
                    if kk < nk:
                        gov[kk] = grad_out[u64(n), u64(k0 + kk), u64(oh), u64(ow)]
                for p in range(KH):
                    ir = oh * sh - pt + p * dh
                    row_inside = ir >= 0 and ir < height
                    for q in range(KW):
                        ic = ow * sw - pl + q * dw
                        # the padding's zeros are multiplied, not skipped: an Inf or NaN
                        # in grad_out then gives NaN (0 * Inf), as in PyTorch
                        xv = zero
                        if row_inside and ic >= 0 and ic < width:
                            xv = x[u64(n), u64(cin), u64(ir), u64(ic)]
                        for kk in range(KB):
                            acc[kk * KHW + p * KW + q] += gov[kk] * xv
            # Fixed-order tree reduction of all NACC accumulators at once; the
            # store loop has a constant trip count, so acc can stay in registers.
            for a in range(NACC):
                red[u64(a * nt + tid)] = acc[a]
            cuda.syncthreads()
            step = nt // 2
            while step > 0:
                if tid < step:
                    for a in range(NACC):
                        red[u64(a * nt + tid)] += red[u64(a * nt + tid + step)]
                cuda.syncthreads()
                step //= 2
            for a in range(tid, NACC, nt):
                kk = a // KHW
                if kk < nk:
                    partial[s, k0 + kk, c, a % KHW] = red[a * nt]
            cuda.syncthreads()

    return grad_weight


@kernel_factory
def _make_sum_splits(dtype_name: str):
    @cuda.jit(cache=True)
    def sum_splits(partial, out):
        # out[i] = sum over s of partial[s, i], in order s = 0, 1, ...
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            acc = partial[0, i]
            for s in range(1, partial.shape[0]):
                acc += partial[s, i]
            out[i] = acc
            i += step
    return sum_splits


_TARGET_BLOCKS = 1024     # enough blocks to fill a large GPU several times over
_MIN_ITEMS_PER_THREAD = 16


def conv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, groups,
                       stream=0):
    """Gradient with respect to the weight, of shape `weight_shape`; deterministic."""
    stream = stream_or_default(stream)
    k_out, cg, kh, kw = weight_shape
    n_img = x.shape[0]
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    total = n_img * out_h * out_w
    dtype_name = np.dtype(x.dtype).name
    itemsize = x.dtype.itemsize
    khw = kh * kw
    kb = _fit_block(_block_kb(k_out // groups) if khw <= 25 else 1, kh, kw, itemsize)
    kblocks = cdiv(k_out // groups, kb)
    nwork = groups * kblocks * cg
    # one shared row of nt partial sums per accumulator: nt * kb*kh*kw values
    nt = min(_GW_THREADS, max(32, pow2_at_least(total)),
             pow2_at_most(max(1, SHARED_BYTES // (kb * khw * itemsize))))
    splits = max(1, min(_TARGET_BLOCKS // nwork, cdiv(total, nt * _MIN_ITEMS_PER_THREAD)))
    per_split = cdiv(total, splits)
    splits = cdiv(total, per_split)
    partial = _kernels.empty((splits, k_out, cg, khw), x.dtype, stream)
    kernel = _make_grad_weight(dtype_name, kb, kh, kw)
    blocks = min(nwork * splits, _kernels.MAX_BLOCKS_1D)
    kernel[blocks, nt, stream, kb * khw * nt * itemsize](
        grad_out, x, partial, stride[0], stride[1], padding[0], padding[2],
        dilation[0], dilation[1], groups, kblocks, per_split)
    if splits == 1:
        return partial.reshape(tuple(weight_shape))
    out = _kernels.empty(tuple(weight_shape), x.dtype, stream)
    size = k_out * cg * khw
    blocks, threads = _kernels.launch_1d(size)
    _make_sum_splits(dtype_name)[blocks, threads, stream](
        partial.reshape(splits, size), out.reshape(size))
    return out


__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"]
