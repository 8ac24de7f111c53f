"""Guarantees of docs/reliability.md: NaN/Inf semantics, determinism, concurrency,
a broken JIT cache, numerical edge values."""
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference, shapes, threads

from .conftest import assert_close

CONV_ALGORITHMS = ["direct", "im2col", "winograd"]


# ---------------------------------------------------------------- NaN and Inf

def _nan_pattern_case(rng, dtype):
    x = rng.standard_normal((2, 3, 12, 12)).astype(dtype)
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 9, 9] = np.inf
    x[1, 2, 5, 0] = -np.inf
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    return x, w


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_like_the_reference(algorithm, dtype, rng):
    """A NaN or Inf reaches exactly the outputs whose window holds it (Inf*w is
    +-Inf, sums of +Inf and -Inf are NaN): the reference's and PyTorch's pattern."""
    x, w = _nan_pattern_case(rng, dtype)
    out = fc.conv2d(x, w, padding=1, algorithm=algorithm)
    expected = reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert_close(np.where(finite, out, 0), np.where(finite, expected, 0), dtype)


def _assert_same_nonfinite_pattern(out, expected, dtype):
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert_close(np.where(finite, out, 0), np.where(finite, expected, 0), dtype)


# (C_in, C_out, groups, kernel, stride, padding, dilation): between them they run each
# direct kernel (columns-inner, channels-inner, depthwise planes, grad_input as a forward)
NONFINITE_LAYERS = [
    (3, 4, 1, (3, 3), 1, 1, 1),
    (2, 32, 1, (3, 2), 1, ((2, 0), (1, 1)), 1),
    (32, 4, 1, (3, 3), 2, 1, 1),
    (4, 4, 4, (3, 3), 1, 1, 1),
    (4, 8, 4, (3, 3), 2, 2, 2),
]


