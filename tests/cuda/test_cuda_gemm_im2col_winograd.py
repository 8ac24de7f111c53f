"""CUDA GEMM, im2col and Winograd against NumPy and the float64 references.

Run on a GPU or with ``NUMBA_ENABLE_CUDASIM=1``. The simulator runs a Python
thread per CUDA thread and each ``syncthreads`` is a polling barrier, so shapes
are tiny (N<=2, C<=4, H,W<=6) and chosen to still reach partial GEMM tiles,
several blocks, workspace chunks over columns, groups and rows, and partial
Winograd tiles. Under the simulator the module lowers the interpreter's thread
switch interval (restored afterwards), which makes those barriers ~4x cheaper.
"""
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import reference, shapes
from fastconv.config import config
from fastconv.cuda import _kernels, gemm, im2col, interop, winograd

from .conftest import assert_close

DTYPES = [np.float64, np.float32]


@pytest.fixture(scope="module", autouse=True)
def _fast_simulator_barriers():
    if not _kernels.simulated():
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def workspace():
    """workspace(nbytes): set fc.config.workspace_bytes for one test (restored after)."""
    before = config.workspace_bytes

    def set_bound(nbytes):
        config.workspace_bytes = nbytes
    yield set_bound
    config.workspace_bytes = before


def close_winograd(result, expected, dtype):
    """Winograd's contract: float64 1e-10; float32 1e-3 of the output's scale."""
    if np.dtype(dtype) == np.float64:
        assert_close(result, expected, dtype)
        return
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(result, np.float64), expected,
                               rtol=1e-3, atol=1e-3 * scale)


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False),
                                             (False, True), (True, True)])
def test_matmul_partial_tiles(rng, on_device, to_host, dtype, trans_a, trans_b):
    # 5x7 @ 7x9 with 8x8x4 tiles: a partial tile in m, n (two column tiles) and k.
    a = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal((7, 9)).astype(dtype)
    da = on_device(a.T if trans_a else a)
    db = on_device(b.T if trans_b else b)
    out = gemm.matmul(da, db, trans_a=trans_a, trans_b=trans_b, config=gemm.SMALL)
    assert out.shape == (5, 9) and out.dtype == dtype
    assert_close(to_host(out), a.astype(np.float64) @ b, dtype)


# 8x8 outputs per thread, as LARGE: rows and columns in two runs of 4 (4 threads).
RUNS_OF_FOUR = gemm.GemmConfig(16, 16, 4, 8, 8)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True)])
def test_matmul_runs_of_four_rows_and_columns(rng, on_device, to_host, trans_a, trans_b):
    # 20x11 @ 11x35: partial tiles in m, n and k; C = 2 A B - 0.5 C
    a = rng.standard_normal((20, 11))
    b = rng.standard_normal((11, 35))
    c = rng.standard_normal((20, 35))
    dc = on_device(c)
    gemm.matmul(on_device(a.T.copy() if trans_a else a), on_device(b.T.copy() if trans_b else b),
                out=dc, trans_a=trans_a, trans_b=trans_b, alpha=2.0, beta=-0.5,
                config=RUNS_OF_FOUR)
    assert_close(to_host(dc), 2 * a @ b - 0.5 * c, np.float64)
    # alpha * (+0.0) with alpha < 0 is -0.0, as in cuBLAS: no "+ 0" in the epilogue
    out = to_host(gemm.matmul(on_device(a), on_device(np.zeros_like(b)), alpha=-1.0,
                              config=RUNS_OF_FOUR))
    assert np.all(out == 0) and np.all(np.signbit(out))


def test_gemm_config_must_fit_the_thread_map(on_device):
    with pytest.raises(ValueError, match="multiples of 4"):
        gemm.matmul(on_device(np.ones((6, 6))), on_device(np.ones((6, 6))),
                    config=gemm.GemmConfig(12, 12, 4, 6, 6))


