"""Differential tests against PyTorch: fastconv computes what torch.nn.functional computes.

`tests/test_properties.py` holds every algorithm to `fastconv.reference`; this file holds
the public functions to PyTorch itself (CPU, float64 autograd), on random small valid
configurations (docs/reliability.md, "Differential fuzzing"). It guards

- `conv2d` with every algorithm that can run ("auto", "direct", "im2col", and "winograd"
  on 3x3 stride-1 dilation-1 kernels), `conv2d_grad_input`, `conv2d_grad_weight` and
  `conv2d_grad_bias` against torch's output and autograd gradients: every padding form
  (asymmetric padding is compared with `F.pad` followed by an unpadded torch convolution),
  stride, dilation, groups incl. depthwise, bias or none, batch 0-3 and unbatched
  (C, H, W) input, float64 and float32, and memory layouts (C, Fortran, transposed view,
  negative strides, sliced, read-only);
- the same with one or two NaN/+Inf/-Inf values in x, weight or grad_out: NaN, +Inf and
  -Inf must land exactly where torch puts them (direct, im2col, auto);
- `max_pool2d` (values and indices) and `max_pool2d_backward`, `avg_pool2d` and
  `avg_pool2d_backward` (ceil_mode, count_include_pad, divisor_override, dilation, every
  padding form), with finite values, ties, and NaN/+-Inf;
- `relu` and `relu_backward` on any shape and any float, NaN and +-0 included.

Tolerances: float64 1e-9 of the output's scale, float32 1e-4 (Winograd 1e-3); pattern of
NaN/+Inf/-Inf exact; max-pool values and indices exact.

Documented policy differences (docs/reliability.md) are not compared with torch:
- Winograd spreads a NaN/Inf over its whole tile: left out of the non-finite property.
- A dilated max-pool window that lies wholly in the padding has no winner in fastconv
  (-inf, index -1, its gradient goes nowhere); torch 2.13 reports an index outside the
  window and its backward then writes out of bounds (a corrupted heap). Such windows are
  compared with `fastconv.reference`, and torch's backward is never run on such a case.

Skipped where torch is not installed. Each property runs 30 examples (the "default"
hypothesis profile, tests/conftest.py: ~5 s with a warm numba cache);
`python -m pytest tests/test_torch_parity.py --hypothesis-profile=slow` runs 1000 (~1 min).
"""
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastconv as fc
from fastconv import api, reference
from fastconv.config import choose_algorithm
from fastconv.shapes import conv_geometry, pool_geometry, taps_in_padding

from .test_properties import LAYOUTS as REFERENCE_LAYOUTS
from .test_properties import padding_strategy, with_layout

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = [
    # torch's note on "same" with an even kernel
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
    # NaN/Inf results come silently, as from torch (docs/reliability.md, "NaN and Inf")
    pytest.mark.filterwarnings("error::RuntimeWarning"),
]

LAYOUTS = REFERENCE_LAYOUTS + ["transposed"]
NON_FINITE = [np.nan, np.inf, -np.inf]


def laid_out(array, layout):
    """`with_layout` (tests/test_properties.py), plus a transposed view: the last two axes
    stored swapped. A 0-d array has a single layout."""
    if array.ndim == 0:
        return array
    if layout == "transposed":
        if array.ndim < 2:
            return array
        return np.ascontiguousarray(array.swapaxes(-1, -2)).swapaxes(-1, -2)
    return with_layout(array, layout)


def as_torch(array, requires_grad=False):
    """A float64 tensor of `array`'s values (exact for float32)."""
    return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


def gradient(tensor):
    """tensor.grad as an array (zeros where nothing flowed back: an empty batch)."""
    if tensor.grad is None:
        return np.zeros(tuple(tensor.shape))
    return tensor.grad.numpy()


def tolerance(dtype, algorithm="direct"):
    if np.dtype(dtype) == np.float64:
        return 1e-9
    return 1e-3 if algorithm == "winograd" else 1e-4


