"""Cost of `auto`'s Winograd safety check (`winograd_safe`) against the convolution it
guards, on ResNet-50's 3x3 layers at batch 8 (float32, CPU), for the forward pass,
grad_input and grad_weight.

    python benchmarks/winograd_safety_cost.py       # a markdown table

Each time is the median of interleaved repeats in steady state (kernels compiled,
filters kept); "finite sum" is the one-pass `sum` check it replaced.
"""
from __future__ import annotations

import time

import numpy as np

import fastconv as fc
from fastconv.winograd_transforms import winograd_safe

LAYERS = [(8, 64, 56), (8, 128, 28), (8, 256, 14), (8, 512, 7)]   # (N, C, H = W), C -> C
REPEATS = 15


def _median_ms(functions):
    times = {name: [] for name in functions}
    for _ in range(REPEATS):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def _finite_sum(*arrays):
    with np.errstate(over="ignore", invalid="ignore"):
        return all(np.isfinite(a.sum(dtype=a.dtype)) for a in arrays)


def measure(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n, c, hw in LAYERS:
        x = np.maximum(rng.standard_normal((n, c, hw, hw)), 0).astype(np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        go = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        ms = _median_ms({
            "conv2d": lambda: fc.conv2d(x, w, padding=1, algorithm="winograd"),
            "check": lambda: winograd_safe("conv2d", x, w, 4, (3, 3)),
            "finite sum": lambda: _finite_sum(x, w),
            "grad_input": lambda: fc.conv2d_grad_input(go, w, x.shape, padding=1,
                                                       algorithm="winograd"),
            "check gi": lambda: winograd_safe("conv2d_grad_input", go, w, 4, (3, 3)),
            "grad_weight": lambda: fc.conv2d_grad_weight(go, x, w.shape, padding=1,
                                                         algorithm="winograd"),
            "check gw": lambda: winograd_safe("conv2d_grad_weight", go, x, 4, (3, 3)),
        })
        rows.append((f"{n}x{c}x{hw}x{hw}", ms))
    return rows


def main():
    print("| layer (3x3, C -> C) | conv2d ms | check ms (%) | finite sum ms "
          "| grad_input ms | check ms (%) | grad_weight ms | check ms (%) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ms in measure():
        def pct(check, op):
            return f"{ms[check]:.2f} ({100 * ms[check] / ms[op]:.0f}%)"
        print(f"| {name} | {ms['conv2d']:.1f} | {pct('check', 'conv2d')} "
              f"| {ms['finite sum']:.2f} | {ms['grad_input']:.1f} | "
              f"{pct('check gi', 'grad_input')} | {ms['grad_weight']:.1f} | "
              f"{pct('check gw', 'grad_weight')} |")


if __name__ == "__main__":
    main()
