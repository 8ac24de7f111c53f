"""The batched GEMM micro-kernel (fastconv/cpu/gemm.py) against float64 matmul.

Every tile shape runs on any x86 host (LLVM splits or emulates vectors wider than
the host's), so the AVX2 shape is tested on AVX-512 machines and vice versa."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from fastconv import reference
from fastconv.cpu import gemm

TILES = [gemm.Tile(64, 8, 2), gemm.Tile(32, 6, 2), gemm.Tile(64, 6, 3), gemm.Tile(32, 4, 3),
         gemm.Tile(16, 3, 1)]


def _expected(U, V, groups):
    k_group, c_group = U.shape[1] // groups, U.shape[2]
    U64, V64 = U.astype(np.float64), V.astype(np.float64)
    return np.concatenate([U64[:, g * k_group:(g + 1) * k_group]
                           @ V64[:, g * c_group:(g + 1) * c_group] for g in range(groups)],
                          axis=1)


def _case(rng, alpha2, k, c, t, groups, dtype):
    U = rng.standard_normal((alpha2, k, c // groups)).astype(dtype)
    V = rng.standard_normal((alpha2, c, t)).astype(dtype)
    M = np.full((alpha2, k, t), np.nan, dtype)     # every element must be written
    return U, V, M


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha2,k,c,t,groups", [
    (1, 1, 1, 1, 1), (3, 7, 5, 15, 1), (2, 8, 16, 32, 1), (2, 9, 4, 33, 1),
    (1, 17, 64, 100, 1), (2, 12, 6, 40, 3), (4, 16, 16, 31, 2), (36, 24, 24, 8, 1),
])
def test_matches_float64_matmul(tile, dtype, alpha2, k, c, t, groups):
    rng = np.random.default_rng(k * 100 + t)
    U, V, M = _case(rng, alpha2, k, c, t, groups, dtype)
    U0, V0 = U.copy(), V.copy()
    gemm.batched_matmul(U, V, M, groups, tile)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(M, _expected(U, V, groups), rtol=tol, atol=tol * np.sqrt(c))
    np.testing.assert_array_equal(U, U0)
    np.testing.assert_array_equal(V, V0)


@pytest.mark.parametrize("tile", TILES[:2], ids=str)
@pytest.mark.parametrize("alpha2,k,c,t", [(2, 5, 0, 7), (2, 0, 3, 7), (2, 5, 3, 0), (0, 5, 3, 7)])
def test_empty_dimensions(tile, alpha2, k, c, t):
    U, V, M = _case(np.random.default_rng(0), alpha2, k, c, t, 1, np.float32)
    gemm.batched_matmul(U, V, M, 1, tile)
    np.testing.assert_array_equal(M, np.zeros_like(M))   # a sum over no channels is 0


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_propagate_as_in_matmul(tile, dtype):
    rng = np.random.default_rng(1)
    U, V, M = _case(rng, 2, 10, 6, 37, 1, dtype)
    U[0, 3, 2] = np.inf
    V[0, 2, 5] = 0.0                                   # inf * 0 = nan
    V[1, 4, 36] = np.nan                               # the last, masked, column
    U[1, 9, 0] = -np.inf                               # a row of the partial panel
    gemm.batched_matmul(U, V, M, 1, tile)
    with np.errstate(invalid="ignore"):
        expected = np.matmul(U, V)
    np.testing.assert_array_equal(np.isnan(M), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(M), np.isinf(expected))


@settings(max_examples=25, deadline=None)
@given(alpha2=st.integers(1, 4), k_group=st.integers(1, 20), c_group=st.integers(1, 20),
       t=st.integers(1, 70), groups=st.integers(1, 3), tile=st.sampled_from(TILES[:2]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_random_shapes(alpha2, k_group, c_group, t, groups, tile, dtype, seed):
    U, V, M = _case(np.random.default_rng(seed), alpha2, k_group * groups, c_group * groups,
                    t, groups, dtype)
    gemm.batched_matmul(U, V, M, groups, tile)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(M, _expected(U, V, groups), rtol=tol, atol=tol * 10)


def test_host_tiles_by_cpu_features():
    avx512 = gemm.host_tiles({"avx512f": True, "avx2": True, "fma": True})
    assert avx512 == (gemm.Tile(64, 8, 2), gemm.Tile(64, 6, 3))
    avx2 = gemm.host_tiles({"avx512f": False, "avx2": True, "fma": True})
    assert avx2 == (gemm.Tile(32, 6, 2), gemm.Tile(32, 4, 3))
    assert gemm.host_tiles({"sse4.2": True}) is None


def test_tile_rule():
    tiles = gemm.host_tiles({"avx512f": True})
    assert gemm.tile_for(512, 32, tiles) == tiles.narrow
    assert gemm.tile_for(64, 1568, tiles) == tiles.wide
    assert gemm.tile_for(512, 1568, tiles) is None          # OpenBLAS
    assert gemm.tile_for(64, 32, None) is None              # no AVX2 / AVX-512


@pytest.mark.parametrize("tiles", [None, gemm.host_tiles({"avx512f": True}),
                                   gemm.host_tiles({"avx2": True, "fma": True})],
                         ids=["np.matmul", "avx512", "avx2"])
@pytest.mark.parametrize("groups", [1, 2])
def test_winograd_with_each_gemm(monkeypatch, tiles, groups):
    """Winograd's GEMMs run on the micro-kernel with either host's tiles, or on
    np.matmul: each gives the reference's result."""
    monkeypatch.setattr(gemm, "HOST", tiles)
    rng = np.random.default_rng(groups)
    x = rng.standard_normal((3, 4, 11, 13)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32)
    out = fc.conv2d(x, w, padding=1, groups=groups, algorithm="winograd")
    expected = reference.conv2d(x, w, padding=(1, 1, 1, 1), groups=groups)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_layout_is_checked_not_assumed():
    """The kernel indexes raw memory: a wrong shape, dtype or layout is refused."""
    tile = TILES[0]
    U, V, M = _case(np.random.default_rng(2), 2, 8, 6, 20, 1, np.float32)
    with pytest.raises(ValueError, match="shapes"):
        gemm.batched_matmul(U[:, :4], V, M, 1, tile)
    with pytest.raises(ValueError, match="shapes"):
        gemm.batched_matmul(U, V, M, 4, tile)                 # 6 channels, 4 groups
    with pytest.raises(ValueError, match="dtypes"):
        gemm.batched_matmul(U.astype(np.float64), V, M, 1, tile)
    with pytest.raises(ValueError, match="contiguous"):
        gemm.batched_matmul(U, np.asfortranarray(V), M, 1, tile)
    with pytest.raises(ValueError, match="contiguous"):
        gemm.batched_matmul(U, V, M[:, :, ::-1], 1, tile)