def assert_matches_torch(got, expected, dtype, rtol):
    """`got` has the input's dtype and `expected`'s shape, NaN, +Inf and -Inf exactly where
    `expected` has them, and finite values within `rtol` of the finite values' scale."""
    assert isinstance(got, np.ndarray) and got.dtype == dtype, (type(got), got.dtype, dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    got = got.astype(np.float64)
    for name, where in [("NaN", np.isnan), ("+Inf", lambda a: a == np.inf),
                        ("-Inf", lambda a: a == -np.inf)]:
        np.testing.assert_array_equal(where(got), where(expected),
                                      err_msg=f"{name} pattern differs from torch's")
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(got[finite], expected[finite], rtol=rtol, atol=rtol * scale)


def pair_argument(draw, values):
    """An (h, w) pair, sometimes passed as one int when h == w."""
    return values[0] if values[0] == values[1] and draw(st.booleans()) else values


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvCase:
    x_shape: tuple
    w_shape: tuple
    stride: object
    padding: object
    dilation: object
    groups: int
    bias: bool
    batched: bool          # False: x is one (C, H, W) image
    dtype: type
    layout: str
    seed: int

    @property
    def geometry(self):
        """(stride, (top, bottom, left, right), dilation, (out_h, out_w)), normalised."""
        return conv_geometry(self.x_shape[2:], self.w_shape[2:], self.stride, self.padding,
                             self.dilation)

    @property
    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def algorithms(self, with_winograd=True):
        stride, _, dilation, _ = self.geometry
        names = ["auto", "direct", "im2col"]
        if with_winograd and api.winograd_supports(self.w_shape, stride, dilation)[0]:
            names.append("winograd")
        return names

    def rtol(self, algorithm):
        if algorithm != "auto":
            return tolerance(self.dtype, algorithm)
        stride, _, dilation, _ = self.geometry  # auto: the loosest of what it picks
        return max(tolerance(self.dtype, choose_algorithm(
            "cpu", self.x_shape, self.w_shape, stride, dilation, self.groups, operation)[0])
            for operation in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"))

    def arrays(self):
        """x, weight, bias (or None), grad_out: standard normal values."""
        rng = np.random.default_rng(self.seed)
        out_shape = (self.x_shape[0], self.w_shape[0]) + self.geometry[3]
        x, w, b, go = (rng.standard_normal(shape).astype(self.dtype)
                       for shape in (self.x_shape, self.w_shape, self.w_shape[:1], out_shape))
        return x, w, (b if self.bias else None), go


@st.composite
def conv_cases(draw, min_batch=0):
    """Small valid convolutions; half of them 3x3, stride 1, dilation 1 (Winograd's)."""
    groups = draw(st.sampled_from([1, 1, 2, 3, 6]))
    depthwise = groups > 1 and draw(st.booleans())
    c_in = groups if depthwise else groups * draw(st.integers(1, 6 // groups))
    c_out = groups * draw(st.integers(1, 6 // groups))
    if draw(st.booleans()):
        kernel, stride, dilation = (3, 3), (1, 1), (1, 1)
    else:
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = padding_strategy(draw, kernel, dilation, stride)
    n = draw(st.integers(min_batch, 3))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    try:
        conv_geometry((h, w), kernel, stride, padding, dilation)
    except ValueError:  # the kernel does not fit the padded input
        assume(False)
    return ConvCase(x_shape=(n, c_in, h, w), w_shape=(c_out, c_in // groups) + kernel,
                    stride=pair_argument(draw, stride), padding=padding,
                    dilation=pair_argument(draw, dilation), groups=groups,
                    bias=draw(st.booleans()), batched=n != 1 or draw(st.booleans()),
                    dtype=draw(st.sampled_from([np.float64, np.float32])),
                    layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**32 - 1)))


def torch_conv(case, x, w, b, go):
    """torch's output and gradients (input, weight, bias or None), in float64."""
    xt, wt = as_torch(x, True), as_torch(w, True)
    bt = None if b is None else as_torch(b, True)
    stride, (top, bottom, left, right), dilation, _ = case.geometry
    if isinstance(case.padding, str):  # torch's own "same" / "valid"
        y = F.conv2d(xt, wt, bt, stride, case.padding, dilation, case.groups)
    elif (top, left) == (bottom, right):
        y = F.conv2d(xt, wt, bt, stride, (top, left), dilation, case.groups)
    else:  # torch pads symmetrically only: pad first
        y = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, stride, 0, dilation,
                     case.groups)
    y.backward(as_torch(go))
    return (y.detach().numpy(), *(None if t is None else gradient(t) for t in (xt, wt, bt)))


def check_conv_against_torch(case, x, w, b, go, algorithms):
    """conv2d, its three gradients, for each algorithm, against torch."""
    expected_y, expected_gx, expected_gw, expected_gb = torch_conv(case, x, w, b, go)
    xl, wl, gol = (laid_out(a, case.layout) for a in (x, w, go))
    if not case.batched:  # one (C, H, W) image: results are 3-D too
        xl, gol, expected_y, expected_gx = xl[0], gol[0], expected_y[0], expected_gx[0]
    for algorithm in algorithms:
        rtol, kw = case.rtol(algorithm), dict(case.kwargs, algorithm=algorithm)
        assert_matches_torch(fc.conv2d(xl, wl, b, **kw), expected_y, case.dtype, rtol)
        assert_matches_torch(fc.conv2d_grad_input(gol, wl, xl.shape, **kw), expected_gx,
                             case.dtype, rtol)
        assert_matches_torch(fc.conv2d_grad_weight(gol, xl, w.shape, **kw), expected_gw,
                             case.dtype, rtol)
    if b is not None:
        assert_matches_torch(fc.conv2d_grad_bias(gol), expected_gb, case.dtype,
                             tolerance(case.dtype))


@given(conv_cases())
def test_conv2d_and_its_gradients_match_torch(case):
    x, w, b, go = case.arrays()
    check_conv_against_torch(case, x, w, b, go, case.algorithms())


@given(conv_cases(min_batch=1),
       st.lists(st.tuples(st.sampled_from(["x", "weight", "grad_out"]),
                          st.integers(0, 2**16), st.sampled_from(NON_FINITE)),
                min_size=1, max_size=2))
def test_nan_and_inf_land_where_torch_puts_them(case, injections):
    """One or two NaN/+Inf/-Inf in x, weight or grad_out: every output is NaN, +Inf or -Inf
    exactly where torch's is (0 * Inf over the padding included). Winograd is left out: it
    spreads a NaN over its tile, a documented policy (`auto` then takes im2col)."""
    x, w, b, go = case.arrays()
    operands = {"x": x, "weight": w, "grad_out": go}
    for name, position, value in injections:
        operands[name].flat[position % operands[name].size] = value
    check_conv_against_torch(case, x, w, b, go, case.algorithms(with_winograd=False))


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolCase:
    x_shape: tuple
    kernel_size: object
    stride: object
    padding: object
    dilation: object
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: object
    values: str            # "normal", "ties", "nan-inf" or "mostly -inf"
    dtype: type
    layout: str
    seed: int

    @property
    def geometry(self):
        """(kernel, stride, (top, bottom, left, right), dilation, (out_h, out_w))."""
        return pool_geometry(self.x_shape[2:], self.kernel_size, self.stride, self.padding,
                             self.dilation, self.ceil_mode)

    @property
    def symmetric(self):
        top, bottom, left, right = self.geometry[2]
        return (top, left) == (bottom, right)

    def arrays(self):
        """x as `values` says and a grad_out of the output's shape."""
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal(self.x_shape)
        if self.values != "normal":
            x = np.round(2 * x)  # many equal maxima: the first must win
        u = rng.random(self.x_shape)
        if self.values == "nan-inf":
            x[u < 0.1] = np.nan
            x[(u >= 0.1) & (u < 0.25)] = -np.inf
            x[(u >= 0.25) & (u < 0.3)] = np.inf
        elif self.values == "mostly -inf":
            x[u < 0.7] = -np.inf
        go = rng.standard_normal(self.x_shape[:2] + self.geometry[-1])
        if self.values == "nan-inf" and go.size:
            go.flat[rng.integers(go.size)] = rng.choice(NON_FINITE)
        return x.astype(self.dtype), go.astype(self.dtype)


@st.composite
def pool_cases(draw, values=st.sampled_from(["normal", "ties"]), dilated=True):
    """Small valid poolings. Asymmetric padding has no ceil mode here: torch has no
    asymmetric padding, so it is compared with `F.pad` and an unpadded, floor-mode pool."""
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    half = (kernel[0] // 2, kernel[1] // 2)
    form = draw(st.sampled_from(["int", "pair", "sides", "valid"]))
    if form == "int":
        padding = draw(st.integers(0, min(half)))
    elif form == "pair":
        padding = (draw(st.integers(0, half[0])), draw(st.integers(0, half[1])))
    elif form == "sides":
        padding = tuple((draw(st.integers(0, m)), draw(st.integers(0, m))) for m in half)
    else:
        padding = "valid"
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    ceil_mode = form != "sides" and draw(st.booleans())
    try:
        pool_geometry((h, w), kernel, stride, padding, dilation, ceil_mode)
    except ValueError:  # no window fits
        assume(False)
    return PoolCase(x_shape=(draw(st.integers(0, 3)), draw(st.integers(1, 4)), h, w),
                    kernel_size=pair_argument(draw, kernel),
                    stride=None if stride is None else pair_argument(draw, stride),
                    padding=padding, dilation=pair_argument(draw, dilation),
                    ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()),
                    divisor_override=draw(st.one_of(st.none(), st.integers(1, 7))),
                    values=draw(values), dtype=draw(st.sampled_from([np.float64, np.float32])),
                    layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**32 - 1)))


def windows_wholly_in_padding(case):
    """(out_h, out_w) booleans: the dilated windows none of whose taps is in the input."""
    kernel, stride, (top, _, left, _), dilation, (out_h, out_w) = case.geometry
    h, w = case.x_shape[2:]
    rows = taps_in_padding(h, out_h, kernel[0], top, stride[0], dilation[0]).all(axis=0)
    cols = taps_in_padding(w, out_w, kernel[1], left, stride[1], dilation[1]).all(axis=0)
    return rows[:, None] | cols[None, :]


def torch_max_pool(case, x, go):
    """torch's values, indices into x's plane (-1 for a tap in the emulated padding) and,
    where it is safe to run, torch's gradient (else None)."""
    kernel, stride, (top, bottom, left, right), dilation, _ = case.geometry
    h, w = x.shape[2:]
    xt = as_torch(x, True)
    if case.symmetric:
        values, indices = F.max_pool2d(xt, kernel, stride, (top, left), dilation,
                                       case.ceil_mode, return_indices=True)
        flat = indices.numpy()
        # torch 2.13's backward writes out of bounds for a window wholly in the padding
        # (an empty batch writes nothing)
        safe = x.size == 0 or not windows_wholly_in_padding(case).any()
    else:
        padded = F.pad(xt, (left, right, top, bottom), value=-np.inf)
        values, indices = F.max_pool2d(padded, kernel, stride, 0, dilation,
                                       return_indices=True)
        padded_w = w + left + right
        r, c = indices.numpy() // padded_w - top, indices.numpy() % padded_w - left
        flat = np.where((r >= 0) & (r < h) & (c >= 0) & (c < w), r * w + c, -1)
        safe = True
    grad = None
    if safe:
        values.backward(as_torch(go))
        grad = gradient(xt)
    return values.detach().numpy(), flat, grad


def check_max_pool_against_torch(case):
    x, go = case.arrays()
    kernel, stride, padding, dilation, _ = case.geometry
    torch_values, torch_indices, torch_grad = torch_max_pool(case, x, go)
    ref_values, ref_indices = reference.max_pool2d(x, kernel, stride, padding, dilation,
                                                   case.ceil_mode)
    # No winner in the input (a window wholly in the padding, or an all -inf window whose
    # first tap is the emulated padding): fastconv's documented rule, the reference's.
    no_winner = windows_wholly_in_padding(case) | (torch_indices == -1)
    assert (torch_values[no_winner] == -np.inf).all()
    expected = np.where(no_winner, ref_values, torch_values)
    expected_indices = np.where(no_winner, ref_indices, torch_indices)
    expected_grad = torch_grad
    if torch_grad is None or (expected_indices != torch_indices).any():
        # torch's gradient went elsewhere, or could not be run
        expected_grad = reference.max_pool2d_backward(go, x, kernel, stride, padding, dilation,
                                                      case.ceil_mode)
    xl, gol = laid_out(x, case.layout), laid_out(go, case.layout)
    kw = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
              dilation=case.dilation, ceil_mode=case.ceil_mode)
    values, indices = fc.max_pool2d(xl, return_indices=True, **kw)
    assert_matches_torch(values, expected, case.dtype, 0.0)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_indices)
    assert_matches_torch(fc.max_pool2d(xl, **kw), expected, case.dtype, 0.0)
    assert_matches_torch(fc.max_pool2d_backward(gol, xl, **kw), expected_grad, case.dtype,
                         tolerance(case.dtype))


