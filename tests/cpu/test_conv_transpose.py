"""`conv_transpose2d` and its gradients against the float64 references (and torch).

The grid is conv2d's (tests/cpu/test_conv_cpu.py): each case's weight is read in the
transposed layout (C_in, C_out // groups, kH, kW) and its input is the conv2d's output,
so the transposed output is about the conv2d input's size. "same" becomes its explicit
padding (asymmetric for even kernels: a fastconv extension, the adjoint of that
conv2d), "valid" becomes 0, and output_padding cycles through what the stride and
dilation allow, so output_padding >= stride (allowed when below the dilation) appears.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastconv as fc
from fastconv import nn, reference
from fastconv.shapes import conv_geometry, conv_transpose_geometry

from ..conftest import assert_close
from .test_conv_cpu import CASES, DTYPES, VARIANTS, _use_variant
from ..test_properties import LAYOUTS, with_layout


def _transposed_case(index, case):
    s, p, d, out_hw = conv_geometry(case["x_shape"][2:], case["w_shape"][2:], case["stride"],
                                    case["padding"], case["dilation"])
    padding = (p[0], p[2]) if (p[0], p[2]) == (p[1], p[3]) else ((p[0], p[1]), (p[2], p[3]))
    limit = [max(si, di) for si, di in zip(s, d)]
    output_padding = (index % limit[0], (index // 2) % limit[1])
    return dict(x_shape=(case["x_shape"][0], case["w_shape"][0]) + out_hw,
                w_shape=case["w_shape"], stride=case["stride"], padding=padding,
                output_padding=output_padding, dilation=case["dilation"],
                groups=case["groups"])


TCASES = [_transposed_case(i, c) for i, c in enumerate(CASES)]
GRID = [case for i, case in enumerate(TCASES) if i % 5 in (0, 2, 3)]


def _case_id(case):
    return "x{}-w{}-s{}-p{}-op{}-d{}-g{}".format(
        "x".join(map(str, case["x_shape"])), "x".join(map(str, case["w_shape"])),
        case["stride"], str(case["padding"]).replace(" ", ""),
        "x".join(map(str, case["output_padding"])), case["dilation"], case["groups"])


def _kwargs(case):
    return {k: case[k] for k in ("stride", "padding", "output_padding", "groups", "dilation")}


def _geometry(case):
    """(stride, padding4, output_padding, dilation, out_hw) for the references."""
    return conv_transpose_geometry(case["x_shape"][2:], case["w_shape"][2:], case["stride"],
                                   case["padding"], case["output_padding"],
                                   case["dilation"])[:5]


def _data(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    w = rng.standard_normal(case["w_shape"]).astype(dtype)
    b = rng.standard_normal(case["w_shape"][1] * case["groups"]).astype(dtype)
    return x, w, b


def _reference(case, x, w, b=None):
    s, p, op, d, _ = _geometry(case)
    return reference.conv_transpose2d(x, w, b, s, p, op, d, case["groups"])


def test_the_grid_covers_every_value():
    assert {c["stride"] for c in TCASES} == {1, 2, 3}
    assert {c["dilation"] for c in TCASES} == {1, 2}
    assert {c["w_shape"][2:] for c in TCASES} == {c["w_shape"][2:] for c in CASES}
    assert any(isinstance(c["padding"][0], tuple) for c in TCASES)          # asymmetric
    assert any(c["output_padding"] != (0, 0) for c in GRID)
    # output_padding >= stride, below the dilation: the conv2d's input stops short
    assert any(max(c["output_padding"]) >= c["stride"] for c in TCASES)
    assert any(c["groups"] == c["x_shape"][1] > 1 for c in TCASES)


def test_reference_is_the_adjoint_of_conv2d():
    """<conv_transpose2d(x), y> == <x, conv2d(y)>: the references agree with each other."""
    rng = np.random.default_rng(3)
    for case in TCASES[::7]:
        s, p, op, d, out_hw = _geometry(case)
        x, w, _ = _data(case, np.float64)
        y = rng.standard_normal(case["x_shape"][:1] + (case["w_shape"][1] * case["groups"],)
                                + out_hw)
        conv_y = reference.conv2d(y, w, None, s, p, d, case["groups"])
        # conv2d of the full output may have an extra row/column (output_padding >= stride)
        conv_y = conv_y[:, :, :x.shape[2], :x.shape[3]]
        assert np.isclose(np.sum(_reference(case, x, w) * y), np.sum(x * conv_y))


@pytest.mark.parametrize("case", TCASES, ids=_case_id)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_reference(case, variant, monkeypatch):
    algorithm = _use_variant(variant, monkeypatch)
    for dtype in DTYPES:
        x, w, b = _data(case, dtype)
        out = fc.conv_transpose2d(x, w, b, algorithm=algorithm, **_kwargs(case))
        assert out.dtype == dtype and out.shape[2:] == _geometry(case)[4]
        assert_close(out, _reference(case, x, w, b), dtype)
        assert_close(fc.conv_transpose2d(x, w, algorithm=algorithm, **_kwargs(case)),
                     _reference(case, x, w), dtype)


@pytest.mark.parametrize("case", GRID, ids=_case_id)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_reference(case, variant, monkeypatch):
    algorithm = _use_variant(variant, monkeypatch)
    s, p, op, d, out_hw = _geometry(case)
    g = case["groups"]
    for dtype in DTYPES:
        x, w, _ = _data(case, dtype)
        go = np.random.default_rng(1).standard_normal(
            (x.shape[0], w.shape[1] * g) + out_hw).astype(dtype)
        gi = fc.conv_transpose2d_grad_input(go, w, x.shape, algorithm=algorithm, **_kwargs(case))
        gw = fc.conv_transpose2d_grad_weight(go, x, w.shape, algorithm=algorithm,
                                             **_kwargs(case))
        assert gi.dtype == gw.dtype == dtype
        assert_close(gi, reference.conv_transpose2d_grad_input(go, w, x.shape, s, p, d, g),
                     dtype)
        assert_close(gw, reference.conv_transpose2d_grad_weight(go, x, w.shape, s, p, d, g),
                     dtype)
        assert_close(fc.conv_transpose2d_grad_bias(go), reference.conv2d_grad_bias(go), dtype)


WINOGRAD_CASES = [c for c in TCASES if c["w_shape"][2:] == (3, 3) and c["stride"] == 1
                  and c["dilation"] == 1]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=_case_id)
def test_winograd_where_it_applies(case):
    s, p, op, d, out_hw = _geometry(case)
    x, w, b = _data(case, np.float64)
    out = fc.conv_transpose2d(x, w, b, algorithm="winograd", **_kwargs(case))
    assert_close(out, _reference(case, x, w, b), np.float64)
    go = np.random.default_rng(1).standard_normal(out.shape)
    gi = fc.conv_transpose2d_grad_input(go, w, x.shape, algorithm="winograd", **_kwargs(case))
    assert_close(gi, reference.conv_transpose2d_grad_input(go, w, x.shape, s, p, d,
                                                           case["groups"]), np.float64)


def test_winograd_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="winograd"):
        fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), stride=2,
                            algorithm="winograd")


FD_CASES = [
    ((2, 3, 4, 5), (3, 4, 3, 3), 1, 1, 0, 1, 1),
    ((1, 4, 3, 4), (4, 1, 2, 3), (2, 1), ((1, 0), (2, 1)), (1, 0), 2, (1, 2)),
    ((2, 3, 4, 3), (3, 1, 3, 3), 2, 0, 1, 3, 2),           # depthwise, dilated
    ((1, 2, 3, 3), (2, 3, 3, 3), 1, 0, 1, 1, 2),            # output_padding >= stride
    ((2, 5, 4, 4), (5, 6, 1, 1), 3, 0, 2, 1, 1),            # 1x1, stride 3
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, output_padding, groups, dilation",
                         FD_CASES)
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_gradients_by_finite_differences(algorithm, x_shape, w_shape, stride, padding,
                                         output_padding, groups, dilation):
    rng = np.random.default_rng(42)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1] * groups)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation, algorithm=algorithm)
    go = rng.standard_normal(fc.conv_transpose2d(x, w, **kw).shape)

    def loss(xx, ww, bb):
        return float(np.sum(go * fc.conv_transpose2d(xx, ww, bb, **kw)))

    eps = 1e-3
    v = rng.standard_normal(x_shape)
    fd = (loss(x + eps * v, w, b) - loss(x - eps * v, w, b)) / (2 * eps)
    assert np.isclose(fd, np.sum(fc.conv_transpose2d_grad_input(go, w, x_shape, **kw) * v),
                      rtol=1e-8, atol=1e-8)
    v = rng.standard_normal(w_shape)
    fd = (loss(x, w + eps * v, b) - loss(x, w - eps * v, b)) / (2 * eps)
    assert np.isclose(fd, np.sum(fc.conv_transpose2d_grad_weight(go, x, w_shape, **kw) * v),
                      rtol=1e-8, atol=1e-8)
    v = rng.standard_normal(b.shape)
    fd = (loss(x, w, b + eps * v) - loss(x, w, b - eps * v)) / (2 * eps)
    assert np.isclose(fd, np.sum(fc.conv_transpose2d_grad_bias(go) * v), rtol=1e-8, atol=1e-8)


def test_unbatched_empty_batch_layouts_and_inputs_unchanged():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(2)
    kw = dict(stride=2, padding=1, output_padding=1)
    expected = fc.conv_transpose2d(x[None], w, b, **kw)[0]
    assert_close(fc.conv_transpose2d(x, w, b, **kw), expected, np.float64)
    go = rng.standard_normal(expected.shape)
    assert fc.conv_transpose2d_grad_input(go, w, x.shape, **kw).shape == x.shape
    assert_close(fc.conv_transpose2d_grad_weight(go, x, w.shape, **kw),
                 fc.conv_transpose2d_grad_weight(go[None], x[None], w.shape, **kw), np.float64)
    empty = fc.conv_transpose2d(np.zeros((0, 3, 4, 5)), w, b, **kw)
    assert empty.shape == (0, 2) + expected.shape[1:]
    for layout in LAYOUTS:
        xl, wl = with_layout(x[None], layout), with_layout(w, layout)
        before = (xl.copy(), wl.copy())
        assert_close(fc.conv_transpose2d(xl, wl, b, **kw), expected[None], np.float64)
        np.testing.assert_array_equal(xl, before[0])
        np.testing.assert_array_equal(wl, before[1])


@pytest.mark.parametrize("call, error, word", [
    (lambda: fc.conv_transpose2d(np.ones((1, 2, 4, 4)), np.ones((3, 1, 3, 3))), ValueError,
     "3 input channels"),
    (lambda: fc.conv_transpose2d(np.ones((1, 4, 4, 4)), np.ones((4, 1, 3, 3)), groups=3),
     ValueError, "groups=3"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), stride=2,
                                 output_padding=2), ValueError, "output_padding"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)),
                                 output_padding=1), ValueError, "smaller than either"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)),
                                 output_padding=-1), ValueError, "output_padding"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), padding=1),
     ValueError, "output would have size"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)),
                                 padding="same"), ValueError, "transposed"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), np.ones(2)),
     ValueError, "bias"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 3, 3))), ValueError,
     "4-D"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3), np.float32)),
     TypeError, "dtype"),
    (lambda: fc.conv_transpose2d(np.ones((4, 4)), np.ones((1, 1, 3, 3))), ValueError, "x"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4), int), np.ones((1, 1, 3, 3))),
     TypeError, "x has dtype"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), stride=0),
     ValueError, "stride"),
    (lambda: fc.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), groups=1.5),
     TypeError, "groups"),
    (lambda: fc.conv_transpose2d_grad_input(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)),
                                            (1, 1, 4, 4)), ValueError, "grad_out"),
    (lambda: fc.conv_transpose2d_grad_weight(np.ones((1, 1, 6, 6)), np.ones((1, 1, 4, 4)),
                                             (1, 1, 3)), ValueError, "weight_shape"),
])
def test_bad_call_raises_clear_error(call, error, word):
    with pytest.raises(error, match=word):
        call()


# ---------------------------------------------------------------------- properties

@st.composite
def transpose_configs(draw):
    groups = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                       st.tuples(st.integers(0, 2), st.integers(0, 2)))))
    x_shape = (draw(st.integers(0, 2)), groups * draw(st.integers(1, 3)),
               draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    w_shape = (x_shape[1], draw(st.integers(1, 3)), kh, kw)
    config = dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding,
                  output_padding=output_padding, groups=groups, dilation=dilation)
    try:
        _geometry(config)
    except ValueError:      # output smaller than one pixel: refused, tested above
        from hypothesis import assume
        assume(False)
    return config, draw(st.sampled_from(["auto", "direct", "im2col"])), \
        draw(st.sampled_from(LAYOUTS))


@given(transpose_configs())
def test_random_configurations_match_reference(config_algorithm_layout):
    case, algorithm, layout = config_algorithm_layout
    x, w, b = _data(case, np.float64, seed=7)
    out = fc.conv_transpose2d(with_layout(x, layout), with_layout(w, layout), b,
                              algorithm=algorithm, **_kwargs(case))
    assert_close(out, _reference(case, x, w, b), np.float64)
    s, p, op, d, _ = _geometry(case)
    go = np.random.default_rng(2).standard_normal(out.shape)
    assert_close(fc.conv_transpose2d_grad_input(with_layout(go, layout), w, x.shape,
                                                algorithm=algorithm, **_kwargs(case)),
                 reference.conv_transpose2d_grad_input(go, w, x.shape, s, p, d, case["groups"]),
                 np.float64)
    assert_close(fc.conv_transpose2d_grad_weight(go, with_layout(x, layout), w.shape,
                                                 algorithm=algorithm, **_kwargs(case)),
                 reference.conv_transpose2d_grad_weight(go, x, w.shape, s, p, d, case["groups"]),
                 np.float64)


# ---------------------------------------------------------------------- torch

def _symmetric(case):
    return not isinstance(case["padding"][0], tuple)


@pytest.mark.parametrize("case", [c for c in TCASES[::3] if _symmetric(c)], ids=_case_id)
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, w, b = _data(case, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out = torch.nn.functional.conv_transpose2d(tx, tw, tb, **_kwargs(case))
    go = np.random.default_rng(1).standard_normal(tuple(out.shape))
    out.backward(torch.tensor(go))
    assert_close(fc.conv_transpose2d(x, w, b, **_kwargs(case)), out.detach().numpy(),
                 np.float64)
    assert_close(fc.conv_transpose2d_grad_input(go, w, x.shape, **_kwargs(case)),
                 tx.grad.numpy(), np.float64)
    assert_close(fc.conv_transpose2d_grad_weight(go, x, w.shape, **_kwargs(case)),
                 tw.grad.numpy(), np.float64)
    assert_close(fc.conv_transpose2d_grad_bias(go), tb.grad.numpy(), np.float64)


def test_refuses_what_torch_refuses():
    torch = pytest.importorskip("torch")
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    for kw in [dict(output_padding=1), dict(stride=2, output_padding=2),
               dict(stride=1, dilation=2, output_padding=2), dict(padding=3)]:
        with pytest.raises(RuntimeError):
            torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kw)
        with pytest.raises(ValueError):
            fc.conv_transpose2d(x, w, **kw)
    # and accepts what torch accepts: output_padding below the dilation, not the stride
    out = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w),
                                               output_padding=1, dilation=2)
    assert_close(fc.conv_transpose2d(x, w, output_padding=1, dilation=2), out.numpy(),
                 np.float64)


# ---------------------------------------------------------------------- layer

def test_layer_forward_backward_and_summary():
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                               dtype=np.float64, rng=0)
    assert layer.weight.shape == (4, 3, 3, 3) and layer.bias.shape == (6,)
    assert layer.output_shape((2, 4, 5, 5)) == (2, 6, 10, 10)
    assert layer.output_shape((4, 5, 5)) == (6, 10, 10)
    layer.bias.data[:] = np.arange(6.0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5))
    out = layer(x)
    s, p, op, d, _ = conv_transpose_geometry((5, 5), (3, 3), 2, 1, 1, 1)[:5]
    assert_close(out, reference.conv_transpose2d(x, layer.weight.data, layer.bias.data,
                                                 s, p, op, d, 2), np.float64)
    go = rng.standard_normal(out.shape)
    gx = layer.backward(go)
    assert_close(gx, reference.conv_transpose2d_grad_input(go, layer.weight.data, x.shape,
                                                           s, p, d, 2), np.float64)
    assert_close(layer.weight.grad, reference.conv_transpose2d_grad_weight(
        go, x, layer.weight.shape, s, p, d, 2), np.float64)
    assert_close(layer.bias.grad, go.sum((0, 2, 3)), np.float64)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), layer)
    summary = model.summary((3, 5, 5))
    assert summary.output_shape == (None, 6, 10, 10)
    assert "ConvTranspose2d" in summary
    assert [name for name, _ in model.named_parameters()][-2:] == ["2.weight", "2.bias"]
    assert repr(layer) == ("ConvTranspose2d(4, 6, kernel_size=3, stride=2, padding=1, "
                           "output_padding=1, groups=2)")


def test_layer_refuses_bad_arguments():
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose2d(1, 1, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="groups"):
        nn.ConvTranspose2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="input channels"):
        nn.ConvTranspose2d(3, 4, 3).output_shape((1, 2, 5, 5))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.ConvTranspose2d(3, 4, 3).backward(np.ones((1, 4, 7, 7), np.float32))


def test_docstring_examples_run():
    import doctest

    from fastconv import api, shapes
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(
        optionflags=doctest.NORMALIZE_WHITESPACE)
    for obj in (api.conv_transpose2d, api.conv_transpose2d_grad_input,
                api.conv_transpose2d_grad_weight, api.conv_transpose2d_grad_bias,
                shapes.conv_transpose_geometry, nn.ConvTranspose2d):
        for test in finder.find(obj, globs=dict(vars(shapes))):
            runner.run(test)
    assert runner.tries >= 6 and runner.failures == 0
