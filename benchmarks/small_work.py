"""Small work and shared processes: tiny calls, small layers, a training step.

    python benchmarks/small_work.py [--rounds 7] [--json small-work.json] [-k small]

Every implementation runs in a process of its own, kept alive for the whole run:
PyTorch, and fastconv in four processes that differ only in what the user's script
did first:

    fastconv-first    import fastconv, then NumPy
    numpy-first       import numpy, then fastconv (what most scripts do)
    torch-first       import torch, then fastconv
    torch-interleaved torch first, and a torch convolution before each fastconv call

The driver sends one case at a time to one process, with a pause between turns, so the
processes take turns and no one's threads slow another's. A process times a case in steady state (several
calls in a row, after a warm-up) and the driver keeps the minimum over rounds. The
report gives each time, its ratio to PyTorch and to fastconv-first, and the CPU model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

PROCESSES = ("torch", "fastconv-first", "numpy-first", "torch-first", "torch-interleaved")
# Between turns: the idle OpenMP threads of the process that just ran (torch's spin
# for several ms after its last op) must not take the cores from the next one.
COOL_DOWN_S = 0.05
CALLS_PER_SAMPLE = {"tiny": 200, "small": 20, "step": 10, "resnet": 3}


def cpu_model() -> str:
    """lscpu's model name, with the vendor: the two CPU kinds differ in who wins."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return " ".join(fields.get(k, "").strip() for k in ("Model name",)) + \
            f" ({fields.get('CPU(s)', '?').strip()} CPUs)"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------

def _fastconv_cases(np, fc, interleave):
    rng = np.random.default_rng(0)
    xt = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
    wt = rng.standard_normal((1, 1, 3, 3), dtype=np.float32)
    xs = rng.standard_normal((32, 16, 8, 8), dtype=np.float32)
    ws = rng.standard_normal((32, 16, 3, 3), dtype=np.float32) * np.float32(0.1)
    gs = rng.standard_normal((32, 32, 8, 8), dtype=np.float32)
    xr = rng.standard_normal((8, 128, 28, 28), dtype=np.float32)
    wr = rng.standard_normal((128, 128, 3, 3), dtype=np.float32) * np.float32(0.03)
    from fastconv import models, nn
    model = models.digits_cnn(rng=np.random.default_rng(0))
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    xd = rng.standard_normal((32, 1, 8, 8), dtype=np.float32)
    yd = rng.integers(0, 10, 32)

    def step():
        logits = model(xd)
        loss_fn(logits, yd)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()

    cases = {
        "tiny conv2d 1x1x8x8 3x3": lambda: fc.conv2d(xt, wt, padding=1),
        "small forward 32x16x8x8->32": lambda: fc.conv2d(xs, ws, padding=1),
        "small grad_input": lambda: fc.conv2d_grad_input(gs, ws, xs.shape, padding=1),
        "small grad_weight": lambda: fc.conv2d_grad_weight(gs, xs, ws.shape, padding=1),
        "digits training step, batch 32": step,
        "resnet 8x128x28x28 3x3": lambda: fc.conv2d(xr, wr, padding=1),
    }
    if interleave:
        import torch
        a = torch.randn(8, 32, 16, 16)
        b = torch.randn(32, 32, 3, 3)
        cases = {name: (fn, lambda: torch.nn.functional.conv2d(a, b, padding=1))
                 for name, fn in cases.items()}
    return cases


def _torch_cases():
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    xt, wt = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3)
    xs, ws = torch.randn(32, 16, 8, 8), torch.randn(32, 16, 3, 3) * 0.1
    gs = torch.randn(32, 32, 8, 8)
    xr, wr = torch.randn(8, 128, 28, 28), torch.randn(128, 128, 3, 3) * 0.03
    back = torch.ops.aten.convolution_backward
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.25), torch.nn.Linear(256, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    xd, yd = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))

    def step():
        loss = loss_fn(model(xd), yd)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def grads(mask):
        return lambda: back(gs, xs, ws, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    return {
        "tiny conv2d 1x1x8x8 3x3": lambda: F.conv2d(xt, wt, padding=1),
        "small forward 32x16x8x8->32": lambda: F.conv2d(xs, ws, padding=1),
        "small grad_input": grads([True, False, False]),
        "small grad_weight": grads([False, True, False]),
        "digits training step, batch 32": step,
        "resnet 8x128x28x28 3x3": lambda: F.conv2d(xr, wr, padding=1),
    }


def _calls(name):
    for key, calls in CALLS_PER_SAMPLE.items():
        if key in name:
            return calls
    return 10


def worker(kind):
    """Import in the order `kind` says, then time the cases the driver names."""
    if kind == "torch":
        import torch
        torch.set_grad_enabled(True)
        cases = _torch_cases()
    else:
        if kind == "fastconv-first":
            import fastconv as fc
            import numpy as np
        elif kind == "numpy-first":
            import numpy as np
            import fastconv as fc
        else:
            import torch  # noqa: F401
            import numpy as np
            import fastconv as fc
        cases = _fastconv_cases(np, fc, kind == "torch-interleaved")
    for name, case in cases.items():          # compile and warm up
        for _ in range(3):
            (case[1](), case[0]()) if isinstance(case, tuple) else case()
    print(json.dumps({"ready": sorted(cases)}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        case = cases[name]
        fn, between = case if isinstance(case, tuple) else (case, None)
        best = float("inf")
        for _ in range(_calls(name)):
            if between is not None:
                between()
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        print(json.dumps({"case": name, "s": best}), flush=True)


# ----------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("-k", dest="select", help="only cases whose name contains this")
    parser.add_argument("--worker", choices=PROCESSES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    procs = {}
    for kind in PROCESSES:
        procs[kind] = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = json.loads(procs[kind].stdout.readline())   # one at a time: no overlap
        names = ready["ready"]
    if args.select:
        names = [n for n in names if args.select in n]
    best = {(kind, n): float("inf") for kind in PROCESSES for n in names}
    for _ in range(args.rounds):
        for name in names:
            for kind, proc in procs.items():
                proc.stdin.write(name + "\n")
                reply = json.loads(proc.stdout.readline())
                best[kind, name] = min(best[kind, name], reply["s"])
                time.sleep(COOL_DOWN_S)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    cpu = cpu_model()
    print(f"CPU: {cpu}; minimum of {args.rounds} rounds; ratios to torch (to fastconv-first)")
    print(f"{'case':34s}" + "".join(f"{k:>22s}" for k in PROCESSES))
    rows = []
    for name in names:
        torch_s, first_s = best["torch", name], best["fastconv-first", name]
        cells = []
        for kind in PROCESSES:
            s = best[kind, name]
            cells.append(f"{s * 1e6:9.0f}us" if kind == "torch" else
                         f"{s * 1e6:8.0f}us {s / torch_s:4.2f}x ({s / first_s:4.2f})")
            rows.append({"case": name, "process": kind, "seconds": s,
                         "vs_torch": s / torch_s, "vs_fastconv_first": s / first_s})
        print(f"{name:34s}" + "".join(f"{c:>22s}" for c in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "rounds": args.rounds, "python": platform.python_version(),
                       "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
