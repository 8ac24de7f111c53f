"""Differential fuzzing of the CUDA path: random valid configurations against the
float64 references. Few examples (the simulator runs each thread in Python);
FASTCONV_CUDA_FUZZ_EXAMPLES sets how many (run hundreds on a real GPU)."""
import os

import numpy as np
import pytest

pytest.importorskip("hypothesis")     # absent on some GPU machines: skip, do not error

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv as fc  # noqa: E402
from fastconv import api, reference  # noqa: E402
from fastconv.shapes import conv_geometry, pool_geometry  # noqa: E402

from .conftest import assert_close  # noqa: E402

# FASTCONV_CUDA_FUZZ_EXAMPLES=300 on a real GPU; the simulator affords a few.
FUZZ = settings(max_examples=int(os.environ.get("FASTCONV_CUDA_FUZZ_EXAMPLES", "15")),
                deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture])


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), 1)
    padding = ((draw(st.integers(0, 2)), draw(st.integers(0, 1))),
               (draw(st.integers(0, 1)), draw(st.integers(0, 2))))
    h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    try:
        geometry = conv_geometry((h, w), kernel, stride, padding, dilation)
    except ValueError:
        assume(False)
    return dict(x_shape=(draw(st.integers(1, 2)), c_in, h, w),
                w_shape=(c_out, c_in // groups) + kernel, stride=stride, padding=padding,
                dilation=dilation, groups=groups, geometry=geometry,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**31)))


@FUZZ
@given(cfg=conv_configs())
def test_cuda_conv_matches_reference(cfg, on_device, to_host):
    rng = np.random.default_rng(cfg["seed"])
    dtype = cfg["dtype"]
    x = rng.standard_normal(cfg["x_shape"]).astype(dtype)
    w = rng.standard_normal(cfg["w_shape"]).astype(dtype)
    s, p, d, out_hw = cfg["geometry"]
    g = cfg["groups"]
    go = rng.standard_normal((x.shape[0], w.shape[0]) + out_hw).astype(dtype)
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=g)
    algorithms = ["direct", "im2col"]
    if api.winograd_supports(w.shape, s, d)[0]:
        algorithms.append("winograd")
    for algorithm in algorithms:
        tol = 1e-3 if algorithm == "winograd" and dtype == np.float32 else None
        check = (lambda r, e: assert_close(r, e, dtype)) if tol is None else (
            lambda r, e: np.testing.assert_allclose(r, e, atol=tol * max(1, abs(e).max())))
        check(to_host(fc.conv2d(on_device(x), on_device(w), algorithm=algorithm, **kw)),
              reference.conv2d(x, w, None, s, p, d, g))
        check(to_host(fc.conv2d_grad_input(on_device(go), on_device(w), x.shape,
                                           algorithm=algorithm, **kw)),
              reference.conv2d_grad_input(go, w, x.shape, s, p, d, g))
    assert_close(to_host(fc.conv2d_grad_weight(on_device(go), on_device(x), w.shape,
                                               algorithm="im2col", **kw)),
                 reference.conv2d_grad_weight(go, x, w.shape, s, p, d, g), dtype)


@FUZZ
@given(k=st.integers(1, 3), s=st.integers(1, 3), pad=st.integers(0, 1), ceil_mode=st.booleans(),
       count_include_pad=st.booleans(), seed=st.integers(0, 2**31))
def test_cuda_pooling_matches_reference(k, s, pad, ceil_mode, count_include_pad, seed,
                                        on_device, to_host):
    assume(pad <= k // 2)
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((1, 2, 5, 6)) * 2).astype(np.float32)  # ties
    try:
        kk, ss, pp, dd, out_hw = pool_geometry((5, 6), k, s, pad, 1, ceil_mode)
    except ValueError:
        assume(False)
    values, indices = fc.max_pool2d(on_device(x), k, s, pad, ceil_mode=ceil_mode,
                                    return_indices=True)
    ref_values, ref_indices = reference.max_pool2d(x, kk, ss, pp, dd, ceil_mode)
    np.testing.assert_array_equal(to_host(values), ref_values)
    np.testing.assert_array_equal(to_host(indices), ref_indices)
    go = rng.standard_normal((1, 2) + out_hw).astype(np.float32)
    assert_close(to_host(fc.max_pool2d_backward(on_device(go), on_device(x), k, s, pad,
                                                ceil_mode=ceil_mode)),
                 reference.max_pool2d_backward(go, x, kk, ss, pp, dd, ceil_mode), np.float32)
    assert_close(to_host(fc.avg_pool2d(on_device(x), k, s, pad, ceil_mode, count_include_pad)),
                 reference.avg_pool2d(x, kk, ss, pp, ceil_mode, count_include_pad), np.float32)
