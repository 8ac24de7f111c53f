"""The measured shape rule of `auto`: which algorithm suits a convolution's shapes, and why.

    choose(device, x_shape, w_shape, stride, dilation, groups, operation="conv2d")
        -> (algorithm, reason)          # "direct" | "im2col" | "winograd"
    winograd_with_kept_filter(...) -> bool   # Winograd wins only with a kept filter
    winograd_tile(x_shape, w_shape, out_hw) -> 2 or 4   # F(2x2,r x r) or F(4x4,r x r)

This is step 1 of the plan (`fastconv.plan`, which adds the fallbacks and is what calls
and `fc.explain` use). Each threshold below has its reason in a line; the measurements
behind them, and how to reproduce them, are in docs/tuning.md.
"""
from __future__ import annotations

# Winograd pays filter, input and output transforms per call; it wins when the GEMMs
# dominate: enough channels (per group) and enough output pixels.
WINOGRAD_MIN_CHANNELS = 16             # fewer: the transforms cost more than they save
WINOGRAD_MIN_CHANNELS_CUDA = 32        # a guess until measured on a GPU: docs/tuning.md
# Fewer pixels (N * out_h * out_w): the per-call filter transform dominates
# (8x512x7x7 measured), unless the filter is kept (KEPT_FILTER_* below).
WINOGRAD_MIN_PIXELS = 1024
# Less work than this (2 x multiply-adds) runs on one thread: waking numba's threads
# from sleep costs more than they save, and while they spin one thread loses little
# (docs/tuning.md).
SERIAL_BELOW_FLOPS = 2**20
# 3x3 kernels also need enough GEMM work (groups * C_in/g * C_out/g * pixels); 5x5
# kernels save 6.25x the multiplies and keep only the two thresholds above.
WINOGRAD_MIN_WORK_3X3 = 2**22
# Below WINOGRAD_MIN_PIXELS Winograd still wins when a call repeats an earlier call's
# weights (its transformed filter is kept), given these pixels and this much work.
KEPT_FILTER_MIN_PIXELS = 384
KEPT_FILTER_MIN_WORK = 2**23           # groups * C_in/g * C_out/g * pixels
# F(4x4) does 2.25x fewer multiplies than F(2x2) but pads the output to multiples of 4;
# it is the faster tile unless that padding covers this much more area.
F4_MAX_AREA_RATIO = 1.4
# Kernels `auto` runs by Winograd: on the CPU also 5x5 (F(4x4,5x5); algorithm="winograd"
# itself stays 3x3, docs/algorithms.md); F(2x2,5x5) never won, so 5x5 takes F(4x4).
WINOGRAD_KERNELS = {"cpu": ((3, 3), (5, 5)), "cuda": ((3, 3),)}
# The Winograd weight gradient (CPU, F(3x3, 4x4)) reduces over the tiles and writes
# alpha^2 x K x C values: it beats im2col's one GEMM only with many channels and pixels.
WINOGRAD_GRAD_WEIGHT_MIN_CHANNELS = 96
WINOGRAD_GRAD_WEIGHT_MIN_PIXELS = 3136     # N * out_h * out_w


