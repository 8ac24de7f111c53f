"""fastconv.torch, the bridge: autograd (gradcheck in float64), torch.compile, the drop-in
modules, convert(), a few SGD steps, torch-style errors, and torch staying optional.

Skipped where torch is not installed (except the tests that torch stays optional).
"""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv  # noqa: F401  before torch: the other order slows numba's threads (issue 23)

torch = pytest.importorskip("torch")
fct = pytest.importorskip("fastconv.torch")
F = torch.nn.functional

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel:UserWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randn(*shape, dtype=torch.float64, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_(grad)


def _close(a, b, dtype=torch.float64):
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol * scale)


# --------------------------------------------------------------------------
# Functions: values match torch.nn.functional, gradients pass gradcheck
# --------------------------------------------------------------------------

CONV_CASES = [
    # x_shape, w_shape, kwargs
    ((2, 3, 6, 7), (4, 3, 3, 3), dict(padding=1)),
    ((1, 4, 7, 6), (6, 2, 2, 3), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                      groups=2)),
    ((2, 3, 7, 7), (3, 1, 3, 3), dict(stride=2, dilation=2, groups=3)),        # depthwise
    ((1, 2, 5, 6), (3, 2, 2, 2), dict(padding="same")),                        # even kernel
    ((2, 2, 5, 5), (3, 2, 1, 1), dict(padding="valid", stride=3)),
    ((3, 5, 6), (2, 3, 3, 3), dict(padding=1, groups=1)),                      # unbatched
    ((0, 3, 5, 5), (2, 3, 3, 3), dict()),                                      # empty batch
]
ALGORITHMS = ["auto", "direct", "im2col", "winograd"]


def _winograd_fits(w_shape, kwargs):
    return (w_shape[2:] == (3, 3) and kwargs.get("stride", 1) == 1
            and kwargs.get("dilation", 1) == 1)


def _conv_args(x_shape, w_shape, kwargs):
    if len(x_shape) == 3:
        w_shape = (w_shape[0], x_shape[0] // kwargs.get("groups", 1)) + w_shape[2:]
    return _randn(*x_shape), _randn(*w_shape), _randn(w_shape[0])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", CONV_CASES)
def test_conv2d_matches_torch_and_passes_gradcheck(algorithm, x_shape, w_shape, kwargs):
    if algorithm == "winograd" and not _winograd_fits(w_shape, kwargs):
        pytest.skip("Winograd needs 3x3, stride 1, dilation 1")
    x, w, b = _conv_args(x_shape, w_shape, kwargs)
    for bias in (b, None):
        _close(fct.conv2d(x, w, bias, algorithm=algorithm, **kwargs), F.conv2d(x, w, bias, **kwargs))
    if x.shape[0] == 0:
        return
    assert torch.autograd.gradcheck(
        lambda x, w, b: fct.conv2d(x, w, b, algorithm=algorithm, **kwargs), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: fct.conv2d(x, w, **kwargs), (x, w))


def test_conv2d_asymmetric_padding_extension():
    x, w = _randn(1, 2, 5, 6), _randn(3, 2, 3, 2)
    padding = ((1, 0), (2, 1))
    expected = F.conv2d(F.pad(x, (2, 1, 1, 0)), w)
    _close(fct.conv2d(x, w, padding=padding), expected)
    assert torch.autograd.gradcheck(lambda x, w: fct.conv2d(x, w, padding=padding), (x, w))


TRANSPOSE_CASES = [
    ((2, 3, 4, 5), (3, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 4), (4, 3, 2, 3), dict(stride=(1, 2), padding=(0, 1), groups=2,
                                      dilation=(2, 1), output_padding=(1, 0))),
    ((2, 2, 3, 3), (2, 1, 3, 3), dict(dilation=2, output_padding=1, groups=2)),  # op >= stride
    ((1, 3, 4, 4), (3, 2, 1, 1), dict(stride=3, output_padding=2)),
    ((3, 4, 5), (3, 2, 3, 3), dict(padding=1)),                                  # unbatched
]


@pytest.mark.parametrize("algorithm", ["auto", "direct", "im2col"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch_and_passes_gradcheck(algorithm, x_shape, w_shape,
                                                             kwargs):
    x, w = _randn(*x_shape), _randn(*w_shape)
    b = _randn(w_shape[1] * kwargs.get("groups", 1))
    for bias in (b, None):
        _close(fct.conv_transpose2d(x, w, bias, algorithm=algorithm, **kwargs),
               F.conv_transpose2d(x, w, bias, **kwargs))
    assert torch.autograd.gradcheck(
        lambda x, w, b: fct.conv_transpose2d(x, w, b, algorithm=algorithm, **kwargs), (x, w, b))


def test_conv_transpose2d_winograd():
    x, w = _randn(1, 3, 5, 5), _randn(3, 2, 3, 3)
    _close(fct.conv_transpose2d(x, w, padding=1, algorithm="winograd"),
           F.conv_transpose2d(x, w, padding=1))
    assert torch.autograd.gradcheck(
        lambda x, w: fct.conv_transpose2d(x, w, padding=1, algorithm="winograd"), (x, w))


MAX_POOL_CASES = [
    ((2, 3, 6, 7), dict(kernel_size=2)),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 8, 7), dict(kernel_size=(3, 2), stride=(1, 2), dilation=(2, 1))),
    ((3, 5, 5), dict(kernel_size=2, stride=1)),                                  # unbatched
]


@pytest.mark.parametrize("x_shape, kwargs", MAX_POOL_CASES)
def test_max_pool2d_matches_torch_and_passes_gradcheck(x_shape, kwargs):
    x = _randn(*x_shape)        # distinct values: no ties, so the winners do not move
    _close(fct.max_pool2d(x, **kwargs), F.max_pool2d(x, **kwargs))
    values, indices = fct.max_pool2d(x, return_indices=True, **kwargs)
    expected_values, expected_indices = F.max_pool2d(x, return_indices=True, **kwargs)
    _close(values, expected_values)
    assert torch.equal(indices, expected_indices) and not indices.requires_grad
    assert torch.autograd.gradcheck(lambda x: fct.max_pool2d(x, **kwargs), (x,))
    assert torch.autograd.gradcheck(
        lambda x: fct.max_pool2d(x, return_indices=True, **kwargs)[0], (x,))


AVG_POOL_CASES = [
    ((2, 3, 6, 7), dict(kernel_size=2)),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                        count_include_pad=False)),
    ((1, 2, 6, 5), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1),
                        divisor_override=5)),
    ((3, 5, 5), dict(kernel_size=2, stride=1)),                                  # unbatched
]


