"""fastconv's own GEMM: C = A @ B (or C += A @ B) with packed operands, in numba.

im2col and its gradients are GEMMs. Run by NumPy's OpenBLAS, they bring OpenBLAS's
thread pool into fastconv's hot paths, and on a small machine its busy-waiting threads
and numba's (or torch's OpenMP threads) take the cores from each other whatever the
import order. This module does the GEMMs on numba's threads instead, in the
BLIS/GotoBLAS design (Goto & van de Geijn; Smith et al.):

    for each work item (batch element x part of the rows x part of the columns), in parallel:
        for jc over the item's columns, step NC:          # B block, KC x NC, lives in L2
            for pc over the depth, step KC:
                pack B[pc:pc+KC, jc:jc+NC] into micro-panels of NR columns (zero-padded)
                for ic over the item's rows, step MC:
                    pack A[ic:ic+MC, pc:pc+KC] into micro-panels of MR rows (zero-padded)
                    for ir, step MR:                      # A micro-panel, MR x KC, in L1
                        for jr, step NR:                  # B micro-panel streams from L2
                            C[ir:ir+MR, jr:jr+NR] (+)= Ap[ir] @ Bp[jr]   (micro-kernel)

The micro-kernel keeps its MR x NR accumulators in vector registers (LLVM IR through
`numba.extending.intrinsic`, like `gemm.py`'s): each step of the reduction loads NR/lanes
vectors of the packed B panel, broadcasts MR values of the packed A panel and issues
MR * NR/lanes fused multiply-adds. Packing makes both reads sequential and aligned and pads
the edges with zeros, so only the stores are masked (columns past N are not written, rows
past M not stored). Depth blocks after the first add to C (as does `accumulate=True`).

Packing reads the operands through strides, so a transposed operand (``W.T``, ``cols.T``)
costs no copy, and a batch of GEMMs is one call (batch strides, 0 for a shared operand).
Work items (batch elements, each split into parts) divide evenly among the threads; a
batch element is split along the longer of M and N (the other operand is then packed once
per part).

Block sizes are data (`Blocking`, chosen per CPU and dtype by `host_blocking`; how they
were tuned: docs/tuning.md). Where the CPU has neither AVX-512 nor AVX2 + FMA,
`host_blocking` returns None and `matmul` calls np.matmul.
"""
from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._common import HELPER, KERNEL, readonly
from .gemm import target_features


class Blocking(NamedTuple):
    """One GEMM's register tile and cache blocks, in elements of its dtype.

    rows (MR) x vectors * lanes (NR) accumulators; a packed A micro-panel (MR x kc) stays
    in L1 while the packed B block (kc x nc) is streamed from L2; mc rows of A are packed
    at a time."""
    vector_bytes: int
    rows: int
    vectors: int
    kc: int
    nc: int
    mc: int


def host_blocking(features=None):
    """{dtype: Blocking} for a CPU with these features (`gemm.target_features()` by
    default), or None without AVX-512 or AVX2 + FMA.

    AVX-512 (32 registers of 64 bytes): 8 rows x 3 vectors, 24 accumulators + 3 loads + a
    broadcast. MR = 8 divides the usual channel counts (no padded rows; 12 x 2 measured
    3-10% slower at M = 32 and 64) and lets A's packing transpose 8 rows at a time. float32
    kc = 384: an A micro-panel takes 12 KiB of the 48 KiB L1d, and the B block (kc x nc)
    1.1 MiB of the 2 MiB L2; float64 kc = 192, the same bytes (384: 10-20% slower).
    Measured on Sapphire Rapids (docs/tuning.md).
    AVX2 + FMA (16 registers of 32 bytes): 6 x 2 (not measured on such a CPU)."""
    if features is None:
        features = target_features()
    if features.get("avx512f"):
        return {np.dtype(np.float32): Blocking(64, 8, 3, 384, 768, 768),
                np.dtype(np.float64): Blocking(64, 8, 3, 192, 768, 768)}
    if features.get("avx2") and features.get("fma"):
        return {np.dtype(np.float32): Blocking(32, 6, 2, 256, 1024, 768),
                np.dtype(np.float64): Blocking(32, 6, 2, 128, 1024, 768)}
    return None


HOST = host_blocking()


