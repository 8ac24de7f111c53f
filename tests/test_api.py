"""The API layer: dispatch, 3-D input, N = 0, dtypes, array-likes, docstrings."""
import doctest

import numpy as np
import pytest

import fastconv as fc
from fastconv import api, reference

ALGORITHMS = ["direct", "im2col", "winograd"]


@pytest.mark.parametrize("module", ["api", "plan", "checks", "config"])
def test_docstring_examples_run(module):
    import importlib
    module = importlib.import_module(f"fastconv.{module}")
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 2 and failures == 0


def test_hand_computed_example():
    # 1x1x3x3 input 0..8, 2x2 kernel [[1, 0], [0, -1]]: out[i, j] = x[i, j] - x[i+1, j+1] = -4
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    for algorithm in ["direct", "im2col"]:
        out = fc.conv2d(x, w, bias=np.array([0.5]), algorithm=algorithm)
        np.testing.assert_array_equal(out, [[[[-3.5, -3.5], [-3.5, -3.5]]]])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_d_input_gives_three_d_output(algorithm, dtype, rng):
    x = rng.standard_normal((3, 6, 7)).astype(dtype)
    w = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    out = fc.conv2d(x, w, padding=1, algorithm=algorithm)
    assert out.shape == (2, 6, 7) and out.dtype == dtype
    np.testing.assert_allclose(out, fc.conv2d(x[None], w, padding=1, algorithm=algorithm)[0])
    go = np.ones_like(out)
    assert fc.conv2d_grad_input(go, w, x.shape, padding=1, algorithm=algorithm).shape == x.shape
    assert fc.conv2d_grad_weight(go, x, w.shape, padding=1, algorithm=algorithm).shape == w.shape
    assert fc.conv2d_grad_bias(go).shape == (2,)
    assert fc.max_pool2d(x, 2).shape == (3, 3, 3)
    assert fc.max_pool2d_backward(np.ones((3, 3, 3), dtype), x, 2).shape == x.shape
    assert fc.avg_pool2d(x, 2).shape == (3, 3, 3)
    assert fc.avg_pool2d_backward(np.ones((3, 3, 3), dtype), x.shape, 2).shape == x.shape


@pytest.mark.parametrize("algorithm", ["auto"] + ALGORITHMS)
def test_empty_batch(algorithm):
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    out = fc.conv2d(x, w, padding=1, algorithm=algorithm)
    assert out.shape == (0, 4, 8, 8) and out.dtype == np.float32
    assert fc.conv2d_grad_input(out, w, x.shape, padding=1, algorithm=algorithm).shape == x.shape
    grad_w = fc.conv2d_grad_weight(out, x, w.shape, padding=1, algorithm=algorithm)
    assert grad_w.shape == w.shape and not grad_w.any()
    assert not fc.conv2d_grad_bias(out).any()
    values, indices = fc.max_pool2d(x, 2, return_indices=True)
    assert values.shape == indices.shape == (0, 3, 4, 4) and indices.dtype == np.int64
    assert fc.max_pool2d_backward(values, x, 2).shape == x.shape
    assert fc.avg_pool2d(x, 2).shape == (0, 3, 4, 4)
    assert fc.avg_pool2d_backward(values, x.shape, 2).shape == x.shape


def test_lists_are_converted_with_asarray():
    out = fc.conv2d([[[[1.0, 2.0], [3.0, 4.0]]]], [[[[1.0]]]])
    np.testing.assert_array_equal(out, [[[[1.0, 2.0], [3.0, 4.0]]]])


def test_torch_cpu_tensors_are_array_likes(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    out = fc.conv2d(torch.tensor(x), torch.tensor(w))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w)),
                               rtol=1e-12)


RELU_EDGES = np.array([-2.0, -0.0, 0.0, 1.5, np.nan, np.inf, -np.inf])


def test_relu_and_its_gradient_follow_the_reference():
    x = RELU_EDGES
    np.testing.assert_array_equal(fc.relu(x), reference.relu(x))
    go = np.arange(7.0)
    np.testing.assert_array_equal(fc.relu_backward(go, x), [0, 0, 0, 3, 4, 5, 0])
    np.testing.assert_array_equal(fc.relu_backward(go, x), reference.relu_backward(go, x))
    assert fc.relu(x.astype(np.float32)).dtype == np.float32


def test_relu_and_its_gradient_follow_torch():
    torch = pytest.importorskip("torch")
    xt = torch.tensor(RELU_EDGES, requires_grad=True)
    torch.relu(xt).backward(torch.arange(7.0, dtype=torch.float64))
    np.testing.assert_array_equal(fc.relu(RELU_EDGES), torch.relu(xt).detach().numpy())
    np.testing.assert_array_equal(fc.relu_backward(np.arange(7.0), RELU_EDGES),
                                  xt.grad.numpy())


def test_relu_keeps_a_0d_array_an_array():
    out = fc.relu(np.array(-1.5))
    assert isinstance(out, np.ndarray) and out.shape == () and out == 0
    assert fc.relu_backward(np.array(2.0), np.array(1.0)).shape == ()


def test_grad_bias_is_a_channel_sum(rng):
    go = rng.standard_normal((3, 5, 4, 2)).astype(np.float32)
    out = fc.conv2d_grad_bias(go)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, go.astype(np.float64).sum((0, 2, 3)), rtol=1e-6)


