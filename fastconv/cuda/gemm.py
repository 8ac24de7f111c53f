"""Our own tiled shared-memory SGEMM/DGEMM for the CUDA backends.

    C[g] = alpha * op(A[g]) @ op(B[g]) + beta * C[g] (+ bias[row])     g = 0 .. batch-1

The kernel is the classic register-blocked GEMM: a block of ``threads =
(BM/TM) * (BN/TN)`` threads computes a ``BM x BN`` tile of C, stepping through
the reduction dimension ``BK`` at a time. Each step the block copies a ``BM x BK``
tile of op(A) and a ``BK x BN`` tile of op(B) into shared memory (zeros outside
the matrices, so partial edge tiles need no special case), then every thread
accumulates its ``TM x TN`` outputs in registers from ``TM + TN`` shared values per
``k`` (outer product). A thread owns runs of 4 adjacent rows and runs of 4 adjacent
columns (thread ``(ty, tx)``: rows ``4*ty + r*BM/2 + 0..3`` for ``TM = 8``), so each
run is one 16-byte shared load (LDS.128) and a quarter-warp's loads of B cover all
32 banks once.

The tile sizes are compile-time constants of a memoised kernel factory
(``_make_gemm``); a :class:`GemmConfig` names them. ``LARGE`` (128x128x8, 8x8 per
thread, 256 threads) is the default for big problems on a GPU, ``WIDE``
(64x128x8, 4x8) for big ones with at most 64 rows, ``MEDIUM`` (64x64x8, 4x4) for
problems with too few 128x128 tiles to fill the GPU, and
``SIM`` (8x16x16, 4x8, 4 threads) is the default under the CUDA simulator,
which runs one Python thread per CUDA thread; ``SMALL`` (8x8x4) and ``TINY``
(4x4x2) let tests cover many partial tiles with tiny matrices.

Operands
--------
Every operand is a 3-D numba device array (any strides: views are fine). The
*stored* matrix of batch entry ``g`` (op(A) = A^T when ``trans_a``: A is stored
``K x M``) is read in one of two ways:

- plain: ``X[g, r, c]`` (``X[0, r, c]`` for every ``g`` when ``X.shape[0] == 1``:
  a broadcast operand);
- split (``(L, off)`` given): the stored columns are the flattened ``(image,
  pixel)`` pairs of an NCHW-like array ``X`` of shape ``(P, batch*R, L)``: element
  ``(g, r, c)`` is ``X[(off + c) // L, g*R + r, (off + c) % L]``, where ``R`` is
  the stored row count. This is how the convolution backends multiply by (or
  write into) ``(N, C, H*W)`` arrays chunk by chunk with no transposing copy:
  im2col's forward writes its GEMM result straight into the output, grad_input
  reads grad_out in place, grad_weight reduces over ``(image, pixel)``.

Tuning notes (none of this was timed: the project was written without a GPU)
-------------------------------------------------------------------------------
``python -m fastconv.cuda.resources --match gemm`` compiles the kernels with NVVM
and ptxas for sm_90 without a GPU. With LARGE, float32: 199-232 registers (one
256-thread block per SM), no local memory, and an inner loop of 128 FFMA and 8
LDS.128 in 149 instructions (86% FMA). Three things got it there, each visible in
that report:

- every index into ``acc`` is a constant after unrolling (the epilogue shifts
  rows instead of indexing them), or NVVM keeps ``acc`` in local memory;
- shared-memory indices are unsigned: numba wraps signed indices (a negative
  index counts from the end), an extra address computation per load that also
  hides the runs of 4 from NVVM's load vectoriser;
- the k loop runs in pairs, the largest body NVVM still unrolls.

Next steps, to be decided by timing on a GPU:

- The main loop is software-pipelined through registers: the global loads of
  tile t are issued before the FMAs of tile t-1 (``va``/``vb``). Two shared
  buffers (ping-pong, one ``syncthreads`` per step instead of two) are the next
  step; measure first.
- ``LARGE_2`` caps LARGE at 128 registers for two blocks per SM (launch
  bounds); ptxas then spills 168-280 bytes, outside the FMA loop. The GPU
  benchmark times both.
- The stores of C write 4-byte words 16 bytes apart per instruction (runs of 4
  per thread); staging the tile through shared memory would make them whole
  128-byte lines.
- ``LARGE`` vs ``MEDIUM`` is chosen by tile count against the SM count
  (:func:`choose_config`); a 128x64 / 64x128 config and split-K (for grad_weight,
  whose reduction N*H*W is long while M x N is small) are the next candidates.
- Split operands cost no division in the main loop: each thread's load slots
  keep their (image, pixel) and step it by ``BK`` (``aq/ap``, ``bq/bp``); the
  epilogue of a split C divides once per column of a thread.
- Block swizzling (walking tiles in groups of rows) improves L2 reuse at 4096^2.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda

from ._kernels import (grid_yz, jit_options, kernel_factory, shared_alignment, simulated,
                       stream_or_default, u64)


class GemmConfig(NamedTuple):
    """Compile-time tile sizes: a BM x BN tile of C per block, BK-deep steps,
    TM x TN outputs per thread. BM % TM == BN % TN == 0. `blocks_per_sm` > 1
    asks ptxas to fit that many blocks on an SM (launch bounds), capping the
    registers per thread at 65536 / (blocks_per_sm * threads)."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    blocks_per_sm: int = 1

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def shared_bytes(self, itemsize: int) -> int:
        return self.bk * (self.bm + 4 + self.bn + 4) * itemsize