def _literal(value, name):
    if not isinstance(value, types.IntegerLiteral):
        raise numba.core.errors.RequireLiteralValue(f"{name} must be a compile-time constant")
    return value.literal_value


@intrinsic
def _micro_kernel(typingctx, AP, ap_off, BP, bp_off, ldb, C, c_off, ldc, depth, rows, cols,
                  accumulate, vector_bytes, tile_rows, tile_vectors):
    """C[c_off + i*ldc + j] (+)= sum_p AP[ap_off + p*MR + i] * BP[bp_off + p*ldb + j] for
    i < rows, j < cols <= tile_vectors * lanes; AP and BP are packed panels (BP's at a
    multiple of vector_bytes, ldb too)."""
    vbytes = _literal(vector_bytes, "vector_bytes")
    mr = _literal(tile_rows, "tile_rows")
    nv = _literal(tile_vectors, "tile_vectors")
    sig = types.void(AP, types.intp, BP, types.intp, types.intp, C, types.intp, types.intp,
                     types.intp, types.intp, types.intp, types.boolean, vector_bytes,
                     tile_rows, tile_vectors)

    def codegen(context, builder, signature, args):
        ap_arr, ap_off, bp_arr, bp_off, ldb, c_arr, c_off, ldc, depth, rows, cols, accum = \
            args[:12]
        scalar = context.get_value_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(scalar)
        lanes = vbytes // size
        vec = ir.VectorType(scalar, lanes)
        vec_ptr = vec.as_pointer()
        i32, intp = ir.IntType(32), context.get_value_type(types.intp)
        lane_ids = ir.VectorType(i32, lanes)
        mask_type = ir.VectorType(ir.IntType(1), lanes)
        align = ir.Constant(i32, size)
        suffix = f"v{lanes}{'f32' if isinstance(scalar, ir.FloatType) else 'f64'}"
        module = builder.module
        fma = cgutils.get_or_insert_function(
            module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.{suffix}")
        masked_load = cgutils.get_or_insert_function(
            module, ir.FunctionType(vec, [vec_ptr, i32, mask_type, vec]),
            f"llvm.masked.load.{suffix}.p0{suffix}")
        masked_store = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [vec, vec_ptr, i32, mask_type]),
            f"llvm.masked.store.{suffix}.p0{suffix}")

        def data(index, offset):
            ary = context.make_array(signature.args[index])(context, builder, args[index])
            return builder.gep(ary.data, [offset], inbounds=True)

        def const(value):
            return ir.Constant(intp, value)

        def splat(value, vector_type, count):
            one = builder.insert_element(ir.Constant(vector_type, None), value,
                                         ir.Constant(i32, 0))
            return builder.shuffle_vector(
                one, one, ir.Constant(ir.VectorType(i32, count), [0] * count))

        a_base, b_base, c_base = data(0, ap_off), data(2, bp_off), data(5, c_off)
        zero = ir.Constant(vec, [0.0] * lanes)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)]
               for _ in range(mr)]
        with cgutils.for_range(builder, depth) as loop:
            b_row = builder.gep(b_base, [builder.mul(loop.index, ldb)], inbounds=True)
            a_row = builder.gep(a_base, [builder.mul(loop.index, const(mr))], inbounds=True)
            loaded = [builder.load(builder.bitcast(
                builder.gep(b_row, [const(j * lanes)], inbounds=True), vec_ptr), align=vbytes)
                for j in range(nv)]
            for i in range(mr):
                a = splat(builder.load(builder.gep(a_row, [const(i)], inbounds=True)), vec,
                          lanes)
                for j in range(nv):
                    builder.store(builder.call(fma, [loaded[j], a, builder.load(acc[i][j])]),
                                  acc[i][j])
        cols_splat = splat(builder.trunc(cols, i32), lane_ids, lanes)
        masks = [builder.icmp_signed(
            "<", ir.Constant(lane_ids, [j * lanes + lane for lane in range(lanes)]), cols_splat)
            for j in range(nv)]
        # C is read only when accumulating (no +0.0 otherwise: it would turn -0.0 into 0.0)
        accum = builder.icmp_unsigned("!=", accum, ir.Constant(accum.type, 0))
        for i in range(mr):
            with builder.if_then(builder.icmp_signed("<", const(i), rows)):
                c_row = builder.gep(c_base, [builder.mul(const(i), ldc)], inbounds=True)
                for j in range(nv):
                    ptr = builder.bitcast(builder.gep(c_row, [const(j * lanes)], inbounds=True),
                                          vec_ptr)
                    total = builder.load(acc[i][j])
                    with builder.if_then(accum):
                        old = builder.call(masked_load, [ptr, align, masks[j], zero])
                        builder.store(builder.fadd(total, old), acc[i][j])
                    builder.call(masked_store, [builder.load(acc[i][j]), ptr, align, masks[j]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _copy_vectors(typingctx, S, s_off, D, d_off, width, count):
    """D[d_off + j] = S[s_off + j] for j < width, 0 for width <= j < count * lanes:
    `count` (a constant) vectors of 64 bytes, masked loads, whole stores."""
    vectors = _literal(count, "count")
    sig = types.void(S, types.intp, D, types.intp, types.intp, count)

    def codegen(context, builder, signature, args):
        s_arr, s_off, d_arr, d_off, width = args[:5]
        scalar = context.get_value_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(scalar)
        lanes = 64 // size
        vec = ir.VectorType(scalar, lanes)
        vec_ptr = vec.as_pointer()
        i32 = ir.IntType(32)
        lane_ids = ir.VectorType(i32, lanes)
        mask_type = ir.VectorType(ir.IntType(1), lanes)
        suffix = f"v{lanes}{'f32' if isinstance(scalar, ir.FloatType) else 'f64'}"
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec_ptr, i32, mask_type, vec]),
            f"llvm.masked.load.{suffix}.p0{suffix}")

        def base(index, offset):
            ary = context.make_array(signature.args[index])(context, builder, args[index])
            return builder.gep(ary.data, [offset], inbounds=True)

        src, dst = base(0, s_off), base(2, d_off)
        one = builder.insert_element(ir.Constant(lane_ids, None), builder.trunc(width, i32),
                                     ir.Constant(i32, 0))
        width_splat = builder.shuffle_vector(one, one, ir.Constant(lane_ids, [0] * lanes))
        zero = ir.Constant(vec, [0.0] * lanes)
        for j in range(vectors):
            mask = builder.icmp_signed(
                "<", ir.Constant(lane_ids, [j * lanes + lane for lane in range(lanes)]),
                width_splat)
            at = ir.Constant(s_off.type, j * lanes)
            value = builder.call(masked_load, [builder.bitcast(
                builder.gep(src, [at], inbounds=True), vec_ptr), ir.Constant(i32, size), mask,
                zero])
            builder.store(value, builder.bitcast(builder.gep(dst, [at], inbounds=True),
                                                 vec_ptr), align=size)
        return context.get_dummy_value()

    return sig, codegen


