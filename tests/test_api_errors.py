"""Bad input gets a TypeError/ValueError naming the argument, before any kernel runs,
and leaves the inputs unchanged."""
import numpy as np
import pytest

import fastconv as fc

f32 = np.float32


def x4(shape=(2, 3, 8, 8), dtype=f32):
    return np.ones(shape, dtype=dtype)


def w4(shape=(4, 3, 3, 3), dtype=f32):
    return np.ones(shape, dtype=dtype)


def go4(shape=(2, 4, 6, 6), dtype=f32):
    return np.ones(shape, dtype=dtype)


# (id, callable, exception type, a word the message must contain)
BAD_CALLS = [
    # dtypes
    ("int x", lambda: fc.conv2d(x4(dtype=np.int32), w4()), TypeError, "x"),
    ("bool weight", lambda: fc.conv2d(x4(), w4(dtype=bool)), TypeError, "weight"),
    ("complex x", lambda: fc.conv2d(x4(dtype=np.complex64), w4()), TypeError, "x"),
    ("object x", lambda: fc.conv2d(x4().astype(object), w4()), TypeError, "x"),
    ("float16 x", lambda: fc.conv2d(x4(dtype=np.float16), w4()), TypeError, "float16"),
    ("mixed dtypes", lambda: fc.conv2d(x4(), w4(dtype=np.float64)), TypeError, "dtype"),
    ("int bias", lambda: fc.conv2d(x4(), w4(), np.ones(4, np.int64)), TypeError, "bias"),
    ("string x", lambda: fc.conv2d("abc", w4()), TypeError, "x"),
    ("None x", lambda: fc.conv2d(None, w4()), TypeError, "x"),
    ("ragged list x", lambda: fc.conv2d([[1.0], [1.0, 2.0]], w4()), TypeError, "x"),
    ("int list x", lambda: fc.conv2d([[[[1, 2], [3, 4]]]], w4((1, 1, 1, 1))), TypeError, "x"),
    # shapes and channels
    ("2-D x", lambda: fc.conv2d(np.ones((8, 8), f32), w4()), ValueError, "x"),
    ("5-D x", lambda: fc.conv2d(np.ones((1, 1, 3, 8, 8), f32), w4()), ValueError, "x"),
    ("3-D weight", lambda: fc.conv2d(x4(), np.ones((4, 3, 3), f32)), ValueError, "weight"),
    ("channel mismatch", lambda: fc.conv2d(x4(), w4((4, 2, 3, 3))), ValueError, "weight"),
    ("zero channels", lambda: fc.conv2d(x4((2, 0, 8, 8)), w4((4, 0, 3, 3))), ValueError, "x"),
    ("zero-size kernel", lambda: fc.conv2d(x4(), w4((4, 3, 0, 3))), ValueError, "weight"),
    ("kernel larger than input", lambda: fc.conv2d(x4((1, 3, 2, 2)), w4()), ValueError, "weight"),
    ("bias wrong length", lambda: fc.conv2d(x4(), w4(), np.ones(3, f32)), ValueError, "bias"),
    ("bias 2-D", lambda: fc.conv2d(x4(), w4(), np.ones((4, 1), f32)), ValueError, "bias"),
    # groups
    ("groups not dividing C_in", lambda: fc.conv2d(x4(), w4((3, 1, 3, 3)), groups=2), ValueError, "groups"),
    ("groups not dividing C_out", lambda: fc.conv2d(x4((1, 4, 8, 8)), w4((3, 2, 3, 3)), groups=2), ValueError, "groups"),
    ("groups zero", lambda: fc.conv2d(x4(), w4(), groups=0), ValueError, "groups"),
    ("groups float", lambda: fc.conv2d(x4(), w4(), groups=1.0), TypeError, "groups"),
    ("groups vs weight", lambda: fc.conv2d(x4((1, 4, 8, 8)), w4((4, 4, 3, 3)), groups=2), ValueError, "weight"),
    # stride / padding / dilation
    ("stride zero", lambda: fc.conv2d(x4(), w4(), stride=0), ValueError, "stride"),
    ("stride negative", lambda: fc.conv2d(x4(), w4(), stride=(1, -1)), ValueError, "stride"),
    ("stride float", lambda: fc.conv2d(x4(), w4(), stride=1.5), TypeError, "stride"),
    ("stride NaN", lambda: fc.conv2d(x4(), w4(), stride=float("nan")), TypeError, "stride"),
    ("stride bool", lambda: fc.conv2d(x4(), w4(), stride=True), TypeError, "stride"),
    ("stride triple", lambda: fc.conv2d(x4(), w4(), stride=(1, 1, 1)), ValueError, "stride"),
    ("stride string", lambda: fc.conv2d(x4(), w4(), stride="1"), TypeError, "stride"),
    ("padding negative", lambda: fc.conv2d(x4(), w4(), padding=-1), ValueError, "padding"),
    ("padding unknown string", lambda: fc.conv2d(x4(), w4(), padding="full"), ValueError, "padding"),
    ("padding same strided", lambda: fc.conv2d(x4(), w4(), stride=2, padding="same"), ValueError, "same"),
    ("padding wrong nesting", lambda: fc.conv2d(x4(), w4(), padding=((1, 1, 1), (1, 1))), ValueError, "padding"),
    ("padding None", lambda: fc.conv2d(x4(), w4(), padding=None), TypeError, "padding"),
    ("dilation zero", lambda: fc.conv2d(x4(), w4(), dilation=0), ValueError, "dilation"),
    # the empty forms torch refuses too (an empty pooling stride is the kernel size)
    ("stride empty", lambda: fc.conv2d(x4(), w4(), stride=()), ValueError, "stride"),
    ("padding empty", lambda: fc.conv2d(x4(), w4(), padding=[]), ValueError, "padding"),
    ("dilation empty", lambda: fc.conv2d(x4(), w4(), dilation=()), ValueError, "dilation"),
    ("grad_weight stride empty", lambda: fc.conv2d_grad_weight(go4(), x4(), (4, 3, 3, 3), stride=()), ValueError, "stride"),
    ("pool kernel empty", lambda: fc.max_pool2d(x4(), ()), ValueError, "kernel_size"),
    ("pool padding empty", lambda: fc.avg_pool2d(x4(), 2, padding=()), ValueError, "padding"),
    ("pool dilation empty", lambda: fc.max_pool2d(x4(), 2, dilation=()), ValueError, "dilation"),
    ("pool stride triple", lambda: fc.max_pool2d(x4(), 2, stride=(1, 1, 1)), ValueError, "stride"),
    ("pool kernel nested", lambda: fc.max_pool2d(x4(), ((2,),)), TypeError, "kernel_size"),
    # geometry past 2**31 - 1 (it once wrapped around inside the kernels: a crash, wrong
    # results, or numba's SystemError / OverflowError)
    ("dilation 2**63 - 1", lambda: fc.conv2d(x4(), w4(), padding="same", dilation=2**63 - 1), ValueError, "dilation"),
    ("stride 2**63", lambda: fc.conv2d(x4(), w4(), stride=2**63), ValueError, "stride"),
    ("stride uint64", lambda: fc.max_pool2d(x4(), 3, stride=np.uint64(2**63)), ValueError, "stride"),
    ("padding 2**31", lambda: fc.conv2d(x4(), w4(), padding=((0, 0), (2**31, 0))), ValueError, "padding"),
    ("grad_input stride 2**63", lambda: fc.conv2d_grad_input(go4((1, 4, 1, 1)), w4(), (1, 3, 7, 7), stride=2**63), ValueError, "stride"),
    ("algorithm unknown", lambda: fc.conv2d(x4(), w4(), algorithm="fft"), ValueError, "algorithm"),
    ("algorithm not a string", lambda: fc.conv2d(x4(), w4(), algorithm=1), ValueError, "algorithm"),
    ("winograd on 5x5", lambda: fc.conv2d(x4(), w4((4, 3, 5, 5)), algorithm="winograd"), ValueError, "winograd"),
    ("winograd strided", lambda: fc.conv2d(x4(), w4(), stride=2, algorithm="winograd"), ValueError, "stride"),
    ("winograd dilated", lambda: fc.conv2d(x4(), w4(), dilation=2, algorithm="winograd"), ValueError, "dilation"),
    # gradients
    ("grad_input bad input_shape", lambda: fc.conv2d_grad_input(go4(), w4(), (2, 3)), ValueError, "input_shape"),
    ("grad_input float input_shape", lambda: fc.conv2d_grad_input(go4(), w4(), (2, 3, 8.0, 8)), TypeError, "input_shape"),
    ("grad_input grad_out shape", lambda: fc.conv2d_grad_input(go4((2, 4, 5, 6)), w4(), (2, 3, 8, 8)), ValueError, "grad_out"),
    ("grad_input int grad_out", lambda: fc.conv2d_grad_input(go4(dtype=np.int64), w4(), (2, 3, 8, 8)), TypeError, "grad_out"),
    ("grad_weight bad weight_shape", lambda: fc.conv2d_grad_weight(go4(), x4(), (4, 3, 3)), ValueError, "weight_shape"),
    ("grad_weight grad_out channels", lambda: fc.conv2d_grad_weight(go4((2, 5, 6, 6)), x4(), (4, 3, 3, 3)), ValueError, "grad_out"),
    ("grad_weight mixed dtypes", lambda: fc.conv2d_grad_weight(go4(dtype=np.float64), x4(), (4, 3, 3, 3)), TypeError, "dtype"),
    ("grad_bias int", lambda: fc.conv2d_grad_bias(np.ones((1, 2, 3, 3), np.int32)), TypeError, "grad_out"),
    ("grad_bias 2-D", lambda: fc.conv2d_grad_bias(np.ones((2, 3), f32)), ValueError, "grad_out"),
    # pooling
    ("pool kernel zero", lambda: fc.max_pool2d(x4(), 0), ValueError, "kernel_size"),
    ("pool kernel float", lambda: fc.max_pool2d(x4(), 2.0), TypeError, "kernel_size"),
    ("pool kernel None", lambda: fc.max_pool2d(x4(), None), TypeError, "kernel_size"),
    ("pool padding over half", lambda: fc.max_pool2d(x4(), 2, padding=2), ValueError, "padding"),
    ("pool padding same", lambda: fc.max_pool2d(x4(), 3, padding="same"), ValueError, "padding"),
    ("pool kernel larger than input", lambda: fc.max_pool2d(x4((1, 1, 2, 2)), 3), ValueError, "kernel_size"),
    ("pool stride zero", lambda: fc.avg_pool2d(x4(), 2, stride=0), ValueError, "stride"),
    ("pool dilation negative", lambda: fc.max_pool2d(x4(), 2, dilation=-1), ValueError, "dilation"),
    ("pool kernel 2**40", lambda: fc.max_pool2d(x4(), 2**40, padding=2**39), ValueError, "kernel_size"),
    ("pool window over 2**31 elements", lambda: fc.max_pool2d(x4(), 70001, stride=1, padding=35000), ValueError, "kernel_size"),
    ("avg divisor 2**63", lambda: fc.avg_pool2d(x4(), 2, divisor_override=2**63), ValueError, "divisor_override"),
    ("pool ceil_mode string", lambda: fc.max_pool2d(x4(), 2, ceil_mode="yes"), TypeError, "ceil_mode"),
    ("pool return_indices int", lambda: fc.max_pool2d(x4(), 2, return_indices=2), TypeError, "return_indices"),
    ("avg divisor zero", lambda: fc.avg_pool2d(x4(), 2, divisor_override=0), ValueError, "divisor_override"),
    ("avg divisor -2**31", lambda: fc.avg_pool2d(x4(), 2, divisor_override=-2**31), ValueError, "divisor_override"),
    ("avg divisor bool", lambda: fc.avg_pool2d(x4(), 2, divisor_override=True), TypeError, "divisor_override"),
    ("avg backward divisor zero", lambda: fc.avg_pool2d_backward(go4((2, 3, 4, 4)), (2, 3, 8, 8), 2, divisor_override=0), ValueError, "divisor_override"),
    ("avg divisor float", lambda: fc.avg_pool2d(x4(), 2, divisor_override=2.5), TypeError, "divisor_override"),
    ("avg count_include_pad None", lambda: fc.avg_pool2d(x4(), 2, count_include_pad=None), TypeError, "count_include_pad"),
    ("pool int x", lambda: fc.avg_pool2d(x4(dtype=np.int8), 2), TypeError, "x"),
    ("pool 2-D x", lambda: fc.max_pool2d(np.ones((4, 4), f32), 2), ValueError, "x"),
    ("max backward grad_out shape", lambda: fc.max_pool2d_backward(go4((2, 3, 3, 3)), x4(), 2), ValueError, "grad_out"),
    ("max backward mixed dtypes", lambda: fc.max_pool2d_backward(go4((2, 3, 4, 4), np.float64), x4(), 2), TypeError, "dtype"),
    ("avg backward input_shape", lambda: fc.avg_pool2d_backward(go4((2, 3, 4, 4)), (2, 3, -8, 8), 2), ValueError, "input_shape"),
    ("avg backward grad_out shape", lambda: fc.avg_pool2d_backward(go4((2, 3, 4, 5)), (2, 3, 8, 8), 2), ValueError, "grad_out"),
    # relu
    ("relu int", lambda: fc.relu(np.ones(3, np.int32)), TypeError, "x"),
    ("relu_backward shape", lambda: fc.relu_backward(np.ones(3, f32), np.ones(4, f32)), ValueError, "grad_out"),
    ("relu_backward mixed", lambda: fc.relu_backward(np.ones(3, f32), np.ones(3)), TypeError, "dtype"),
    # explain
    ("explain device", lambda: fc.explain((1, 3, 8, 8), (4, 3, 3, 3), device="tpu"), ValueError, "device"),
    ("explain operation", lambda: fc.explain((1, 3, 8, 8), (4, 3, 3, 3), operation="conv3d"), ValueError, "operation"),
]