@pytest.mark.parametrize("where", ["weight", "grad_out", "x"])
@pytest.mark.parametrize("algorithm", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("layer", NONFINITE_LAYERS, ids=str)
def test_padding_times_inf_is_nan_in_every_operation(layer, algorithm, where, rng):
    """PyTorch multiplies the zero padding: 0 * Inf over the padding is NaN, in the
    forward pass (an Inf weight) and the weight gradient (an Inf in grad_out); the
    input gradient has no padding terms. Each operation's NaN/Inf pattern is the
    reference's, one non-finite value at a time."""
    c_in, c_out, groups, kernel, stride, padding, dilation = layer
    x = rng.standard_normal((2, c_in, 7, 6))
    w = rng.standard_normal((c_out, c_in // groups) + kernel)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    go = rng.standard_normal(fc.conv2d(x, w, **options).shape)
    dilation_hw = shapes.pair(dilation, "dilation")
    ref = (shapes.pair(stride, "stride"), shapes.conv_padding(padding, kernel, dilation_hw, stride),
           dilation_hw, groups)
    target = {"weight": w, "grad_out": go, "x": x}[where]
    for value in [np.inf, -np.inf, np.nan]:
        target.flat[0] = value                  # a corner: over the padding of some window
        target.flat[target.size // 2 + 1] = -value if value != value else 1.0
        _assert_same_nonfinite_pattern(
            fc.conv2d(x, w, algorithm=algorithm, **options),
            reference.conv2d(x, w, None, *ref), np.float64)
        _assert_same_nonfinite_pattern(
            fc.conv2d_grad_input(go, w, x.shape, algorithm=algorithm, **options),
            reference.conv2d_grad_input(go, w, x.shape, *ref), np.float64)
        _assert_same_nonfinite_pattern(
            fc.conv2d_grad_weight(go, x, w.shape, algorithm=algorithm, **options),
            reference.conv2d_grad_weight(go, x, w.shape, *ref), np.float64)


def test_direct_weight_gradient_of_an_overflow_is_inf():
    """The direct kernel's column sums once started from a[0] * 0, NaN for an Inf."""
    go = np.array([[[[np.inf, 1.0]]]])
    x = np.ones((1, 1, 1, 2))
    assert fc.conv2d_grad_weight(go, x, (1, 1, 1, 1), algorithm="direct")[0, 0, 0, 0] == np.inf
    big = np.full((1, 2, 4, 4), 3e19, np.float32)      # products overflow float32
    gw = fc.conv2d_grad_weight(big, big, (2, 1, 1, 1), groups=2)   # auto: direct
    assert np.isposinf(gw).all()


def test_nan_pattern_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w = _nan_pattern_case(rng, np.float32)
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    for algorithm in ["direct", "im2col", "auto"]:
        out = fc.conv2d(x, w, padding=1, algorithm=algorithm)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
    values = fc.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(
        values, torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1).numpy())
    avg = fc.avg_pool2d(x, 3, 2, 1)
    ref = torch.nn.functional.avg_pool2d(torch.tensor(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(np.isnan(avg), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(avg), np.isinf(ref))


def test_winograd_spreads_a_nan_over_its_tile_but_auto_does_not(rng):
    """Winograd mixes a whole input tile, so one NaN poisons the tile's outputs:
    documented. `auto` therefore never runs Winograd on non-finite input."""
    x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    x[0, 0, 7, 7] = np.nan
    expected_nan = np.isnan(reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1)))
    out = fc.conv2d(x, w, padding=1, algorithm="winograd")
    assert np.isnan(out)[expected_nan].all()  # never fewer NaN than the reference
    np.testing.assert_array_equal(np.isnan(fc.conv2d(x, w, padding=1)), expected_nan)


def test_max_pool_nan_wins_and_its_index_is_reported():
    x = np.array([[[[1.0, np.nan], [5.0, 2.0]]]])
    values, indices = fc.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(values[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 1


@pytest.mark.parametrize("tile_values", ["negative_zero", "denormal", "large"])
def test_winograd_edge_values_within_bound(tile_values, rng):
    x = rng.standard_normal((1, 16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    if tile_values == "negative_zero":
        x[:, :, ::2] = -0.0
    elif tile_values == "denormal":
        x *= np.float32(1e-39)  # below float32's smallest normal, 1.2e-38
    else:
        x *= np.float32(1e30)
    expected = reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1))
    out = fc.conv2d(x, w, padding=1, algorithm="winograd")
    assert np.isfinite(out).all()
    scale = np.abs(expected).max()
    assert np.abs(out - expected).max() <= 1e-3 * scale + 1e-45


# ---------------------------------------------------------------- the sign of zero

def test_relu_keeps_negative_zero_like_torch():
    x = np.array([-0.0, 0.0, -1.0, -np.inf, np.nan, 2.0, -1e-45], np.float32)
    out = fc.relu(x)
    np.testing.assert_array_equal(np.signbit(out), [True, False, False, False, False, False, False])
    np.testing.assert_array_equal(out, [0, 0, 0, 0, np.nan, 2, 0])
    assert fc.relu(np.array(-0.0)).shape == () and np.signbit(fc.relu(np.array(-0.0)))
    torch = pytest.importorskip("torch")
    expected = torch.relu(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))


@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
@pytest.mark.parametrize("padding", [0, 1])
def test_a_convolution_of_negative_zeros_is_positive_zero(algorithm, padding):
    """Every algorithm sums from +0.0 and adds the bias last (direct once started from a
    -0.0 bias and kept it): a sum of zeros is +0.0 in every operation."""
    x = np.full((2, 3, 6, 6), -0.0)
    w = np.ones((4, 3, 3, 3))
    bias = np.full(4, -0.0)
    out = fc.conv2d(x, w, bias, padding=padding, algorithm=algorithm)
    assert (out == 0).all() and not np.signbit(out).any()
    go = np.full(out.shape, -0.0)
    assert not np.signbit(fc.conv2d_grad_input(go, w, x.shape, padding=padding,
                                               algorithm=algorithm)).any()
    assert not np.signbit(fc.conv2d_grad_weight(np.ones(out.shape), x, w.shape, padding=padding,
                                                algorithm=algorithm)).any()
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(bias),
                                          padding=padding).numpy()
    np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_a_single_tap_convolution_gives_positive_zero_where_torch_gives_its_product(algorithm):
    """Documented difference: with one tap per output (C_in/groups * kH * kW == 1) torch
    returns x * w (+ bias) itself, -0.0 for -0.0 * 1; fastconv sums from +0.0. The two
    zeros compare equal."""
    x, w = np.full((1, 1, 4, 4), -0.0), np.ones((2, 1, 1, 1))
    out = fc.conv2d(x, w, algorithm=algorithm)
    assert not np.signbit(out).any()
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w)).numpy()
    assert np.signbit(expected).all()
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
def test_float64_agrees_with_reference_to_1e10(algorithm, rng):
    x = rng.standard_normal((2, 5, 13, 11))
    w = rng.standard_normal((6, 5, 3, 3))
    out = fc.conv2d(x, w, padding=((0, 2), (1, 1)), algorithm=algorithm)
    expected = reference.conv2d(x, w, None, (1, 1), (0, 2, 1, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
def test_same_call_twice_is_bitwise_identical(algorithm, rng):
    x = rng.standard_normal((3, 8, 17, 15)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    go = rng.standard_normal((3, 8, 17, 15)).astype(np.float32)
    for _ in range(2):
        results = [fc.conv2d(x, w, padding=1, algorithm=algorithm),
                   fc.conv2d_grad_input(go, w, x.shape, padding=1, algorithm=algorithm),
                   fc.conv2d_grad_weight(go, x, w.shape, padding=1, algorithm=algorithm),
                   fc.max_pool2d_backward(go, x, 3, 1, 1),
                   fc.avg_pool2d_backward(go[:, :, :9, :8], x.shape, 3, 2, 1, ceil_mode=True)]
        if _ == 0:
            first = results
    for a, b in zip(first, results):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- concurrency

def test_many_threads_give_the_single_thread_results(rng):
    x = rng.standard_normal((2, 6, 20, 20)).astype(np.float32)
    w = rng.standard_normal((6, 6, 3, 3)).astype(np.float32)
    jobs = [("conv", algorithm) for algorithm in CONV_ALGORITHMS] + [("max", None), ("avg", None)]

    def run(job):
        kind, algorithm = job
        if kind == "conv":
            return fc.conv2d(x, w, padding=1, algorithm=algorithm)
        if kind == "max":
            return fc.max_pool2d(x, 3, 2, 1, return_indices=True)[1]
        return fc.avg_pool2d(x, 2)

    expected = {job: run(job) for job in jobs}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: (job, run(job)), jobs * 8))
    for job, result in results:
        np.testing.assert_array_equal(result, expected[job])


def _choose_threading_layer():
    """numba picks its threading layer when its thread pool starts; until then
    cpu_slot serialises (the layer might be the unsafe workqueue). Start it."""
    fc.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 2, 2), np.float32),
              algorithm="direct")
    return numba.threading_layer()