def _transpose_stages(rows, lanes):
    """The shuffles that transpose `rows` vectors of `lanes` elements (both powers of
    two, rows <= lanes): element (i, l) (row i, lane l) ends in vector
    l // (lanes // rows), lane (l % (lanes // rows)) * rows + i. Each stage exchanges one
    bit of the vector index with one bit of the lane index (a butterfly: rows shuffles
    of two vectors a stage, log2(rows) stages). Returns [[(out, a, b, mask)]]."""
    vbits, lbits = rows.bit_length() - 1, lanes.bit_length() - 1
    low = lanes // rows
    vectors = [[(i, l) for l in range(lanes)] for i in range(rows)]
    stages = []
    for s in range(vbits):
        bit = lbits - vbits + s
        final = s == vbits - 1
        new, ops = [None] * rows, []
        for a in range(rows):
            if a & (1 << s):
                continue
            b = a | (1 << s)
            pool = vectors[a] + vectors[b]
            for out, value in ((a, 0), (b, 1)):
                chosen = [(k, e) for k, e in enumerate(pool) if (e[1] >> bit) & 1 == value]
                if final:
                    chosen.sort(key=lambda ke: (ke[1][1] % low) * rows + ke[1][0])
                new[out] = [e for _, e in chosen]
                ops.append((out, a, b, [k for k, _ in chosen]))
        vectors = new
        stages.append(ops)
    return stages


