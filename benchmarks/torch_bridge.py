"""A torch model converted with `fastconv.torch.convert` against the same model unconverted,
on the CPU: inference and one training step (forward, backward, SGD step), batch 8.

    python benchmarks/torch_bridge.py [--rounds 3] [--iters 5] [--json out.json] [-k unet]

Models: a VGG-style stack of 3x3 convolutions, a ResNet-style stack of basic blocks
(BatchNorm and the additions stay torch's), a small U-Net-style encoder/decoder whose
decoder upsamples with ConvTranspose2d. Each variant runs in a process of its own, the
variants taking turns for ``--rounds`` rounds; a process builds every model (the same
weights: seed 0), warms each up and keeps the median of ``--iters`` timed calls; the
report keeps the minimum over rounds and prints ratios torch / converted (> 1: the
converted model is faster). Variants:

- ``torch``: numpy, then torch; fastconv is not imported.
- ``fastconv``: numpy, fastconv, then torch (the order docs/torch.md recommends).
- ``fastconv-torch-first``: numpy, torch, then fastconv (issue 23: two OpenMP runtimes
  in one process may slow fastconv's kernels).
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
    return {"variant": variant, "torch_threads": torch.get_num_threads(), "results": results}


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
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m for m in MODELS if args.select is None or args.select in m]
    if args.worker:
        print(json.dumps(worker(args.worker, models, args.iters)))
        return
    best = {}
    threads = None
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            command = [sys.executable, os.path.abspath(__file__), "--worker", variant,
                       "--iters", str(args.iters)] + (["-k", args.select] if args.select else [])
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{variant} failed:\n{out.stderr}")
            report = json.loads(out.stdout.strip().splitlines()[-1])
            threads = report["torch_threads"]
            for model, modes in report["results"].items():
                for mode, seconds in modes.items():
                    key = (variant, model, mode)
                    best[key] = min(best.get(key, float("inf")), seconds)
            print(f"round {round_ + 1}/{args.rounds}: {variant} done", file=sys.stderr)
    cpu = _cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs), torch threads {threads}, "
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
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": threads,
                       "batch": BATCH, "rounds": args.rounds, "iters": args.iters,
                       "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