@pytest.mark.parametrize("tile", TILES[:2], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha2,k,c,t,groups", [(1, 12, 512, 300, 1), (2, 10, 1024, 301, 2)])
def test_columns_in_several_blocks_and_nothing_outside_touched(tile, dtype, alpha2, k, c, t,
                                                               groups):
    """T wider than one block of V (V_BLOCK_BYTES over the channels); U, V and M sit
    between NaN guards, so a read past U or V would poison a result and a write past
    M would change a guard."""
    rng = np.random.default_rng(c + t)
    U, V, _ = _case(rng, alpha2, k, c, t, groups, dtype)
    guard = 64

    def guarded(array):
        buf = np.full(array.size + 2 * guard, np.nan, dtype)
        inner = buf[guard:guard + array.size].reshape(array.shape)
        inner[...] = array
        return buf, inner

    (u_buf, Ug), (v_buf, Vg), (m_buf, Mg) = guarded(U), guarded(V), guarded(
        np.full((alpha2, k, t), np.nan, dtype))
    gemm.batched_matmul(Ug, Vg, Mg, groups, tile)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(Mg, _expected(U, V, groups), rtol=tol, atol=tol * np.sqrt(c))
    for buf in (u_buf, v_buf, m_buf):
        assert np.isnan(buf[:guard]).all() and np.isnan(buf[-guard:]).all()


@pytest.mark.parametrize("tile", [gemm.Tile(20, 2, 2), gemm.Tile(64, 0, 2), gemm.Tile(64, 8, 0)],
                         ids=str)
def test_unsupported_tiles_are_refused(tile):
    U, V, M = _case(np.random.default_rng(3), 1, 4, 4, 8, 1, np.float64)
    with pytest.raises(ValueError, match="tile"):
        gemm.batched_matmul(U, V, M, 1, tile)


@pytest.mark.parametrize("tiles", [gemm.host_tiles({"avx512f": True}),
                                   gemm.host_tiles({"avx2": True, "fma": True})],
                         ids=["avx512", "avx2"])
def test_winograd_float64_on_the_micro_kernel(monkeypatch, tiles):
    monkeypatch.setattr(gemm, "HOST", tiles)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 9, 10))
    w = rng.standard_normal((7, 5, 3, 3))
    np.testing.assert_allclose(fc.conv2d(x, w, padding=1, algorithm="winograd"),
                               reference.conv2d(x, w, padding=(1, 1, 1, 1)),
                               rtol=1e-10, atol=1e-10)


_AVX2_TARGET = textwrap.dedent("""
    import numpy as np, fastconv as fc
    from fastconv import reference
    from fastconv.cpu import gemm
    assert gemm.HOST == gemm.host_tiles({"avx2": True, "fma": True}), gemm.HOST
    rng = np.random.default_rng(5)
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        x = rng.standard_normal((2, 6, 13, 11)).astype(dtype)
        w = rng.standard_normal((9, 6, 3, 3)).astype(dtype)
        np.testing.assert_allclose(fc.conv2d(x, w, padding=1, algorithm="winograd"),
                                   reference.conv2d(x, w, padding=(1, 1, 1, 1)),
                                   rtol=tol, atol=tol)
    print("ok")
""")


@pytest.mark.skipif(not gemm.target_features().get("avx2"), reason="needs an AVX2 host")
def test_compiled_for_an_avx2_target(tmp_path):
    """With NUMBA_CPU_NAME=haswell numba emits AVX2 code only (as for a portable cache):
    the tiles follow the target, not the host, and the masked loads and stores lower to
    AVX2 instructions."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell",
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c",
               NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", _AVX2_TARGET], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_target_features_follow_numba_config(monkeypatch):
    monkeypatch.setattr(gemm.numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(gemm.numba.config, "CPU_FEATURES", "")
    assert gemm.host_tiles(gemm.target_features()) is None
    monkeypatch.setattr(gemm.numba.config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert gemm.target_features() == {"avx2": True, "fma": True, "avx512f": False}