@intrinsic
def _transpose(typingctx, S, s_off, lds, D, d_off, ldd, block_rows):
    """Transpose a block: R rows of one vector each, S[s_off + r*lds + l] (r < R,
    l < lanes), into R vectors D[d_off + k*ldd : ... + lanes] where vector k holds, for
    each of the lanes // R steps l = k*(lanes//R) + h, the R values S[., l] in row order.
    R = block_rows, or the vector's lanes when block_rows is 0. AVX-512 registers."""
    block = _literal(block_rows, "block_rows")
    sig = types.void(S, types.intp, types.intp, D, types.intp, types.intp, block_rows)

    def codegen(context, builder, signature, args):
        s_arr, s_off, lds, d_arr, d_off, ldd = args[:6]
        scalar = context.get_value_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(scalar)
        lanes = 64 // size
        rows = block or lanes
        vec = ir.VectorType(scalar, lanes)
        vec_ptr = vec.as_pointer()
        i32 = ir.IntType(32)

        def base(index, offset):
            ary = context.make_array(signature.args[index])(context, builder, args[index])
            return builder.gep(ary.data, [offset], inbounds=True)

        src, dst = base(0, s_off), base(3, d_off)
        vectors = [builder.load(builder.bitcast(builder.gep(
            src, [builder.mul(ir.Constant(lds.type, r), lds)], inbounds=True), vec_ptr),
            align=size) for r in range(rows)]
        for ops in _transpose_stages(rows, lanes):
            new = list(vectors)
            for out, a, b, mask in ops:
                new[out] = builder.shuffle_vector(vectors[a], vectors[b],
                                                  ir.Constant(ir.VectorType(i32, lanes), mask))
            vectors = new
        for k in range(rows):
            ptr = builder.gep(dst, [builder.mul(ir.Constant(ldd.type, k), ldd)], inbounds=True)
            builder.store(vectors[k], builder.bitcast(ptr, vec_ptr), align=size)
        return context.get_dummy_value()

    return sig, codegen


_kernels = {}       # Blocking -> its driver (jitcache finds them here)
_kernels_lock = threading.Lock()


def _kernel(blocking):
    with _kernels_lock:
        if blocking not in _kernels:
            _kernels[blocking] = _make_kernel(blocking)
        return _kernels[blocking]


