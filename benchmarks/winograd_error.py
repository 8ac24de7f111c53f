"""Float32 error of Winograd F(2x2,3x3) and F(4x4,3x3) on VGG-16-sized layers, and of
F(4x4,5x5) (which `auto` runs on 5x5 layers) on 5x5 layers of GoogLeNet and AlexNet.

    python benchmarks/winograd_error.py             # markdown tables for docs/performance.md
    python benchmarks/winograd_error.py outliers    # one outlier: the table in reliability.md

Error = max |winograd_float32 - exact| / max |exact|, exact = the float64 im2col
convolution (itself within 1e-10 of fastconv.reference). Inputs: standard normal
after a ReLU (as activations are), He-initialised weights; and, for contrast,
plain normal inputs. The forward pass, grad_input and grad_weight (F(r x r, m x m))
are measured.

`outliers`: unit normal input (2x64x32x32, He weights) with one value set to L; the
largest float32 error outside that value's window, over im2col's largest error on the
data without the outlier, for each transform, and whether `auto`'s rule
(`winograd_safe`) would take Winograd.
"""
from __future__ import annotations

import sys

import numpy as np

import fastconv as fc
from fastconv.cpu import winograd
from fastconv.winograd_transforms import winograd_safe

LAYERS = {  # batch 1 VGG-16 3x3 layers (input channels, size, output channels)
    "conv1_2": (64, 224, 64),
    "conv2_2": (128, 112, 128),
    "conv3_2": (256, 56, 256),
    "conv4_2": (512, 28, 512),
    "conv5_2": (512, 14, 512),
}


LAYERS_5x5 = {  # (batch, input channels, size, output channels)
    "alexnet conv2": (1, 64, 27, 192),
    "googlenet 3a 5x5": (1, 16, 28, 32),
    "googlenet 4e 5x5": (1, 32, 14, 128),
    "benchmark conv_5x5": (8, 32, 32, 64),
    "wide 5x5": (1, 256, 28, 256),
}


def _rel(approx, exact):
    return float(np.abs(approx - exact).max() / np.abs(exact).max())


def _row(rng, name, n, c, hw, k, r, tiles):
    """[name, shape, im2col error, then forward, grad_input and grad_weight error per
    tile]: a same-padded r x r layer."""
    pad = r // 2
    x = np.maximum(rng.standard_normal((n, c, hw, hw)), 0)
    w = rng.standard_normal((k, c, r, r)) * np.sqrt(2 / (r * r * c))
    exact = fc.conv2d(x, w, padding=pad, algorithm="im2col")
    go = rng.standard_normal(exact.shape)
    exact_gi = fc.conv2d_grad_input(go, w, x.shape, padding=pad, algorithm="im2col")
    exact_gw = fc.conv2d_grad_weight(go, x, w.shape, padding=pad, algorithm="im2col")
    x32, w32, go32 = (a.astype(np.float32) for a in (x, w, go))
    row = [name, f"{n}x{c}x{hw}x{hw} -> {k}"]
    row.append(_rel(fc.conv2d(x32, w32, padding=pad, algorithm="im2col"), exact))
    geometry = ((1, 1), (pad,) * 4, (1, 1), 1)
    for tile in tiles:
        out = winograd.conv2d(x32, w32, None, *geometry, (hw, hw), tile=tile)
        gi = winograd.conv2d_grad_input(go32, w32, x.shape, *geometry, tile=tile)
        gw = winograd.conv2d_grad_weight(go32, x32, w.shape, *geometry, tile=tile)
        row += [_rel(out, exact), _rel(gi, exact_gi), _rel(gw, exact_gw)]
    return row


def measure(seed=0):
    rng = np.random.default_rng(seed)
    return [_row(rng, name, 1, c, hw, k, 3, (2, 4)) for name, (c, hw, k) in LAYERS.items()]


def measure_5x5(seed=0):
    rng = np.random.default_rng(seed)
    return [_row(rng, name, *spec, 5, (4,)) for name, spec in LAYERS_5x5.items()]


def measure_outliers(seed=0, outliers=(0, 30, 100, 300, 1000, 1e5)):
    """[(transform, L, rho-based decision, error outside the window / im2col's)]."""
    rng = np.random.default_rng(seed)
    clean = rng.standard_normal((2, 64, 32, 32))
    rows = []
    for tile, r in [(2, 3), (4, 3), (4, 5)]:
        w = rng.standard_normal((64, 64, r, r)) * np.sqrt(2 / (64 * r * r))
        pad, w32 = r // 2, w.astype(np.float32)
        geometry = ((1, 1), (pad,) * 4, (1, 1), 1)
        exact = fc.conv2d(clean, w, padding=pad, algorithm="im2col")
        im2col = np.abs(fc.conv2d(clean.astype(np.float32), w32, padding=pad,
                                  algorithm="im2col") - exact).max()
        for value in outliers:
            x = clean.copy()
            x[0, 5, 16, 16] = value or x[0, 5, 16, 16]      # a tile's corner
            exact = fc.conv2d(x, w, padding=pad, algorithm="im2col")
            x32 = x.astype(np.float32)
            error = np.abs(winograd.conv2d(x32, w32, None, *geometry, (32, 32), tile=tile)
                           - exact)
            error[0, :, 16 - pad:17 + pad, 16 - pad:17 + pad] = 0    # the value's window
            ok, _ = winograd_safe("conv2d", x32, w32, tile, (r, r))
            rows.append([f"F({tile}x{tile},{r}x{r})", f"{value:g}",
                         "winograd" if ok else "im2col", error.max() / im2col])
    return rows


def _table(header, rows):
    print(header)
    print("|---" * header.count(" | ") + "|---|")
    for row in rows:
        print("| " + " | ".join(row[:2] + [f"{v:.1e}" for v in row[2:]]) + " |")


def main():
    if sys.argv[1:] == ["outliers"]:
        print("| transform | outlier | auto | Winograd's error outside its window / im2col's |")
        print("|---|---|---|---|")
        for row in measure_outliers():
            print("| " + " | ".join(row[:3]) + f" | {row[3]:.1f} |")
        return
    _table("| layer | shape | im2col f32 | F(2x2) fwd | F(2x2) grad_input "
           "| F(3x3,2x2) grad_weight | F(4x4) fwd | F(4x4) grad_input "
           "| F(3x3,4x4) grad_weight |", measure())
    print()
    _table("| 5x5 layer | shape | im2col f32 | F(4x4,5x5) fwd | F(4x4,5x5) grad_input "
           "| F(5x5,4x4) grad_weight |", measure_5x5())


if __name__ == "__main__":
    main()
