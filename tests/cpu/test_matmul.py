"""fastconv's packed GEMM (fastconv/cpu/matmul.py) against float64 matmul.

Every blocking runs on any x86 host (LLVM splits or emulates vectors wider than the
host's), so the AVX2 blocking is tested on AVX-512 machines and vice versa; small
blocks make the depth, row and column blocking loops run several times on small shapes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastconv.cpu import matmul as mm

BLOCKINGS = [mm.Blocking(64, 8, 3, 384, 768, 768), mm.Blocking(64, 12, 2, 40, 96, 36),
             mm.Blocking(64, 8, 3, 17, 48, 16), mm.Blocking(32, 6, 2, 32, 64, 24)]


def _operand(rng, shape, dtype, transposed):
    """An array of `shape`; a transposed view of a C-contiguous one if `transposed`."""
    if transposed:
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal(shape).astype(dtype)


def _check(a, b, out, accumulate=False, blocking=None, start=None):
    a0, b0 = a.copy(), b.copy()
    expected = a.astype(np.float64) @ b.astype(np.float64)
    if accumulate:
        expected = expected + start
    result = mm.matmul(a, b, out=out, accumulate=accumulate, blocking=blocking)
    if out is not None:
        assert result is out
    k = a.shape[-1]
    tol = 1e-5 if a.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(result, expected, rtol=tol, atol=tol * max(1, np.sqrt(k)) * 4)
    np.testing.assert_array_equal(a, a0)          # inputs are never modified
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("blocking", BLOCKINGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 7, 1), (3, 1, 5), (7, 5, 15), (8, 16, 48),
                                   (9, 33, 49), (17, 64, 100), (40, 100, 97), (25, 19, 130),
                                   (5, 9, 70)])
def test_matches_float64_matmul(blocking, dtype, ta, tb, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = _operand(rng, (m, k), dtype, ta)
    b = _operand(rng, (k, n), dtype, tb)
    out = np.full((m, n), np.nan, dtype)           # every element must be written
    _check(a, b, out, blocking=blocking)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accumulate_adds_to_out(dtype):
    rng = np.random.default_rng(1)
    a, b = _operand(rng, (13, 50, ), dtype, False), _operand(rng, (50, 29), dtype, True)
    start = rng.standard_normal((13, 29)).astype(dtype)
    out = start.copy()
    _check(a, b, out, accumulate=True, start=start.astype(np.float64),
           blocking=BLOCKINGS[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_and_strided_operands(dtype):
    """A batch with a shared 2-D operand, a row-sliced view (im2col's per-image columns)
    and an output slice of a larger array (a group's channels)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((10, 20)).astype(dtype)
    cols = rng.standard_normal((30, 3, 37)).astype(dtype)      # (rows, images, pixels)
    per_image = cols.transpose(1, 0, 2)[:, 5:25]              # (3, 20, 37), strided
    out = np.full((3, 16, 37), np.nan, dtype)
    mm.matmul(w, per_image, out=out[:, 3:13])
    expected = np.matmul(w.astype(np.float64), per_image.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[:, 3:13], expected, rtol=tol, atol=tol * 10)
    assert np.isnan(out[:, :3]).all() and np.isnan(out[:, 13:]).all()   # nothing else written


def test_empty_and_zero_depth():
    a, b = np.ones((4, 0), np.float32), np.ones((0, 5), np.float32)
    np.testing.assert_array_equal(mm.matmul(a, b), np.zeros((4, 5), np.float32))
    out = np.ones((4, 5), np.float32)
    mm.matmul(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, 1)
    assert mm.matmul(np.ones((0, 3)), np.ones((3, 2))).shape == (0, 2)


def test_negative_zero_kept():
    """Without accumulate, C is not read: -0.0 products stay -0.0 (as in np.matmul)."""
    a = np.array([[-0.0]], np.float32)
    b = np.array([[1.0]], np.float32)
    out = mm.matmul(a, b)
    assert np.signbit(out[0, 0]) == np.signbit((a @ b)[0, 0])


def test_bad_arguments():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="do not multiply"):
        mm.matmul(a, np.ones((5, 2), np.float32))
    with pytest.raises(ValueError, match="dtypes"):
        mm.matmul(a, np.ones((4, 2), np.float64))
    with pytest.raises(ValueError, match="out"):
        mm.matmul(a, np.ones((4, 2), np.float32), out=np.empty((3, 3), np.float32))
    with pytest.raises(ValueError, match="unit column stride"):
        mm.matmul(a, np.ones((4, 2), np.float32), out=np.empty((3, 4), np.float32)[:, ::2])


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 110),
       ta=st.booleans(), tb=st.booleans(), f64=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes(m, k, n, ta, tb, f64, seed):
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), dtype, ta)
    b = _operand(rng, (k, n), dtype, tb)
    _check(a, b, None, blocking=BLOCKINGS[1])


