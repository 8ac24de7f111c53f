"""The `auto` rule: which algorithm runs a convolution, and why.

The rule is derived from the measurements in docs/performance.md (this 2-core
Zen4 machine, float32, against PyTorch's oneDNN and a NumPy im2col); each
threshold below names the measurement it comes from.
"""
from __future__ import annotations

# Winograd pays a filter transform (K x C x alpha^2 values) and input/output
# transforms per call; it wins when the GEMM part dominates: enough channels
# and enough output pixels to amortise the filter transform.
WINOGRAD_MIN_CHANNELS = 16
# The filter transform costs ~200 flops and 4x the weight's memory per filter;
# the GEMM ~4.5 flops per filter per output pixel: below ~1000 pixels the
# filter transform is a large share (8x512x7x7: measured slower than im2col).
WINOGRAD_MIN_PIXELS = 1024             # N * out_h * out_w


def _is_depthwise(x_shape, w_shape, groups):
    return groups > 1 and groups == x_shape[1] and w_shape[1] == 1


def choose(device, x_shape, w_shape, stride, dilation, groups, operation="conv2d"):
    """(algorithm, reason) for a normalised convolution on `device`."""
    n, c_in, h, w = x_shape
    c_out, c_per_group, kh, kw = w_shape
    if _is_depthwise(x_shape, w_shape, groups):
        return "direct", "depthwise: no reduction over channels for a GEMM to exploit"
    winograd_ok = (kh, kw) == (3, 3) and stride == (1, 1) and dilation == (1, 1)
    if winograd_ok and operation != "conv2d_grad_weight":
        if min(c_per_group, c_out // groups) < WINOGRAD_MIN_CHANNELS:
            return "im2col", (f"3x3 stride 1, but {c_per_group} channels per group are "
                              f"too few to amortise Winograd's transforms")
        pixels = n * h * w
        if device == "cpu" and pixels < WINOGRAD_MIN_PIXELS:
            return "im2col", (f"3x3 stride 1, but only {pixels} output pixels: the filter "
                              "transform would dominate")
        return "winograd", "3x3 stride 1 with enough channels: F(4x4,3x3) does 4x fewer multiplies"
    if (kh, kw) == (1, 1) and stride == (1, 1):
        return "im2col", "1x1 stride 1: a plain GEMM, no packing"
    return "im2col", "general kernel: patches into a bounded workspace, then BLAS GEMM"