LARGE = GemmConfig(128, 128, 8, 8, 8)   # 256 threads, 64 accumulators each
# LARGE at two blocks per SM: 128 registers, so ptxas spills (a 168-280 byte stack
# frame, outside the FMA loop). Which of the two is faster awaits a GPU (benchmarks/test_bench_cuda.py).
LARGE_2 = GemmConfig(128, 128, 8, 8, 8, blocks_per_sm=2)
MEDIUM = GemmConfig(64, 64, 8, 4, 4)    # 256 threads, 16 accumulators each
WIDE = GemmConfig(64, 128, 8, 4, 8)     # 256 threads, 32 each: M <= 64 (few channels)
SMALL = GemmConfig(8, 8, 4, 2, 2)       # 16 threads: tests of many partial tiles
TINY = GemmConfig(4, 4, 2, 2, 2)        # 4 threads: tests of many partial tiles
# The simulator's default: it runs a Python thread per CUDA thread and each
# syncthreads costs milliseconds, so: few threads, few blocks, deep k steps.
SIM = GemmConfig(8, 16, 16, 4, 8)       # 4 threads

_SM_COUNT = None


def _sm_count() -> int:
    global _SM_COUNT
    if _SM_COUNT is None:
        try:
            _SM_COUNT = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
        except Exception:  # simulator or no device attribute
            _SM_COUNT = 1
    return _SM_COUNT


def choose_config(m: int, n: int, batch: int = 1, itemsize: int = 4) -> GemmConfig:
    """The tile configuration for an (M x N) x batch problem of `itemsize`-byte floats.

    Under the simulator: SIM (a Python thread per CUDA thread). On a GPU: LARGE
    when it makes at least two 128x128 tiles per SM, else MEDIUM (more, smaller
    blocks fill the GPU better than a few big ones); WIDE (64x128) instead of
    LARGE when M <= 64 (64 output channels: half of a 128-row tile would idle)
    and for float64, whose 64 accumulators per thread would take 128 of the 255
    registers: ptxas spills LARGE's float64 kernels (python -m
    fastconv.cuda.resources). Untuned: see the module notes.
    """
    if _simulator():
        return SIM
    tiles = math.ceil(m / 128) * math.ceil(n / 128) * batch
    if tiles < 2 * _sm_count():
        return MEDIUM
    return WIDE if m <= 64 or itemsize > 4 else LARGE


def _simulator() -> bool:
    return simulated()


# --------------------------------------------------------------------------
# the kernel
# --------------------------------------------------------------------------