def test_concurrent_calls_share_numba_threads():
    """C callers in flight at once take at most threads + C - 1 threads between them.
    (Alone, before any kernel had run, this once waited 30 s on a barrier that the
    serialised slots could never reach.)"""
    if _choose_threading_layer() == "workqueue":
        pytest.skip("numba's workqueue layer serialises calls: no threads to share")
    total = numba.config.NUMBA_NUM_THREADS
    callers = 4
    barrier = threading.Barrier(callers)
    seen = []

    def caller():
        with threads.cpu_slot():
            barrier.wait(timeout=10)  # all callers in flight at once
            seen.append(numba.get_num_threads())
            barrier.wait(timeout=10)

    pool = [threading.Thread(target=caller) for _ in range(callers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(seen) == callers
    # Without sharing: callers * total threads. With it: at most one extra per caller.
    assert sum(seen) <= total + callers - 1


def test_config_changes_between_calls_are_safe(rng):
    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    expected = fc.conv2d(x, w, padding=1, algorithm="im2col")
    original = fc.config.workspace_bytes
    stop = threading.Event()

    def flip():
        sizes = [4096, 64 * 1024, original]
        i = 0
        while not stop.is_set():
            fc.config.workspace_bytes = sizes[i % 3]
            i += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(10):
            np.testing.assert_allclose(fc.conv2d(x, w, padding=1, algorithm="im2col"),
                                       expected, rtol=1e-5, atol=1e-5)
    finally:
        stop.set()
        flipper.join()
        fc.config.workspace_bytes = original


# ---------------------------------------------------------------- JIT cache

_SCRIPT = textwrap.dedent("""
    import warnings, numpy as np, fastconv as fc
    from fastconv.cpu import gemm
    x = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6) / 50
    w = np.ones((2, 3, 3, 3), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fc.conv2d(x, w, padding=1, algorithm="direct")
        if gemm.HOST is not None:   # a kernel made per parameter set, kept in a dict
            u, v = x.reshape(3, 2, 36)[:, :, :2].copy(), x.reshape(3, 2, 36)
            out = out.sum() + fc.jitcache.call(gemm.batched_matmul, u, v,
                                               np.empty((3, 2, 36), np.float32), 1,
                                               gemm.HOST.narrow).sum()
    print(repr(float(out.sum())), sum("cache" in str(c.message) for c in caught))
""")


def _run_with_cache(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    total, warnings_count = result.stdout.split()
    return float(total), int(warnings_count)


def test_missing_unusable_and_corrupt_cache_still_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    expected, _ = _run_with_cache(blocker / "cache")        # cache dir cannot exist
    cache = tmp_path / "cache"
    assert _run_with_cache(cache) == (expected, 0)           # missing: created
    assert _run_with_cache(cache) == (expected, 0)           # warm
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert any(p.suffix == ".nbi" for p in files)
    for path in files:                                       # a broken, stale cache
        path.write_bytes(b"\x80garbage")
    total, warned = _run_with_cache(cache)
    assert total == expected and warned >= 1
    assert _run_with_cache(cache) == (expected, 0)           # repaired for next time


def test_max_pool_window_wholly_in_padding_has_no_winner():
    """Found by the fuzzer: with dilation a window can hold only padding. Its value
    is -inf (as PyTorch) and its index -1 (PyTorch reports a position outside the
    window); backward sends its gradient nowhere instead of out of bounds."""
    x = np.array([[[[3.0]]]], np.float32)
    values, indices = fc.max_pool2d(x, (1, 2), padding=(0, 1), dilation=(1, 2),
                                    return_indices=True)
    assert values.shape == (1, 1, 1, 1)
    assert np.isneginf(values[0, 0, 0, 0]) and indices[0, 0, 0, 0] == -1
    grad = fc.max_pool2d_backward(np.array([[[[5.0]]]], np.float32), x, (1, 2),
                                  padding=(0, 1), dilation=(1, 2))
    np.testing.assert_array_equal(grad, [[[[0.0]]]])