def winograd_with_kept_filter(device, x_shape, w_shape, stride, dilation, groups,
                              operation="conv2d"):
    """True for the layers where `choose` takes im2col only because a filter transform
    per call would dominate, and where Winograd with a kept filter measured faster:
    `auto` then runs Winograd for calls that repeat an earlier call's weights."""
    n, c_in, h, w = x_shape
    c_out, c_per_group, kh, kw = w_shape
    pixels = n * h * w
    return (device == "cpu" and operation == "conv2d" and (kh, kw) == (3, 3)
            and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and min(c_per_group, c_out // groups) >= WINOGRAD_MIN_CHANNELS
            and KEPT_FILTER_MIN_PIXELS <= pixels < WINOGRAD_MIN_PIXELS
            and groups * c_per_group * (c_out // groups) * pixels >= KEPT_FILTER_MIN_WORK)


def _is_depthwise(x_shape, w_shape, groups):
    return groups > 1 and groups == x_shape[1] and w_shape[1] == 1


def winograd_tile(x_shape, w_shape, out_hw):
    """The faster Winograd tile on the CPU: 4 (F(4x4,3x3)) unless padding the output to
    whole 4x4 tiles covers more than F4_MAX_AREA_RATIO times the area of whole 2x2
    tiles (then 2, F(2x2,3x3)); always 4 for 5x5 kernels (F(4x4,5x5))."""
    if tuple(w_shape[2:]) != (3, 3):
        return 4

    def padded_area(m):
        return (-(-out_hw[0] // m) * m) * (-(-out_hw[1] // m) * m)
    return 4 if padded_area(4) <= F4_MAX_AREA_RATIO * padded_area(2) else 2


def choose(device, x_shape, w_shape, stride, dilation, groups, operation="conv2d"):
    """(algorithm, reason) for a normalised convolution on `device` ("cpu" or "cuda").

    `operation` is "conv2d", "conv2d_grad_input" or "conv2d_grad_weight" (the weight
    gradient has its own Winograd rule, CPU and 3x3 only)."""
    n, c_in, h, w = x_shape
    c_out, c_per_group, kh, kw = w_shape
    k_per_group = c_out // groups
    if _is_depthwise(x_shape, w_shape, groups):
        return "direct", "depthwise: no reduction over channels for a GEMM to exploit"
    if (device == "cpu" and operation == "conv2d" and c_per_group == 1
            and tuple(stride) == (1, 1)):
        return "direct", ("one input channel per group, stride 1: the plane kernel (a GEMM "
                          "would reduce over only kh*kw values; mnist_lenet measured)")
    winograd_ok = ((kh, kw) in WINOGRAD_KERNELS[device] and tuple(stride) == (1, 1)
                   and tuple(dilation) == (1, 1))
    if winograd_ok and operation == "conv2d_grad_weight":
        if (device == "cpu" and (kh, kw) == (3, 3)
                and min(c_per_group, k_per_group) >= WINOGRAD_GRAD_WEIGHT_MIN_CHANNELS
                and n * h * w >= WINOGRAD_GRAD_WEIGHT_MIN_PIXELS):
            return "winograd", ("3x3 stride 1 weight gradient with >= 96 channels and "
                                ">= 3136 pixels: Winograd F(3x3,4x4), 4x fewer multiplies")
        if device == "cpu":
            return "im2col", ("stride 1 weight gradient, but too few channels or pixels "
                              "(or not 3x3) for Winograd's transforms: im2col's one GEMM")
    elif winograd_ok:
        size = f"{kh}x{kw}"
        if device == "cuda":
            if min(c_per_group, k_per_group) >= WINOGRAD_MIN_CHANNELS_CUDA:
                return "winograd", "3x3 stride 1 with >= 32 channels: F(4x4,3x3), 4x fewer multiplies"
            return "im2col", "3x3 stride 1 but few channels: the tiled GEMM"
        if min(c_per_group, k_per_group) < WINOGRAD_MIN_CHANNELS:
            return "im2col", (f"{size} stride 1, but {min(c_per_group, k_per_group)} channels "
                              "per group are too few to amortise Winograd's transforms")
        pixels = n * h * w
        if pixels < WINOGRAD_MIN_PIXELS:
            again = ("; a call that repeats an earlier call's weights runs Winograd with "
                     "the transformed filter kept" if winograd_with_kept_filter(
                         device, x_shape, w_shape, stride, dilation, groups, operation)
                     else "")
            return "im2col", (f"{size} stride 1, but only {pixels} pixels: Winograd's filter "
                              f"transform would dominate (resnet50_7 measured){again}")
        work = groups * c_per_group * k_per_group * pixels
        if (kh, kw) == (3, 3) and work < WINOGRAD_MIN_WORK_3X3:
            return "im2col", (f"3x3 stride 1, but {c_per_group} x {k_per_group} channels over "
                              f"{pixels} pixels are too little work for Winograd's transforms")
        if (kh, kw) == (5, 5):
            return "winograd", ("5x5 stride 1 with enough channels and pixels: Winograd "
                                "F(4x4,5x5) does 6.25x fewer multiplies (auto only: "
                                "algorithm='winograd' is 3x3)")
        return "winograd", ("3x3 stride 1 with enough channels and pixels: Winograd does "
                            "2.25x (F(2x2)) to 4x (F(4x4)) fewer multiplies")
    if (kh, kw) == (1, 1) and tuple(stride) == (1, 1):
        return "im2col", "1x1 stride 1: a plain GEMM, no packing"
    return "im2col", "general kernel: patches into a bounded workspace, then BLAS GEMM"
