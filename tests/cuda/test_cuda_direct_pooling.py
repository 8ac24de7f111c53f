"""CUDA direct convolution and pooling against the float64 references.

Backends are called directly (their contract: normalised geometry, numba device
arrays) and through the public API with device arrays. Shapes are tiny (the
simulator runs every thread in Python); multi-block grids, partial tiles, channel
chunks, the global-memory fallback and split reductions are reached by shrinking
the block-size caps with monkeypatch.
"""
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference, shapes
from fastconv.cuda import _kernels, direct, elementwise, pooling

from .conftest import assert_close

DTYPES = [np.float64, np.float32]

# (N, C, H, W, K, (kh, kw), stride, padding4, dilation, groups, bias)
CONV_CASES = {
    "basic-asym-pad": (2, 3, 7, 6, 4, (3, 3), (1, 1), (1, 0, 2, 1), (1, 1), 1, True),
    "stride-dil-groups": (1, 4, 7, 7, 4, (3, 2), (2, 1), (0, 1, 1, 0), (2, 1), 2, True),
    "depthwise": (1, 3, 5, 6, 3, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 3, False),
    "depthwise-x2": (2, 2, 5, 5, 4, (2, 2), (1, 1), (0, 1, 0, 1), (1, 1), 2, True),
    "1x1-stride2-K5": (1, 3, 6, 5, 5, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, False),
    "K1-4x4-dil2": (1, 2, 8, 7, 1, (4, 4), (1, 1), (3, 3, 2, 3), (2, 2), 1, True),
}


def _conv_problem(rng, case, dtype):
    n, c, h, w, k, ksize, stride, padding, dilation, groups, has_bias = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups) + ksize).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype) if has_bias else None
    out_hw = shapes.output_size((h, w), ksize, stride, padding, dilation)
    grad_out = rng.standard_normal((n, k) + out_hw).astype(dtype)
    return x, weight, bias, grad_out, (stride, padding, dilation, groups), out_hw


def _check_conv(rng, on_device, to_host, case, dtype):
    x, weight, bias, grad_out, geom, out_hw = _conv_problem(rng, case, dtype)
    stride, padding, dilation, groups = geom
    dx, dw = on_device(x), on_device(weight)
    db = None if bias is None else on_device(bias)
    dgo = on_device(grad_out)

    out = direct.conv2d(dx, dw, db, stride, padding, dilation, groups, out_hw)
    assert out.dtype == dtype
    assert_close(to_host(out), reference.conv2d(x, weight, bias, *geom), dtype)

    gx = direct.conv2d_grad_input(dgo, dw, x.shape, *geom)
    assert_close(to_host(gx), reference.conv2d_grad_input(grad_out, weight, x.shape, *geom),
                 dtype)

    gw = direct.conv2d_grad_weight(dgo, dx, weight.shape, *geom)
    assert_close(to_host(gw), reference.conv2d_grad_weight(grad_out, x, weight.shape, *geom),
                 dtype)
    # inputs are never written
    np.testing.assert_array_equal(to_host(dx), x)
    np.testing.assert_array_equal(to_host(dgo), grad_out)
    return gw