def torch_avg_pool(case, x, go):
    """torch's output and gradient, in float64."""
    kernel, stride, (top, bottom, left, right), _, _ = case.geometry
    xt = as_torch(x, True)
    if case.symmetric:
        y = F.avg_pool2d(xt, kernel, stride, (top, left), case.ceil_mode,
                         case.count_include_pad, case.divisor_override)
    else:  # pad first; then the divisor: override, whole window or the taps in the input
        def window_sums(t):
            return F.avg_pool2d(F.pad(t, (left, right, top, bottom)), kernel, stride, 0,
                                divisor_override=1)
        if case.divisor_override is not None:
            divisor = case.divisor_override
        elif case.count_include_pad:
            divisor = kernel[0] * kernel[1]
        else:
            divisor = window_sums(torch.ones((1, 1) + x.shape[2:], dtype=torch.float64))
        y = window_sums(xt) / divisor
    y.backward(as_torch(go))
    return y.detach().numpy(), gradient(xt)


def check_avg_pool_against_torch(case):
    x, go = case.arrays()
    expected, expected_grad = torch_avg_pool(case, x, go)
    kw = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
              ceil_mode=case.ceil_mode, count_include_pad=case.count_include_pad,
              divisor_override=case.divisor_override)
    rtol = tolerance(case.dtype)
    assert_matches_torch(fc.avg_pool2d(laid_out(x, case.layout), **kw), expected, case.dtype,
                         rtol)
    assert_matches_torch(fc.avg_pool2d_backward(laid_out(go, case.layout), x.shape, **kw),
                         expected_grad, case.dtype, rtol)


