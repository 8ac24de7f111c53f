"""GPU benchmarks: fastconv's CUDA kernels against PyTorch/cuDNN and CuPy + cuBLAS.

    pytest benchmarks/test_bench_cuda.py --benchmark-only \
        --benchmark-columns=min,median,max --benchmark-json=cuda.json
    pytest benchmarks/test_bench_cuda.py -k "resnet50_3x3_28"     # one layer

Skipped (cleanly, at collection) unless numba.cuda sees a real GPU (not the
simulator) and CuPy or PyTorch can use it; each competitor is skipped where its
library is missing.

- Convolutions: every layer of ``LAYERS`` (batch 32; MNIST batch 64), forward,
  with each fastconv algorithm (``direct``, ``im2col``, ``winograd`` F(4x4),
  ``winograd_f2`` F(2x2), 3x3 stride-1 layers only) against cuDNN
  (``torch.nn.functional.conv2d`` with ``cudnn.benchmark = True`` and TF32 off)
  and CuPy im2col + cuBLAS (``cuda_baselines.im2col_conv2d``); grad_input and
  grad_weight for the layers of ``GRAD_LAYERS``. float32 throughout.
- GEMM: our SGEMM (``fastconv.cuda.gemm.matmul``) vs ``cupy.matmul`` and
  ``torch.matmul`` (cuBLAS, TF32 off) at 4096^3; DGEMM at 2048^3.
- Pooling: max/avg forward and max backward against cuDNN, with GB/s.

Every timed call ends with a device synchronisation (the clock stops after the
GPU is done), and every case runs untimed first: numba compiles each kernel
specialisation on its first call and cuDNN's ``benchmark`` mode searches
algorithms on the first call of a shape. ``extra_info`` holds ``tflops`` (from the
direct convolution's 2*MACs, ``shapes.conv_flops``, for every implementation, so
Winograd's fewer multiplies show as a higher rate) or ``gb_per_s`` (bytes of the
operands read and the results written, once each, over the median time).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import shapes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_baselines  # noqa: E402


def _gpu():
    """(usable, why, have_cupy, have_torch) without touching a GPU that is not there."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False, "the CUDA simulator is on: timings would mean nothing", False, False
    from fastconv.cuda import interop
    ok, why = interop.cuda_available()
    if not ok:
        return False, why, False, False
    have_cupy = have_torch = False
    try:
        import cupy
        have_cupy = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        pass
    try:
        import torch
        have_torch = torch.cuda.is_available()
    except Exception:
        pass
    if not (have_cupy or have_torch):
        return False, "neither CuPy nor PyTorch can use the GPU", False, False
    return True, why, have_cupy, have_torch


GPU_OK, GPU_WHY, HAVE_CUPY, HAVE_TORCH = _gpu()
pytestmark = pytest.mark.skipif(not GPU_OK, reason=f"no real GPU for benchmarks: {GPU_WHY}")

# name: (N, C, H, W, K, kernel, stride, padding, groups)
LAYERS = {
    "vgg16_conv1_2": (32, 64, 224, 224, 64, 3, 1, 1, 1),
    "vgg16_conv2_2": (32, 128, 112, 112, 128, 3, 1, 1, 1),
    "vgg16_conv3_2": (32, 256, 56, 56, 256, 3, 1, 1, 1),
    "vgg16_conv4_2": (32, 512, 28, 28, 512, 3, 1, 1, 1),
    "vgg16_conv5_2": (32, 512, 14, 14, 512, 3, 1, 1, 1),
    "resnet50_3x3_56": (32, 64, 56, 56, 64, 3, 1, 1, 1),
    "resnet50_3x3_28": (32, 128, 28, 28, 128, 3, 1, 1, 1),
    "resnet50_3x3_14": (32, 256, 14, 14, 256, 3, 1, 1, 1),
    "resnet50_3x3_7": (32, 512, 7, 7, 512, 3, 1, 1, 1),
    "resnet50_1x1_56": (32, 256, 56, 56, 64, 1, 1, 0, 1),
    "resnet50_1x1_14": (32, 1024, 14, 14, 256, 1, 1, 0, 1),
    "resnet50_3x3_s2": (32, 128, 56, 56, 128, 3, 2, 1, 1),
    "resnet50_stem_7x7_s2": (32, 3, 224, 224, 64, 7, 2, 3, 1),
    "alexnet_conv2_5x5": (32, 64, 27, 27, 192, 5, 1, 2, 1),
    "mobilenet_dw_3x3_56": (32, 128, 56, 56, 128, 3, 1, 1, 128),
    "mobilenet_dw_3x3_s2": (32, 256, 28, 28, 256, 3, 2, 1, 256),
    "mnist_conv1": (64, 1, 28, 28, 32, 3, 1, 1, 1),
    "mnist_conv2": (64, 32, 14, 14, 64, 3, 1, 1, 1),
}
GRAD_LAYERS = ["vgg16_conv3_2", "resnet50_3x3_28", "resnet50_3x3_7", "resnet50_1x1_56",
               "resnet50_3x3_s2", "mobilenet_dw_3x3_56"]

