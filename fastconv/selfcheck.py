"""`python -m fastconv check`: every operator and algorithm on this machine,
against the float64 references, as a pass/fail table."""
from __future__ import annotations

import numpy as np

from . import api, reference
from .shapes import conv_geometry, pool_geometry

# (x shape, weight shape, stride, padding, dilation, groups): small but with
# partial tiles, asymmetric padding, dilation and groups.
CONV_CASES = [
    ((2, 3, 11, 10), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 9, 12), (6, 2, 3, 3), 1, ((0, 2), (1, 0)), 1, 2),
    ((2, 3, 13, 11), (5, 3, 5, 3), (2, 1), 2, (1, 2), 1),
    ((1, 6, 8, 8), (6, 1, 3, 3), 1, "same", 1, 6),
    ((3, 8, 6, 6), (4, 8, 1, 1), 1, 0, 1, 1),
]
POOL_CASES = [  # (x shape, kernel_size, stride, padding, dilation, ceil_mode)
    ((2, 3, 9, 8), 2, None, 0, 1, False),
    ((1, 2, 11, 10), 3, 2, 1, 1, True),
    ((2, 2, 10, 9), (3, 2), (2, 1), (1, 0), (2, 1), False),
]
ALGORITHMS = ("direct", "im2col", "winograd")


def _tolerance(dtype, algorithm):
    if dtype == np.float64:
        return 1e-10
    return 1e-3 if algorithm == "winograd" else 1e-4


def _error(result, expected):
    result = np.asarray(result, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    return float(np.max(np.abs(result - expected))) / scale if expected.size else 0.0


def _conv_rows(rng, dtype, device, to_device, to_host):
    for x_shape, w_shape, stride, padding, dilation, groups in CONV_CASES:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(w_shape[0]).astype(dtype)
        s, p, d, out_hw = conv_geometry(x_shape[2:], w_shape[2:], stride, padding, dilation)
        go = rng.standard_normal((x_shape[0], w_shape[0]) + out_hw).astype(dtype)
        expected = {
            "conv2d": reference.conv2d(x, w, b, s, p, d, groups),
            "conv2d_grad_input": reference.conv2d_grad_input(go, w, x_shape, s, p, d, groups),
            "conv2d_grad_weight": reference.conv2d_grad_weight(go, x, w_shape, s, p, d, groups),
        }
        geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        for algorithm in ALGORITHMS:
            ok, _ = api.winograd_supports(w_shape, s, d)
            if algorithm == "winograd" and not ok:
                continue
            calls = {
                "conv2d": lambda: api.conv2d(to_device(x), to_device(w), to_device(b),
                                             algorithm=algorithm, **geometry),
                "conv2d_grad_input": lambda: api.conv2d_grad_input(
                    to_device(go), to_device(w), x_shape, algorithm=algorithm, **geometry),
                "conv2d_grad_weight": lambda: api.conv2d_grad_weight(
                    to_device(go), to_device(x), w_shape, algorithm=algorithm, **geometry),
            }
            for operation, call in calls.items():
                yield (device, operation, algorithm, dtype, x_shape,
                       _error(to_host(call()), expected[operation]),
                       _tolerance(dtype, algorithm))


def _pool_rows(rng, dtype, device, to_device, to_host):
    for x_shape, kernel_size, stride, padding, dilation, ceil_mode in POOL_CASES:
        x = rng.standard_normal(x_shape).astype(dtype)
        k, s, p, d, out_hw = pool_geometry(x_shape[2:], kernel_size, stride, padding,
                                           dilation, ceil_mode)
        go = rng.standard_normal(x_shape[:2] + out_hw).astype(dtype)
        geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                        ceil_mode=ceil_mode)
        tol = _tolerance(dtype, "direct")
        values, indices = api.max_pool2d(to_device(x), dilation=dilation,
                                         return_indices=True, **geometry)
        ref_values, ref_indices = reference.max_pool2d(x, k, s, p, d, ceil_mode)
        index_error = 0.0 if np.array_equal(to_host(indices), ref_indices) else np.inf
        yield (device, "max_pool2d", "-", dtype, x_shape,
               max(_error(to_host(values), ref_values), index_error), tol)
        yield (device, "max_pool2d_backward", "-", dtype, x_shape,
               _error(to_host(api.max_pool2d_backward(to_device(go), to_device(x),
                                                      dilation=dilation, **geometry)),
                      reference.max_pool2d_backward(go, x, k, s, p, d, ceil_mode)), tol)
        if d != (1, 1):
            continue
        for count_include_pad in (True, False):
            options = dict(count_include_pad=count_include_pad, **geometry)
            yield (device, "avg_pool2d", "-", dtype, x_shape,
                   _error(to_host(api.avg_pool2d(to_device(x), **options)),
                          reference.avg_pool2d(x, k, s, p, ceil_mode, count_include_pad)),
                   tol)
            yield (device, "avg_pool2d_backward", "-", dtype, x_shape,
                   _error(to_host(api.avg_pool2d_backward(to_device(go), x_shape, **options)),
                          reference.avg_pool2d_backward(go, x_shape, k, s, p, ceil_mode,
                                                        count_include_pad)), tol)


def rows(devices=("cpu",), dtypes=(np.float32, np.float64), seed=0):
    """Yield (device, operation, algorithm, dtype, shape, error, tolerance)."""
    rng = np.random.default_rng(seed)
    for device in devices:
        if device == "cuda":
            from numba import cuda
            to_device, to_host = cuda.to_device, lambda a: a.copy_to_host()
        else:
            to_device, to_host = (lambda a: a), np.asarray
        for dtype in dtypes:
            yield from _conv_rows(rng, dtype, device, to_device, to_host)
            yield from _pool_rows(rng, dtype, device, to_device, to_host)


def main(devices=("cpu",)) -> int:
    header = f"{'device':6} {'operation':20} {'algorithm':9} {'dtype':7} {'input':16} {'rel. error':>10}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for device, operation, algorithm, dtype, shape, error, tol in rows(devices):
        passed = error <= tol
        failures += not passed
        print(f"{device:6} {operation:20} {algorithm:9} {np.dtype(dtype).name:7} "
              f"{'x'.join(map(str, shape)):16} {error:10.2e}  {'pass' if passed else 'FAIL'}")
    print(f"\n{'all passed' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0
