"""Interleaved timings of the same cases as test_bench_cpu.py, for robust ratios.

    python benchmarks/interleaved.py --rounds 15 --json interleaved.json [-k resnet] [--full]
    python -m fastconv bench --json interleaved.json      # the same report

pytest-benchmark times one implementation after another, so on a busy shared
machine a load spike lands on one of them. Here every round calls each
implementation of a layer twice, round-robin, and the minimum over rounds is kept:
the ratios between implementations are then measured side by side. The JSON has
the fields of a pytest-benchmark file that `fastconv.bench` reads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

# before NumPy loads OpenBLAS: see benchmarks/conftest.py
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cases(select=None):
    """(group, impl, callable, flop) for every case the pytest suite has."""
    import pytest

    import test_bench_cpu as t
    import fastconv as fc
    out = []
    for layer, spec in t.LAYERS.items():
        if spec[5] and not t.FULL:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal(spec[0], dtype=np.float32)
        w = rng.standard_normal(spec[1], dtype=np.float32) * np.float32(
            np.sqrt(2 / np.prod(spec[1][1:])))
        b = rng.standard_normal(spec[1][0], dtype=np.float32)
        flop = t._geometry(spec)[4]
        for impl in t.IMPLS:
            try:
                out.append((f"conv {layer}", impl, t._conv_callable(impl, spec, x, w, b), flop))
            except pytest.skip.Exception:
                pass
    xp = np.random.default_rng(0).standard_normal(t.POOL_X, dtype=np.float32)
    for pool, (kind, k, s, p) in t.POOLS.items():
        xt = t.torch.from_numpy(xp)
        fcf = fc.max_pool2d if kind == "max" else fc.avg_pool2d
        npf = (t.baselines.numpy_max_pool2d if kind == "max"
               else t.baselines.numpy_avg_pool2d)
        thf = (t.torch.nn.functional.max_pool2d if kind == "max"
               else t.torch.nn.functional.avg_pool2d)
        out += [(f"pool {pool}", "fastconv", lambda f=fcf, k=k, s=s, p=p: f(xp, k, s, p), None),
                (f"pool {pool}", "numpy",
                 lambda f=npf, k=k, s=s, p=p: f(xp, (k, k), (s, s), (p,) * 4), None),
                (f"pool {pool}", "torch",
                 lambda f=thf, k=k, s=s, p=p, xt=xt: f(xt, k, s, p), None)]
    rng = np.random.default_rng(0)
    gx = rng.standard_normal(t.GRAD_X, dtype=np.float32)
    gw = rng.standard_normal(t.GRAD_W, dtype=np.float32) * np.float32(0.03)
    go = rng.standard_normal(t.GRAD_X[:1] + t.GRAD_W[:1] + t.GRAD_X[2:], dtype=np.float32)
    flop = 2 * t.shapes.conv_flops(t.GRAD_X, t.GRAD_W, t.GRAD_X[2:])
    for impl in ["direct", "im2col", "winograd", "auto"]:
        out.append(("backward 8x128x28x28 3x3", impl,
                    lambda a=impl: (fc.conv2d_grad_input(go, gw, gx.shape, 1, 1, algorithm=a),
                                    fc.conv2d_grad_weight(go, gx, gw.shape, 1, 1, algorithm=a)),
                    flop))
    tt = t.torch
    xt, wt, got = (tt.from_numpy(a) for a in (gx, gw, go))
    out.append(("backward 8x128x28x28 3x3", "torch",
                lambda: tt.ops.aten.convolution_backward(got, xt, wt, None, [1, 1], [1, 1],
                                                         [1, 1], False, [0, 0], 1,
                                                         [True, True, False]), flop))
    if select:
        out = [c for c in out if select in c[0] or select in c[1]]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", default="interleaved.json")
    parser.add_argument("-k", dest="select")
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args(argv)
    if args.full:
        os.environ["FASTCONV_BENCH_FULL"] = "1"
    todo = cases(args.select)
    groups = {}
    for group, impl, fn, flop in todo:
        groups.setdefault(group, []).append((impl, fn, flop))
    results = []
    for group, impls in groups.items():
        for _, fn, _ in impls:
            fn()                                   # compile / warm up
        best = {impl: float("inf") for impl, _, _ in impls}
        for _ in range(args.rounds):
            for impl, fn, _ in impls:
                # two calls back to back: the second starts with its own data and
                # scratch in cache, not with what the previous implementation left
                for _ in range(2):
                    start = time.perf_counter()
                    fn()
                    best[impl] = min(best[impl], time.perf_counter() - start)
        line = []
        for impl, _, flop in impls:
            info = {"impl": impl, "layer": group}
            if flop:
                info["gflops"] = round(flop / best[impl] / 1e9, 2)
            results.append({"group": group, "name": f"{group}[{impl}]", "param": impl,
                            "extra_info": info, "stats": {"min": best[impl]}})
            line.append(f"{impl} {best[impl] * 1e3:.2f}")
        print(group + ": " + ", ".join(line), flush=True)
    import platform

    from fastconv import bench
    data = {"machine_info": {"python_version": platform.python_version(),
                             "cpu_model": bench.cpu_model(), "threads": bench.threads_here(),
                             "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT")},
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "benchmarks": results}
    with open(args.json, "w") as f:
        json.dump(data, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