@pytest.mark.parametrize("call, error, word", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_clear_error(call, error, word):
    with pytest.raises(error) as info:
        call()
    assert word.lower() in str(info.value).lower(), str(info.value)


def test_inputs_unchanged_after_a_refused_call():
    x, w = x4(), w4((4, 2, 3, 3))
    x_copy, w_copy = x.copy(), w.copy()
    with pytest.raises(ValueError):
        fc.conv2d(x, w)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(w, w_copy)


def test_output_too_large_to_index_is_refused():
    # A broadcast view costs no memory; the output it would need cannot exist.
    x = np.broadcast_to(np.float32(1), (2**40, 1, 1, 1))
    w = np.broadcast_to(np.float32(1), (2**30, 1, 1, 1))
    with pytest.raises(ValueError, match="too large"):
        fc.conv2d(x, w)


# Layers and models: the same rule (clear TypeError/ValueError naming the argument).
LAYER_CALLS = [
    ("Conv2d zero channels", lambda: fc.nn.Conv2d(0, 4, 3), ValueError, "in_channels"),
    ("Conv2d float kernel", lambda: fc.nn.Conv2d(3, 4, 2.5), TypeError, "kernel_size"),
    ("Conv2d groups", lambda: fc.nn.Conv2d(3, 4, 3, groups=2), ValueError, "groups"),
    ("Conv2d winograd 5x5", lambda: fc.nn.Conv2d(3, 4, 5, algorithm="winograd"), ValueError, "winograd"),
    ("MaxPool2d padding", lambda: fc.nn.MaxPool2d(2, padding=3), ValueError, "padding"),
    ("AvgPool2d divisor", lambda: fc.nn.AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
    ("MaxPool2d kernel empty", lambda: fc.nn.MaxPool2d(()), ValueError, "kernel_size"),
    ("Conv2d stride empty", lambda: fc.nn.Conv2d(3, 4, 3, stride=()), ValueError, "stride"),
    ("AdaptiveAvgPool2d one-element size", lambda: fc.nn.AdaptiveAvgPool2d((2,)), ValueError, "output_size"),
    ("summary empty shape", lambda: fc.nn.Sequential(fc.nn.Conv2d(3, 4, 3)).summary(()), ValueError, "shape"),
    ("Dropout int input", lambda: fc.nn.Dropout(0.3)(np.ones(8, np.int64)), TypeError, "float32"),
    ("Linear zero", lambda: fc.nn.Linear(0, 3), ValueError, "in_features"),
    ("Dropout p", lambda: fc.nn.Dropout(1.5), ValueError, "p"),
    ("Sequential non-layer", lambda: fc.nn.Sequential(fc.nn.ReLU(), "relu"), TypeError, "layer"),
    ("SGD lr", lambda: fc.nn.SGD(fc.nn.Linear(2, 2).parameters(), lr=-1), ValueError, "lr"),
    ("Conv2d wrong channels", lambda: fc.nn.Conv2d(3, 4, 3)(np.zeros((1, 2, 8, 8), f32)), ValueError, "channels"),
    ("summary bad shape", lambda: fc.nn.Sequential(fc.nn.Conv2d(3, 4, 3)).summary((3, 8)), ValueError, "shape"),
]


@pytest.mark.parametrize("call, error, word", [c[1:] for c in LAYER_CALLS],
                         ids=[c[0] for c in LAYER_CALLS])
def test_bad_layer_call_raises_clear_error(call, error, word):
    with pytest.raises(error) as info:
        call()
    assert word.lower() in str(info.value).lower(), str(info.value)


def test_load_state_never_unpickles(tmp_path):
    """A malicious .npz holding a pickled object is refused, not executed."""
    model = fc.nn.Sequential(fc.nn.Linear(2, 2))
    path = tmp_path / "evil.npz"
    np.savez(path, **{"0.weight": np.array([object()], dtype=object)})
    with pytest.raises(ValueError):
        model.load_state(path)


def test_geometry_at_the_bound_is_computed_not_refused():
    """2**31 - 1 is accepted, and the kernels' int64 index arithmetic holds there: the
    im2col windows, mostly padding, are not materialised, and pooling loops only over
    the kernel columns that reach the input."""
    x = np.ones((1, 4, 7, 7))
    w = np.ones((4, 4, 3, 3))
    for algorithm in ("direct", "im2col"):
        out = fc.conv2d(x, w, padding="same", dilation=2**31 - 1, algorithm=algorithm)
        np.testing.assert_array_equal(out, 4.0)      # only the centre tap is inside
        gw = fc.conv2d_grad_weight(x, x, w.shape, padding="same", dilation=2**31 - 1,
                                   algorithm=algorithm)
        np.testing.assert_array_equal(gw[:, :, 1, 1], 49.0)
        assert gw.sum() == 49.0 * 16
    one = np.ones((1, 1, 1, 1))
    kernel, padding = (1, 2**31 - 1), (0, 2**30 - 1)
    assert fc.max_pool2d(one, kernel, 1, padding)[0, 0, 0, 0] == 1.0
    np.testing.assert_allclose(fc.avg_pool2d(one, kernel, 1, padding), 1 / (2**31 - 1))
    assert fc.max_pool2d_backward(one, one, kernel, 1, padding)[0, 0, 0, 0] == 1.0


# ---------------------------------------------------------------- PyTorch's argument forms

# (id, function, positional arrays, form, the same call in canonical form): a one-element
# tuple or list applies to both dimensions, a pooling stride of () or [] is the kernel
# size, a negative divisor_override divides by it, as torch.nn.functional does.
_X, _W = np.arange(2 * 3 * 9 * 9, dtype=np.float64).reshape(2, 3, 9, 9) % 7, \
    np.arange(4 * 3 * 3 * 3, dtype=np.float64).reshape(4, 3, 3, 3) % 5 - 2
FORMS = [
    ("conv stride (2,)", "conv2d", (_X, _W), dict(stride=(2,)), dict(stride=2)),
    ("conv stride [2]", "conv2d", (_X, _W), dict(stride=[2]), dict(stride=2)),
    ("conv padding (1,)", "conv2d", (_X, _W), dict(padding=(1,)), dict(padding=1)),
    ("conv padding [1]", "conv2d", (_X, _W), dict(padding=[1]), dict(padding=1)),
    ("conv dilation (2,)", "conv2d", (_X, _W), dict(dilation=(2,)), dict(dilation=2)),
    ("max kernel (2,)", "max_pool2d", (_X, (2,)), {}, dict(kernel_size=2)),
    ("max kernel [2]", "max_pool2d", (_X, [2]), {}, dict(kernel_size=2)),
    ("max stride ()", "max_pool2d", (_X, (3, 2)), dict(stride=()), dict(stride=(3, 2))),
    ("max stride []", "max_pool2d", (_X, 3), dict(stride=[]), dict(stride=3)),
    ("max stride (1,)", "max_pool2d", (_X, 2), dict(stride=(1,)), dict(stride=1)),
    ("max padding (1,)", "max_pool2d", (_X, 3), dict(padding=(1,)), dict(padding=1)),
    ("max dilation (2,)", "max_pool2d", (_X, 2), dict(stride=1, dilation=(2,)),
     dict(stride=1, dilation=2)),
    ("avg kernel (2,)", "avg_pool2d", (_X, (2,)), {}, dict(kernel_size=2)),
    ("avg stride ()", "avg_pool2d", (_X, 3), dict(stride=()), dict(stride=3)),
    ("avg padding [1]", "avg_pool2d", (_X, 3), dict(stride=2, padding=[1]),
     dict(stride=2, padding=1)),
]


def _canonical_call(function, arrays, canonical):
    if function != "conv2d" and "kernel_size" in canonical:
        return getattr(fc, function)(arrays[0], **canonical)
    return getattr(fc, function)(*arrays, **canonical)


@pytest.mark.parametrize("function, arrays, form, canonical", [f[1:] for f in FORMS],
                         ids=[f[0] for f in FORMS])
def test_pytorch_argument_forms_are_accepted(function, arrays, form, canonical):
    np.testing.assert_array_equal(getattr(fc, function)(*arrays, **form),
                                  _canonical_call(function, arrays, canonical))


@pytest.mark.parametrize("function, arrays, form, canonical", [f[1:] for f in FORMS],
                         ids=[f[0] for f in FORMS])
def test_the_accepted_forms_are_torchs(function, arrays, form, canonical):
    torch = pytest.importorskip("torch")
    args = [torch.tensor(a) if isinstance(a, np.ndarray) else a for a in arrays]
    expected = getattr(torch.nn.functional, function)(*args, **form).numpy()
    np.testing.assert_allclose(getattr(fc, function)(*arrays, **form), expected, rtol=1e-12)


def test_the_forms_reach_the_gradients_and_layers():
    x, w = _X, _W
    go = np.ones(fc.conv2d(x, w, stride=2, padding=1, dilation=2).shape)
    one = dict(stride=(2,), padding=[1], dilation=(2,))
    both = dict(stride=2, padding=1, dilation=2)
    np.testing.assert_array_equal(fc.conv2d_grad_input(go, w, x.shape, **one),
                                  fc.conv2d_grad_input(go, w, x.shape, **both))
    np.testing.assert_array_equal(fc.conv2d_grad_weight(go, x, w.shape, **one),
                                  fc.conv2d_grad_weight(go, x, w.shape, **both))
    pooled = np.ones((2, 3, 3, 3))
    np.testing.assert_array_equal(fc.max_pool2d_backward(pooled, x, (3,), stride=()),
                                  fc.max_pool2d_backward(pooled, x, 3))
    np.testing.assert_array_equal(fc.avg_pool2d_backward(pooled, x.shape, [3], stride=[]),
                                  fc.avg_pool2d_backward(pooled, x.shape, 3))
    conv = fc.nn.Conv2d(3, 4, (3,), stride=(2,), padding=(1,), dilation=[2], rng=0)
    assert (conv.kernel_size, conv.stride, conv.dilation) == ((3, 3), (2, 2), (2, 2))
    assert conv.output_shape(x.shape) == fc.nn.Conv2d(3, 4, 3, 2, 1, 2).output_shape(x.shape)
    for layer in (fc.nn.MaxPool2d((2,), stride=()), fc.nn.AvgPool2d([2], stride=[])):
        assert (layer.kernel_size, layer.stride) == ((2, 2), (2, 2))
        assert layer.output_shape(x.shape) == layer(x).shape == (2, 3, 4, 4)


@pytest.mark.parametrize("divisor", [-1, -3, 5])
def test_divisor_override_may_be_negative(divisor):
    """torch.nn.functional.avg_pool2d refuses only 0; a negative divisor divides by it."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    sums = fc.avg_pool2d(x, 2, divisor_override=1)
    np.testing.assert_allclose(fc.avg_pool2d(x, 2, divisor_override=divisor), sums / divisor)
    g = fc.avg_pool2d_backward(np.ones((1, 1, 2, 2)), x.shape, 2, divisor_override=divisor)
    np.testing.assert_allclose(g, np.full(x.shape, 1.0 / divisor))
    layer = fc.nn.AvgPool2d(2, divisor_override=divisor)
    np.testing.assert_allclose(layer(x), sums / divisor)
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.avg_pool2d(torch.tensor(x), 2, divisor_override=divisor)
    np.testing.assert_allclose(fc.avg_pool2d(x, 2, divisor_override=divisor), expected.numpy())


_TORCH_REFUSES = [
    ("conv2d", (_X, _W), dict(stride=())), ("conv2d", (_X, _W), dict(padding=())),
    ("conv2d", (_X, _W), dict(dilation=())), ("max_pool2d", (_X, ()), {}),
    ("avg_pool2d", (_X, 2), dict(padding=())), ("max_pool2d", (_X, 2), dict(dilation=())),
    ("max_pool2d", (_X, 2), dict(stride=(1, 1, 1))),
    ("avg_pool2d", (_X, 2), dict(divisor_override=0)),
]


@pytest.mark.parametrize("function, arrays, form", _TORCH_REFUSES,
                         ids=[f"{f} {a[1] if len(a) > 1 and not isinstance(a[1], np.ndarray) else ''}{form}"
                              for f, a, form in _TORCH_REFUSES])
def test_what_torch_refuses_is_refused(function, arrays, form):
    with pytest.raises(ValueError):
        getattr(fc, function)(*arrays, **form)
    torch = pytest.importorskip("torch")
    args = [torch.tensor(a) if isinstance(a, np.ndarray) else a for a in arrays]
    with pytest.raises(RuntimeError):
        getattr(torch.nn.functional, function)(*args, **form)
