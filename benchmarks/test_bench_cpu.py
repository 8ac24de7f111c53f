"""CPU benchmarks: every fastconv algorithm against a NumPy im2col and PyTorch (oneDNN).

    pytest benchmarks/test_bench_cpu.py --benchmark-only --benchmark-json=cpu.json
    FASTCONV_BENCH_FULL=1 pytest benchmarks/ --benchmark-only     # + VGG conv2-5 at batch 8
    pytest benchmarks/ --benchmark-only -k resnet50_28             # one layer
    python -m fastconv bench                                       # run + report (docs/)

Each layer is one ``benchmark.group``; in it: ``fastconv-direct``,
``fastconv-im2col``, ``fastconv-winograd`` (F(4x4,3x3); 3x3 stride-1 layers only),
``fastconv-winograd_f2`` (F(2x2,3x3)), ``fastconv-auto``, ``numpy-im2col``
(benchmarks/baselines.py) and ``torch``. Every case runs once untimed first
(numba compiles on first call), then ``ROUNDS`` timed rounds; compare the minima.
float32 throughout. ``extra_info``: ``gflops`` (2*MACs of the direct convolution,
``shapes.conv_flops``, over the minimum time, for every implementation, so
Winograd's fewer multiplies show as a higher rate), ``layer``, ``impl``.

The default run (1-3 minutes on the 2-core machine) leaves out the four
batch-8 VGG-16 conv2-5 layers (30 GFLOP each) and the direct kernel on the layers
above 5 GFLOP; ``FASTCONV_BENCH_FULL=1`` runs everything. No timing is asserted.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import shapes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines  # noqa: E402

FULL = os.environ.get("FASTCONV_BENCH_FULL", "0") not in ("", "0")
ROUNDS = int(os.environ.get("FASTCONV_BENCH_ROUNDS", "10"))
DIRECT_MAX_GFLOP = 5.0          # direct is the slow baseline: skip it above this by default

try:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
except ImportError:                      # the torch cases skip themselves
    torch = None

# name: (x shape, w shape, stride, padding, groups, full-only)
LAYERS = {
    "vgg16_conv1_2": ((1, 64, 224, 224), (64, 64, 3, 3), 1, 1, 1, False),
    "vgg16_conv2_2": ((8, 128, 112, 112), (128, 128, 3, 3), 1, 1, 1, True),
    "vgg16_conv3_2": ((8, 256, 56, 56), (256, 256, 3, 3), 1, 1, 1, True),
    "vgg16_conv4_2": ((8, 512, 28, 28), (512, 512, 3, 3), 1, 1, 1, True),
    "vgg16_conv5_2": ((8, 512, 14, 14), (512, 512, 3, 3), 1, 1, 1, True),
    "resnet50_56": ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, False),
    "resnet50_28": ((8, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1, False),
    "resnet50_14": ((8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1, False),
    "resnet50_7": ((8, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, False),
    "resnet50_1x1": ((8, 256, 56, 56), (64, 256, 1, 1), 1, 0, 1, False),
    "strided_3x3": ((8, 64, 56, 56), (128, 64, 3, 3), 2, 1, 1, False),
    "conv_5x5": ((8, 32, 32, 32), (64, 32, 5, 5), 1, 2, 1, False),
    "depthwise_3x3": ((8, 64, 56, 56), (64, 1, 3, 3), 1, 1, 64, False),
    "mnist_lenet": ((64, 1, 28, 28), (32, 1, 3, 3), 1, 0, 1, False),
    "small_batch_3x3": ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, False),
}

IMPLS = ["direct", "im2col", "winograd", "winograd_f2", "auto", "numpy-im2col", "torch"]


def _geometry(spec):
    x_shape, w_shape, stride, padding, groups, _ = spec
    s, p, d, out_hw = shapes.conv_geometry(x_shape[2:], w_shape[2:], stride, padding, 1)
    return s, p, d, out_hw, shapes.conv_flops(x_shape, w_shape, out_hw, groups)


def _run(benchmark, fn, group, impl, flop=None, layer=None):
    fn()                                 # untimed: numba compiles, caches warm up
    benchmark.group = group
    benchmark.extra_info.update(layer=layer or group, impl=impl)
    if flop is not None:
        benchmark.extra_info["flop"] = flop
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    try:
        best = benchmark.stats.stats.min
        if flop is not None and best > 0:
            benchmark.extra_info["gflops"] = round(flop / best / 1e9, 2)
    except AttributeError:               # --benchmark-disable: no stats
        pass


def _conv_callable(impl, spec, x, w, b):
    x_shape, w_shape, stride, padding, groups, _ = spec
    s, p, d, out_hw, flop = _geometry(spec)
    winograd_ok = w_shape[2:] == (3, 3) and s == (1, 1)
    if impl in ("winograd", "winograd_f2") and not winograd_ok:
        pytest.skip("Winograd serves 3x3 stride 1 only")
    if impl == "direct" and flop > DIRECT_MAX_GFLOP * 1e9 and not FULL:
        pytest.skip("direct on a large layer: FASTCONV_BENCH_FULL=1")
    if impl == "numpy-im2col":
        return lambda: baselines.numpy_im2col_conv2d(x, w, b, s, p, d, groups)
    if impl == "torch":
        if torch is None:
            pytest.skip("torch not installed")
        xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
        return lambda: torch.nn.functional.conv2d(xt, wt, bt, stride, padding, 1, groups)
    if impl == "winograd_f2":
        from fastconv.cpu import winograd
        return lambda: winograd.conv2d(x, w, b, s, p, d, groups, out_hw, tile=2)
    return lambda: fc.conv2d(x, w, b, stride, padding, 1, groups, algorithm=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_conv2d(benchmark, layer, impl):
    spec = LAYERS[layer]
    if spec[5] and not FULL:
        pytest.skip("large VGG layer: FASTCONV_BENCH_FULL=1")
    x_shape, w_shape = spec[0], spec[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape, dtype=np.float32) * np.float32(np.sqrt(2 / np.prod(w_shape[1:])))
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    fn = _conv_callable(impl, spec, x, w, b)
    _run(benchmark, fn, f"conv {layer}", impl, _geometry(spec)[4], layer)


POOL_X = (8, 64, 112, 112)
POOLS = {  # name: (kind, kernel, stride, padding)
    "max_2x2": ("max", 2, 2, 0),
    "max_3x3_s2": ("max", 3, 2, 1),
    "avg_2x2": ("avg", 2, 2, 0),
    "avg_3x3_s2": ("avg", 3, 2, 1),
}


@pytest.mark.parametrize("impl", ["fastconv", "numpy", "torch"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_pool2d(benchmark, pool, impl):
    kind, k, s, p = POOLS[pool]
    x = np.random.default_rng(0).standard_normal(POOL_X, dtype=np.float32)
    if impl == "fastconv":
        f = fc.max_pool2d if kind == "max" else fc.avg_pool2d
        fn = lambda: f(x, k, s, p)  # noqa: E731
    elif impl == "numpy":
        f = baselines.numpy_max_pool2d if kind == "max" else baselines.numpy_avg_pool2d
        fn = lambda: f(x, (k, k), (s, s), (p,) * 4)  # noqa: E731
    else:
        if torch is None:
            pytest.skip("torch not installed")
        xt = torch.from_numpy(x)
        f = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
        fn = lambda: f(xt, k, s, p)  # noqa: E731
    _run(benchmark, fn, f"pool {pool}", impl, layer=pool)
    benchmark.extra_info["gb_per_s_bytes"] = x.nbytes


GRAD_X, GRAD_W = (8, 128, 28, 28), (128, 128, 3, 3)


@pytest.mark.parametrize("impl", ["direct", "im2col", "winograd", "auto", "torch"])
def test_conv2d_backward(benchmark, impl):
    """grad_input + grad_weight (fastconv) against one aten convolution_backward
    computing the same two (PyTorch's autograd calls exactly this)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(GRAD_X, dtype=np.float32)
    w = rng.standard_normal(GRAD_W, dtype=np.float32) * np.float32(0.03)
    go = rng.standard_normal(GRAD_X[:1] + GRAD_W[:1] + GRAD_X[2:], dtype=np.float32)
    flop = 2 * shapes.conv_flops(GRAD_X, GRAD_W, GRAD_X[2:])
    if impl == "torch":
        if torch is None:
            pytest.skip("torch not installed")
        xt, wt, got = (torch.from_numpy(a) for a in (x, w, go))

        def fn():
            return torch.ops.aten.convolution_backward(
                got, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, True, False])
    else:
        def fn():
            gi = fc.conv2d_grad_input(go, w, x.shape, 1, 1, algorithm=impl)
            gw = fc.conv2d_grad_weight(go, x, w.shape, 1, 1, algorithm=impl)
            return gi, gw
    _run(benchmark, fn, "backward 8x128x28x28 3x3", impl, flop, "backward_8x128x28x28")
