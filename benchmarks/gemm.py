"""fastconv's packed GEMM (fastconv/cpu/matmul.py) against np.matmul on im2col's shapes.

Both run in this process, interleaved round by round (the minimum of each over the rounds
is kept, so a load spike on a shared machine favours neither), on the operand layouts
im2col uses: forward W @ cols, grad_input W^T @ go, grad_weight go @ cols^T.

    python benchmarks/gemm.py [--rounds 5] [--dtype float32] [--layout nn,gi,gw]
        [--blocking 64,8,3,384,768,768] [--cpu-time] [--only np|ours]

Prints GFLOP/s and the ratio ours / np.matmul (>1: ours faster), with the CPU model.
"""
import argparse
import platform
import subprocess
import time

import numpy as np

import fastconv  # noqa: F401  (as users import it: sets the thread policies)
from fastconv.cpu import matmul as mm

SHAPES = [(32, 144, 2048), (128, 1152, 6272), (512, 4608, 392), (128, 576, 6272),
          (64, 800, 8192), (256, 2304, 1568), (64, 576, 25088)]


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("Model name"))
    except Exception:
        return platform.processor()


def operands(layout, m, k, n, dtype, rng):
    """(a, b) in the layout: nn W @ cols; tn W^T @ go (a transposed); nt go @ cols^T.
    (--layout gi and gw take the forward shapes to their gradients' GEMMs.)"""
    a = rng.standard_normal((k, m) if layout[0] == "t" else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if layout[1] == "t" else (k, n)).astype(dtype)
    return (a.T if layout[0] == "t" else a), (b.T if layout[1] == "t" else b)


CLOCK = time.perf_counter


def best(f, calls=3):
    f()
    t = 1e9
    for _ in range(calls):
        t0 = CLOCK()
        f()
        t = min(t, CLOCK() - t0)
    return t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--layout", default="nn")
    parser.add_argument("--blocking", default=None)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the thread's CPU time (one thread only: numba and "
                             "OpenBLAS then run in the caller; robust to other load)")
    parser.add_argument("--only", choices=["np", "ours"], default=None,
                        help="time one side only (run the two in processes of their own: "
                             "after np.matmul OpenBLAS's threads spin and slow numba's)")
    parser.add_argument("--shapes", default=None, help="m,k,n;m,k,n;...")
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
    blocking = (mm.Blocking(*map(int, args.blocking.split(","))) if args.blocking
                else mm.HOST[dtype])
    shapes = ([tuple(map(int, s.split(","))) for s in args.shapes.split(";")]
              if args.shapes else SHAPES)
    print(f"CPU: {cpu_model()}; {dtype}; blocking {tuple(blocking)}; "
          f"min of {args.rounds} rounds, interleaved")
    rng = np.random.default_rng(0)
    for layout in args.layout.split(","):
        for shape in shapes:
            m, k, n = shape
            if layout == "gi":      # grad_input of the forward GEMM: W^T @ go
                m, k, n = k, m, n
            elif layout == "gw":    # grad_weight: go @ cols^T
                m, k, n = m, n, k
            a, b = operands({"gi": "tn", "gw": "nt"}.get(layout, layout), m, k, n, dtype, rng)
            out = np.empty((m, n), dtype)
            t_np = t_ours = 1e9
            for _ in range(args.rounds):
                if args.only != "ours":
                    t_np = min(t_np, best(lambda: np.matmul(a, b, out=out)))
                if args.only != "np":
                    t_ours = min(t_ours, best(lambda: mm.matmul(a, b, out=out,
                                                                blocking=blocking)))
            # checked after the timing: the float64 reference runs on OpenBLAS, whose
            # threads then spin for a while and would slow the numba threads timed next
            mm.matmul(a, b, out=out, blocking=blocking)
            ref = a.astype(np.float64) @ b.astype(np.float64)
            err = abs(out - ref).max() / max(1.0, abs(ref).max())
            flop = 2 * m * k * n
            print(f"{layout} {m}x{k} @ {k}x{n}: np.matmul {flop / t_np / 1e9:6.0f} "
                  f"ours {flop / t_ours / 1e9:6.0f} GFLOP/s  ratio {t_np / t_ours:.2f}  "
                  f"rel.err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