def test_transpose_stages_move_every_element():
    for rows, lanes in [(2, 8), (8, 8), (8, 16), (16, 16), (4, 16)]:
        vectors = [[(i, l) for l in range(lanes)] for i in range(rows)]
        for ops in mm._transpose_stages(rows, lanes):
            new = list(vectors)
            for out, a, b, mask in ops:
                pool = vectors[a] + vectors[b]
                new[out] = [pool[k] for k in mask]
            vectors = new
        low = lanes // rows
        for v, vector in enumerate(vectors):
            assert vector == [(i, v * low + h) for h in range(low) for i in range(rows)]


# im2col (forward and both gradients) on the own GEMM for every GEMM, however small,
# over the convolution grid: batches, groups, strides, padding, dilation, 1x1 layers
from fastconv import reference  # noqa: E402
import fastconv as fc  # noqa: E402

from ..conftest import assert_close  # noqa: E402
from .test_conv_cpu import CASES, DTYPES, _case_id, _data, _geometry, _kwargs  # noqa: E402


@pytest.mark.skipif(mm.HOST is None, reason="no blocking for this CPU: np.matmul runs")
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_im2col_on_own_gemm_matches_reference(case, monkeypatch):
    monkeypatch.setattr(mm, "BLAS_SINGLE_THREAD_WORK", -1)
    calls = []
    own = mm.matmul
    monkeypatch.setattr(mm, "matmul", lambda *args, **kw: calls.append(1) or own(*args, **kw))
    s, p, d, _ = _geometry(case)
    for dtype in DTYPES:
        x, w, b = _data(case, dtype)
        out = fc.conv2d(x, w, b, algorithm="im2col", **_kwargs(case))
        assert_close(out, reference.conv2d(x, w, b, s, p, d, case["groups"]), dtype)
        go = np.random.default_rng(0).standard_normal(out.shape).astype(dtype)
        gi = fc.conv2d_grad_input(go, w, x.shape, algorithm="im2col", **_kwargs(case))
        gw = fc.conv2d_grad_weight(go, x, w.shape, algorithm="im2col", **_kwargs(case))
        assert_close(gi, reference.conv2d_grad_input(go, w, x.shape, s, p, d, case["groups"]),
                     dtype)
        assert_close(gw, reference.conv2d_grad_weight(go, x, w.shape, s, p, d, case["groups"]),
                     dtype)
    assert calls or 0 in x.shape or 0 in w.shape


@pytest.mark.parametrize("work", [10, 10**6])
def test_gemm_dispatch_writes_and_accumulates(work, monkeypatch):
    """`gemm` gives the same results on either side of the rule's threshold."""
    monkeypatch.setattr(mm, "BLAS_SINGLE_THREAD_WORK", work)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 30)), rng.standard_normal((30, 40)).T.copy().T
    out = np.full((20, 40), np.nan)
    np.testing.assert_allclose(mm.gemm(a, b, out), a @ b, rtol=1e-12)
    np.testing.assert_allclose(mm.gemm(a, b, out, accumulate=True), 2 * (a @ b), rtol=1e-12)
    assert mm.own_gemm_wins(1, 20, 40, 30, np.float64) == (mm.HOST is not None and work < 24000)
