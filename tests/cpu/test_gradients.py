"""Gradients: convolution (input, weight, bias) and pooling backward against the
float64 references over a grid, and against central finite differences.

Convolution is linear in x and in w, so for a random projection g the central
difference (<g, conv(x + eps v)> - <g, conv(x - eps v)>) / (2 eps) equals
<grad_input(g), v> up to rounding: the check is tight (1e-8) in float64.
Pooling is piecewise linear; with distinct values (no ties) and a small eps the
winners do not change, so the same holds for max pooling.
"""
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference
from fastconv.shapes import conv_geometry, pool_geometry

from ..conftest import assert_close
from .test_conv_cpu import (ALGORITHMS, CASES, DTYPES, VARIANTS, _case_id, _data, _geometry,
                            _kwargs, _use_variant)

# three in five: every kernel size, stride and padding form still appears
GRID = [case for i, case in enumerate(CASES) if i % 5 in (0, 2, 3)]


def test_the_gradient_grid_covers_the_forward_grid():
    assert {c["w_shape"][2:] for c in GRID} == {c["w_shape"][2:] for c in CASES}
    assert {str(c["padding"]) for c in GRID} == {str(c["padding"]) for c in CASES}
    assert {c["stride"] for c in GRID} == {1, 2, 3}
    assert any(c["groups"] == c["x_shape"][1] > 1 for c in GRID)


@pytest.mark.parametrize("case", GRID, ids=_case_id)
@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_gradients_match_reference(case, variant, monkeypatch):
    algorithm = _use_variant(variant, monkeypatch)
    s, p, d, out_hw = _geometry(case)
    g = case["groups"]
    for dtype in DTYPES:
        x, w, _ = _data(case, dtype)
        go = np.random.default_rng(1).standard_normal(
            (case["x_shape"][0], case["w_shape"][0]) + out_hw).astype(dtype)
        gi = fc.conv2d_grad_input(go, w, x.shape, algorithm=algorithm, **_kwargs(case))
        gw = fc.conv2d_grad_weight(go, x, w.shape, algorithm=algorithm, **_kwargs(case))
        assert gi.dtype == gw.dtype == dtype
        assert_close(gi, reference.conv2d_grad_input(go, w, x.shape, s, p, d, g), dtype)
        assert_close(gw, reference.conv2d_grad_weight(go, x, w.shape, s, p, d, g), dtype)
        assert_close(fc.conv2d_grad_bias(go), reference.conv2d_grad_bias(go), dtype)


def _projection(f, a, v, eps=1e-3):
    """Central difference of the scalar f along v at a."""
    return (f(a + eps * v) - f(a - eps * v)) / (2 * eps)


FD_CASES = [
    ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 7, 8), (4, 2, 2, 3), (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    ((2, 3, 8, 7), (3, 1, 3, 3), 2, "valid", 2, 3),          # depthwise, dilated
    ((1, 2, 5, 6), (3, 2, 2, 2), 1, "same", 1, 1),           # even kernel 'same'
    ((2, 5, 4, 4), (6, 5, 1, 1), 1, 0, 1, 1),                # 1x1
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", FD_CASES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_gradients_by_finite_differences(algorithm, x_shape, w_shape, stride, padding,
                                              dilation, groups):
    rng = np.random.default_rng(42)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    _, _, _, out_hw = conv_geometry(x_shape[2:], w_shape[2:], stride, padding, dilation)
    go = rng.standard_normal((x_shape[0], w_shape[0]) + out_hw)
    b = rng.standard_normal(w_shape[0])

    def loss(xx, ww, bb=None):
        return float(np.sum(go * fc.conv2d(xx, ww, bb, algorithm=algorithm, **kw)))

    gi = fc.conv2d_grad_input(go, w, x_shape, algorithm=algorithm, **kw)
    gw = fc.conv2d_grad_weight(go, x, w_shape, algorithm=algorithm, **kw)
    gb = fc.conv2d_grad_bias(go)
    for trial in range(3):
        vx, vw, vb = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[:1]))
        fd_x = _projection(lambda a: loss(a, w), x, vx)
        fd_w = _projection(lambda a: loss(x, a), w, vw)
        fd_b = _projection(lambda a: loss(x, w, a), b, vb)
        for fd, analytic in ((fd_x, np.sum(gi * vx)), (fd_w, np.sum(gw * vw)),
                             (fd_b, np.sum(gb * vb))):
            assert abs(fd - analytic) <= 1e-8 * max(1.0, abs(analytic)), (trial, fd, analytic)


