"""im2col layers in three import orders, each in a process of its own, for one or more
fastconv checkouts (before/after a GEMM change), the processes taking turns.

    python benchmarks/gemm_layers.py --rounds 3 [--tree main=/path/a --tree branch=/path/b]

Orders: fastconv first; numpy first; torch, then numpy, then fastconv. Each process times
every layer in steady state (the minimum of several calls after a warm-up); the table
keeps the minimum over the rounds. Prints ms per call and the CPU model.
"""
import argparse
import json
import os
import subprocess
import sys

ORDERS = {"fastconv first": ["fastconv", "numpy"], "numpy first": ["numpy", "fastconv"],
          "torch first": ["torch", "numpy", "fastconv"]}
# (name, x shape, weight shape, stride, padding)
LAYERS = [("small 32x16x8x8->32", (32, 16, 8, 8), (32, 16, 3, 3), 1, 1),
          ("resnet 8x256x14x14", (8, 256, 14, 14), (256, 256, 3, 3), 1, 1),
          ("resnet 8x512x7x7", (8, 512, 7, 7), (512, 512, 3, 3), 1, 1),
          ("strided 8x64x56x56->128 s2", (8, 64, 56, 56), (128, 64, 3, 3), 2, 1),
          ("5x5 8x32x32x32->64", (8, 32, 32, 32), (64, 32, 5, 5), 1, 2)]
BACKWARD = ("backward 8x128x28x28", (8, 128, 28, 28), (128, 128, 3, 3), 1, 1)

CHILD = r'''
import sys, json, time
for name in sys.argv[1].split(","):
    __import__(name)
import numpy as np, fastconv as fc
layers, backward = json.loads(sys.argv[2]), json.loads(sys.argv[3])
rng = np.random.default_rng(0)
def best(f, calls):
    f(); f()
    t = 1e9
    for _ in range(calls):
        t0 = time.perf_counter(); f(); t = min(t, time.perf_counter() - t0)
    return t * 1e3
result = {}
for name, xs, ws, s, p in layers:
    x = rng.standard_normal(xs, dtype=np.float32); w = rng.standard_normal(ws, dtype=np.float32)
    calls = 50 if xs[0] * xs[1] * xs[2] * xs[3] < 10**5 else 8
    result[name] = best(lambda: fc.conv2d(x, w, stride=s, padding=p, algorithm="im2col"), calls)
name, xs, ws, s, p = backward
x = rng.standard_normal(xs, dtype=np.float32); w = rng.standard_normal(ws, dtype=np.float32)
go = fc.conv2d(x, w, stride=s, padding=p, algorithm="im2col")
def both():
    fc.conv2d_grad_input(go, w, x.shape, stride=s, padding=p, algorithm="im2col")
    fc.conv2d_grad_weight(go, x, w.shape, stride=s, padding=p, algorithm="im2col")
result[name] = best(both, 5)
print(json.dumps(result))
'''


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines()
                 if l.startswith("Model name")), "unknown")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[],
                        help="label=path of a fastconv checkout (default: this one)")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {
        "this": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    best = {}
    for _ in range(args.rounds):
        for label, path in trees.items():
            for order, modules in ORDERS.items():
                env = dict(os.environ, PYTHONPATH=path)
                # one kernel cache per checkout, beside the caller's
                env["NUMBA_CACHE_DIR"] = os.path.join(
                    os.environ.get("NUMBA_CACHE_DIR", "/tmp/fastconv-bench-cache"), label)
                out = subprocess.run([sys.executable, "-c", CHILD, ",".join(modules),
                                      json.dumps(LAYERS), json.dumps(BACKWARD)], env=env,
                                     capture_output=True, text=True, cwd=path)
                if out.returncode:
                    sys.exit(out.stderr)
                for layer, ms in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    key = (label, order, layer)
                    best[key] = min(best.get(key, 1e9), ms)
    print(f"CPU: {cpu_model()}; float32, algorithm='im2col', ms, min of {args.rounds} rounds")
    names = [layer[0] for layer in LAYERS] + [BACKWARD[0]]
    columns = [(label, order) for label in trees for order in ORDERS]
    print("| layer | " + " | ".join(f"{l}: {o}" for l, o in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{best[(l, o, name)]:.2f}" for l, o in columns) + " |")


if __name__ == "__main__":
    main()