def test_matmul_tiny_tiles_alpha_beta_and_views(rng, on_device, to_host):
    # 4x4x2 tiles over 6x5 @ 5x7: many edge blocks; C = 2 A B - 0.5 C; a strided A view.
    a_full = rng.standard_normal((6, 8))
    b = rng.standard_normal((5, 7))
    c = rng.standard_normal((6, 7))
    dc = on_device(c)
    da = on_device(a_full)[:, 1:6]
    out = gemm.matmul(da, on_device(b), out=dc, alpha=2.0, beta=-0.5, config=gemm.TINY)
    assert out is dc
    assert_close(to_host(dc), 2 * a_full[:, 1:6] @ b - 0.5 * c, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_batched_and_broadcast(rng, on_device, to_host, dtype):
    a = rng.standard_normal((3, 5, 4)).astype(dtype)
    b = rng.standard_normal((4, 6)).astype(dtype)     # broadcast over the batch
    out = gemm.matmul(on_device(a), on_device(b), config=gemm.SMALL)
    assert out.shape == (3, 5, 6)
    assert_close(to_host(out), np.einsum("bmk,kn->bmn", a.astype(np.float64), b), dtype)


def _split_array(rng, rows, cols, length, offset):
    """A (P, rows, length) array whose flattened (image, pixel) columns
    offset .. offset+cols-1 hold a rows x cols matrix; and that matrix."""
    images = -(-(offset + cols) // length) + 1
    stored = rng.standard_normal((images, rows, length))
    idx = offset + np.arange(cols)
    return stored, stored[idx // length, :, idx % length].T


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False),
                                             (False, True), (True, True)])