# ---------------------------------------------------------------- pooling backward

POOL_GRID = [  # (x shape, kernel, stride, padding, dilation, ceil_mode)
    ((2, 3, 9, 8), 2, None, 0, 1, False),
    ((1, 2, 11, 10), 3, 2, 1, 1, True),
    ((2, 2, 10, 9), (3, 2), (2, 1), (1, 0), (2, 1), False),
    ((1, 3, 7, 7), 3, 1, 1, 1, False),                      # heavy overlap
    ((2, 1, 5, 5), 2, 2, 1, 1, True),                       # ceil window clipped
    ((1, 2, 8, 9), (2, 3), (3, 2), ((1, 0), (0, 1)), 1, True),
]


@pytest.mark.parametrize("x_shape, kernel, stride, padding, dilation, ceil_mode", POOL_GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_backward_matches_reference(dtype, x_shape, kernel, stride, padding, dilation,
                                         ceil_mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(dtype)
    k, s, p, d, out_hw = pool_geometry(x_shape[2:], kernel, stride, padding, dilation,
                                       ceil_mode)
    go = rng.standard_normal(x_shape[:2] + out_hw).astype(dtype)
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    assert_close(fc.max_pool2d_backward(go, x, dilation=dilation, **kw),
                 reference.max_pool2d_backward(go, x, k, s, p, d, ceil_mode), dtype)
    _, _, _, _, avg_hw = pool_geometry(x_shape[2:], kernel, stride, padding, 1, ceil_mode)
    go = rng.standard_normal(x_shape[:2] + avg_hw).astype(dtype)
    for count_include_pad in (True, False):
        for divisor in (None, 3):
            assert_close(
                fc.avg_pool2d_backward(go, x_shape, count_include_pad=count_include_pad,
                                       divisor_override=divisor, **kw),
                reference.avg_pool2d_backward(go, x_shape, k, s, p, ceil_mode,
                                              count_include_pad, divisor), dtype)


@pytest.mark.parametrize("x_shape, kernel, stride, padding, dilation, ceil_mode", POOL_GRID)
def test_pool_backward_by_finite_differences(x_shape, kernel, stride, padding, dilation,
                                             ceil_mode):
    rng = np.random.default_rng(8)
    # distinct values a grid step apart: no ties, and eps cannot reorder them
    x = rng.permutation(np.prod(x_shape)).reshape(x_shape) * 0.1
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    _, _, _, _, out_hw = pool_geometry(x_shape[2:], kernel, stride, padding, dilation,
                                       ceil_mode)
    go = rng.standard_normal(x_shape[:2] + out_hw)
    gx = fc.max_pool2d_backward(go, x, dilation=dilation, **kw)
    _, _, _, _, avg_hw = pool_geometry(x_shape[2:], kernel, stride, padding, 1, ceil_mode)
    go_avg = rng.standard_normal(x_shape[:2] + avg_hw)
    ga = fc.avg_pool2d_backward(go_avg, x_shape, count_include_pad=False, **kw)
    for _ in range(3):
        v = rng.standard_normal(x_shape)
        fd_max = _projection(
            lambda a: float(np.sum(go * fc.max_pool2d(a, dilation=dilation, **kw))), x, v,
            eps=1e-4)
        fd_avg = _projection(
            lambda a: float(np.sum(go_avg * fc.avg_pool2d(a, count_include_pad=False, **kw))),
            x, v, eps=1e-4)
        assert abs(fd_max - np.sum(gx * v)) <= 1e-8 * max(1.0, abs(fd_max))
        assert abs(fd_avg - np.sum(ga * v)) <= 1e-8 * max(1.0, abs(fd_avg))
