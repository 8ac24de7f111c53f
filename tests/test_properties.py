"""Differential fuzzing: random valid configurations of every operator, every CPU
algorithm, every memory layout, against `fastconv.reference` and against each other.

`python -m pytest tests/test_properties.py --hypothesis-profile=slow` runs the long profile.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv as fc
from fastconv import api, reference
from fastconv.shapes import conv_geometry, pool_geometry

from .conftest import assert_close

# profiles ("default": 30 examples, "slow": 1000): tests/conftest.py

LAYOUTS = ["C", "F", "negative", "sliced", "readonly"]


def with_layout(array, layout):
    """The same values as `array`, laid out in memory as `layout` says."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "negative":
        return np.ascontiguousarray(array[..., ::-1])[..., ::-1]
    if layout == "sliced":
        big = np.zeros(tuple(2 * s + 1 for s in array.shape), array.dtype)
        view = big[tuple(slice(1, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "readonly":
        array = array.copy()
        array.flags.writeable = False
    return array


def padding_strategy(draw, kernel, dilation, stride):
    kind = draw(st.sampled_from(["int", "pair", "sides", "valid", "same"]))
    if kind == "same" and stride == (1, 1):
        return "same"
    if kind == "valid":
        return "valid"
    if kind == "int":
        return draw(st.integers(0, 2))
    if kind == "pair":
        return (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    return ((draw(st.integers(0, 2)), draw(st.integers(0, 2))),
            (draw(st.integers(0, 2)), draw(st.integers(0, 2))))


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups > 1
    c_in = groups * (1 if depthwise else draw(st.integers(1, 3)))
    c_out = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = padding_strategy(draw, kernel, dilation, stride)
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    try:
        geometry = conv_geometry((h, w), kernel, stride, padding, dilation)
    except ValueError:
        assume(False)
    return dict(x_shape=(n, c_in, h, w), w_shape=(c_out, c_in // groups) + kernel,
                stride=stride, padding=padding, dilation=dilation, groups=groups,
                geometry=geometry, dtype=draw(st.sampled_from([np.float32, np.float64])),
                layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**31)))


def algorithms_for(cfg):
    stride, _, dilation, _ = cfg["geometry"]
    names = ["direct", "im2col"]
    if api.winograd_supports(cfg["w_shape"], stride, dilation)[0]:
        names.append("winograd")
    return names


def tolerance(dtype, algorithm):
    return 1e-3 if algorithm == "winograd" else 1e-4


@given(conv_configs())
def test_conv_forward_and_gradients_match_reference(cfg):
    rng = np.random.default_rng(cfg["seed"])
    dtype, layout = cfg["dtype"], cfg["layout"]
    x = rng.standard_normal(cfg["x_shape"]).astype(dtype)
    w = rng.standard_normal(cfg["w_shape"]).astype(dtype)
    b = rng.standard_normal(cfg["w_shape"][0]).astype(dtype)
    s, p, d, out_hw = cfg["geometry"]
    g = cfg["groups"]
    go = rng.standard_normal((cfg["x_shape"][0], cfg["w_shape"][0]) + out_hw).astype(dtype)
    expected = reference.conv2d(x, w, b, s, p, d, g)
    expected_gi = reference.conv2d_grad_input(go, w, x.shape, s, p, d, g)
    expected_gw = reference.conv2d_grad_weight(go, x, w.shape, s, p, d, g)
    xl, wl, gol = (with_layout(a, layout) for a in (x, w, go))
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=g)
    for algorithm in algorithms_for(cfg):
        tol = tolerance(dtype, algorithm)
        assert_close(fc.conv2d(xl, wl, b, algorithm=algorithm, **kw), expected, dtype, tol)
        assert_close(fc.conv2d_grad_input(gol, wl, x.shape, algorithm=algorithm, **kw),
                     expected_gi, dtype, tol)
        assert_close(fc.conv2d_grad_weight(gol, xl, w.shape, algorithm=algorithm, **kw),
                     expected_gw, dtype, tol)
    np.testing.assert_array_equal(xl, x)  # inputs untouched


@st.composite
def pool_configs(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ceil_mode = draw(st.booleans())
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    try:
        geometry = pool_geometry((h, w), kernel, stride, padding, dilation, ceil_mode)
    except ValueError:
        assume(False)
    return dict(x_shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
                kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                ceil_mode=ceil_mode, geometry=geometry,
                count_include_pad=draw(st.booleans()),
                divisor=draw(st.one_of(st.none(), st.integers(1, 7))),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                layout=draw(st.sampled_from(LAYOUTS)),
                ties=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@given(pool_configs())
def test_pooling_matches_reference(cfg):
    rng = np.random.default_rng(cfg["seed"])
    dtype = cfg["dtype"]
    x = rng.standard_normal(cfg["x_shape"])
    if cfg["ties"]:
        x = np.round(x)  # many equal maxima: the first must win
    x = x.astype(dtype)
    k, s, p, d, out_hw = cfg["geometry"]
    go = rng.standard_normal(cfg["x_shape"][:2] + out_hw).astype(dtype)
    xl = with_layout(x, cfg["layout"])
    kw = dict(kernel_size=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
              ceil_mode=cfg["ceil_mode"])
    values, indices = fc.max_pool2d(xl, dilation=cfg["dilation"], return_indices=True, **kw)
    ref_values, ref_indices = reference.max_pool2d(x, k, s, p, d, cfg["ceil_mode"])
    assert_close(values, ref_values, dtype)
    np.testing.assert_array_equal(indices, ref_indices)
    # without indices: the values-only sweep, the same values
    np.testing.assert_array_equal(fc.max_pool2d(xl, dilation=cfg["dilation"], **kw), values)
    assert_close(fc.max_pool2d_backward(go, xl, dilation=cfg["dilation"], **kw),
                 reference.max_pool2d_backward(go, x, k, s, p, d, cfg["ceil_mode"]), dtype)
    # Average pooling has no dilation: its own output size.
    try:
        *_, avg_hw = pool_geometry(x.shape[2:], k, s, p, 1, cfg["ceil_mode"])
    except ValueError:
        return
    go = rng.standard_normal(x.shape[:2] + avg_hw).astype(dtype)
    avg_kw = dict(count_include_pad=cfg["count_include_pad"],
                  divisor_override=cfg["divisor"], **kw)
    assert_close(fc.avg_pool2d(xl, **avg_kw),
                 reference.avg_pool2d(x, k, s, p, cfg["ceil_mode"], cfg["count_include_pad"],
                                      cfg["divisor"]), dtype)
    assert_close(fc.avg_pool2d_backward(go, x.shape, **avg_kw),
                 reference.avg_pool2d_backward(go, x.shape, k, s, p, cfg["ceil_mode"],
                                               cfg["count_include_pad"], cfg["divisor"]), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_give_identical_results(layout, rng):
    x = rng.standard_normal((2, 3, 10, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for algorithm in ["direct", "im2col", "winograd"]:
        np.testing.assert_array_equal(
            fc.conv2d(with_layout(x, layout), with_layout(w, layout), padding=1,
                      algorithm=algorithm),
            fc.conv2d(x, w, padding=1, algorithm=algorithm))


@st.composite
def winograd_configs(draw):
    """The CPU Winograd backend itself: 3x3 and 5x5 kernels (5x5 is reached through
    `auto` only), every tile size it has passes for, each input-transform kernel."""
    r = draw(st.sampled_from([3, 5]))
    tile = draw(st.sampled_from([2, 3, 4, 6]))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    padding = tuple(draw(st.integers(0, r)) for _ in range(4))
    h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    out_h, out_w = h + padding[0] + padding[1] - r + 1, w + padding[2] + padding[3] - r + 1
    assume(out_h >= 1 and out_w >= 1)
    return dict(x_shape=(draw(st.integers(1, 3)), c_in, h, w), w_shape=(c_out, c_in // groups, r, r),
                padding=padding, groups=groups, tile=tile, out_hw=(out_h, out_w),
                kernel=draw(st.sampled_from(["rows", "gather", "channels_last"])),
                seed=draw(st.integers(0, 2**31)))


@given(winograd_configs())
def test_winograd_backend_matches_reference(cfg):
    from fastconv.cpu import winograd
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["x_shape"])
    w = rng.standard_normal(cfg["w_shape"])
    b = rng.standard_normal(cfg["w_shape"][0])
    go = rng.standard_normal((cfg["x_shape"][0], cfg["w_shape"][0]) + cfg["out_hw"])
    geometry = ((1, 1), cfg["padding"], (1, 1), cfg["groups"])
    kernel, tile = cfg["kernel"], cfg["tile"]
    saved = (winograd.ROW_KERNEL_MIN_TILES, winograd.ROW_KERNEL_MIN_TILES_OTHER,
             winograd._channels_last_wins)
    try:   # force one input-transform kernel, whatever the shape
        winograd.ROW_KERNEL_MIN_TILES = {}
        winograd.ROW_KERNEL_MIN_TILES_OTHER = 1 if kernel == "rows" else 10**9
        winograd._channels_last_wins = lambda c_in, tiles, tiles_w: kernel == "channels_last"
        out = winograd.conv2d(x, w, b, *geometry, cfg["out_hw"], tile=tile, keep_filter=False)
        gi = winograd.conv2d_grad_input(go, w, x.shape, *geometry, tile=tile)
        gw = winograd.conv2d_grad_weight(go, x, w.shape, *geometry, tile=tile)
    finally:
        (winograd.ROW_KERNEL_MIN_TILES, winograd.ROW_KERNEL_MIN_TILES_OTHER,
         winograd._channels_last_wins) = saved
    tol = 1e-8 if tile == 6 else 1e-9     # F(6x6)'s points reach 1/2 and 3: larger entries
    for got, expected in [(out, reference.conv2d(x, w, b, *geometry)),
                          (gi, reference.conv2d_grad_input(go, w, x.shape, *geometry)),
                          (gw, reference.conv2d_grad_weight(go, x, w.shape, *geometry))]:
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * scale)
