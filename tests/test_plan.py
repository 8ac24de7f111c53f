"""One dispatch plan: what `fc.explain` says is what a call runs (`fc.plan.last_plan()`),
fallbacks included, over random configurations; the memoised checks refuse what they
refused before."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv as fc
from fastconv import api, plan
from fastconv.cuda import interop
from fastconv.shapes import conv_geometry

OPERATIONS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")


def operands(x_shape, w_shape, out_shape, dtype, seed, poison):
    """x, weight, grad_out with small random values; `poison` ("x", "weight",
    "grad_out" or None) gets a NaN or an Inf at a random place."""
    rng = np.random.default_rng(seed)
    arrays = {name: rng.standard_normal(shape).astype(dtype) for name, shape in
              (("x", x_shape), ("weight", w_shape), ("grad_out", out_shape))}
    if poison is not None and arrays[poison].size:
        flat = arrays[poison].reshape(-1)
        flat[rng.integers(flat.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return arrays


def call(operation, arrays, x_shape, w_shape, algorithm, kw):
    x, w, go = arrays["x"], arrays["weight"], arrays["grad_out"]
    if operation == "conv2d":
        return fc.conv2d(x, w, algorithm=algorithm, **kw)
    if operation == "conv2d_grad_input":
        return fc.conv2d_grad_input(go, w, x_shape, algorithm=algorithm, **kw)
    return fc.conv2d_grad_weight(go, x, w_shape, algorithm=algorithm, **kw)


def explain(operation, arrays, algorithm, kw):
    """fc.explain given the operands the operation looks at (and the other one's shape)."""
    x, w, go = arrays["x"], arrays["weight"], arrays["grad_out"]
    return fc.explain(x if operation != "conv2d_grad_input" else x.shape,
                      w if operation != "conv2d_grad_weight" else w.shape,
                      operation=operation, algorithm=algorithm,
                      grad_out=None if operation == "conv2d" else go, **kw)


def outcome(function):
    """("ok", result) or the exception's type and message."""
    try:
        return "ok", function()
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


def assert_explain_names_what_ran(operation, arrays, x_shape, w_shape, algorithm, kw):
    said = outcome(lambda: explain(operation, arrays, algorithm, kw))
    ran = outcome(lambda: call(operation, arrays, x_shape, w_shape, algorithm, kw))
    assert said[0] == ran[0], (said, ran)
    if said[0] != "ok":
        assert said[1] == ran[1]          # the same check refused both
        return
    problem = api.conv_problem(x_shape, w_shape, kw["stride"], kw["padding"],
                               kw["dilation"], kw["groups"])
    used = plan.describe(problem, "cpu", operation, fc.plan.last_plan())
    assert said[1] == used


@st.composite
def small_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups > 1
    c_in = groups * (1 if depthwise else draw(st.integers(1, 3)))
    c_out = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from([0, 1, 2, "same", "valid", (1, 0), ((0, 1), (2, 0))]))
    n, h, w = draw(st.integers(0, 2)), draw(st.integers(1, 10)), draw(st.integers(1, 10))
    try:
        geometry = conv_geometry((h, w), kernel, stride, padding, dilation)
    except ValueError:
        assume(False)
    return dict(x_shape=(n, c_in, h, w), w_shape=(c_out, c_in // groups) + kernel,
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
                out_shape=(n, c_out) + geometry[3])


@given(cfg=small_configs(), operation=st.sampled_from(OPERATIONS),
       algorithm=st.sampled_from(plan.ALGORITHMS),
       poison=st.sampled_from([None, None, "x", "weight", "grad_out"]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31))
def test_explain_names_what_runs_on_random_configurations(cfg, operation, algorithm,
                                                          poison, dtype, seed):
    arrays = operands(cfg["x_shape"], cfg["w_shape"], cfg["out_shape"], dtype, seed, poison)
    assert_explain_names_what_ran(operation, arrays, cfg["x_shape"], cfg["w_shape"],
                                  algorithm, cfg["kw"])


# Layers past the measured thresholds, where `auto` takes Winograd (F(4x4), F(2x2),
# F(4x4,5x5), the weight gradient's F(3x3,4x4)) and a NaN or Inf takes it back.
WINOGRAD_LAYERS = [
    ((1, 64, 32, 32), (64, 64, 3, 3), 1, OPERATIONS[:2]),          # F(4x4,3x3)
    ((11, 64, 10, 10), (64, 64, 3, 3), 1, OPERATIONS[:1]),         # F(2x2,3x3)
    ((1, 16, 32, 32), (16, 16, 5, 5), 2, OPERATIONS[:1]),          # F(4x4,5x5)
    ((1, 96, 56, 56), (96, 96, 3, 3), 1, OPERATIONS[2:]),          # F(3x3,4x4)
]


@pytest.mark.parametrize("x_shape, w_shape, padding, operations", WINOGRAD_LAYERS)
@pytest.mark.parametrize("poison", [None, "x", "weight", "grad_out"])
def test_explain_names_what_runs_where_auto_takes_winograd(x_shape, w_shape, padding,
                                                           operations, poison):
    kw = dict(stride=(1, 1), padding=padding, dilation=(1, 1), groups=1)
    out_shape = (x_shape[0], w_shape[0]) + conv_geometry(x_shape[2:], w_shape[2:], 1,
                                                         padding, 1)[3]
    arrays = operands(x_shape, w_shape, out_shape, np.float32, 7, poison)
    for operation in operations:
        assert_explain_names_what_ran(operation, arrays, x_shape, w_shape, "auto", kw)
        ran = fc.plan.last_plan()
        looked_at = {"conv2d": ("x", "weight"), "conv2d_grad_input": ("grad_out", "weight"),
                     "conv2d_grad_weight": ("grad_out", "x")}[operation]
        assert ran.algorithm == ("im2col" if poison in looked_at else "winograd"), ran


def test_a_kept_filter_is_what_explain_says_it_may_be():
    """Winograd on a layer too small for a per-call filter transform runs only when the
    weights repeat an earlier call's; explain does not record weights (asking it twice
    changes nothing) and says that a repeat takes Winograd."""
    from fastconv.cpu import winograd
    winograd.release_workspace()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 128, 24, 24)).astype(np.float32)     # 576 pixels
    w = rng.standard_normal((128, 128, 3, 3)).astype(np.float32)
    kw = dict(padding=1)
    for _ in range(2):
        text = fc.explain(x, w, **kw)
        assert "on cpu: im2col (" in text and "repeats an earlier call's weights" in text
    expected = fc.conv2d(x, w, algorithm="im2col", **kw)
    runs = []
    for weights in (w, w, w * 1, None):
        if weights is None:            # a training step changes the weights in place
            w *= 1.5
            weights = w
        fc.conv2d(x, weights, **kw)
        runs.append(fc.plan.last_plan().algorithm)
    assert runs == ["im2col", "winograd", "im2col", "im2col"]
    problem = api.conv_problem(x.shape, w.shape, 1, 1, 1, 1)
    assert plan.plan(problem, "cpu", "conv2d", "auto", weight=w, record=False).algorithm \
        == "im2col"
    np.testing.assert_allclose(fc.conv2d(x, w / 1.5, **kw), expected, rtol=1e-3,
                               atol=1e-3 * np.abs(expected).max())
    winograd.release_workspace()