def test_gemm_split_operands(rng, on_device, to_host, trans_a, trans_b):
    # batch 2 of (3 x 7) @ (7 x 5), every operand "split" over (image, pixel) columns
    # of length 3 at an offset, with 4-deep k steps (a step crosses images), bias and
    # beta = 1: the addressing im2col's chunks use, in every transpose mode.
    batch, m, n, k, length = 2, 3, 5, 7, 3
    a_rows, a_cols = (k, m) if trans_a else (m, k)
    b_rows, b_cols = (n, k) if trans_b else (k, n)
    a_st, a_mat = _split_array(rng, batch * a_rows, a_cols, length, 2)
    b_st, b_mat = _split_array(rng, batch * b_rows, b_cols, length, 1)
    c_st, c_mat = _split_array(rng, batch * m, n, length, 4)
    bias = rng.standard_normal(batch * m)
    dc = on_device(c_st)
    gemm.launch(on_device(a_st), on_device(b_st), dc, m, n, k, batch, trans_a=trans_a,
                trans_b=trans_b, beta=1.0, bias=on_device(bias), split_a=(length, 2),
                split_b=(length, 1), split_c=(length, 4), config=gemm.SMALL)
    expected = c_st.copy()
    for g in range(batch):
        a_g = a_mat[g * a_rows:(g + 1) * a_rows]
        b_g = b_mat[g * b_rows:(g + 1) * b_rows]
        prod = (a_g.T if trans_a else a_g) @ (b_g.T if trans_b else b_g)
        prod += bias[g * m:(g + 1) * m, None] + c_mat[g * m:(g + 1) * m]
        idx = 4 + np.arange(n)
        expected[idx // length, g * m:(g + 1) * m, idx % length] = prod.T
    assert_close(to_host(dc), expected, np.float64)     # and nothing else written


def test_matmul_refuses_bad_arguments(on_device):
    a = on_device(np.ones((2, 3)))
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm.matmul(a, on_device(np.ones((2, 3))))
    with pytest.raises(TypeError, match="float32 or two float64"):
        gemm.matmul(a, on_device(np.ones((3, 2), np.float32)))
    with pytest.raises(ValueError, match="beta"):
        gemm.matmul(a, on_device(np.ones((3, 2))), beta=1.0)


def test_gemm_configs_are_consistent():
    for cfg in (gemm.LARGE, gemm.LARGE_2, gemm.MEDIUM, gemm.WIDE, gemm.SMALL, gemm.TINY,
                gemm.SIM):
        assert cfg.bm % cfg.tm == 0 and cfg.bn % cfg.tn == 0
        assert cfg.shared_bytes(8) <= 48 * 1024
    assert gemm.LARGE.threads == gemm.MEDIUM.threads == gemm.WIDE.threads == 256
    assert gemm.LARGE_2[:5] == gemm.LARGE[:5] and gemm.LARGE_2.blocks_per_sm == 2


@pytest.mark.parametrize("cfg", ["LARGE", "LARGE_2", "WIDE", "MEDIUM"])
def test_loaded_gemm_keeps_its_inner_loop_out_of_local_memory(on_device, to_host, rng, cfg,
                                                              record_property):
    """On a GPU: the GEMM numba loads is correct, and its multiply-add loop touches no
    local memory (no spills where they cost most). Registers, local memory and the
    static report's figures (another NVVM may have made those) are reported, not
    asserted: see the test's properties in the junit XML, or `-s`."""
    if _kernels.simulated():
        pytest.skip("the simulator has no registers: tests/test_cuda_resources.py "
                    "checks the compiled kernels without a GPU")
    from numba import cuda
    from fastconv.cuda import resources
    config_ = getattr(gemm, cfg)
    a = rng.standard_normal((1, 300, 200)).astype(np.float32)
    b = rng.standard_normal((1, 200, 260)).astype(np.float32)
    c = gemm.matmul(on_device(a), on_device(b), config=config_)
    np.testing.assert_allclose(to_host(c), a @ b, rtol=1e-4, atol=1e-3)
    dispatcher = gemm._make_gemm(config_, "float32", False, False, False, False, False)
    cc = cuda.get_current_device().compute_capability
    figures = {}
    for argtypes, kernel in dispatcher.overloads.items():
        figures["registers"] = kernel.regs_per_thread
        figures["local_bytes"] = kernel.local_mem_per_thread
        loop = resources.loaded_hot_loop(kernel, cc)
        if loop is not None:
            figures.update(loop_instructions=loop.instructions, loop_fmas=loop.fmas,
                           loop_local_accesses=loop.local_accesses)
        if resources.toolchain_missing() is None:
            spec = resources.Spec(cfg, dispatcher, tuple(argtypes), config_.threads, True)
            try:
                static = resources.assemble(resources.compile_ptx(spec, cc), cc)
                figures.update(static_registers=static.registers,
                               static_spill_bytes=static.spill_store_bytes)
            except Exception as exc:     # e.g. a system ptxas older than NVVM
                figures["static"] = f"unavailable: {exc}"[:200]
    for name, value in figures.items():
        record_property(name, value)
    print(f"gemm {cfg}: {figures}")
    assert figures, "matmul launched no overload of the kernel"
    assert figures.get("loop_local_accesses", 0) == 0, figures


def test_gemm_config_rule_on_a_gpu(monkeypatch):
    monkeypatch.setattr(gemm, "_simulator", lambda: False)
    monkeypatch.setattr(gemm, "_SM_COUNT", 132)
    assert gemm.choose_config(4096, 4096) == gemm.LARGE
    assert gemm.choose_config(64, 100352) == gemm.WIDE          # 64 output channels
    assert gemm.choose_config(4096, 4096, itemsize=8) == gemm.WIDE   # LARGE spills float64
    assert gemm.choose_config(512, 512) == gemm.MEDIUM          # 16 tiles for 132 SMs


# --------------------------------------------------------------------------
# im2col
# --------------------------------------------------------------------------

# (N, C, H, W, K, (kh, kw), stride, padding4, dilation, groups, bias, workspace bytes,
#  im2col.MIN_COLUMNS)
IM2COL_CASES = {
    "3x3-pad1": (2, 3, 6, 6, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, None, None),
    "stride-dil-asym-groups": (2, 4, 6, 5, 6, (3, 2), (2, 1), (0, 1, 2, 0), (1, 2), 2, True,
                               None, None),
    "1x1-pointwise-groups": (2, 4, 3, 5, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2, True,
                             None, None),
    "1x1-stride2": (1, 3, 5, 4, 2, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, False, None,
                    None),
    # 4 groups x 9 rows x 40 columns in 1 KiB: float64 in chunks of 3+1 groups and
    # 4 columns; float32 all groups, 7 columns (chunks straddle images)
    "depthwise-group-column-chunks": (2, 4, 5, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                      4, True, 1024, 4),
    # 2 groups x 18 rows x 16 columns in 1 KiB: chunks of rows, accumulated
    "row-chunks": (2, 4, 4, 3, 2, (3, 3), (1, 1), (1, 1, 0, 1), (1, 1), 2, True, 1024, None),
}


def _problem(rng, case, dtype):
    n, c, h, w, k, ksize, stride, padding, dilation, groups, has_bias, _, _ = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups) + ksize).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype) if has_bias else None
    out_hw = shapes.output_size((h, w), ksize, stride, padding, dilation)
    grad_out = rng.standard_normal((n, k) + out_hw).astype(dtype)
    return x, weight, bias, grad_out, (stride, padding, dilation, groups), out_hw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(IM2COL_CASES))