@pytest.mark.parametrize("x_shape, kwargs", AVG_POOL_CASES)
def test_avg_pool2d_matches_torch_and_passes_gradcheck(x_shape, kwargs):
    x = _randn(*x_shape)
    _close(fct.avg_pool2d(x, **kwargs), F.avg_pool2d(x, **kwargs))
    assert torch.autograd.gradcheck(lambda x: fct.avg_pool2d(x, **kwargs), (x,))


def test_float32_noncontiguous_inputs_unchanged():
    x = _randn(2, 3, 8, 8, dtype=torch.float32, grad=False)
    w = _randn(4, 3, 3, 3, dtype=torch.float32, grad=False)
    layouts = [x, x.transpose(2, 3), x.to(memory_format=torch.channels_last), x[:, :, ::2]]
    for xl in layouts:
        before = xl.clone()
        _close(fct.conv2d(xl, w, padding=1), F.conv2d(xl, w, padding=1), torch.float32)
        _close(fct.max_pool2d(xl, 2), F.max_pool2d(xl, 2), torch.float32)
        assert torch.equal(xl, before)


def test_docstring_examples_run():
    import doctest
    failures, tried = doctest.testmod(fct, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 5 and failures == 0


def test_cpu_tensors_reach_fastconv_as_views():
    x = torch.ones(2, 3, 4, 4)
    view = fct._array(x)
    assert isinstance(view, np.ndarray) and np.shares_memory(view, x.numpy())
    view = fct._array(x.requires_grad_())
    assert np.shares_memory(view, x.detach().numpy())


# --------------------------------------------------------------------------
# torch.compile and the custom ops' contract
# --------------------------------------------------------------------------

def test_custom_ops_pass_opcheck():
    x, w, b = _randn(2, 4, 6, 6), _randn(6, 2, 3, 3), _randn(6)
    wt = _randn(4, 3, 3, 3)
    ops = torch.ops.fastconv
    checks = [
        (ops.conv2d.default, (x, w, b, [1, 2], [1, 0, 1, 1], [1, 1], 2, "auto")),
        (ops.conv_transpose2d.default, (x, wt, None, [2, 2], [1, 1, 1, 1], [1, 1], 2, [1, 1],
                                        "auto")),
        (ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], True)),
        (ops.avg_pool2d.default, (x, [2, 2], [2, 2], [1, 1, 0, 0], False, False, None)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args)


def test_torch_compile_keeps_one_graph():
    model = fct.convert(torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.ConvTranspose2d(4, 2, 2, stride=2), torch.nn.AvgPool2d(2)).double())
    x = _randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(x)
    out.sum().backward()
    _close(out, eager_out)
    for p, g in zip(model.parameters(), eager_grads):
        _close(p.grad, g)


