"""Float32 error of Winograd F(2x2,3x3) and F(4x4,3x3) on VGG-16-sized layers.

    python benchmarks/winograd_error.py          # markdown table for docs/performance.md

Error = max |winograd_float32 - exact| / max |exact|, exact = the float64 im2col
convolution (itself within 1e-10 of fastconv.reference). Inputs: standard normal
after a ReLU (as activations are), He-initialised weights; and, for contrast,
plain normal inputs. The forward pass and grad_input are both measured.
"""
from __future__ import annotations

import numpy as np

import fastconv as fc
from fastconv.cpu import winograd

LAYERS = {  # batch 1 VGG-16 3x3 layers (input channels, size, output channels)
    "conv1_2": (64, 224, 64),
    "conv2_2": (128, 112, 128),
    "conv3_2": (256, 56, 256),
    "conv4_2": (512, 28, 512),
    "conv5_2": (512, 14, 512),
}


def _rel(approx, exact):
    return float(np.abs(approx - exact).max() / np.abs(exact).max())


def measure(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name, (c, hw, k) in LAYERS.items():
        x = np.maximum(rng.standard_normal((1, c, hw, hw)), 0)
        w = rng.standard_normal((k, c, 3, 3)) * np.sqrt(2 / (9 * c))
        exact = fc.conv2d(x, w, padding=1, algorithm="im2col")
        go = rng.standard_normal(exact.shape)
        exact_gi = fc.conv2d_grad_input(go, w, x.shape, padding=1, algorithm="im2col")
        x32, w32, go32 = (a.astype(np.float32) for a in (x, w, go))
        row = [name, f"1x{c}x{hw}x{hw} -> {k}"]
        row.append(_rel(fc.conv2d(x32, w32, padding=1, algorithm="im2col"), exact))
        for tile in (2, 4):
            out = winograd.conv2d(x32, w32, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, (hw, hw),
                                  tile=tile)
            gi = winograd.conv2d_grad_input(go32, w32, x.shape, (1, 1), (1, 1, 1, 1), (1, 1),
                                            1, tile=tile)
            row += [_rel(out, exact), _rel(gi, exact_gi)]
        rows.append(row)
    return rows


def main():
    print("| layer | shape | im2col f32 | F(2x2) fwd | F(2x2) grad_input "
          "| F(4x4) fwd | F(4x4) grad_input |")
    print("|---|---|---|---|---|---|---|")
    for row in measure():
        print("| " + " | ".join(row[:2] + [f"{v:.1e}" for v in row[2:]]) + " |")


if __name__ == "__main__":
    main()