def test_im2col_backend(rng, on_device, to_host, workspace, monkeypatch, name, dtype):
    case = IM2COL_CASES[name]
    bound, min_columns = case[-2:]
    if bound is not None:
        workspace(bound)
    if min_columns is not None:
        monkeypatch.setattr(im2col, "MIN_COLUMNS", min_columns)
    sizes = []
    real_workspace = im2col._workspace

    def recording(size, dt, stream):
        sizes.append(size * np.dtype(dt).itemsize)
        return real_workspace(size, dt, stream)
    monkeypatch.setattr(im2col, "_workspace", recording)

    x, weight, bias, grad_out, geom, out_hw = _problem(rng, case, dtype)
    dx, dw, dgo = on_device(x), on_device(weight), on_device(grad_out)
    db = None if bias is None else on_device(bias)

    out = im2col.conv2d(dx, dw, db, *geom, out_hw)
    assert out.dtype == dtype and out.is_c_contiguous()
    assert_close(to_host(out), reference.conv2d(x, weight, bias, *geom), dtype)
    gx = im2col.conv2d_grad_input(dgo, dw, x.shape, *geom)
    assert_close(to_host(gx), reference.conv2d_grad_input(grad_out, weight, x.shape, *geom),
                 dtype)
    gw = im2col.conv2d_grad_weight(dgo, dx, weight.shape, *geom)
    assert_close(to_host(gw), reference.conv2d_grad_weight(grad_out, x, weight.shape, *geom),
                 dtype)

    assert all(s <= config.workspace_bytes for s in sizes), sizes
    if bound is not None:
        assert sizes, "expected a chunked workspace"
    np.testing.assert_array_equal(to_host(dx), x)          # inputs never written
    np.testing.assert_array_equal(to_host(dgo), grad_out)


def test_plan_chunks_respects_the_bound():
    for groups, rows, ncols, itemsize, bound in [
            (1, 27, 72, 8, 1 << 20), (4, 9, 40, 8, 1024), (2, 18, 24, 8, 1024),
            (1, 4608, 32 * 49, 4, 256 << 20), (512, 9, 32 * 3136, 4, 1024),
            (1, 100000, 10, 8, 1024)]:
        gc, rc, jc = im2col.plan_chunks(groups, rows, ncols, itemsize, bound)
        assert 1 <= gc <= groups and 1 <= rc <= rows and 1 <= jc <= ncols
        assert gc * rc * jc * itemsize <= bound
    # everything fits: one chunk
    assert im2col.plan_chunks(1, 27, 72, 8, 1 << 20) == (1, 27, 72)


# --------------------------------------------------------------------------
# Winograd
# --------------------------------------------------------------------------

@pytest.mark.parametrize("m", winograd.TILES)
def test_winograd_matrices_compute_the_correlation(rng, m):
    at, g, bt = winograd.winograd_matrices(m)
    a = m + 2
    assert at.shape == (m, a) and g.shape == (a, 3) and bt.shape == (a, a)
    d, k = rng.standard_normal((a, a)), rng.standard_normal((3, 3))
    y = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
    expected = [[np.sum(d[i:i + 3, j:j + 3] * k) for j in range(m)] for i in range(m)]
    np.testing.assert_allclose(y, expected, atol=1e-12)