def test_explain_names_an_algorithm_and_a_reason():
    text = fc.explain((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert any(name in text for name in ALGORITHMS)
    assert "(8, 64, 56, 56)" in text


@pytest.mark.parametrize("x_shape, w_shape, kw, picked", [
    ((8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "winograd F(4x4,3x3)"),
    ((8, 32, 32, 32), (64, 32, 5, 5), dict(padding=2), "winograd F(4x4,5x5)"),
    ((1, 16, 16, 16), (16, 16, 5, 5), dict(padding=2), "im2col"),     # too few pixels
    ((8, 32, 32, 32), (64, 32, 5, 5), dict(stride=2), "im2col"),
    ((8, 32, 32, 32), (64, 32, 5, 5), dict(dilation=2), "im2col"),
    ((8, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), "im2col"),        # too few pixels
    ((8, 64, 56, 56), (64, 1, 3, 3), dict(padding=1, groups=64), "direct"),  # depthwise
    ((64, 1, 28, 28), (32, 1, 3, 3), dict(), "direct"),          # one input channel
    ((64, 1, 28, 28), (32, 1, 3, 3), dict(stride=2), "im2col"),  # ... but strided
    ((8, 256, 56, 56), (64, 256, 1, 1), dict(), "im2col"),
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "winograd F(4x4,3x3)"),   # small batch
    ((8, 16, 56, 56), (16, 16, 3, 3), dict(padding=1), "winograd F(4x4,3x3)"),   # 6.4 M
    ((8, 16, 28, 28), (16, 16, 3, 3), dict(padding=1), "im2col"),    # 1.6 M: too little work
    ((4, 32, 28, 28), (32, 32, 3, 3), dict(padding=1), "im2col"),    # 3.2 M
    ((8, 32, 28, 28), (32, 32, 3, 3), dict(padding=1), "winograd F(4x4,3x3)"),   # 6.4 M
    ((8, 32, 28, 28), (32, 8, 3, 3), dict(padding=1, groups=4), "im2col"),  # 8 per group
])
def test_auto_rule_on_the_benchmark_layers(x_shape, w_shape, kw, picked):
    """The rule of docs/performance.md ("The auto rule"), as `explain` reports it."""
    text = fc.explain(x_shape, w_shape, **kw)
    assert f"on cpu: {picked} (" in text


@pytest.mark.parametrize("out_hw, tile", [((56, 56), 4), ((14, 14), 4), ((7, 7), 4),
                                          ((10, 10), 2), ((6, 6), 2), ((224, 224), 4)])
def test_winograd_tile_rule(out_hw, tile):
    from fastconv import autotune
    assert autotune.winograd_tile((8, 64) + out_hw, (64, 64, 3, 3), out_hw) == tile
    assert autotune.winograd_tile((8, 64) + out_hw, (64, 64, 5, 5), out_hw) == 4


@pytest.mark.parametrize("algorithm", ["auto"] + ALGORITHMS)
def test_inputs_are_never_written(algorithm, rng):
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for a in (x, w, b):
        a.flags.writeable = False  # any write attempt raises
    out = fc.conv2d(x, w, b, padding=1, algorithm=algorithm)
    go = np.ones_like(out)
    go.flags.writeable = False
    fc.conv2d_grad_input(go, w, x.shape, padding=1, algorithm=algorithm)
    fc.conv2d_grad_weight(go, x, w.shape, padding=1, algorithm=algorithm)
    fc.max_pool2d_backward(np.ones((2, 4, 4, 4), np.float32), x, 2)
    fc.avg_pool2d(x, 3, 1, 1)


def test_auto_takes_winograd_when_the_weights_repeat(rng):
    """A layer with too few pixels for Winograd's per-call filter transform runs im2col,
    until a call repeats an earlier call's weights (inference): then Winograd with the
    kept filter. Weights changed in place (a training step) go back to im2col."""
    from fastconv.cpu import winograd
    winograd.release_workspace()
    picked = []

    def conv2d(*args, **kw):
        out = fc.conv2d(*args, **kw)
        picked.append(fc.plan.last_plan().algorithm)
        return out

    x = rng.standard_normal((1, 128, 24, 24)).astype(np.float32)   # 576 pixels, 9.4 M
    w = rng.standard_normal((128, 128, 3, 3)).astype(np.float32)
    expected = reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1))
    assert "repeats an earlier call's weights" in fc.explain(x.shape, w.shape, padding=1)
    outputs = [conv2d(x, w, padding=1) for _ in range(3)]
    w *= 1.5                                    # a training step, in place
    outputs.append(conv2d(x, w, padding=1) / 1.5)
    outputs.append(conv2d(x, w, padding=1) / 1.5)    # then frozen: a repeat again
    w2 = w.copy()                               # new array, same values: not a repeat
    outputs.append(conv2d(x, w2, padding=1) / 1.5)
    assert picked == ["im2col", "winograd", "winograd", "im2col", "winograd", "im2col"]
    for out in outputs:
        np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    winograd.release_workspace()


def test_auto_keeps_im2col_where_a_kept_filter_does_not_win():
    from fastconv import autotune
    rule = autotune.winograd_with_kept_filter
    assert rule("cpu", (8, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    assert rule("cpu", (2, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1), 1)
    assert not rule("cpu", (4, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1)   # 196 px
    assert not rule("cpu", (8, 64, 7, 7), (64, 64, 3, 3), (1, 1), (1, 1), 1)       # 1.6 M
    assert not rule("cpu", (8, 512, 7, 7), (512, 512, 3, 3), (2, 2), (1, 1), 1)
    assert not rule("cuda", (8, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    assert not rule("cpu", (8, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1,
                    "conv2d_grad_input")
    assert "repeats" not in fc.explain((4, 512, 7, 7), (512, 512, 3, 3), padding=1)