FASTCONV = ["direct", "im2col", "winograd", "winograd_f2"]
COMPETITORS = ["cudnn", "cupy_im2col"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _sync():
    from numba import cuda
    cuda.synchronize()                  # the primary context: numba, CuPy and torch
    if HAVE_TORCH:
        import torch
        torch.cuda.synchronize()


@pytest.fixture(autouse=True)
def _free_pools():
    """Give memory back between cases: numba, CuPy and torch each keep a pool."""
    yield
    _sync()
    if HAVE_CUPY:
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
    if HAVE_TORCH:
        import torch
        torch.cuda.empty_cache()


def _device(arr, kind):
    """A float32 host array on the GPU as kind 'cupy', 'torch' or the first available."""
    if kind == "cupy" or (kind == "any" and HAVE_CUPY):
        import cupy
        return cupy.asarray(arr)
    import torch
    return torch.as_tensor(arr, device="cuda")


def _need(library):
    if library == "cupy" and not HAVE_CUPY:
        pytest.skip("CuPy cannot use the GPU")
    if library == "torch" and not HAVE_TORCH:
        pytest.skip("PyTorch cannot use the GPU")


def _run(benchmark, fn, work_rounds=None):
    """Warm up (compilation, cuDNN search), then time fn() + synchronisation."""
    def timed():
        result = fn()
        _sync()
        return result
    timed()
    timed()
    rounds = work_rounds or 10
    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


def _median(benchmark):
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", None)
    return getattr(inner, "median", None)


def _record(benchmark, flops=None, nbytes=None, **info):
    benchmark.extra_info.update(info)
    t = _median(benchmark)
    if t:
        if flops is not None:
            benchmark.extra_info["tflops"] = flops / t / 1e12
        if nbytes is not None:
            benchmark.extra_info["gb_per_s"] = nbytes / t / 1e9


def _rounds(flops):
    return 3 if flops > 2e11 else 10


def _layer(name, rng):
    n, c, h, w, k, ks, stride, pad, groups = LAYERS[name]
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    weight = (rng.standard_normal((k, c // groups, ks, ks), dtype=np.float32)
              * np.float32((2.0 / (c // groups * ks * ks)) ** 0.5))
    bias = rng.standard_normal(k, dtype=np.float32)
    out_hw = shapes.output_size((h, w), (ks, ks), (stride, stride), (pad,) * 4)
    flops = shapes.conv_flops(x.shape, weight.shape, out_hw, groups)
    geom = dict(stride=stride, padding=pad, groups=groups)
    return x, weight, bias, out_hw, flops, geom


def _winograd_ok(name):
    _, _, _, _, _, ks, stride, _, _ = LAYERS[name]
    return ks == 3 and stride == 1


def _backend_winograd_f2(x, weight, bias, geom, out_hw):
    """F(2x2, 3x3): the API picks the tile itself, so call the backend directly."""
    from fastconv.cuda import interop, winograd
    s, p = geom["stride"], geom["padding"]
    return winograd.conv2d(interop.to_numba(x), interop.to_numba(weight),
                           interop.to_numba(bias), (s, s), (p,) * 4, (1, 1),
                           geom["groups"], out_hw, stream=interop.stream_of(x), tile=2)


def _skip_unsupported(name, algorithm):
    if algorithm.startswith("winograd") and not _winograd_ok(name):
        pytest.skip("Winograd: 3x3 stride 1 only")


# --------------------------------------------------------------------------
# convolution forward
# --------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", FASTCONV + COMPETITORS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_conv2d_forward(benchmark, name, algorithm):
    _skip_unsupported(name, algorithm)
    rng = np.random.default_rng(0)
    x, weight, bias, out_hw, flops, geom = _layer(name, rng)
    benchmark.group = f"conv2d {name}"
    if algorithm == "cudnn":
        _need("torch")
        cuda_baselines.configure_torch()
        args = [_device(a, "torch") for a in (x, weight, bias)]
        fn = lambda: cuda_baselines.torch_conv2d(*args, **geom)  # noqa: E731
    elif algorithm == "cupy_im2col":
        _need("cupy")
        args = [_device(a, "cupy") for a in (x, weight, bias)]
        ws = fc.config.workspace_bytes
        fn = lambda: cuda_baselines.im2col_conv2d(*args, workspace_bytes=ws, **geom)  # noqa
    elif algorithm == "winograd_f2":
        args = [_device(a, "any") for a in (x, weight, bias)]
        fn = lambda: _backend_winograd_f2(*args, geom, out_hw)  # noqa: E731
    else:
        args = [_device(a, "any") for a in (x, weight, bias)]
        fn = lambda: fc.conv2d(*args, algorithm=algorithm, **geom)  # noqa: E731
    _run(benchmark, fn, _rounds(flops))
    _record(benchmark, flops=flops, layer=name, algorithm=algorithm, gflop=flops / 1e9)


# --------------------------------------------------------------------------
# convolution gradients
# --------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd", "cudnn"])
@pytest.mark.parametrize("name", GRAD_LAYERS)
def test_conv2d_grad_input(benchmark, name, algorithm):
    _skip_unsupported(name, algorithm)
    rng = np.random.default_rng(1)
    x, weight, _, out_hw, flops, geom = _layer(name, rng)
    grad_out = rng.standard_normal((x.shape[0], weight.shape[0]) + out_hw, dtype=np.float32)
    benchmark.group = f"conv2d_grad_input {name}"
    if algorithm == "cudnn":
        _need("torch")
        cuda_baselines.configure_torch()
        go, w = _device(grad_out, "torch"), _device(weight, "torch")
        fn = lambda: cuda_baselines.torch_grad_input(go, w, x.shape, **geom)  # noqa: E731
    else:
        go, w = _device(grad_out, "any"), _device(weight, "any")
        fn = lambda: fc.conv2d_grad_input(go, w, x.shape, algorithm=algorithm, **geom)  # noqa
    _run(benchmark, fn, _rounds(flops))
    _record(benchmark, flops=flops, layer=name, algorithm=algorithm, gflop=flops / 1e9)


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "cudnn"])
@pytest.mark.parametrize("name", GRAD_LAYERS)
def test_conv2d_grad_weight(benchmark, name, algorithm):
    rng = np.random.default_rng(2)
    x, weight, _, out_hw, flops, geom = _layer(name, rng)
    grad_out = rng.standard_normal((x.shape[0], weight.shape[0]) + out_hw, dtype=np.float32)
    benchmark.group = f"conv2d_grad_weight {name}"
    if algorithm == "cudnn":
        _need("torch")
        cuda_baselines.configure_torch()
        go, xd = _device(grad_out, "torch"), _device(x, "torch")
        fn = lambda: cuda_baselines.torch_grad_weight(go, xd, weight.shape, **geom)  # noqa
    else:
        go, xd = _device(grad_out, "any"), _device(x, "any")
        fn = lambda: fc.conv2d_grad_weight(go, xd, weight.shape, algorithm=algorithm,  # noqa
                                           **geom)
    _run(benchmark, fn, _rounds(flops))
    _record(benchmark, flops=flops, layer=name, algorithm=algorithm, gflop=flops / 1e9)


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------

GEMMS = {"sgemm_4096": (4096, np.float32), "dgemm_2048": (2048, np.float64)}


# fastconv-2blocks: gemm.LARGE_2, the LARGE tile capped at 128 registers for two
# blocks per SM (spills outside the FMA loop), against LARGE's one block per SM.
@pytest.mark.parametrize("impl", ["fastconv", "fastconv-2blocks", "cupy", "torch"])
@pytest.mark.parametrize("case", list(GEMMS))
def test_gemm(benchmark, case, impl):
    size, dtype = GEMMS[case]
    rng = np.random.default_rng(3)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    benchmark.group = f"gemm {case}"
    if impl == "cupy":
        _need("cupy")
        import cupy
        da, db = cupy.asarray(a), cupy.asarray(b)
        fn = lambda: cupy.matmul(da, db)  # noqa: E731
    elif impl == "torch":
        _need("torch")
        torch = cuda_baselines.configure_torch()
        da, db = _device(a, "torch"), _device(b, "torch")
        fn = lambda: torch.matmul(da, db)  # noqa: E731
    else:
        if impl == "fastconv-2blocks" and dtype != np.float32:
            pytest.skip("LARGE_2 is a float32 tile (float64 takes WIDE)")
        from fastconv.cuda import _kernels, gemm, interop
        ha, hb = _device(a, "any"), _device(b, "any")     # keep the owners alive
        da, db = interop.to_numba(ha), interop.to_numba(hb)
        out = _kernels.empty((size, size), dtype)
        config = gemm.LARGE_2 if impl == "fastconv-2blocks" else None
        fn = lambda: gemm.matmul(da, db, out=out, config=config)  # noqa: E731
        # correctness on the GPU, once (not timed): a few rows against float64 NumPy
        fn()
        got = out.copy_to_host()[:8]
        want = a[:8].astype(np.float64) @ b
        tol = 1e-3 if dtype == np.float32 else 1e-9
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
    _run(benchmark, fn, 10)
    _record(benchmark, flops=2.0 * size ** 3, impl=impl, size=size,
            dtype=np.dtype(dtype).name)


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------

# name: (input shape, kernel, stride, padding)
POOLS = {
    "vgg_pool_2x2_224": ((32, 64, 224, 224), 2, 2, 0),
    "resnet_maxpool_3x3_s2_112": ((32, 64, 112, 112), 3, 2, 1),
    "vgg_pool_2x2_28": ((32, 512, 28, 28), 2, 2, 0),
}


@pytest.mark.parametrize("impl", ["fastconv", "cudnn"])
@pytest.mark.parametrize("op", ["max", "avg", "max_backward"])
@pytest.mark.parametrize("name", list(POOLS))
def test_pooling(benchmark, name, op, impl):
    shape, k, s, p = POOLS[name]
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape, dtype=np.float32)
    out_hw = shapes.output_size(shape[2:], (k, k), (s, s), (p,) * 4)
    out_elems = shape[0] * shape[1] * out_hw[0] * out_hw[1]
    grad_out = rng.standard_normal(shape[:2] + out_hw, dtype=np.float32)
    benchmark.group = f"pool {op} {name}"
    if impl == "cudnn":
        _need("torch")
        torch = cuda_baselines.configure_torch()
        F = torch.nn.functional
        xd = _device(x, "torch")
        if op == "max":
            fn = lambda: F.max_pool2d(xd, k, s, p)  # noqa: E731
        elif op == "avg":
            fn = lambda: F.avg_pool2d(xd, k, s, p)  # noqa: E731
        else:
            god = _device(grad_out, "torch")
            _, idx = F.max_pool2d(xd, k, s, p, return_indices=True)
            fn = lambda: torch.ops.aten.max_pool2d_with_indices_backward(  # noqa: E731
                god, xd, [k, k], [s, s], [p, p], [1, 1], False, idx)
    else:
        xd = _device(x, "any")
        if op == "max":
            fn = lambda: fc.max_pool2d(xd, k, s, p)  # noqa: E731
        elif op == "avg":
            fn = lambda: fc.avg_pool2d(xd, k, s, p)  # noqa: E731
        else:
            god = _device(grad_out, "any")
            fn = lambda: fc.max_pool2d_backward(god, xd, k, s, p)  # noqa: E731
    # bytes moved, once each: forward reads x and writes out; backward reads
    # grad_out and x (fastconv recomputes the winners; cuDNN reads int64 indices,
    # counted as x here: a like-for-like byte count) and writes grad_input.
    if op == "max_backward":
        nbytes = 4 * (out_elems + 2 * x.size)
    else:
        nbytes = 4 * (x.size + out_elems)
    _run(benchmark, fn, 20)
    _record(benchmark, nbytes=nbytes, impl=impl, op=op, pool=name)