def test_the_cuda_weight_gradient_falls_back_to_im2col_in_the_plan():
    text = fc.explain((1, 4, 6, 6), (4, 4, 3, 3), padding=1, device="cuda",
                      operation="conv2d_grad_weight", algorithm="winograd")
    assert "on cuda: im2col (there is no CUDA Winograd weight gradient" in text
    assert "on cuda: winograd (" in fc.explain((1, 4, 6, 6), (4, 4, 3, 3), padding=1,
                                               device="cuda", algorithm="winograd")


@pytest.mark.skipif(not interop.cuda_available()[0], reason="numba.cuda not usable")
def test_the_cuda_weight_gradient_runs_what_explain_says():
    from numba import cuda
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    go = cuda.to_device(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    fc.conv2d_grad_weight(go, x, (2, 2, 3, 3), padding=1, algorithm="winograd")
    ran = fc.plan.last_plan()
    assert ran.algorithm == "im2col"
    said = fc.explain(x, (2, 2, 3, 3), padding=1, grad_out=go,
                      operation="conv2d_grad_weight", algorithm="winograd")
    assert f"on cuda: im2col ({ran.reason})" in said


def test_explain_given_shapes_answers_for_finite_operands():
    shapes_only = fc.explain((1, 64, 32, 32), (64, 64, 3, 3), padding=1)
    x, w = np.ones((1, 64, 32, 32), np.float32), np.ones((64, 64, 3, 3), np.float32)
    assert fc.explain(x, w, padding=1) == shapes_only
    assert "winograd F(4x4,3x3) (" in shapes_only
    x[0, 0, 0, 0] = np.inf
    assert "on cpu: im2col (x is not finite" in fc.explain(x, w, padding=1)
    assert "on cpu: winograd F(4x4,3x3) (requested" in fc.explain(x, w, padding=1,
                                                                  algorithm="winograd")


def test_explain_refuses_arrays_on_another_device():
    with pytest.raises(ValueError, match="device='cuda'"):
        fc.explain(np.ones((1, 1, 4, 4)), (1, 1, 3, 3), device="cuda")


@pytest.mark.parametrize("name, good, bad, error", [
    ("stride", 1, True, TypeError),
    ("stride", 1, 1.0, TypeError),
    ("stride", (1, 1), (1, True), TypeError),
    ("groups", 1, 1.0, TypeError),
    ("groups", 1, True, TypeError),
    ("dilation", 1, np.float64(1), TypeError),
    ("padding", (1, 1), (1, 1.0), TypeError),
])
def test_memoised_checks_refuse_what_equals_an_accepted_argument(name, good, bad, error):
    """A layer's geometry is checked once and remembered; an argument that compares
    equal to a remembered one (True == 1 == 1.0) is still checked, and refused."""
    x, w = np.ones((1, 1, 6, 6), np.float32), np.ones((1, 1, 3, 3), np.float32)
    fc.conv2d(x, w, **{name: good})
    fc.conv2d(x, w, **{name: good})
    with pytest.raises(error, match=name):
        fc.conv2d(x, w, **{name: bad})
    assert fc.conv2d(x, w, **{name: list(good) if isinstance(good, tuple) else good}).shape


def test_last_plan_is_per_thread():
    import threading
    x, w = np.ones((1, 1, 6, 6), np.float32), np.ones((1, 1, 3, 3), np.float32)
    fc.conv2d(x, w, algorithm="im2col")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(fc.plan.last_plan()))
    thread.start()
    thread.join()
    assert seen == [None] and fc.plan.last_plan().algorithm == "im2col"


@pytest.mark.parametrize("name, good, bad", [
    ("kernel_size", 2, 2.0), ("kernel_size", (2, 2), (2, True)), ("stride", 2, True),
    ("ceil_mode", True, 1), ("ceil_mode", False, 0), ("padding", 1, 1.0),
])
def test_memoised_pooling_checks_refuse_what_equals_an_accepted_argument(name, good, bad):
    x = np.ones((1, 1, 6, 6), np.float32)
    args = dict(kernel_size=2, stride=None, padding=0, ceil_mode=False)
    for _ in range(2):
        fc.max_pool2d(x, **{**args, name: good})
    with pytest.raises(TypeError, match=name):
        fc.max_pool2d(x, **{**args, name: bad})