@numba.njit(**HELPER)
def _pack_a(A, off, rs, cs, i0, rows, p0, depth, ap, mr, a_block):
    """ap[panel*mr*depth + p*mr + i] = A[off + (i0 + panel*mr + i)*rs + (p0 + p)*cs],
    rows past `rows` zero. a_block (a constant): rows transposed at a time by
    `_transpose` where A's rows run along the depth, 0 for element by element."""
    numba.literally(a_block)
    lanes = 64 // A.itemsize
    panels = -(-rows // mr)
    for panel in range(panels):
        height = min(mr, rows - panel * mr)
        dst = ap[panel * mr * depth:(panel + 1) * mr * depth]
        start = off + (i0 + panel * mr) * rs + p0 * cs
        done = 0
        if rs == 1:
            # each step of the depth is `height` consecutive elements
            for p in range(depth):
                src = A[start + p * cs:start + p * cs + height]
                row = dst[p * mr:(p + 1) * mr]
                for i in range(height):
                    row[i] = src[i]
                for i in range(height, mr):
                    row[i] = 0
            continue
        if a_block and cs == 1 and height == mr:
            done = depth // lanes * lanes
            for p in range(0, done, lanes):
                _transpose(A, start + p, rs, dst, p * mr, lanes, a_block)
        for i in range(height):
            src = A[start + i * rs:]
            for p in range(done, depth):
                dst[p * mr + i] = src[p * cs]
        for i in range(height, mr):
            for p in range(depth):
                dst[p * mr + i] = 0


@numba.njit(**HELPER)
def _pack_b(B, off, rs, cs, p0, depth, j0, cols, bp, vector_bytes, vectors,
            vector_transpose):
    """bp[panel*nr*depth + p*nr + j] = B[off + (p0 + p)*rs + (j0 + panel*nr + j)*cs],
    columns past `cols` zero; nr is `vectors` (a constant) vectors of `vector_bytes`.
    vector_transpose: whether to copy and transpose in 64-byte vectors."""
    numba.literally(vectors)
    lanes = 64 // B.itemsize
    nr = vectors * vector_bytes // B.itemsize
    panels = -(-cols // nr)
    last = cols - (panels - 1) * nr
    start = off + p0 * rs + j0 * cs
    if cs == 1:
        # row by row of B: its reads are sequential (panel by panel, each step of the
        # depth would touch another page: 2.5x slower)
        for p in range(depth):
            for panel in range(panels):
                width = nr if panel < panels - 1 else last
                if vector_transpose:
                    _copy_vectors(B, start + p * rs + panel * nr, bp,
                                  panel * nr * depth + p * nr, width, vectors)
                    continue
                dst = bp[panel * nr * depth + p * nr:panel * nr * depth + (p + 1) * nr]
                part = B[start + p * rs + panel * nr:start + p * rs + panel * nr + width]
                for j in range(width):
                    dst[j] = part[j]
                for j in range(width, nr):
                    dst[j] = 0
        return
    whole, done = 0, 0
    if vector_transpose and rs == 1:
        whole, done = cols // lanes * lanes, depth // lanes * lanes
        for j in range(0, whole, lanes):
            dst = bp[(j // nr) * nr * depth + j % nr:]
            for p in range(0, done, lanes):
                _transpose(B, start + j * cs + p, cs, dst, p * nr, nr, 0)
    for j in range(cols):
        src = B[start + j * cs:]
        dst = bp[(j // nr) * nr * depth + j % nr:]
        for p in range(done if j < whole else 0, depth):
            dst[p * nr] = src[p * rs]
    for j in range(last, nr):
        dst = bp[(panels - 1) * nr * depth + j:]
        for p in range(depth):
            dst[p * nr] = 0


def _make_kernel(blocking):
    vector_bytes, mr, vectors, kc, nc, mc = blocking
    # packing an operand whose rows run along the depth (W in W @ cols, cols in go @ cols.T)
    # is a transpose: in blocks of vectors through register shuffles on AVX-512 (3x faster
    # than element by element); MR rows at a time for A where MR is a power of two
    vector_transpose = vector_bytes == 64
    a_block = mr if vector_transpose and mr & (mr - 1) == 0 and mr <= 8 else 0

    @numba.njit(**KERNEL)
    def packed_gemm(A, B, C, shape, a_strides, b_strides, c_strides, parts_m, parts_n,
                    accumulate, ws, b_size):
        batch, m, n, k = shape
        a_bs, a_rs, a_cs = a_strides
        b_bs, b_rs, b_cs = b_strides
        c_bs, c_rs = c_strides
        lanes = vector_bytes // C.itemsize
        nr = vectors * lanes
        m_step = -(-(-(-m // mr)) // parts_m) * mr
        n_step = -(-(-(-n // nr)) // parts_n) * nr
        for item in prange(batch * parts_m * parts_n):
            # numba's prange index is unsigned: int64 first, or divmod gives floats
            e, rest = divmod(np.int64(item), parts_m * parts_n)
            part_m, part_n = divmod(rest, parts_n)
            m0, n0 = part_m * m_step, part_n * n_step
            m1, n1 = min(m, m0 + m_step), min(n, n0 + n_step)
            if m0 >= m1 or n0 >= n1:
                continue
            space = ws[numba.get_thread_id()]      # this thread's packing space
            bp = space[:b_size]
            ap = space[b_size:]
            for jc in range(n0, n1, nc):
                width = min(nc, n1 - jc)
                for pc in range(0, k, kc):
                    depth = min(kc, k - pc)
                    _pack_b(B, e * b_bs, b_rs, b_cs, pc, depth, jc, width, bp, vector_bytes,
                            vectors, vector_transpose)
                    add = accumulate or pc > 0
                    for ic in range(m0, m1, mc):
                        height = min(mc, m1 - ic)
                        _pack_a(A, e * a_bs, a_rs, a_cs, ic, height, pc, depth, ap, mr,
                                a_block)
                        for row in range(0, height, mr):
                            rows = min(mr, height - row)
                            for col in range(0, width, nr):
                                cols = min(nr, width - col)
                                c_off = e * c_bs + (ic + row) * c_rs + jc + col
                                # the last panel of a narrow C (7x7 images: 49 columns)
                                # by a narrower tile: fewer padded columns computed
                                if cols <= lanes and vectors > 1:
                                    _micro_kernel(ap, row * depth, bp, col * depth, nr, C,
                                                  c_off, c_rs, depth, rows, cols, add,
                                                  vector_bytes, mr, 1)
                                elif cols <= 2 * lanes and vectors > 2:
                                    _micro_kernel(ap, row * depth, bp, col * depth, nr, C,
                                                  c_off, c_rs, depth, rows, cols, add,
                                                  vector_bytes, mr, 2)
                                else:
                                    _micro_kernel(ap, row * depth, bp, col * depth, nr, C,
                                                  c_off, c_rs, depth, rows, cols, add,
                                                  vector_bytes, mr, vectors)

    return packed_gemm


def _whole_strides(array):
    return array.flags.aligned and all(s >= 0 and s % array.itemsize == 0
                                       for s in array.strides)


def _flat(array):
    """A 1-D view from `array`'s first element over all its elements, and its strides
    in elements (positive, as every caller's views have)."""
    item = array.itemsize
    strides = tuple(s // item for s in array.strides)
    if array.flags.c_contiguous:
        return array.reshape(-1), strides
    if array.flags.f_contiguous:                # a transposed C-contiguous array
        return array.T.reshape(-1), strides
    span = 1 + sum((d - 1) * s for d, s in zip(array.shape, strides))
    return np.lib.stride_tricks.as_strided(array, shape=(span,), strides=(item,)), strides


_workspaces = threading.local()


def _workspace(items, elements, dtype):
    """items rows of `elements` (a multiple of 64 bytes), 64-byte aligned: one per numba
    thread. The largest so far is kept per Python thread and dtype (a fresh allocation of
    megabytes faults its pages in on every call)."""
    dtype = np.dtype(dtype)
    kept = getattr(_workspaces, "spaces", None)
    if kept is None:
        kept = _workspaces.spaces = {}
    raw = kept.get(dtype)
    align = 64 // dtype.itemsize
    if raw is None or raw.size < items * elements + align:
        raw = kept[dtype] = np.empty(items * elements + align, dtype=dtype)
    start = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[start:start + items * elements].reshape(items, elements)


# Work items per thread where a GEMM is split along its columns: handed out as threads
# come free, so a thread the OS delays (other processes, another library's spinning
# threads) costs its share of items, not the whole GEMM. Each item packs its own panels:
# two items a thread cost 1-2% more packing split along N, 3-7% along M (so there one).
ITEMS_PER_THREAD = 2


def _parts(batch, m, n, mr, nr):
    """(parts of M, parts of N) per batch element: whole numbers of work items per thread,
    the longer dimension (in tiles) split (the other operand is then packed once per
    part), at least two tiles a part where the columns are split."""
    threads = numba.get_num_threads()
    per = threads // math.gcd(batch, threads)
    if per <= 1:
        return 1, 1
    tiles_m, tiles_n = -(-m // mr), -(-n // nr)
    if tiles_n >= tiles_m:
        pn = min(per * ITEMS_PER_THREAD, max(per, tiles_n // 2), tiles_n)
        return max(1, min(tiles_m, per // pn)), pn
    pm = min(per, tiles_m)
    return pm, max(1, min(tiles_n, per // pm))


def _as_3d(array, name):
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    raise ValueError(f"matmul: {name} must be 2-D or 3-D, got shape {array.shape}")


def matmul(a, b, out=None, accumulate=False, blocking=None):
    """out = a @ b, or out += a @ b with `accumulate=True`, on fastconv's packed GEMM.

    a (M, K) or (E, M, K), b (K, N) or (E, K, N) of one float dtype, any strides (a
    transposed view costs no copy); out (M, N) or (E, M, N) with unit column stride, not
    overlapping a or b, allocated when None. A 2-D operand is shared by every batch
    element. `blocking` defaults to the host's (`HOST`); without one, np.matmul runs.

    >>> import numpy as np
    >>> from fastconv.cpu.matmul import matmul
    >>> a, b = np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)
    >>> matmul(a, b.T)[0, 0]
    4.0
    """
    if not (a.dtype == b.dtype and a.dtype in (np.float32, np.float64)):
        raise ValueError(f"matmul: dtypes {a.dtype}, {b.dtype}")
    a3, b3 = _as_3d(a, "a"), _as_3d(b, "b")
    batch = b3.shape[0] if b.ndim == 3 else a3.shape[0]
    m, k = a3.shape[1:]
    n = b3.shape[2]
    if b3.shape[1] != k or (a.ndim == b.ndim == 3 and a3.shape[0] != batch):
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not multiply")
    shape = (m, n) if a.ndim == b.ndim == 2 else (batch, m, n)
    if out is None:
        out = np.empty(shape, dtype=a.dtype)
        accumulate = False
    elif out.shape != shape or out.dtype != a.dtype or not out.flags.writeable:
        raise ValueError(f"matmul: out must be a writeable {a.dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    if blocking is None:
        blocking = HOST.get(a.dtype) if HOST else None
    if blocking is None:
        result = np.matmul(a, b)
        if accumulate:
            out += result
        else:
            out[...] = result
        return out
    c3 = _as_3d(out, "out")
    if out.size == 0:
        return out
    if k == 0:
        if not accumulate:
            out[...] = 0
        return out
    if (c3.strides[2] != c3.itemsize and n > 1) or min(c3.strides) < 0 \
            or not _whole_strides(c3):
        raise ValueError("matmul: out must have unit column stride")
    # the kernel walks the operands by strides in elements, forward
    if not _whole_strides(a3):
        a3 = np.ascontiguousarray(a3)
    if not _whole_strides(b3):
        b3 = np.ascontiguousarray(b3)
    fa, sa = _flat(a3)
    fb, sb = _flat(b3)
    fc, sc = _flat(c3)
    a_bs = sa[0] if a.ndim == 3 else 0
    b_bs = sb[0] if b.ndim == 3 else 0
    c_bs = sc[0] if batch > 1 else 0
    vector_bytes, mr, vectors, kc, nc, mc = blocking
    lanes = vector_bytes // a.itemsize
    nr = vectors * lanes
    parts_m, parts_n = _parts(batch, m, n, mr, nr)
    b_size = kc * (-(-min(nc, n) // nr) * nr)
    a_size = kc * (-(-min(mc, m) // mr) * mr)
    row = -(-(b_size + a_size) // lanes) * lanes
    space = _workspace(numba.get_num_threads(), row, a.dtype)
    # items go to threads one at a time, as they come free
    chunksize = numba.set_parallel_chunksize(1)
    try:
        _kernel(blocking)(readonly(fa), readonly(fb), fc, (batch, m, n, k), (a_bs,) + sa[1:],
                          (b_bs,) + sb[1:], (c_bs, sc[1]), parts_m, parts_n, bool(accumulate),
                          space, b_size)
    finally:
        numba.set_parallel_chunksize(chunksize)
    return out


# OpenBLAS multiplies on the calling thread alone up to this much work (m * n * k: its
# GEMM_MULTITHREAD_THRESHOLD of 4 times 65536), so there it wakes no threads of its own,
# and it is faster than waking numba's pool for a packed GEMM.
BLAS_SINGLE_THREAD_WORK = 4 * 65536


def own_gemm_wins(batch, m, n, k, dtype):
    """The rule: fastconv's GEMM for work above BLAS_SINGLE_THREAD_WORK on a CPU with a
    blocking (single-threaded it runs at 0.9-1.1x OpenBLAS's rate on im2col's shapes;
    with threads it keeps OpenBLAS's pool out of the process's hot paths, see
    docs/tuning.md), np.matmul otherwise."""
    return (HOST is not None and np.dtype(dtype) in HOST
            and batch * m * n * k > BLAS_SINGLE_THREAD_WORK)


def gemm(a, b, out, accumulate=False):
    """out = a @ b (out += a @ b with `accumulate`) by whichever of fastconv's GEMM and
    np.matmul `own_gemm_wins` picks; the shapes and dtypes as for `matmul`.

    >>> import numpy as np
    >>> from fastconv.cpu.matmul import gemm
    >>> out = np.zeros((2, 2))
    >>> gemm(np.eye(2), np.ones((2, 2)), out, accumulate=True)[1, 1]
    1.0
    """
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    if own_gemm_wins(batch, a.shape[-2], b.shape[-1], a.shape[-1], a.dtype):
        return matmul(a, b, out=out, accumulate=accumulate)
    if accumulate:
        out += np.matmul(a, b)
    else:
        np.matmul(a, b, out=out)
    return out