# --------------------------------------------------------------------------
# Modules and convert
# --------------------------------------------------------------------------

def test_modules_are_drop_in_subclasses():
    pairs = [
        (torch.nn.Conv2d, fct.Conv2d, (3, 4, 3), dict(stride=2, padding=1, bias=False)),
        (torch.nn.ConvTranspose2d, fct.ConvTranspose2d, (4, 2, 3),
         dict(stride=2, padding=1, output_padding=1, groups=2)),
        (torch.nn.MaxPool2d, fct.MaxPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True)),
        (torch.nn.AvgPool2d, fct.AvgPool2d, (2,), dict(count_include_pad=False)),
    ]
    for torch_cls, cls, args, kwargs in pairs:
        torch.manual_seed(0)
        reference = torch_cls(*args, **kwargs).double()
        torch.manual_seed(0)
        module = cls(*args, **kwargs).double()
        assert isinstance(module, torch_cls) and repr(module) == repr(reference)
        assert list(module.state_dict()) == list(reference.state_dict())
        for key, value in reference.state_dict().items():
            assert torch.equal(module.state_dict()[key], value)
        c_in = args[0] if torch_cls not in (torch.nn.MaxPool2d, torch.nn.AvgPool2d) else 3
        x = _randn(2, c_in, 7, 7)
        _close(module(x), reference(x))


def test_conv_transpose_module_output_size():
    torch.manual_seed(0)
    reference = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1).double()
    module = fct.convert(copy.deepcopy(reference))
    x = _randn(1, 4, 5, 5)
    out = module(x, output_size=[10, 10])
    assert out.shape == (1, 2, 10, 10)
    _close(out, reference(x, output_size=[10, 10]))


def test_modules_refuse_what_they_cannot_serve():
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        fct.Conv2d(3, 4, 3, padding_mode="reflect")


