"""Max and average pooling (forward and backward) against the float64 references,
PyTorch's edge rules (ceil-mode windows, divisors, ties, NaN, index format), and
torch.nn.functional where it is installed."""
import itertools

import numpy as np
import pytest

import fastconv as fc
from fastconv import reference
from fastconv.shapes import pool_geometry

from ..conftest import assert_close

DTYPES = [np.float32, np.float64]

# kernel, stride, padding, dilation: every value meets every other at least once
# through the product of (kernel, stride) with a cycled (padding, dilation, ceil).
KERNELS = [1, 2, 3, (2, 3), (4, 3)]
STRIDES = [None, 1, 2, (3, 1)]
PADDINGS = [0, 1, (1, 0), ((0, 1), (1, 0))]


def _pool_cases():
    cases = []
    for index, (kernel, stride) in enumerate(itertools.product(KERNELS, STRIDES)):
        for ceil_mode in (False, True):
            padding = PADDINGS[(index + ceil_mode) % len(PADDINGS)]
            kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
            if isinstance(padding, int):
                padding = min(padding, kh // 2, kw // 2)
            elif isinstance(padding[0], int):
                padding = (min(padding[0], kh // 2), min(padding[1], kw // 2))
            else:
                padding = tuple((min(a, k // 2), min(b, k // 2))
                                for (a, b), k in zip(padding, (kh, kw)))
            dilation = 1 + (index // 2) % 2
            x_shape = (1 + index % 2, 1 + index % 3, 7 + index % 4, 8 + index % 3)
            cases.append((x_shape, kernel, stride, padding, dilation, ceil_mode))
    return cases


CASES = _pool_cases()


def _id(case):
    return str(case).replace(" ", "")


def _data(x_shape, dtype, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    if ties:
        x = np.round(x)  # many equal maxima
    return x.astype(dtype)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_max_pool_matches_reference(case):
    x_shape, kernel, stride, padding, dilation, ceil_mode = case
    k, s, p, d, out_hw = pool_geometry(x_shape[2:], kernel, stride, padding, dilation,
                                       ceil_mode)
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
              ceil_mode=ceil_mode)
    for dtype, ties in itertools.product(DTYPES, (False, True)):
        x = _data(x_shape, dtype, ties=ties)
        values, indices = fc.max_pool2d(x, return_indices=True, **kw)
        ref_values, ref_indices = reference.max_pool2d(x, k, s, p, d, ceil_mode)
        assert values.dtype == dtype and indices.dtype == np.int64
        assert values.shape == indices.shape == x_shape[:2] + out_hw
        np.testing.assert_array_equal(values, ref_values.astype(dtype))
        np.testing.assert_array_equal(indices, ref_indices)
        # without indices the kernel sweeps only the values: the same values
        np.testing.assert_array_equal(fc.max_pool2d(x, **kw), values)
        go = np.random.default_rng(1).standard_normal(x_shape[:2] + out_hw).astype(dtype)
        assert_close(fc.max_pool2d_backward(go, x, **kw),
                     reference.max_pool2d_backward(go, x, k, s, p, d, ceil_mode), dtype)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_avg_pool_matches_reference(case):
    x_shape, kernel, stride, padding, _, ceil_mode = case
    k, s, p, _, out_hw = pool_geometry(x_shape[2:], kernel, stride, padding, 1, ceil_mode)
    for dtype, count_include_pad, divisor in itertools.product(DTYPES, (True, False),
                                                               (None, 1, 5)):
        kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, divisor_override=divisor)
        x = _data(x_shape, dtype)
        out = fc.avg_pool2d(x, **kw)
        assert out.dtype == dtype
        assert_close(out, reference.avg_pool2d(x, k, s, p, ceil_mode, count_include_pad,
                                               divisor), dtype)
        go = np.random.default_rng(2).standard_normal(x_shape[:2] + out_hw).astype(dtype)
        assert_close(fc.avg_pool2d_backward(go, x_shape, **kw),
                     reference.avg_pool2d_backward(go, x_shape, k, s, p, ceil_mode,
                                                   count_include_pad, divisor), dtype)


def test_ceil_mode_window_may_not_start_in_the_padding():
    # H = W = 5, k=2, s=2, pad=1, ceil: (5 + 2 - 2) / 2 = 2.5 -> 3 windows starting at
    # -1, 1, 3; a 4th would start at 5, inside the bottom padding, so it is dropped.
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    values, indices = fc.max_pool2d(x, 2, 2, 1, ceil_mode=True, return_indices=True)
    assert values.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(values[0, 0], [[0, 2, 4], [10, 12, 14], [20, 22, 24]])
    np.testing.assert_array_equal(indices[0, 0], [[0, 2, 4], [10, 12, 14], [20, 22, 24]])
    # the last window (rows 3..4, cols 3..4) is whole; the first covers 1 pixel + padding
    avg = fc.avg_pool2d(x, 2, 2, 1, ceil_mode=True)
    np.testing.assert_allclose(avg[0, 0, 0, 0], 0 / 4)                 # pool incl. padding
    np.testing.assert_allclose(avg[0, 0, 2, 2], (18 + 19 + 23 + 24) / 4)
    avg = fc.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(avg[0, 0, 0, 0], 0.0)
    np.testing.assert_allclose(avg[0, 0, 0, 1], (1 + 2) / 2)
    # H = 6, k=3, s=2, pad=1, ceil: the last window runs past the bottom padding and
    # PyTorch's pool size is cut at H + pad: (6+1) - 5 = 2 rows, not 3
    x = np.ones((1, 1, 6, 6))
    avg = fc.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert avg.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(avg[0, 0, 3, 3], 1 / (2 * 2))   # 1 element / pool 2x2
    np.testing.assert_allclose(avg[0, 0, 1, 1], 1.0)


# In ceil mode an input smaller than the kernel is pooled when a window starts
# inside it (PyTorch's rule): (x_shape, kernel, stride, padding, dilation).
SMALL_INPUT_CASES = [((2, 3, 1, 5), 2, 2, 0, 1), ((1, 2, 1, 5), 3, 3, 0, 1),
                     ((1, 2, 2, 5), 3, 2, 1, 1), ((2, 1, 1, 1), 4, 4, 0, 1),
                     ((1, 2, 3, 4), (5, 2), (4, 2), (2, 0), 1),
                     ((1, 2, 2, 6), 2, 3, 1, 2)]


@pytest.mark.parametrize("case", SMALL_INPUT_CASES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ceil_mode_input_smaller_than_the_kernel_matches_reference(case, dtype):
    x_shape, kernel, stride, padding, dilation = case
    x = _data(x_shape, dtype, seed=3)
    k, s, p, d, out_hw = pool_geometry(x_shape[2:], kernel, stride, padding, dilation, True)
    values, indices = fc.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=True,
                                    return_indices=True)
    ref_values, ref_indices = reference.max_pool2d(x, k, s, p, d, True)
    np.testing.assert_array_equal(values, ref_values.astype(dtype))
    np.testing.assert_array_equal(indices, ref_indices)
    go = _data(values.shape, dtype, seed=4)
    assert_close(fc.max_pool2d_backward(go, x, kernel, stride, padding, dilation, True),
                 reference.max_pool2d_backward(go, x, k, s, p, d, True), dtype)
    if dilation == 1:
        for include in (True, False):
            kw = dict(ceil_mode=True, count_include_pad=include)
            assert_close(fc.avg_pool2d(x, kernel, stride, padding, **kw),
                         reference.avg_pool2d(x, k, s, p, True, include), dtype)
            assert_close(fc.avg_pool2d_backward(go, x_shape, kernel, stride, padding, **kw),
                         reference.avg_pool2d_backward(go, x_shape, k, s, p, True, include),
                         dtype)


@pytest.mark.parametrize("case", [c for c in SMALL_INPUT_CASES if c[4] == 1], ids=_id)
def test_ceil_mode_input_smaller_than_the_kernel_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x_shape, kernel, stride, padding, _ = case
    x = _data(x_shape, np.float64, seed=5)
    xt = torch.tensor(x, requires_grad=True)
    expected = F.max_pool2d(xt, kernel, stride, padding, ceil_mode=True)
    go = _data(tuple(expected.shape), np.float64, seed=6)
    expected.backward(torch.tensor(go))
    np.testing.assert_array_equal(fc.max_pool2d(x, kernel, stride, padding, ceil_mode=True),
                                  expected.detach().numpy())
    np.testing.assert_array_equal(
        fc.max_pool2d_backward(go, x, kernel, stride, padding, ceil_mode=True), xt.grad.numpy())
    for include in (True, False):
        xt = torch.tensor(x, requires_grad=True)
        expected = F.avg_pool2d(xt, kernel, stride, padding, ceil_mode=True,
                                count_include_pad=include)
        expected.backward(torch.tensor(go))
        kw = dict(ceil_mode=True, count_include_pad=include)
        np.testing.assert_allclose(fc.avg_pool2d(x, kernel, stride, padding, **kw),
                                   expected.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(
            fc.avg_pool2d_backward(go, x_shape, kernel, stride, padding, **kw),
            xt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ceil_mode_and_edge_windows_match_torch(dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for h, w, k, s, pad in [(5, 5, 2, 2, 1), (6, 6, 3, 2, 1), (7, 5, 3, 3, 1),
                            (4, 9, (2, 4), (3, 2), (1, 2))]:
        x = _data((2, 3, h, w), dtype, seed=h * w)
        xt = torch.from_numpy(x)
        for ceil_mode in (False, True):
            values, indices = fc.max_pool2d(x, k, s, pad, ceil_mode=ceil_mode,
                                            return_indices=True)
            tv, ti = F.max_pool2d(xt, k, s, pad, ceil_mode=ceil_mode, return_indices=True)
            np.testing.assert_array_equal(values, tv.numpy())
            np.testing.assert_array_equal(indices, ti.numpy())
            for count_include_pad, divisor in itertools.product((True, False), (None, 3)):
                out = fc.avg_pool2d(x, k, s, pad, ceil_mode=ceil_mode,
                                    count_include_pad=count_include_pad,
                                    divisor_override=divisor)
                expected = F.avg_pool2d(xt, k, s, pad, ceil_mode=ceil_mode,
                                        count_include_pad=count_include_pad,
                                        divisor_override=divisor).numpy()
                tol = 1e-12 if dtype == np.float64 else 1e-6
                np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for k, s, pad, d, ceil_mode in [(3, 1, 1, 1, False), (3, 2, 1, 1, True),
                                    (2, 2, 0, 2, False), ((3, 2), (2, 1), (1, 0), 1, True)]:
        x = _data((2, 2, 9, 8), dtype, seed=3)
        xt = torch.from_numpy(x).requires_grad_()
        out = F.max_pool2d(xt, k, s, pad, d, ceil_mode=ceil_mode)
        go = np.random.default_rng(4).standard_normal(tuple(out.shape)).astype(dtype)
        out.backward(torch.from_numpy(go))
        assert_close(fc.max_pool2d_backward(go, x, k, s, pad, d, ceil_mode),
                     xt.grad.numpy().astype(np.float64), dtype)
        if d == 1:
            xt.grad = None
            out = F.avg_pool2d(xt, k, s, pad, ceil_mode=ceil_mode, count_include_pad=False)
            go = np.random.default_rng(5).standard_normal(tuple(out.shape)).astype(dtype)
            out.backward(torch.from_numpy(go))
            assert_close(fc.avg_pool2d_backward(go, x.shape, k, s, pad, ceil_mode,
                                                count_include_pad=False),
                         xt.grad.numpy().astype(np.float64), dtype)


def test_ties_first_maximum_wins_and_gets_the_gradient():
    x = np.array([[[[1.0, 3.0, 3.0],
                    [3.0, 2.0, 3.0],
                    [0.0, 3.0, 1.0]]]])
    values, indices = fc.max_pool2d(x, 2, 1, return_indices=True)
    np.testing.assert_array_equal(values[0, 0], [[3, 3], [3, 3]])
    # row-major window order: the first 3 of each window
    np.testing.assert_array_equal(indices[0, 0], [[1, 1], [3, 5]])
    grad = fc.max_pool2d_backward(np.ones((1, 1, 2, 2)), x, 2, 1)
    np.testing.assert_array_equal(grad[0, 0], [[0, 2, 0], [1, 0, 1], [0, 0, 0]])
    # all equal, with -inf values and padding (-inf): the first in-bounds element wins
    x = np.full((1, 1, 3, 3), -np.inf)
    values, indices = fc.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert np.isneginf(values).all()
    np.testing.assert_array_equal(indices[0, 0], [[0, 1], [3, 4]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_with_its_index(dtype):
    x = np.array([[[[1.0, np.nan, 7.0, 2.0],
                    [9.0, 0.0, np.nan, 3.0],
                    [4.0, 5.0, 6.0, 8.0],
                    [np.nan, 1.0, 2.0, np.nan]]]], dtype=dtype)
    values, indices = fc.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(values[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 1   # NaN beats 9 after it
    assert np.isnan(values[0, 0, 0, 1]) and indices[0, 0, 0, 1] == 6
    assert np.isnan(values[0, 0, 1, 0]) and indices[0, 0, 1, 0] == 12  # NaN after 5 wins
    assert np.isnan(values[0, 0, 1, 1]) and indices[0, 0, 1, 1] == 15
    # overlapping windows: with several NaNs the last one wins (PyTorch's rule)
    values, indices = fc.max_pool2d(x, 3, 1, return_indices=True)
    np.testing.assert_array_equal(indices[0, 0], [[6, 6], [12, 15]])
    ref_values, ref_indices = reference.max_pool2d(x, (3, 3), (1, 1))
    np.testing.assert_array_equal(indices, ref_indices)
    assert np.isnan(values).all() and np.isnan(ref_values).all()
    grad = fc.max_pool2d_backward(np.ones((1, 1, 2, 2), dtype), x, 3, 1)
    assert grad[0, 0, 1, 2] == 2 and grad[0, 0, 3, 0] == 1 and grad.sum() == 4
    avg = fc.avg_pool2d(x, 2)
    assert np.isnan(avg).all()


def test_nan_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 10, 11)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.03] = np.inf
    x[rng.random(x.shape) < 0.03] = -np.inf
    for k, s, pad in [(2, 2, 0), (3, 1, 1), (3, 2, 1)]:
        values, indices = fc.max_pool2d(x, k, s, pad, return_indices=True)
        tv, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, pad,
                                                return_indices=True)
        np.testing.assert_array_equal(values, tv.numpy())
        # NaN windows included: the last NaN wins, as torch's `val > max || isnan(val)`.
        np.testing.assert_array_equal(indices, ti.numpy())
        np.testing.assert_array_equal(indices, reference.max_pool2d(
            x, (k, k), (s, s), (pad,) * 4)[1])


def test_indices_are_flat_int64_per_plane():
    x = np.zeros((2, 3, 6, 7))
    x[1, 2, 4, 5] = 1.0
    x[0, 0, 0, 6] = 1.0
    values, indices = fc.max_pool2d(x, (3, 2), (3, 2), ceil_mode=True, return_indices=True)
    assert indices.dtype == np.int64 and indices.shape == (2, 3, 2, 4)
    assert indices[1, 2, 1, 2] == 4 * 7 + 5           # h * W + w within the plane
    assert indices[0, 0, 0, 3] == 6                    # last (ceil) column window
    assert indices[1, 2, 0, 0] == 0                    # ties on zeros: the first
    flat = x.reshape(2, 3, -1)
    np.testing.assert_array_equal(
        np.take_along_axis(flat, indices.reshape(2, 3, -1), axis=2).reshape(values.shape),
        values)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_overlapping_windows_accumulate_in_backward(stride, dtype):
    x = _data((2, 2, 9, 8), dtype, seed=stride)
    k, s, p, d, out_hw = pool_geometry((9, 8), 3, stride, 1, 1, False)
    go = np.random.default_rng(6).standard_normal((2, 2) + out_hw).astype(dtype)
    grad = fc.max_pool2d_backward(go, x, 3, stride, 1)
    assert_close(grad, reference.max_pool2d_backward(go, x, k, s, p, d), dtype)
    # every output's gradient lands somewhere: the sums agree
    np.testing.assert_allclose(grad.sum(dtype=np.float64), go.sum(dtype=np.float64),
                               rtol=1e-5)
    # a pixel that wins several windows receives all their gradients
    ones = fc.max_pool2d_backward(np.ones_like(go), x, 3, stride, 1)
    assert ones.max() > 1
    _, indices = fc.max_pool2d(x, 3, stride, 1, return_indices=True)
    counts = np.zeros((2, 2, 72))
    for a in range(2):
        for b in range(2):
            np.add.at(counts[a, b], indices[a, b].ravel(), 1)
    np.testing.assert_array_equal(ones.reshape(2, 2, -1), counts)
    grad_avg = fc.avg_pool2d_backward(go, x.shape, 3, stride, 1)
    assert_close(grad_avg, reference.avg_pool2d_backward(go, x.shape, k, s, p), dtype)


def test_divisor_rules_by_hand():
    x = np.ones((1, 1, 4, 4))
    # pad 1, k 3, s 2: the first window holds 4 real pixels of a 3x3 window
    assert fc.avg_pool2d(x, 3, 2, 1)[0, 0, 0, 0] == 4 / 9
    assert fc.avg_pool2d(x, 3, 2, 1, count_include_pad=False)[0, 0, 0, 0] == 1.0
    assert fc.avg_pool2d(x, 3, 2, 1, divisor_override=2)[0, 0, 0, 0] == 4 / 2
    grad = fc.avg_pool2d_backward(np.ones((1, 1, 2, 2)), x.shape, 3, 2, 1)
    # (1, 1) lies in all four windows, (0, 0) and (3, 3) in one each
    np.testing.assert_allclose(grad[0, 0], np.outer([1, 2, 1, 1], [1, 2, 1, 1]) / 9)


def test_inputs_are_not_written_and_layouts_agree():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 9, 10))
    go = rng.standard_normal((2, 3, 5, 5))
    expected = [fc.max_pool2d(x, 3, 2, 1, return_indices=True)[1],
                fc.max_pool2d_backward(go, x, 3, 2, 1),
                fc.avg_pool2d(x, 3, 2, 1), fc.avg_pool2d_backward(go, x.shape, 3, 2, 1)]
    negative = (x[:, :, ::-1, ::-1].copy()[:, :, ::-1, ::-1], go[..., ::-1].copy()[..., ::-1])
    for xl, gol in [(np.asfortranarray(x), np.asfortranarray(go)), negative]:
        xl.flags.writeable = False
        copies = (xl.copy(), gol.copy())
        results = [fc.max_pool2d(xl, 3, 2, 1, return_indices=True)[1],
                   fc.max_pool2d_backward(gol, xl, 3, 2, 1),
                   fc.avg_pool2d(xl, 3, 2, 1), fc.avg_pool2d_backward(gol, x.shape, 3, 2, 1)]
        for a, b in zip(results, expected):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(copies[0], xl)
        np.testing.assert_array_equal(copies[1], gol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_without_indices_keep_nan_and_infinity(dtype):
    """The values-only sweep: NaN wins wherever it is, -inf windows and windows wholly
    in the padding (dilation) stay -inf, as with indices."""
    x = np.array([[[[1.0, np.nan, 7.0, -np.inf],
                    [9.0, 0.0, -np.inf, -np.inf],
                    [4.0, 5.0, 6.0, 8.0],
                    [np.nan, 1.0, 2.0, np.nan]]]], dtype=dtype)
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1),
               dict(kernel_size=2, stride=2, padding=1), dict(kernel_size=2, dilation=3,
                                                             padding=1, stride=1)):
        values, _ = fc.max_pool2d(x, return_indices=True, **kw)
        np.testing.assert_array_equal(fc.max_pool2d(x, **kw), values)


def test_reference_backward_of_an_empty_batch():
    """The reference reshaped with -1 over zero elements, which NumPy refuses."""
    out = reference.max_pool2d_backward(np.zeros((0, 1, 1, 1)), np.zeros((0, 1, 2, 2)),
                                        (2, 2), (2, 2))
    assert out.shape == (0, 1, 2, 2)
    np.testing.assert_array_equal(fc.max_pool2d_backward(np.zeros((0, 1, 1, 1)),
                                                         np.zeros((0, 1, 2, 2)), 2), out)
