"""A torch model converted with `fastconv.torch.convert` against the same model unconverted,
on the CPU: inference and one training step (forward, backward, SGD step), batch 8.

    python benchmarks/torch_bridge.py [--rounds 3] [--iters 5] [--json out.json] [-k unet]

Models: a VGG-style stack of 3x3 convolutions, a ResNet-style stack of basic blocks
(BatchNorm and the additions stay torch's), a small U-Net-style encoder/decoder whose
decoder upsamples with ConvTranspose2d. Each variant runs in a process of its own, the
variants taking turns model by model for ``--rounds`` rounds; a process builds one model
(the same weights: seed 0), warms it up and keeps the median of ``--iters`` timed calls;
the report keeps the minimum over rounds and prints ratios torch / converted (> 1: the
converted model is faster). Variants:

- ``torch``: numpy, then torch; fastconv is not imported.
- ``fastconv``: numpy, fastconv, then torch (the order docs/torch.md recommends).
- ``fastconv-torch-first``: numpy, torch, then fastconv (issue 23: two OpenMP runtimes
  in one process may slow fastconv's kernels).

Then, in one process, the bridge's own cost: `fastconv.torch.conv2d` on tensors against
`fastconv.conv2d` on the same data as NumPy arrays, for the VGG model's layers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

VARIANTS = ("torch", "fastconv", "fastconv-torch-first")
MODELS = ("vgg", "resnet", "unet")
MODES = ("inference", "training")
BATCH = 8


def _build(name, torch):
    nn = torch.nn

    def conv_relu(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]

    if name == "vgg":
        layers = []
        for c_in, c_out in [(3, 32), (32, 64), (64, 128)]:
            layers += conv_relu(c_in, c_out) + conv_relu(c_out, c_out) + [nn.MaxPool2d(2)]
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
        return model, (BATCH, 3, 64, 64)

    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = (nn.Sequential() if stride == 1 and c_in == c_out else
                             nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                           nn.BatchNorm2d(c_out)))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

    if name == "resnet":
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                              nn.ReLU(inplace=True),
                              BasicBlock(32, 32, 1), BasicBlock(32, 32, 1),
                              BasicBlock(32, 64, 2), BasicBlock(64, 64, 1),
                              nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64 * 8 * 8, 10))
        return model, (BATCH, 3, 64, 64)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = nn.Sequential(*conv_relu(3, 16), *conv_relu(16, 16))
            self.enc2 = nn.Sequential(nn.MaxPool2d(2), *conv_relu(16, 32), *conv_relu(32, 32))
            self.mid = nn.Sequential(nn.MaxPool2d(2), *conv_relu(32, 64), *conv_relu(64, 64))
            self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
            self.dec2 = nn.Sequential(*conv_relu(64, 32), *conv_relu(32, 32))
            self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
            self.dec1 = nn.Sequential(*conv_relu(32, 16), nn.Conv2d(16, 2, 1))

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            m = self.mid(e2)
            d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
            return self.dec1(torch.cat([self.up1(d2), e1], 1))

    if name == "unet":
        return UNet(), (BATCH, 3, 64, 64)
    raise ValueError(f"unknown model {name!r}")


def _time(call, iters):
    call()
    call()          # warm-up: numba compilation (cached), allocator, autotuning
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(variant, models, iters):
    """Run in a fresh process: {model: {mode: seconds}} for one variant."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    import numpy  # noqa: F401  (NumPy first, as every fastconv benchmark)
    if variant == "fastconv":
        import fastconv  # noqa: F401
        import torch
    else:
        import torch
    if variant != "torch":
        import fastconv.torch as fct
    results = {}
    for name in models:
        torch.manual_seed(0)
        model, x_shape = _build(name, torch)
        if variant != "torch":
            fct.convert(model)
        x = torch.randn(x_shape)
        target = torch.randn(model(x).shape)
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)

        def inference():
            model.eval()
            with torch.no_grad():
                model(x)

        def training():
            model.train()
            optimiser.zero_grad()
            torch.nn.functional.mse_loss(model(x), target).backward()
            optimiser.step()

        results[name] = {"inference": _time(inference, iters),
                         "training": _time(training, iters)}
    import numba
    return {"variant": variant, "torch_threads": torch.get_num_threads(),
            "numba_threads": numba.config.NUMBA_NUM_THREADS, "results": results}