@kernel_factory
def _make_gemm(cfg: GemmConfig, dtype_name: str, trans_a: bool, trans_b: bool,
               split_a: bool, split_b: bool, split_c: bool):
    BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
    THREADS = cfg.threads
    options = jit_options(THREADS, cfg.blocks_per_sm)    # cache, launch bounds
    TX = BN // TN          # threads along n (BM // TM along m)
    # A thread's TM rows come in runs of VM = 4 adjacent rows, the runs RUN_M =
    # BM/(TM/VM) apart (columns likewise): NVVM then reads each run from shared
    # memory with one vector load (LDS.128), and a quarter-warp's vector loads
    # of B cover 32 distinct banks. Row i of thread (ty, tx) is
    # ty*VM + (i // VM)*RUN_M + i % VM of the tile.
    VM, VN = min(4, TM), min(4, TN)
    if TM % VM or TN % VN or BK % 2 or BM % TM or BN % TN:
        raise ValueError(f"GemmConfig {tuple(cfg)}: tm and tn must be at most 4 or multiples "
                         f"of 4, bk even, bm a multiple of tm and bn of tn")
    RUN_M, RUN_N = BM // (TM // VM), BN // (TN // VN)
    ALIGN = shared_alignment(16)           # 16-byte vector loads (None: no such option)
    ALIGNED = ALIGN is not None            # a constant: numba prunes the other branch
    # Pad the shared tile whose global reads run along k (stored row-major with k
    # contiguous): consecutive threads then store to different banks.
    PAD_A = 0 if trans_a else 4
    PAD_B = 4 if trans_b else 0
    A_TILE = (BK, BM + PAD_A)      # shapes must be compile-time constant tuples
    B_TILE = (BK, BN + PAD_B)
    LOADS_A = -(-BM * BK // THREADS)     # global->shared loads per thread per step
    LOADS_B = -(-BK * BN // THREADS)
    dt = numba.from_dtype(np.dtype(dtype_name))

    @cuda.jit(**options)
    def gemm(A, B, C, bias, m_dim, n_dim, k_dim, batch,
             la, oa, lb, ob, lc, oc, alpha, beta, has_bias):
        if ALIGNED:
            As = cuda.shared.array(A_TILE, dtype=dt, alignment=ALIGN)
            Bs = cuda.shared.array(B_TILE, dtype=dt, alignment=ALIGN)
        else:   # a numba-cuda without alignment= (typing never sees the branch above)
            As = cuda.shared.array(A_TILE, dtype=dt)
            Bs = cuda.shared.array(B_TILE, dtype=dt)
        acc = cuda.local.array((TM, TN), dtype=dt)
        ra = cuda.local.array(TM, dtype=dt)
        rb = cuda.local.array(TN, dtype=dt)
        aq = cuda.local.array(LOADS_A, dtype=numba.int64)   # split A: image of a slot
        ap = cuda.local.array(LOADS_A, dtype=numba.int64)   # split A: pixel of a slot
        bq = cuda.local.array(LOADS_B, dtype=numba.int64)
        bp = cuda.local.array(LOADS_B, dtype=numba.int64)
        va = cuda.local.array(LOADS_A, dtype=dt)     # the next tiles, in flight
        vb = cuda.local.array(LOADS_B, dtype=dt)
        c_ok = cuda.local.array(TN, dtype=numba.boolean)    # epilogue: per column
        c_img = cuda.local.array(TN, dtype=numba.int64)
        c_pix = cuda.local.array(TN, dtype=numba.int64)
        tid = cuda.threadIdx.x
        tx = tid % TX
        ty = tid // TX
        # unsigned shared-memory indices (_kernels.u64): no negative-index wrap
        row_1 = u64(ty * VM)      # this thread's first row (column) in a tile
        col_1 = u64(tx * VN)
        m_tiles = (m_dim + BM - 1) // BM
        # Stored row counts per batch entry (for split operands).
        ra_rows = k_dim if trans_a else m_dim
        rb_rows = n_dim if trans_b else k_dim
        for g in range(cuda.blockIdx.z, batch, cuda.gridDim.z):
            ga = g if A.shape[0] > 1 else 0
            gb = g if B.shape[0] > 1 else 0
            for by in range(cuda.blockIdx.y, m_tiles, cuda.gridDim.y):
                row0 = by * BM
                col0 = cuda.blockIdx.x * BN
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] = 0
                if split_a:
                    # (image, pixel) of each of this thread's load slots' stored
                    # column, at k0 = 0: no division in the main loop.
                    for s in range(LOADS_A):
                        e = tid + s * THREADS
                        if trans_a:
                            cc = oa + row0 + e % BM      # column = m: fixed
                        else:
                            cc = oa + e % BK             # column = k: advances
                        aq[s] = cc // la
                        ap[s] = cc % la
                if split_b:
                    for s in range(LOADS_B):
                        e = tid + s * THREADS
                        if trans_b:
                            cc = ob + e % BK             # column = k: advances
                        else:
                            cc = ob + col0 + e % BN      # column = n: fixed
                        bq[s] = cc // lb
                        bp[s] = cc % lb
                # Software pipeline: step t stores the tiles loaded at step t-1
                # into shared memory, issues the global loads of tile t into
                # registers, then multiplies tile t-1 while those loads fly.
                n_steps = (k_dim + BK - 1) // BK
                for t in range(n_steps + 1):
                    if t > 0:
                        for s in range(LOADS_A):
                            e = tid + s * THREADS
                            if e < BM * BK:
                                if trans_a:
                                    As[u64(e // BM), u64(e % BM)] = va[s]
                                else:
                                    As[u64(e % BK), u64(e // BK)] = va[s]
                        for s in range(LOADS_B):
                            e = tid + s * THREADS
                            if e < BK * BN:
                                if trans_b:
                                    Bs[u64(e % BK), u64(e // BK)] = vb[s]
                                else:
                                    Bs[u64(e // BN), u64(e % BN)] = vb[s]
                        cuda.syncthreads()
                    if t < n_steps:
                        k0 = t * BK
                        # ---- op(A) tile k0 -> registers -------------------------
                        for s in range(LOADS_A):
                            e = tid + s * THREADS
                            if trans_a:        # stored (k, m), contiguous along m
                                i = e % BM
                                kk = e // BM
                            else:              # stored (m, k), contiguous along k
                                kk = e % BK
                                i = e // BK
                            m = row0 + i
                            k = k0 + kk
                            v = dt(0)
                            if e < BM * BK and m < m_dim and k < k_dim:
                                r = k if trans_a else m
                                if split_a:
                                    v = A[u64(aq[s]), u64(g * ra_rows + r), u64(ap[s])]
                                else:
                                    v = A[u64(ga), u64(r), u64(m if trans_a else k)]
                            va[s] = v
                        # ---- op(B) tile k0 -> registers -------------------------
                        for s in range(LOADS_B):
                            e = tid + s * THREADS
                            if trans_b:        # stored (n, k), contiguous along k
                                kk = e % BK
                                j = e // BK
                            else:              # stored (k, n), contiguous along n
                                j = e % BN
                                kk = e // BN
                            n = col0 + j
                            k = k0 + kk
                            v = dt(0)
                            if e < BK * BN and n < n_dim and k < k_dim:
                                r = n if trans_b else k
                                if split_b:
                                    v = B[u64(bq[s]), u64(g * rb_rows + r), u64(bp[s])]
                                else:
                                    v = B[u64(gb), u64(r), u64(k if trans_b else n)]
                            vb[s] = v
                        # split columns along k move on by BK (no division)
                        if split_a and not trans_a:
                            for s in range(LOADS_A):
                                ap[s] += BK
                                while ap[s] >= la:
                                    ap[s] -= la
                                    aq[s] += 1
                        if split_b and trans_b:
                            for s in range(LOADS_B):
                                bp[s] += BK
                                while bp[s] >= lb:
                                    bp[s] -= lb
                                    bq[s] += 1
                    if t > 0:
                        # k in pairs: NVVM unrolls the inner pair (not all of BK),
                        # which halves the loop's overhead per FMA
                        for k2 in range(0, BK, 2):
                            for kk in range(k2, k2 + 2):
                                for i in range(TM):
                                    ra[i] = As[u64(kk), row_1 + u64((i // VM) * RUN_M + i % VM)]
                                for j in range(TN):
                                    rb[j] = Bs[u64(kk), col_1 + u64((j // VN) * RUN_N + j % VN)]
                                for i in range(TM):
                                    for j in range(TN):
                                        acc[i, j] += ra[i] * rb[j]
                        cuda.syncthreads()
                # ---- epilogue: alpha, beta, bias; only in-range outputs ---------
                # NVVM keeps `acc` in registers only if every index into it is a
                # constant after unrolling. This loop over rows is too big to
                # unroll, so it always stores row 0 and then shifts the rows up
                # (TM*TN register moves per row, against TM*TN*K FMAs).
                for j in range(TN):
                    n = col0 + tx * VN + (j // VN) * RUN_N + j % VN
                    c_ok[j] = n < n_dim
                    cc = oc + n
                    c_img[j] = cc // lc if split_c else g
                    c_pix[j] = cc % lc if split_c else n
                for i in range(TM):
                    m = row0 + ty * VM + (i // VM) * RUN_M + i % VM
                    if m < m_dim:
                        row = g * m_dim + m
                        crow = row if split_c else m
                        # -0.0, the additive identity (v + 0.0 would turn -0.0 into +0.0)
                        shift = bias[row] if has_bias else dt(-0.0)
                        for j in range(TN):
                            if c_ok[j]:
                                v = alpha * acc[0, j] + shift
                                if beta != 0:
                                    v += beta * C[c_img[j], crow, c_pix[j]]
                                C[c_img[j], crow, c_pix[j]] = v
                    for r in range(TM - 1):
                        for j in range(TN):
                            acc[r, j] = acc[r + 1, j]
    return gemm


# --------------------------------------------------------------------------
# launching
# --------------------------------------------------------------------------

def launch(a, b, c, m, n, k, batch=1, *, trans_a=False, trans_b=False, alpha=1.0,
           beta=0.0, bias=None, split_a=None, split_b=None, split_c=None,
           config=None, stream=0):
    """Run the batched GEMM on 3-D device operands (see the module docstring).

    ``m, n, k``: the logical sizes of op(A) (m x k) and op(B) (k x n) per batch
    entry; ``split_x``: ``None`` or ``(L, off)`` for a split operand; ``bias``:
    ``None`` or a 1-D array indexed by ``g*m + row`` (after ``alpha``, before
    ``beta*C``). With ``beta == 0`` C is never read (it may hold garbage/NaN).
    """
    if m == 0 or n == 0 or batch == 0:
        return c
    dtype = np.dtype(c.dtype)
    cfg = config or choose_config(m, n, batch, dtype.itemsize)
    kern = _make_gemm(GemmConfig(*cfg), dtype.name, bool(trans_a), bool(trans_b),
                      split_a is not None, split_b is not None, split_c is not None)
    la, oa = split_a or (1, 0)
    lb, ob = split_b or (1, 0)
    lc, oc = split_c or (1, 0)
    has_bias = bias is not None
    if bias is None:
        bias = cuda.device_array(1, dtype, stream=stream_or_default(stream))
    grid = (math.ceil(n / cfg.bn), grid_yz(math.ceil(m / cfg.bm)), grid_yz(batch))
    kern[grid, GemmConfig(*cfg).threads, stream_or_default(stream)](
        a, b, c, bias, np.int64(m), np.int64(n), np.int64(k), np.int64(batch),
        np.int64(la), np.int64(oa), np.int64(lb), np.int64(ob), np.int64(lc),
        np.int64(oc), dtype.type(alpha), dtype.type(beta), has_bias)
    return c


def matmul(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
           config=None, stream=0):
    """``out = alpha * op(a) @ op(b) + beta * out`` on numba device arrays.

    ``a``, ``b``: 2-D, or 3-D batched (a batch of 1 broadcasts), float32 or
    float64, one dtype; ``trans_a``/``trans_b`` transpose the last two axes (no
    copy is made: the kernel reads the stored layout). ``out``: ``None`` (a new
    C-contiguous array; ``beta`` must then be 0) or a device array of the result
    shape. ``config``: a :class:`GemmConfig` (``SMALL`` etc.); default by size.
    Returns ``out``.
    """
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"matmul needs 2-D or 3-D arrays, got {a.shape} and {b.shape}")
    if np.dtype(a.dtype) != np.dtype(b.dtype) or np.dtype(a.dtype) not in (
            np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"matmul needs two float32 or two float64 arrays, "
                        f"got {a.dtype} and {b.dtype}")
    batched = a.ndim == 3 or b.ndim == 3
    a3 = a if a.ndim == 3 else _add_axis(a)
    b3 = b if b.ndim == 3 else _add_axis(b)
    m, ka = (a3.shape[2], a3.shape[1]) if trans_a else (a3.shape[1], a3.shape[2])
    kb, n = (b3.shape[2], b3.shape[1]) if trans_b else (b3.shape[1], b3.shape[2])
    if ka != kb:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is {m}x{ka}, "
                         f"op(b) is {kb}x{n}")
    batch = max(a3.shape[0], b3.shape[0])
    if a3.shape[0] not in (1, batch) or b3.shape[0] not in (1, batch):
        raise ValueError(f"matmul: batch sizes {a3.shape[0]} and {b3.shape[0]} differ")
    shape = (batch, m, n) if batched else (m, n)
    if out is None:
        if beta != 0:
            raise ValueError("matmul: beta != 0 needs an `out` to accumulate into")
        out = cuda.device_array(shape, a.dtype, stream=stream_or_default(stream))
    elif tuple(out.shape) != shape or np.dtype(out.dtype) != np.dtype(a.dtype):
        raise ValueError(f"matmul: out must be {shape} {a.dtype}, got "
                         f"{tuple(out.shape)} {out.dtype}")
    c3 = out if batched else _add_axis(out)
    launch(a3, b3, c3, m, n, ka, batch, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
           beta=beta, config=config, stream=stream)
    return out


def _add_axis(arr):
    """A (1, r, c) view of a 2-D device array (any strides; no copy)."""
    if arr.is_c_contiguous():
        return arr.reshape((1,) + tuple(arr.shape))
    if _simulator():
        return arr[None]
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray((1,) + tuple(arr.shape), (0,) + tuple(arr.strides), arr.dtype,
                         stream=arr.stream, gpu_data=arr.gpu_data)


gemm = matmul

__all__ = ["GemmConfig", "LARGE", "LARGE_2", "MEDIUM", "WIDE", "SMALL", "TINY", "SIM", "choose_config",
           "launch", "matmul", "gemm"]
