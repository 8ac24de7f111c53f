"""The `auto` rule: which algorithm runs a convolution, and why.

    choose(device, x_shape, w_shape, stride, dilation, groups, operation="conv2d")
        -> (algorithm, reason)          # "direct" | "im2col" | "winograd"
    winograd_tile(x_shape, w_shape, out_hw) -> 2 or 4   # F(2x2,3x3) or F(4x4,3x3)

The rule is derived from the measurements in docs/performance.md (this 2-core
Zen4 machine, float32, interleaved timings against PyTorch's oneDNN and a NumPy
im2col, `benchmarks/interleaved.py`); `MEASURED` below is that table (ms, min of
15 interleaved rounds) and each threshold names the rows it comes from.
"""
from __future__ import annotations

# Winograd pays a filter transform (K x C x alpha^2 values written) and input/output
# transforms per call; it wins when the GEMM part dominates: enough channels and
# enough output pixels per filter.
WINOGRAD_MIN_CHANNELS = 16             # mnist_lenet (C=1): Winograd 6.5 ms vs im2col 0.69
WINOGRAD_MIN_CHANNELS_CUDA = 32
# resnet50_7 (8x512x7x7, 392 pixels): im2col 11.1 ms, F(2x2) 12.1, F(4x4) 12.1: the
# 512x512 filter transform (16-38 MB written per call) eats the GEMM savings.
# resnet50_14 (8x256x14x14, 1568 pixels): F(2x2) 8.7 ms, F(4x4) 8.9, im2col 11.4.
WINOGRAD_MIN_PIXELS = 1024             # N * out_h * out_w
# F(2x2) is at least as fast as F(4x4) on 14x14 outputs (resnet50_14, vgg16_conv5_2
# 26.8 vs 27.0 ms): 16 instead of 36 transformed values per filter, and 14 = 7 whole
# 2x2 tiles (vs 3.5 4x4 tiles: 12% waste). F(4x4) wins from 28x28 up (8.2 vs 9.6 ms).
F2_MAX_OUTPUT_PIXELS = 14 * 14         # per image: out_h * out_w

# The table behind the rule: ms on this machine, one interleaved run, 2026-11-30
# (docs/performance.md has it with ratios; docs/interleaved-results.json the raw run).
MEASURED = {
    # layer: (direct, im2col, winograd F(4x4), winograd F(2x2), numpy im2col, torch)
    "vgg16_conv1_2 1x64x224x224": (71.5, 24.0, 15.5, 22.4, 43.1, 18.3),
    "vgg16_conv5_2 8x512x14x14": (113.1, 41.9, 27.0, 26.8, 43.9, 30.9),
    "resnet50_56 8x64x56x56": (27.5, 12.2, 10.3, 12.3, 22.6, 8.8),
    "resnet50_28 8x128x28x28": (23.9, 11.5, 8.2, 9.6, 13.5, 8.5),
    "resnet50_14 8x256x14x14": (23.1, 11.4, 8.9, 8.7, 13.0, 8.0),
    "resnet50_7 8x512x7x7": (27.1, 11.1, 12.1, 12.1, 13.6, 7.8),
    "resnet50_1x1 8x256x56x56->64": (13.9, 6.1, None, None, 6.3, 6.4),
    "strided_3x3 8x64x56x56 s2": (12.2, 6.8, None, None, 8.0, 4.7),
    "conv_5x5 8x32x32x32": (11.8, 6.8, None, None, 7.9, 3.8),
    "depthwise_3x3 8x64x56x56": (0.88, 3.9, 7.8, 7.4, 4.9, 0.79),
    "mnist_lenet 64x1x28x28": (1.34, 0.69, 6.5, 8.7, 0.79, 0.47),
    "small_batch_3x3 1x64x56x56": (3.5, 1.54, 1.54, 1.55, 1.82, 1.28),
}


def _is_depthwise(x_shape, w_shape, groups):
    return groups > 1 and groups == x_shape[1] and w_shape[1] == 1


def winograd_tile(x_shape, w_shape, out_hw):
    """The faster Winograd tile on the CPU: 2 (F(2x2,3x3)) for small images, else 4."""
    return 2 if out_hw[0] * out_hw[1] <= F2_MAX_OUTPUT_PIXELS else 4


def choose(device, x_shape, w_shape, stride, dilation, groups, operation="conv2d"):
    """(algorithm, reason) for a normalised convolution on `device` ("cpu" or "cuda").

    `operation` is "conv2d", "conv2d_grad_input" or "conv2d_grad_weight" (Winograd
    has no weight-gradient form, so that one never gets it)."""
    n, c_in, h, w = x_shape
    c_out, c_per_group, kh, kw = w_shape
    k_per_group = c_out // groups
    if _is_depthwise(x_shape, w_shape, groups):
        return "direct", "depthwise: no reduction over channels for a GEMM to exploit"
    winograd_ok = (kh, kw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
    if winograd_ok and operation != "conv2d_grad_weight":
        if device == "cuda":
            if min(c_per_group, k_per_group) >= WINOGRAD_MIN_CHANNELS_CUDA:
                return "winograd", "3x3 stride 1 with >= 32 channels: F(4x4,3x3), 4x fewer multiplies"
            return "im2col", "3x3 stride 1 but few channels: the tiled GEMM"
        if min(c_per_group, k_per_group) < WINOGRAD_MIN_CHANNELS:
            return "im2col", (f"3x3 stride 1, but {min(c_per_group, k_per_group)} channels "
                              "per group are too few to amortise Winograd's transforms")
        pixels = n * h * w
        if pixels < WINOGRAD_MIN_PIXELS:
            return "im2col", (f"3x3 stride 1, but only {pixels} pixels: Winograd's filter "
                              "transform would dominate (resnet50_7 measured)")
        return "winograd", ("3x3 stride 1 with enough channels and pixels: Winograd does "
                            "2.25x (F(2x2)) to 4x (F(4x4)) fewer multiplies")
    if (kh, kw) == (1, 1) and tuple(stride) == (1, 1):
        return "im2col", "1x1 stride 1: a plain GEMM, no packing"
    return "im2col", "general kernel: patches into a bounded workspace, then BLAS GEMM"
