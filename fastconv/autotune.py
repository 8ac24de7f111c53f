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
WINOGRAD_MIN_CHANNELS = 16             # mnist_lenet (C=1): Winograd 8.4 ms vs im2col 1.25
WINOGRAD_MIN_CHANNELS_CUDA = 32
# resnet50_7 (8x512x7x7, 392 pixels): im2col 12.0 ms, F(2x2) 15.8, F(4x4) 20.1: the
# 512x512x36 filter transform (38 MB written) outweighs the GEMM savings.
# resnet50_14 (8x256x14x14, 1568 pixels): F(2x2) 8.8 ms, F(4x4) 11.8, im2col 13.7.
WINOGRAD_MIN_PIXELS = 1024             # N * out_h * out_w
# F(2x2) beats F(4x4) on 14x14 outputs (resnet50_14, vgg16_conv5_2): 16 instead of 36
# transformed values per filter, and 14 = 7 whole 2x2 tiles (vs 3.5 4x4 tiles: 12% waste).
F2_MAX_OUTPUT_PIXELS = 14 * 14         # per image: out_h * out_w

# The table behind the rule: ms on this machine, one interleaved run (see
# docs/performance.md for the full table with ratios); None: not applicable.
MEASURED = {
    # layer: (direct, im2col, winograd F(4x4), winograd F(2x2), numpy im2col, torch)
    "vgg16_conv1_2 1x64x224x224": (113.5, 49.1, 31.6, 43.3, 42.1, 35.0),
    "resnet50_56 8x64x56x56": (52.6, 32.3, 18.1, 27.9, 22.8, 17.6),
    "resnet50_28 8x128x28x28": (45.7, 20.5, 10.8, 12.9, 13.3, 16.1),
    "resnet50_14 8x256x14x14": (38.1, 13.7, 11.8, 8.8, 12.9, 11.5),
    "resnet50_7 8x512x7x7": (47.7, 12.0, 20.1, 15.8, 14.1, 15.5),
    "resnet50_1x1 8x256x56x56->64": (29.5, 6.0, None, None, 6.2, 12.1),
    "strided_3x3 8x64x56x56 s2": (28.0, 9.2, None, None, 7.9, 9.6),
    "conv_5x5 8x32x32x32": (17.7, 15.3, None, None, 8.0, 7.6),
    "depthwise_3x3 8x64x56x56": (7.3, 12.2, 8.1, 10.1, 5.7, 1.35),
    "mnist_lenet 64x1x28x28": (3.1, 1.25, 8.4, 10.4, 0.94, 0.77),
    "small_batch_3x3 1x64x56x56": (7.7, 3.5, 2.7, 2.6, 2.1, 2.4),
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