OVERHEAD_LAYERS = [(3, 64, 32), (32, 64, 32), (32, 32, 64), (64, 32, 64), (64, 16, 128),
                   (128, 16, 128)]    # (C_in, H = W, C_out) of the VGG model's 3x3 layers


def overhead(iters):
    """The bridge's cost per call: fct.conv2d on tensors against fc.conv2d on the same
    data as NumPy arrays, the VGG model's layers, forward, in one process."""
    import numpy as np
    import fastconv as fc
    import torch
    import fastconv.torch as fct
    rows = {}
    for c_in, hw, c_out in OVERHEAD_LAYERS * 2:    # the second pass is kept: warm process
        x, w = torch.randn(BATCH, c_in, hw, hw), torch.randn(c_out, c_in, 3, 3) * 0.1
        xn, wn = x.numpy(), w.numpy()
        rows[f"{BATCH}x{c_in}x{hw}x{hw}->{c_out}"] = {
            "numpy": _time(lambda: fc.conv2d(xn, wn, padding=1), iters),
            "bridge": _time(lambda: fct.conv2d(x, w, padding=1), iters)}
    del np
    return rows


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("-k", dest="select", default=None, help="only models containing this")
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and numba (OMP_NUM_THREADS, NUMBA_NUM_THREADS); "
                             "default: theirs")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m for m in MODELS if args.select is None or args.select in m]
    if args.worker:
        models = [m for m in MODELS if m == args.select] or models
    if args.worker == "overhead":
        print(json.dumps(overhead(args.iters)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, models, args.iters)))
        return
    env = dict(os.environ)
    if args.threads:
        for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(args.threads)
    best = {}
    threads = None
    for round_ in range(args.rounds):
        # model by model, the variants back to back: a load spike on a shared machine
        # then lands on one model's pair of timings, not on one variant's whole run
        for model in models:
            for variant in VARIANTS:
                command = [sys.executable, os.path.abspath(__file__), "--worker", variant,
                           "--iters", str(args.iters), "-k", model]
                out = subprocess.run(command, capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.exit(f"{variant} failed:\n{out.stderr}")
                report = json.loads(out.stdout.strip().splitlines()[-1])
                threads = (report["torch_threads"], report["numba_threads"])
                for mode, seconds in report["results"][model].items():
                    key = (variant, model, mode)
                    best[key] = min(best.get(key, float("inf")), seconds)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    cpu = _cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs), torch/numba threads {threads}, "
          f"batch {BATCH}, minimum over {args.rounds} rounds of the median of {args.iters}")
    print(f"{'model':8} {'mode':10} {'torch ms':>9} {'fastconv ms':>12} {'ratio':>6} "
          f"{'torch-first ms':>15} {'ratio':>6}")
    rows = []
    for model in models:
        for mode in MODES:
            t, f, tf = (best[(v, model, mode)] for v in VARIANTS)
            rows.append(dict(model=model, mode=mode, torch_s=t, fastconv_s=f,
                             fastconv_torch_first_s=tf, ratio=t / f, ratio_torch_first=t / tf))
            print(f"{model:8} {mode:10} {t * 1e3:9.1f} {f * 1e3:12.1f} {t / f:6.2f} "
                  f"{tf * 1e3:15.1f} {t / tf:6.2f}")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "overhead",
                          "--iters", str(args.iters)], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"overhead failed:\n{out.stderr}")
    layers = json.loads(out.stdout.strip().splitlines()[-1])
    print("bridge cost per call (one process, forward): fct.conv2d on tensors / fc.conv2d on "
          "NumPy views")
    for name, t in layers.items():
        print(f"  {name:22} {t['numpy'] * 1e3:7.2f} ms {t['bridge'] * 1e3:7.2f} ms "
              f"{t['bridge'] / t['numpy']:5.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_numba_threads": threads,
                       "batch": BATCH, "rounds": args.rounds, "iters": args.iters,
                       "rows": rows, "bridge_cost": layers}, fh, indent=1)


if __name__ == "__main__":
    main()