class _Net(torch.nn.Module):
    """Convolution, transposed convolution, both poolings, BatchNorm and a skip."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding="same", groups=2),
            torch.nn.ReLU())
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.pool = torch.nn.AvgPool2d(2, stride=2)
        self.head = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        y = self.up(self.features(x))
        return self.head(torch.flatten(self.pool(y + x[:, :1]), 1))


def test_convert_gives_the_same_outputs_and_parameter_gradients():
    torch.manual_seed(0)
    model = _Net().double()
    converted = fct.convert(copy.deepcopy(model))
    assert converted.state_dict().keys() == model.state_dict().keys()
    kinds = {type(m).__module__ for m in converted.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.MaxPool2d,
                               torch.nn.AvgPool2d))}
    assert kinds == {"fastconv.torch"}
    assert fct.unconverted(converted) == []
    x = _randn(3, 3, 8, 8, grad=False)
    target = _randn(3, 5, grad=False)
    for m in (model, converted):
        F.mse_loss(m(x), target).backward()
    _close(converted(x), model(x))
    for (name, p), q in zip(model.named_parameters(), converted.parameters()):
        _close(q.grad, p.grad)


def test_convert_is_in_place_and_keeps_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    conv = model[0]
    weight = conv.weight
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    assert fct.convert(model) is model
    assert model[0] is conv and type(conv) is fct.Conv2d and conv.weight is weight
    model(torch.ones(1, 3, 5, 5)).sum().backward()
    before = weight.detach().clone()
    optimiser.step()
    assert not torch.equal(weight, before)
    root = fct.convert(torch.nn.MaxPool2d(2))
    assert type(root) is fct.MaxPool2d
    assert fct.convert(model) is model        # a second convert changes nothing


def test_unsupported_modules_stay_torch_with_the_reason_visible():
    class MyConv(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        torch.nn.Conv2d(4, 4, 3).half(),
        MyConv(4, 4, 1),
        torch.nn.Conv1d(4, 4, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Conv2d(4, 4, 1))
    assert len(fct.unconverted(model)) == 6          # before convert: all of them
    fct.convert(model)
    listing = {name: (kind, reason) for name, kind, reason in fct.unconverted(model)}
    assert set(listing) == {"0", "1", "2", "3", "4"}
    assert "padding_mode='reflect'" in listing["0"][1]
    assert "float16" in listing["1"][1]
    assert "subclasses torch.nn.Conv2d" in listing["2"][1]
    assert listing["3"] == ("Conv1d", "fastconv has no Conv1d")
    assert model[0].fastconv_unconverted == listing["0"][1]
    assert type(model[0]) is torch.nn.Conv2d and type(model[5]) is fct.Conv2d
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fct.convert([model])


def test_sgd_steps_of_a_converted_cnn_track_the_unconverted_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 12, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(12 * 3 * 3, 10))
    converted = fct.convert(copy.deepcopy(model))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
    losses = []
    for m in (model, converted):
        optimiser = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        trace = []
        for _ in range(5):
            optimiser.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            optimiser.step()
            trace.append(loss.item())
        losses.append(trace)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][-1] < losses[0][0]
    for p, q in zip(model.parameters(), converted.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# Errors: what torch refuses, refused with an exception of torch's class
# --------------------------------------------------------------------------

X = torch.ones(1, 4, 6, 6)
W = torch.ones(2, 4, 3, 3)
WT = torch.ones(4, 2, 3, 3)
BAD_CALLS = {
    "channels": ("conv2d", (X, torch.ones(2, 3, 3, 3)), {}),
    "groups": ("conv2d", (X, torch.ones(2, 4, 3, 3)), dict(groups=3)),
    "weight 3-D": ("conv2d", (X, torch.ones(2, 3, 3)), {}),
    "input 2-D": ("conv2d", (torch.ones(6, 6), W), {}),
    "dtypes": ("conv2d", (X, W.double()), {}),
    "bias shape": ("conv2d", (X, W, torch.ones(3)), {}),
    "stride 0": ("conv2d", (X, W), dict(stride=0)),
    "negative padding": ("conv2d", (X, W), dict(padding=-1)),
    "same strided": ("conv2d", (X, W), dict(padding="same", stride=2)),
    "bad padding string": ("conv2d", (X, W), dict(padding="full")),
    "kernel too big": ("conv2d", (X, torch.ones(2, 4, 7, 7)), {}),
    "not a tensor": ("conv2d", (X.numpy(), W), {}),
    "output_padding": ("conv_transpose2d", (X, WT), dict(output_padding=1)),
    "output_padding stride": ("conv_transpose2d", (X, WT), dict(stride=2, output_padding=2)),
    "transpose channels": ("conv_transpose2d", (X, torch.ones(3, 2, 3, 3)), {}),
    "transpose output too small": ("conv_transpose2d", (torch.ones(1, 4, 1, 1), WT),
                                   dict(padding=2)),
    "pool padding": ("max_pool2d", (X, 2), dict(padding=2)),
    "pool kernel too big": ("max_pool2d", (X, 7), {}),
    "pool input 2-D": ("max_pool2d", (torch.ones(6, 6), 2), {}),
    "avg divisor 0": ("avg_pool2d", (X, 2), dict(divisor_override=0)),
    "avg padding": ("avg_pool2d", (X, 2), dict(padding=2)),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_input_gets_torch_style_errors(name):
    function, args, kwargs = BAD_CALLS[name]
    with pytest.raises(Exception) as torch_error:
        getattr(F, function)(*args, **kwargs)
    with pytest.raises(type(torch_error.value)) as ours:
        getattr(fct, function)(*args, **kwargs)
    assert isinstance(ours.value, (ValueError, TypeError))     # and fastconv's own classes
    assert str(ours.value).startswith(f"{function}(): ")


def test_dtypes_fastconv_does_not_compute_are_refused():
    # torch computes integer and float16 convolutions on the CPU; fastconv refuses them
    for dtype in (torch.int64, torch.float16):
        with pytest.raises(TypeError, match="float32 or float64") as error:
            fct.conv2d(X.to(dtype), W.to(dtype))
        assert isinstance(error.value, RuntimeError)


def test_backward_errors_are_torch_style_too():
    out = fct.conv2d(_randn(1, 2, 4, 4), _randn(3, 2, 3, 3))
    with pytest.raises(RuntimeError):
        out.backward(torch.ones(1, 3, 3, 3, dtype=torch.float64))     # wrong shape


# --------------------------------------------------------------------------
# torch stays optional
# --------------------------------------------------------------------------

def _python(code):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_import_fastconv_never_imports_torch():
    result = _python("import sys, numpy as np, fastconv as fc\n"
                     "fc.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))\n"
                     "from fastconv import nn, models\n"
                     "assert 'torch' not in sys.modules, 'torch was imported'")
    assert result.returncode == 0, result.stderr


def test_bridge_says_how_to_install_torch_when_it_is_missing():
    result = _python("import sys\nsys.modules['torch'] = None\n"
                     "try:\n    import fastconv.torch\n"
                     "except ImportError as exc:\n    print(exc)\n")
    assert result.returncode == 0, result.stderr
    assert 'pip install "fastconv[bench]"' in result.stdout
    assert "pip install torch" in result.stdout