# (N, C, H, W, K, padding4, groups, bias, workspace in elements of the dtype)
WINOGRAD_CASES = {
    "pad1": (2, 3, 6, 6, 4, (1, 1, 1, 1), 1, True, None),
    "asym-partial-tiles": (1, 3, 5, 6, 2, (0, 2, 1, 3), 1, True, None),
    "groups-pad3-crop": (1, 4, 5, 4, 4, (3, 0, 0, 1), 2, False, None),
    # 512 values: the tiles of two images in 2 chunks (each tile size)
    "tile-chunks": (2, 2, 4, 5, 2, (1, 1, 1, 1), 1, True, 512),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("name", list(WINOGRAD_CASES))
def test_winograd_backend(rng, on_device, to_host, workspace, name, tile, dtype):
    n, c, h, w, k, padding, groups, has_bias, bound = WINOGRAD_CASES[name]
    out_hw = shapes.output_size((h, w), (3, 3), (1, 1), padding)
    if bound is not None:
        workspace(bound * np.dtype(dtype).itemsize)
        n_tiles = n * -(-out_hw[0] // tile) * -(-out_hw[1] // tile)
        alpha2 = (tile + 2) ** 2
        assert winograd.plan_tiles(n_tiles, alpha2, c, k, alpha2 * k * c // groups,
                                   np.dtype(dtype).itemsize) < n_tiles
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups, 3, 3)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype) if has_bias else None
    geom = ((1, 1), padding, (1, 1), groups)
    grad_out = rng.standard_normal((n, k) + out_hw).astype(dtype)
    dx, dw, dgo = on_device(x), on_device(weight), on_device(grad_out)

    out = winograd.conv2d(dx, dw, None if bias is None else on_device(bias), *geom, out_hw,
                          tile=tile)
    assert out.dtype == dtype and out.shape == (n, k) + out_hw
    close_winograd(to_host(out), reference.conv2d(x, weight, bias, *geom), dtype)
    gx = winograd.conv2d_grad_input(dgo, dw, x.shape, *geom, tile=tile)
    assert gx.shape == x.shape
    close_winograd(to_host(gx), reference.conv2d_grad_input(grad_out, weight, x.shape, *geom),
                   dtype)
    np.testing.assert_array_equal(to_host(dw), weight)


def test_winograd_default_tile():
    assert winograd.default_tile((7, 7)) == 4 and winograd.default_tile((2, 1)) == 2


def test_winograd_refuses_bad_tile_and_kernel(on_device):
    x = on_device(np.ones((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="tile"):
        winograd.conv2d(x, on_device(np.ones((1, 1, 3, 3))), None, (1, 1), (0, 0, 0, 0),
                        (1, 1), 1, (2, 2), tile=3)
    with pytest.raises(ValueError, match="3x3"):
        winograd.conv2d(x, on_device(np.ones((1, 1, 2, 2))), None, (1, 1), (0, 0, 0, 0),
                        (1, 1), 1, (3, 3))


# --------------------------------------------------------------------------
# through the public API, with device arrays
# --------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_public_api_with_device_arrays(rng, on_device, to_host, algorithm):
    dtype = np.float32
    x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    geom = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    out = fc.conv2d(on_device(x), on_device(weight), on_device(bias), padding=1,
                    algorithm=algorithm)
    assert interop.is_device_array(out)
    close_winograd(to_host(out), reference.conv2d(x, weight, bias, *geom), dtype)
    grad_out = rng.standard_normal((2, 3, 5, 5)).astype(dtype)
    gx = fc.conv2d_grad_input(on_device(grad_out), on_device(weight), x.shape, padding=1,
                              algorithm=algorithm)
    close_winograd(to_host(gx), reference.conv2d_grad_input(grad_out, weight, x.shape, *geom),
                   dtype)
    gw = fc.conv2d_grad_weight(on_device(grad_out), on_device(x), weight.shape, padding=1,
                               algorithm=algorithm)
    assert_close(to_host(gw), reference.conv2d_grad_weight(grad_out, x, weight.shape, *geom),
                 dtype)


def test_public_api_3d_input_and_strided_im2col(rng, on_device, to_host):
    x = rng.standard_normal((3, 6, 5))
    weight = rng.standard_normal((2, 3, 2, 3))
    out = fc.conv2d(on_device(x), on_device(weight), stride=(2, 1), padding="valid",
                    algorithm="im2col")
    assert tuple(out.shape) == (2, 3, 3)
    expected = reference.conv2d(x[None], weight, None, (2, 1), (0, 0, 0, 0))[0]
    assert_close(to_host(out), expected, np.float64)
