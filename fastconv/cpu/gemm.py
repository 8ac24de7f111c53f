"""Batched matrix multiply M[e] = U[e] @ V[e] for Winograd's thin GEMMs.

Winograd turns a convolution into alpha^2 independent GEMMs (K x C) @ (C x T), one
per tile element. On small images they are thin: ResNet-50's 8x512x7x7 layer with
F(4x4,3x3) makes 36 GEMMs of 512x512 by 512x32. OpenBLAS packs both operands of
every call into its own layout, which such thin shapes do too little work to pay
for. This module multiplies them in place instead, with a register-blocked
micro-kernel:

    for each (e, group, panel of ROWS rows of U) in parallel:
        for each block of VECTORS * lanes columns of V (T):
            acc[ROWS][VECTORS] = 0                  # vector registers
            for c in range(C):                      # the reduction
                v_j = V[e, c, t0 + j*lanes : ...]   # VECTORS vector loads
                for i in range(ROWS):
                    acc[i][:] += U[e, k0 + i, c] * v_j   # broadcast, fused multiply-add
            M[e, k0 + i, t0 : t0 + VECTORS*lanes] = acc[i]

With AVX-512, 8 rows x 2 vectors of 16 float32 keep 16 accumulators, 2 loaded
vectors and a broadcast in the 32 vector registers, and each step of the reduction
issues 16 FMAs for 10 loads. Numba cannot keep a small array in registers
(its arrays live in memory, and LLVM does not vectorise loop-carried scalar
accumulators), so the micro-kernel is written in LLVM IR
through `numba.extending.intrinsic`: accumulators are vector values, the multiply-add
is `llvm.fma`, and the right and bottom edges use masked loads and stores (lanes
past T are neither read nor written; rows past K read row 0 and are not stored).

The tile shape is data: `HOST` holds two, chosen from the vector registers of the
CPU numba compiles for (`host_tiles`, `target_features`), `tile_for` picks one by
the GEMM's shape (or None, for `np.matmul`), and `batched_matmul` takes any `Tile`,
so the tests run the AVX2 shapes on an AVX-512 machine too. Where that CPU has
neither AVX-512 nor AVX2 + FMA, `HOST` is None and callers use `np.matmul`.
The tile shapes and the rule of `tile_for` were measured: docs/tuning.md.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import llvmlite.binding as llvm_binding
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._common import KERNEL


class Tile(NamedTuple):
    """Register tile of the micro-kernel: `rows` rows of U by `vectors` vectors of
    `vector_bytes` bytes along T."""
    vector_bytes: int
    rows: int
    vectors: int


class HostTiles(NamedTuple):
    """The host's two tile shapes: `narrow` for GEMMs of few columns (T), `wide` (more
    vectors per row, each broadcast of U used more times) for the others."""
    narrow: Tile
    wide: Tile


def target_features():
    """The CPU features numba compiles for: the host's, unless NUMBA_CPU_NAME names
    another target (portable caches); then only those NUMBA_CPU_FEATURES lists."""
    if numba.config.CPU_NAME in (None, "host"):
        return dict(llvm_binding.get_host_cpu_features())
    listed = (numba.config.CPU_FEATURES or "").split(",")
    return {name[1:]: name[0] == "+" for name in listed if name[:1] in "+-" and name[1:]}


def host_tiles(features=None):
    """The tiles for a CPU with these features (`target_features()` by default):
    32 vector registers of 64 bytes with AVX-512 (8 x 2 and 6 x 3 accumulators), 16 of
    32 bytes with AVX2 + FMA (6 x 2 and 4 x 3: accumulators + loads + a broadcast
    within 16; not measured on such a CPU); None without (masked loads and stores
    would be emulated, and np.matmul is the better choice)."""
    if features is None:
        features = target_features()
    if features.get("avx512f"):
        return HostTiles(Tile(64, 8, 2), Tile(64, 6, 3))
    if features.get("avx2") and features.get("fma"):
        return HostTiles(Tile(32, 6, 2), Tile(32, 4, 3))
    return None


HOST = host_tiles()
# A block of V this big stays in cache while every panel of U passes over it
# (measured: docs/tuning.md).
V_BLOCK_BYTES = 256 * 2**10
# `tile_for`: the narrow tile for few columns of V, the wide one for more, and
# OpenBLAS (whose depth blocking wins there) for long reductions over many columns
# (measured: docs/tuning.md).
WIDE_FROM_COLUMNS = 256
MAX_DEPTH_WIDE = 256


def tile_for(depth, columns, tiles):
    """Which of `tiles` (the host's: `HOST`) to use for GEMMs reducing over `depth`
    with `columns` columns of V; None where np.matmul is faster or `tiles` is None."""
    if tiles is None:
        return None
    if columns < WIDE_FROM_COLUMNS:
        return tiles.narrow
    return tiles.wide if depth <= MAX_DEPTH_WIDE else None


def _literal(value, name):
    if not isinstance(value, types.IntegerLiteral):
        raise numba.core.errors.RequireLiteralValue(f"{name} must be a compile-time constant")
    return value.literal_value


@intrinsic
def _micro_tile(typingctx, V, v_off, ldv, U, u_off, ldu, M, m_off, ldm, depth, rows, cols,
                vector_bytes, tile_rows, tile_vectors):
    """M[m_off + i*ldm + j] = sum_c U[u_off + i*ldu + c] * V[v_off + c*ldv + j] for
    i < rows, j < cols (offsets in elements of the flat C-contiguous arrays)."""
    tile = Tile(_literal(vector_bytes, "vector_bytes"), _literal(tile_rows, "tile_rows"),
                _literal(tile_vectors, "tile_vectors"))
    sig = types.void(V, types.intp, types.intp, U, types.intp, types.intp, M, types.intp,
                     types.intp, types.intp, types.intp, types.intp, vector_bytes,
                     tile_rows, tile_vectors)

    def codegen(context, builder, signature, args):
        v_arr, v_off, ldv, u_arr, u_off, ldu, m_arr, m_off, ldm, depth, rows, cols = args[:12]
        scalar = context.get_value_type(signature.args[0].dtype)
        lanes = tile.vector_bytes // context.get_abi_sizeof(scalar)
        vec = ir.VectorType(scalar, lanes)
        vec_ptr = vec.as_pointer()
        i32, intp = ir.IntType(32), context.get_value_type(types.intp)
        lane_ids = ir.VectorType(i32, lanes)
        mask_type = ir.VectorType(ir.IntType(1), lanes)
        align = ir.Constant(i32, context.get_abi_sizeof(scalar))
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
            return builder.gep(ary.data, [offset])

        def const(value):
            return ir.Constant(intp, value)

        def splat(value, vector_type):
            one = builder.insert_element(ir.Constant(vector_type, None), value,
                                         ir.Constant(i32, 0))
            return builder.shuffle_vector(one, one, ir.Constant(lane_ids, [0] * lanes))

        def vector_at(base, index):
            return builder.bitcast(builder.gep(base, [const(index * lanes)]), vec_ptr)

        v_base, u_base, m_base = data(0, v_off), data(3, u_off), data(6, m_off)
        zero = ir.Constant(vec, [0.0] * lanes)
        cols_splat = splat(builder.trunc(cols, i32), lane_ids)
        masks = [builder.icmp_signed(
            "<", ir.Constant(lane_ids, [j * lanes + lane for lane in range(lanes)]), cols_splat)
            for j in range(tile.vectors)]
        # rows past `rows` read row 0 (in bounds) and are never stored
        u_rows = [builder.gep(u_base, [builder.mul(builder.select(
            builder.icmp_signed("<", const(i), rows), const(i), const(0)), ldu)])
            for i in range(tile.rows)]
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(tile.vectors)]
               for _ in range(tile.rows)]
        # one loop with masked loads throughout: AVX-512's masked loads cost as much as
        # plain ones (a separate unmasked loop for whole tiles measured no faster)
        with cgutils.for_range(builder, depth) as loop:
            v_row = builder.gep(v_base, [builder.mul(loop.index, ldv)])
            loaded = [builder.call(masked_load, [vector_at(v_row, j), align, masks[j], zero])
                      for j in range(tile.vectors)]
            for i in range(tile.rows):
                u = splat(builder.load(builder.gep(u_rows[i], [loop.index])), vec)
                for j in range(tile.vectors):
                    builder.store(builder.call(fma, [loaded[j], u, builder.load(acc[i][j])]),
                                  acc[i][j])
        for i in range(tile.rows):
            with builder.if_then(builder.icmp_signed("<", const(i), rows)):
                m_row = builder.gep(m_base, [builder.mul(const(i), ldm)])
                for j in range(tile.vectors):
                    builder.call(masked_store, [builder.load(acc[i][j]), vector_at(m_row, j),
                                                align, masks[j]])
        return context.get_dummy_value()

    return sig, codegen


_kernels = {}       # Tile -> its driver (jitcache finds them here)
_kernels_lock = threading.Lock()


def _batched_kernel(tile):
    """The parallel driver for one tile shape (compiled once per shape and dtype)."""
    with _kernels_lock:
        if tile not in _kernels:
            _kernels[tile] = _make_batched_kernel(tile)
        return _kernels[tile]


def _make_batched_kernel(tile):
    vector_bytes, tile_rows, tile_vectors = tile
    # whole float64 lanes, at least one row and one vector: a tile that is not would
    # leave part of M unwritten
    if vector_bytes not in (16, 32, 64) or tile_rows < 1 or tile_vectors < 1:
        raise ValueError(f"unsupported micro-kernel tile {tile}")
    v_block_bytes = V_BLOCK_BYTES   # a closure constant: part of the cache key

    @numba.njit(**KERNEL)
    def batched(U, V, M, groups):
        alpha2, c_total, t_total = V.shape
        k_total, c_group = M.shape[1], U.shape[2]
        k_group = k_total // groups
        panels = -(-k_group // tile_rows)
        t_step = tile_vectors * vector_bytes // V.itemsize
        # columns of V per work item: a block of V (C/groups x t_chunk) stays in the
        # cache while every panel of U passes over it
        t_chunk = max(t_step, v_block_bytes // max(1, c_group * V.itemsize) // t_step * t_step)
        chunks = -(-t_total // t_chunk)
        for item in prange(alpha2 * groups * chunks * panels):
            # numba's prange index is unsigned: int64 first, or divmod gives floats
            e, rest = divmod(np.int64(item), groups * chunks * panels)
            g, rest = divmod(rest, chunks * panels)
            chunk, panel = divmod(rest, panels)
            k0 = g * k_group + panel * tile_rows
            rows = min(tile_rows, k_group - panel * tile_rows)
            u_off = (e * k_total + k0) * c_group
            v_off = (e * c_total + g * c_group) * t_total
            m_off = (e * k_total + k0) * t_total
            for t0 in range(chunk * t_chunk, min(t_total, (chunk + 1) * t_chunk), t_step):
                _micro_tile(V, v_off + t0, t_total, U, u_off, c_group, M, m_off + t0,
                            t_total, c_group, rows, min(t_step, t_total - t0),
                            vector_bytes, tile_rows, tile_vectors)

    return batched


def batched_matmul(U, V, M, groups, tile):
    """M[e, group's rows] = U[e, group's rows] @ V[e, group's channels] for every e.

    U (A, K, C / groups), V (A, C, T), M (A, K, T): C-contiguous, one float dtype.
    The kernel indexes raw memory, so the layout is checked here, not assumed."""
    alpha2, c_total, t_total = V.shape
    k_total = M.shape[1]
    if (groups < 1 or c_total % groups or k_total % groups
            or U.shape != (alpha2, k_total, c_total // groups)
            or M.shape != (alpha2, k_total, t_total)):
        raise ValueError(f"batched_matmul: shapes U {U.shape}, V {V.shape}, M {M.shape} "
                         f"do not fit groups={groups}")
    if not (U.dtype == V.dtype == M.dtype and U.dtype in (np.float32, np.float64)):
        raise ValueError(f"batched_matmul: dtypes {U.dtype}, {V.dtype}, {M.dtype}")
    if not all(a.flags.c_contiguous and a.flags.aligned for a in (U, V, M)) \
            or not M.flags.writeable:
        raise ValueError("batched_matmul: U, V and M must be C-contiguous and aligned, "
                         "M writeable")
    _batched_kernel(tile)(U, V, M, groups)
    return M