# 2x2 windows dilated by 2 over a 1-row input padded by 1: each window's taps lie in the
# rows above and below the input. Rare in random draws (~1%), so always run.
WHOLLY_IN_PADDING = PoolCase(x_shape=(2, 3, 1, 4), kernel_size=2, stride=(1, 2), padding=1,
                             dilation=2, ceil_mode=False, count_include_pad=True,
                             divisor_override=None, values="normal", dtype=np.float64,
                             layout="C", seed=0)


@given(pool_cases())
@example(WHOLLY_IN_PADDING)                                     # torch's own padding
@example(replace(WHOLLY_IN_PADDING, padding=((1, 1), (0, 1))))  # F.pad, then torch
def test_max_pool2d_and_its_backward_match_torch(case):
    check_max_pool_against_torch(case)


@given(pool_cases(dilated=False))
def test_avg_pool2d_and_its_backward_match_torch(case):
    check_avg_pool_against_torch(case)


@given(pool_cases(values=st.sampled_from(["nan-inf", "mostly -inf"])))
@example(replace(WHOLLY_IN_PADDING, values="mostly -inf"))
@example(replace(WHOLLY_IN_PADDING, x_shape=(2, 3, 4, 4), kernel_size=3, stride=1,  # F.pad:
                 padding=((1, 0), (1, 0)), dilation=1, values="mostly -inf"))  # -inf windows
