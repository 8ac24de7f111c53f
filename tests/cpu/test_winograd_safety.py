"""`algorithm="auto"` runs Winograd only where it cannot overflow and where no single
value can spoil the outputs around it (`fastconv.winograd_transforms.winograd_safe`):
the cases a hostile tester found, against the float64 reference, and ordinary data,
which must still take Winograd."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference
from fastconv.cpu import winograd
from fastconv.winograd_transforms import growth, winograd_matrices, winograd_safe


@pytest.fixture
def winograd_calls(monkeypatch):
    """The names of the CPU Winograd functions `auto` called."""
    calls = []
    for name in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
        original = getattr(winograd, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(winograd, name, spy)
    return calls


def _layer(rng, r, scale, dtype=np.float32, shape=(1, 32, 64, 64)):
    x = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal((shape[1], shape[1], r, r)) * scale).astype(dtype)
    return x, w


def _finite_and_close(out, expected, dtype):
    assert np.isfinite(out).all()
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert np.abs(out - expected).max() <= tol * np.abs(expected).max()


@pytest.mark.parametrize("r, large, dtype", [(3, 1e38, np.float32), (5, 1e35, np.float32),
                                             (5, 1e305, np.float64)])
def test_auto_forward_does_not_overflow_on_large_finite_values(r, large, dtype, rng,
                                                               winograd_calls):
    x, w = _layer(rng, r, 0.01, dtype)
    assert "winograd" in fc.explain(x.shape, w.shape, padding=r // 2)   # by shape
    x[0, 7, 30, 33] = large
    out = fc.conv2d(x, w, padding=r // 2)
    assert winograd_calls == []
    _finite_and_close(out, reference.conv2d(x.astype(np.float64), w.astype(np.float64), None,
                                            (1, 1), (r // 2,) * 4), dtype)


def test_auto_grad_input_does_not_overflow(rng, winograd_calls):
    _, w = _layer(rng, 3, 0.01)
    go = rng.standard_normal((1, 32, 64, 64)).astype(np.float32)
    go[0, 4, 20, 21] = 1e38
    got = fc.conv2d_grad_input(go, w, (1, 32, 64, 64), padding=1)
    assert winograd_calls == []
    _finite_and_close(got, reference.conv2d_grad_input(go.astype(np.float64), w.astype(
        np.float64), (1, 32, 64, 64), (1, 1), (1, 1, 1, 1)), np.float32)


@pytest.mark.parametrize("operand", ["x", "grad_out"])
def test_auto_grad_weight_does_not_overflow(operand, rng, winograd_calls):
    x = rng.standard_normal((1, 96, 56, 56)).astype(np.float32)
    go = rng.standard_normal((1, 96, 56, 56)).astype(np.float32)
    assert "winograd" in fc.explain(x.shape, (96, 96, 3, 3), padding=1,
                                    operation="conv2d_grad_weight")
    (x if operand == "x" else go)[0, 11, 30, 30] = 1e37
    got = fc.conv2d_grad_weight(go, x, (96, 96, 3, 3), padding=1)
    assert winograd_calls == []
    _finite_and_close(got, reference.conv2d_grad_weight(
        go.astype(np.float64), x.astype(np.float64), (96, 96, 3, 3), (1, 1), (1, 1, 1, 1)),
        np.float32)


@pytest.mark.parametrize("outlier", [1e7, 1e5])
def test_one_outlier_leaves_the_outputs_around_it_right(outlier, rng):
    """Outside the outlier's receptive field the outputs keep float32 im2col's accuracy
    (Winograd's tiles would spread its rounding error over every output of the tile)."""
    x, w = _layer(rng, 3, 0.1)
    x[0, 5, 21, 22] = outlier
    exact = reference.conv2d(x.astype(np.float64), w.astype(np.float64), None, (1, 1),
                             (1, 1, 1, 1))
    outside = np.ones(exact.shape, bool)
    outside[:, :, 20:23, 21:24] = False           # the 3x3 outputs that see the outlier
    errors = {algorithm: np.abs(fc.conv2d(x, w, padding=1, algorithm=algorithm) - exact)
              for algorithm in ("auto", "im2col", "winograd")}
    im2col_error = errors["im2col"][outside].max()
    assert errors["auto"][outside].max() <= 2 * im2col_error
    # explicitly asked for, Winograd keeps its documented bound (and only that)
    assert errors["winograd"].max() <= 1e-3 * np.abs(exact).max()
    assert errors["winograd"][outside].max() > 100 * im2col_error


def _ordinary(rng, kind, shape):
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "relu":
        return np.maximum(rng.standard_normal(shape), 0)
    if kind == "sparse relu":                      # 80 % zeros
        return np.maximum(rng.standard_normal(shape), 0) * (rng.random(shape) < 0.4)
    if kind == "image":
        return rng.integers(0, 256, shape).astype(float)
    return rng.laplace(size=shape)


@pytest.mark.parametrize("kind", ["normal", "relu", "sparse relu", "image", "laplace"])
def test_ordinary_data_still_takes_winograd(kind, rng, winograd_calls):
    def first_call(result):             # the backend function `auto` called first
        name = winograd_calls[0] if winograd_calls else "not winograd"
        winograd_calls.clear()
        return name

    x = _ordinary(rng, kind, (4, 32, 40, 40)).astype(np.float32)
    for r in (3, 5):
        w = (rng.standard_normal((32, 32, r, r)) * 0.05).astype(np.float32)
        out = fc.conv2d(x, w, padding=r // 2)
        assert first_call(out) == "conv2d"
        go = _ordinary(rng, kind, out.shape).astype(np.float32)
        assert first_call(fc.conv2d_grad_input(go, w, x.shape, padding=r // 2)) == (
            "conv2d_grad_input")
    x = _ordinary(rng, kind, (1, 96, 56, 56)).astype(np.float32)
    go = _ordinary(rng, "normal", (1, 96, 56, 56)).astype(np.float32)
    assert first_call(fc.conv2d_grad_weight(go, x, (96, 96, 3, 3), padding=1)) == (
        "conv2d_grad_weight")


def test_nan_and_inf_are_refused_with_their_operand_named():
    x = np.ones((1, 16, 8, 8), np.float32)
    w = np.ones((16, 16, 3, 3), np.float32)
    assert winograd_safe("conv2d", x, w, 4, (3, 3))[0]
    bad = w.copy()
    bad[3, 2, 1, 1] = np.nan
    assert winograd_safe("conv2d", x, bad, 4, (3, 3)) == (False, "weight is not finite")
    inf = x.copy()
    inf[0, 1, 2, 3] = -np.inf
    assert winograd_safe("conv2d_grad_weight", inf, x, 4, (3, 3)) == (
        False, "grad_out is not finite")


def test_the_rule_reads_views_3d_empty_and_zero_operands():
    x = np.zeros((2, 16, 9, 9), np.float64)
    w = np.zeros((16, 16, 3, 3), np.float64)
    assert winograd_safe("conv2d", x, w, 4, (3, 3))[0]                     # all zeros
    assert winograd_safe("conv2d", x[:0], w, 4, (3, 3))[0]                 # no images
    assert winograd_safe("conv2d_grad_weight", x[0], x[0], 4, (3, 3))[0]   # 3-D
    view = np.ones((2, 16, 18, 9))[:, :, ::2]                             # strided
    view[1, 3, 4, 4] = 1e9
    assert not winograd_safe("conv2d", view, w, 4, (3, 3))[0]
    with pytest.raises(ValueError, match="operation"):
        winograd_safe("conv3d", x, w, 4, (3, 3))


def test_growth_bounds_every_intermediate_value(rng):
    """The bounds hold on the worst operands: +-1 patterns aligned with the matrices'
    signs reach each stage's bound exactly where it is tight, never beyond it."""
    for m, r in [(2, 3), (4, 3), (4, 5), (3, 4)]:
        AT, G, BT = winograd_matrices(m, r)
        g = growth(m, r)
        for _ in range(200):
            d = rng.choice([-1.0, 1.0], (m + r - 1,) * 2)
            w = rng.standard_normal((r, r))
            V = BT @ d @ BT.T
            U = G @ w @ G.T
            norm = np.abs(w).sum()
            assert np.abs(V).max() <= g.input
            assert np.abs(U).max() <= g.filter * norm * (1 + 1e-12)
            assert np.abs(U * V).max() <= g.product * norm * (1 + 1e-12)
            assert np.abs(AT @ (U * V)).max() <= g.output_rows * norm * (1 + 1e-12)
            assert np.abs(AT @ (U * V) @ AT.T).max() <= g.output * norm * (1 + 1e-12)
        worst = np.sign(BT)[np.abs(BT).sum(axis=1).argmax()]
        assert np.abs(BT @ np.outer(worst, worst) @ BT.T).max() == g.input


def test_growth_matches_the_transforms_known_magnification():
    """About 100x for F(4x4,3x3)'s input transform and 2e5x for F(4x4,5x5)'s."""
    assert growth(4, 3).input == 100
    assert growth(4, 5).input == 480 ** 2
    assert growth(2, 3).position < growth(4, 3).position < growth(4, 5).position


def test_the_weights_pass_is_reused_until_the_weights_change():
    """Inference calls repeat their weights: the weights' pass is kept, and a change
    the filter cache's sampled check sees (a refill, an Inf) is measured again."""
    x = np.ones((1, 16, 8, 8), np.float32)
    w = np.ones((16, 16, 3, 3), np.float32)
    assert winograd_safe("conv2d", x, w, 4, (3, 3))[0]
    assert winograd_safe("conv2d", x, w, 4, (3, 3))[0]
    w[...] = np.inf
    assert winograd_safe("conv2d", x, w, 4, (3, 3)) == (False, "weight is not finite")
    w[...] = 1.0
    assert winograd_safe("conv2d_grad_input", x, w, 4, (3, 3))[0]