def test_direct_padding_times_inf_is_nan(on_device, to_host):
    """The padding's zeros are multiplied, as in PyTorch: an Inf in grad_out over the
    padding makes the weight gradient NaN there; the forward pass likewise with an
    Inf weight."""
    x = np.ones((1, 1, 3, 3))
    go = np.ones((1, 1, 3, 3))
    go[0, 0, 0, 0] = np.inf
    geom = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    expected = reference.conv2d_grad_weight(go, x, (1, 1, 3, 3), *geom)
    gw = to_host(direct.conv2d_grad_weight(on_device(go), on_device(x), (1, 1, 3, 3), *geom))
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(gw), np.isinf(expected))
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.inf
    out = to_host(direct.conv2d(on_device(x), on_device(w), None, *geom[:3], 1, (3, 3)))
    np.testing.assert_array_equal(np.isnan(out),
                                  np.isnan(reference.conv2d(x, w, None, *geom)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_direct_conv_and_gradients(rng, on_device, to_host, name, dtype):
    _check_conv(rng, on_device, to_host, CONV_CASES[name], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_multiblock_partial_tiles_and_chunks(rng, on_device, to_host, monkeypatch,
                                                    dtype):
    """Tiny block caps: several blocks per axis with partial tiles, the z grid-stride
    loop, several input-channel chunks, several grad_weight splits."""
    monkeypatch.setattr(direct, "_TW_MAX", 2)
    monkeypatch.setattr(direct, "_TH_MAX", 2)
    monkeypatch.setattr(direct, "_GW_THREADS", 32)
    monkeypatch.setattr(direct, "_MIN_ITEMS_PER_THREAD", 1)
    monkeypatch.setattr(_kernels, "MAX_GRID_YZ", 3)
    # patch of one channel fits, two do not: cc == 1 with several chunks
    monkeypatch.setattr(direct, "SHARED_BYTES", 60 * np.dtype(dtype).itemsize)
    case = (1, 3, 5, 6, 5, (3, 3), (1, 1), (1, 2, 0, 1), (1, 1), 1, True)
    plan = direct._forward_plan((1, 3, 5, 6), (5, 3, 3, 3), (1, 1), (1, 1), 1, (6, 5),
                                np.dtype(dtype).itemsize)
    assert plan["use_smem"] and plan["cc"] == 1
    _check_conv(rng, on_device, to_host, case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_global_memory_fallback(rng, on_device, to_host, monkeypatch, dtype):
    """A patch too large for shared memory (big dilation) reads x from global memory."""
    monkeypatch.setattr(direct, "SHARED_BYTES", 40 * np.dtype(dtype).itemsize)
    case = (1, 2, 7, 7, 2, (2, 2), (1, 2), (2, 1, 1, 2), (4, 3), 1, True)
    plan = direct._forward_plan((1, 2, 7, 7), (2, 2, 2, 2), (1, 2), (4, 3), 1, (5, 4),
                                np.dtype(dtype).itemsize)
    assert not plan["use_smem"]
    _check_conv(rng, on_device, to_host, case, dtype)


def test_direct_block_shrinks_then_refuses_huge_kernels(on_device, monkeypatch):
    monkeypatch.setattr(direct, "SHARED_BYTES", 100)
    assert direct._fit_block(4, 3, 3, 4) == 2       # 4 kernels of 36 bytes do not fit
    assert direct._fit_block(4, 3, 3, 8) == 1
    x = on_device(np.zeros((1, 1, 6, 6)))
    w = on_device(np.zeros((1, 1, 4, 4)))           # 128 bytes > 100
    with pytest.raises(ValueError, match="im2col"):
        direct.conv2d(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, (3, 3))


def test_direct_deterministic(rng, on_device, to_host, monkeypatch):
    """The same inputs give the same bits (split reduction included)."""
    monkeypatch.setattr(direct, "_GW_THREADS", 32)
    monkeypatch.setattr(direct, "_MIN_ITEMS_PER_THREAD", 1)
    x, weight, _, grad_out, geom, _ = _conv_problem(rng, CONV_CASES["depthwise-x2"],
                                                    np.float32)
    dx, dw, dgo = on_device(x), on_device(weight), on_device(grad_out)
    first = to_host(direct.conv2d_grad_weight(dgo, dx, weight.shape, *geom))
    second = to_host(direct.conv2d_grad_weight(dgo, dx, weight.shape, *geom))
    np.testing.assert_array_equal(first, second)
    gi1 = to_host(direct.conv2d_grad_input(dgo, dw, x.shape, *geom))
    gi2 = to_host(direct.conv2d_grad_input(dgo, dw, x.shape, *geom))
    np.testing.assert_array_equal(gi1, gi2)


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = {
    "3x3s2-asym-ceil": (2, 2, 7, 6, 3, 2, ((1, 1), (1, 0)), 1, True),
    "2x3-dil": (1, 2, 7, 7, (2, 3), (1, 2), ((1, 1), (0, 1)), (2, 1), False),
    "2x2-ceil-partial": (1, 1, 5, 5, 2, 2, 0, 1, True),
    "3x2-s1-pad": (1, 3, 4, 5, (3, 2), 1, (1, 1), 1, False),
    "ceil-input-under-kernel": (1, 2, 2, 5, (5, 4), 3, (1, 0), 1, True),
}


def _pool_geom(case):
    n, c, h, w, kernel, stride, padding, dilation, ceil_mode = case
    return shapes.pool_geometry((h, w), kernel, stride, padding, dilation, ceil_mode)


def _special_values(x):
    """Ties, a NaN and a -inf region, so the winner rules are exercised."""
    x = np.round(x)                 # many equal maxima
    x[0, 0, 1, 1] = np.nan
    x[0, -1, :2, :2] = -np.inf
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_pool(rng, on_device, to_host, name, dtype):
    case = MAX_CASES[name]
    n, c, h, w = case[:4]
    ksize, stride, padding, dilation, out_hw = _pool_geom(case)
    x = _special_values(rng.standard_normal((n, c, h, w)) * 2).astype(dtype)
    values, indices = pooling.max_pool2d(on_device(x), ksize, stride, padding, dilation,
                                         out_hw)
    ref_values, ref_indices = reference.max_pool2d(x, ksize, stride, padding, dilation,
                                                   case[-1])
    assert values.dtype == dtype and indices.dtype == np.int64
    np.testing.assert_array_equal(to_host(values), ref_values.astype(dtype))  # NaN == NaN
    np.testing.assert_array_equal(to_host(indices), ref_indices)
    values_only, none = pooling.max_pool2d(on_device(x), ksize, stride, padding, dilation,
                                           out_hw, return_indices=False)
    assert none is None
    np.testing.assert_array_equal(to_host(values_only), ref_values.astype(dtype))

    grad_out = rng.standard_normal((n, c) + out_hw).astype(dtype)
    gx = pooling.max_pool2d_backward(on_device(grad_out), on_device(x), ksize, stride,
                                     padding, dilation)
    expected = reference.max_pool2d_backward(grad_out, x, ksize, stride, padding, dilation,
                                             case[-1])
    assert_close(to_host(gx), expected, dtype)


def test_max_pool_grid_stride_loop(rng, on_device, to_host, monkeypatch):
    """One block of 32 threads loops over every output/input element."""
    monkeypatch.setattr(_kernels, "MAX_BLOCKS_1D", 1)
    case = MAX_CASES["3x3s2-asym-ceil"]
    ksize, stride, padding, dilation, out_hw = _pool_geom(case)
    x = rng.standard_normal(case[:4])
    values, indices = pooling.max_pool2d(on_device(x), ksize, stride, padding, dilation,
                                         out_hw)
    ref_values, ref_indices = reference.max_pool2d(x, ksize, stride, padding, dilation, True)
    np.testing.assert_array_equal(to_host(indices), ref_indices)
    grad_out = rng.standard_normal(ref_values.shape)
    gx = pooling.max_pool2d_backward(on_device(grad_out), on_device(x), ksize, stride,
                                     padding, dilation)
    assert_close(to_host(gx), reference.max_pool2d_backward(
        grad_out, x, ksize, stride, padding, dilation, True), np.float64)


# (N, C, H, W, kernel, stride, padding, ceil_mode)
AVG_CASES = {
    "3x3s2-pad-ceil": (1, 2, 7, 6, 3, 2, ((1, 1), (1, 0)), True),
    "2x3-s1-2": (2, 1, 5, 7, (2, 3), (1, 2), (1, 1), False),
    "2x2-ceil-partial": (1, 2, 5, 5, 2, 2, 0, True),
    "ceil-input-under-kernel": (1, 2, 2, 5, 4, 3, 0, True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divisor", [0, 5])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_pool(rng, on_device, to_host, name, count_include_pad, divisor, dtype):
    n, c, h, w, kernel, stride, padding, ceil_mode = AVG_CASES[name]
    ksize, stride, padding, _, out_hw = shapes.pool_geometry(
        (h, w), kernel, stride, padding, 1, ceil_mode)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    override = divisor or None
    out = pooling.avg_pool2d(on_device(x), ksize, stride, padding, out_hw,
                             count_include_pad, divisor)
    assert_close(to_host(out), reference.avg_pool2d(x, ksize, stride, padding, ceil_mode,
                                                    count_include_pad, override), dtype)
    grad_out = rng.standard_normal((n, c) + out_hw).astype(dtype)
    gx = pooling.avg_pool2d_backward(on_device(grad_out), x.shape, ksize, stride, padding,
                                     count_include_pad, divisor)
    assert_close(to_host(gx), reference.avg_pool2d_backward(
        grad_out, x.shape, ksize, stride, padding, ceil_mode, count_include_pad, override),
        dtype)


# --------------------------------------------------------------------------
# Through the public API, with device arrays
# --------------------------------------------------------------------------

def _is_device(arr):
    from fastconv.cuda import interop
    return interop.is_device_array(arr)


@pytest.mark.parametrize("dtype", DTYPES)
def test_api_conv2d_direct_on_device(rng, on_device, to_host, dtype):
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    out = fc.conv2d(on_device(x), on_device(w), on_device(b), algorithm="direct", **kw)
    assert _is_device(out)
    geom = ((2, 1), (1, 0, 2, 1), (1, 2), 2)
    assert_close(to_host(out), reference.conv2d(x, w, b, *geom), dtype)

    go = rng.standard_normal(tuple(out.shape)).astype(dtype)
    gx = fc.conv2d_grad_input(on_device(go), on_device(w), x.shape, algorithm="direct", **kw)
    assert _is_device(gx)
    assert_close(to_host(gx), reference.conv2d_grad_input(go, w, x.shape, *geom), dtype)
    gw = fc.conv2d_grad_weight(on_device(go), on_device(x), w.shape, algorithm="direct", **kw)
    assert_close(to_host(gw), reference.conv2d_grad_weight(go, x, w.shape, *geom), dtype)


def test_api_conv2d_3d_same_and_noncontiguous(rng, on_device, to_host):
    """A 3-D image gives a 3-D result; a strided device view is made contiguous
    on the device; padding='same'."""
    big = rng.standard_normal((3, 7, 12))
    w = rng.standard_normal((2, 3, 2, 3))
    view = on_device(big)[:, :, ::2]            # non-contiguous device view (3, 7, 6)
    out = fc.conv2d(view, on_device(w), padding="same", algorithm="direct")
    assert tuple(out.shape) == (2, 7, 6)
    x = big[None, :, :, ::2]
    expected = reference.conv2d(x, w, None, (1, 1), (0, 1, 1, 1), (1, 1), 1)[0]
    assert_close(to_host(out), expected, np.float64)


def test_api_pooling_on_device(rng, on_device, to_host):
    x = _special_values(rng.standard_normal((1, 2, 6, 5)) * 2)
    values, indices = fc.max_pool2d(on_device(x), 3, stride=2, padding=1, ceil_mode=True,
                                    return_indices=True)
    assert _is_device(values) and _is_device(indices)
    ksize, stride, padding, dilation, _ = shapes.pool_geometry((6, 5), 3, 2, 1, 1, True)
    ref_values, ref_indices = reference.max_pool2d(x, ksize, stride, padding, dilation, True)
    np.testing.assert_array_equal(to_host(values), ref_values)
    np.testing.assert_array_equal(to_host(indices), ref_indices)
    go = rng.standard_normal(ref_values.shape)
    gx = fc.max_pool2d_backward(on_device(go), on_device(x), 3, stride=2, padding=1,
                                ceil_mode=True)
    assert_close(to_host(gx), reference.max_pool2d_backward(
        go, x, ksize, stride, padding, dilation, True), np.float64)

    x = np.nan_to_num(x, neginf=-3.0).astype(np.float32)
    out = fc.avg_pool2d(on_device(x), (2, 3), stride=(2, 1), padding=(1, 1), ceil_mode=True,
                        count_include_pad=False, divisor_override=None)
    ksize, stride, padding, _, out_hw = shapes.pool_geometry((6, 5), (2, 3), (2, 1), (1, 1),
                                                             1, True)
    assert_close(to_host(out), reference.avg_pool2d(x, ksize, stride, padding, True, False,
                                                    None), np.float32)
    go = rng.standard_normal((1, 2) + out_hw).astype(np.float32)
    gx = fc.avg_pool2d_backward(on_device(go), x.shape, (2, 3), stride=(2, 1),
                                padding=(1, 1), ceil_mode=True, count_include_pad=False,
                                divisor_override=3)
    assert_close(to_host(gx), reference.avg_pool2d_backward(
        go, x.shape, ksize, stride, padding, True, False, 3), np.float32)


def test_api_empty_batch_on_device(on_device):
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    out = fc.conv2d(on_device(x), on_device(w), algorithm="direct")
    assert _is_device(out) and tuple(out.shape) == (0, 3, 3, 3)



def test_pooling_a_kernel_far_larger_than_the_input(on_device, to_host):
    """The kernels loop over the window taps inside the input only: a 2**31 - 1 wide
    kernel over a 1x1 input is one tap, not two billion."""
    one = np.ones((1, 1, 1, 1))
    kernel, padding = (1, 2**31 - 1), (0, 2**30 - 1)
    assert to_host(fc.max_pool2d(on_device(one), kernel, 1, padding))[0, 0, 0, 0] == 1.0
    assert to_host(fc.max_pool2d_backward(on_device(one), on_device(one), kernel, 1,
                                          padding))[0, 0, 0, 0] == 1.0
    np.testing.assert_allclose(to_host(fc.avg_pool2d(on_device(one), kernel, 1, padding)),
                               1 / (2**31 - 1))
    np.testing.assert_allclose(
        to_host(fc.avg_pool2d_backward(on_device(one), one.shape, kernel, 1, padding)),
        1 / (2**31 - 1))