def test_pooling_propagates_nan_and_inf_like_torch(case):
    """Max pooling: a NaN wins (the last one, torch's `val > max || isnan(val)`), padding
    never does, an all -inf window reports its first tap in the input. Average pooling:
    NaN/Inf propagate through the sums."""
    check_max_pool_against_torch(case)
    if case.dilation in (1, (1, 1)):
        check_avg_pool_against_torch(case)


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------

@st.composite
def relu_cases(draw):
    """x and grad_out of one shape (0-d to 4-d, empty included), any float32 value
    (NaN, +-Inf, +-0, subnormals) in either dtype, and a layout."""
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    elements = st.one_of(st.sampled_from(NON_FINITE + [0.0, -0.0]), st.floats(width=32))
    x, go = (draw(hnp.arrays(dtype, shape, elements=elements)) for _ in range(2))
    return x, go, draw(st.sampled_from(LAYOUTS))


@given(relu_cases())
def test_relu_and_relu_backward_match_torch(case):
    """Bitwise up to the sign of zero: relu keeps NaN; its gradient is 0 where x <= 0 and
    grad_out elsewhere, NaN x included (torch's threshold_backward)."""
    x, go, layout = case
    xt = torch.tensor(x, requires_grad=True)
    y = torch.relu(xt)
    y.backward(torch.tensor(go))
    got = fc.relu(laid_out(x, layout))
    got_grad = fc.relu_backward(laid_out(go, layout), laid_out(x, layout))
    for result, expected in [(got, y.detach().numpy()), (got_grad, gradient(xt))]:
        assert isinstance(result, np.ndarray) and result.dtype == x.dtype
        assert result.shape == x.shape
        np.testing.assert_array_equal(result, expected)
