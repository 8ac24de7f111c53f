"""The `auto` rule: which algorithm runs a convolution, and why.

    choose(device, x_shape, w_shape, stride, dilation, groups, operation="conv2d")
        -> (algorithm, reason)          # "direct" | "im2col" | "winograd"
    winograd_tile(x_shape, w_shape, out_hw) -> 2 or 4   # F(2x2,r x r) or F(4x4,r x r)

The rule is derived from the measurements in docs/performance.md (this 2-core
Zen4 machine, float32, interleaved timings against PyTorch's oneDNN and a NumPy
im2col, `benchmarks/interleaved.py`); `MEASURED` below is that table (ms, min of
15 interleaved rounds) and each threshold names the rows it comes from.
"""
from __future__ import annotations

# Winograd pays a filter transform (K x C x alpha^2 values written) and input/output
# transforms per call; it wins when the GEMM part dominates: enough channels and
# enough output pixels per filter.
WINOGRAD_MIN_CHANNELS = 16             # mnist_lenet (C=1): Winograd 6.5 ms vs im2col 0.80
WINOGRAD_MIN_CHANNELS_CUDA = 32
# resnet50_7 (8x512x7x7, 392 pixels): im2col 11.7-14.2 ms; Winograd 6.4-7.3 (F4) with the
# transformed filter kept from an earlier call with the same weights, but 17.8-18.2 when
# the weights change between calls (every training step): the 512x512 filter transform
# writes 38 MB. So im2col, unless the weights repeat (KEPT_FILTER_* below). At 784
# pixels the two trade places (4x256x14x14 im2col 7.2 / Winograd with new weights
# 6.9; 1x256x28x28 6.3 / 7.1; 16x512x7x7 25.8 / 21.5), so the threshold stays at 1024.
# resnet50_14 (8x256x14x14, 1568 pixels): F(4x4) 5.6-7.1 ms, F(2x2) 8.1-10.5, im2col 11.8-13.4.
WINOGRAD_MIN_PIXELS = 1024             # N * out_h * out_w
# ... and, for 3x3 kernels, enough GEMM work: groups * C_in/group * C_out/group * pixels.
# Measured interleaved with the GEMM micro-kernel (2026-11-30, fourth session; ms im2col /
# Winograd, the weights changed before every call as in training, C_in = C_out):
#   C=8:  3136 px 0.26/0.47, 6272 0.35/0.49, 12544 0.46/0.64, 25088 1.40/1.17 and 0.84/0.92
#   C=16: 3136 px 0.44/0.60, 6272 0.70/0.79, 12544 1.07/0.99, 25088 2.49/1.97, 2.04/1.53
#   C=32: 3136 px 0.89/0.97, 6272 2.00/1.45, 12544 2.53/2.02, 25088 4.38/3.36, 4.43/2.80
# Winograd wins from about 3-4 M (C_in * C_out * pixels); the two cases at 3.2 M are a
# 1.08x and a 0.91x. Below 16 channels it does not win clearly even with more work (C=8
# at 25088 px: 1.19x and 0.92x in two runs), so WINOGRAD_MIN_CHANNELS stays. 5x5 kernels
# (6.25x fewer multiplies) win with less: they keep the channel and pixel thresholds only.
WINOGRAD_MIN_WORK_3X3 = 2**22
# Below WINOGRAD_MIN_PIXELS Winograd still wins when a call repeats an earlier call's
# weights (inference, evaluation; seen by cpu.winograd.weights_repeat): the kept filter
# then costs no transform, and Winograd wins from fewer pixels, as long as reading its transformed filter (alpha^2 / 9 = 4x
# the weights for F(4x4)) is small against the GEMM it saves and there are enough
# channels for the input/output transforms. Measured interleaved (2026-11-30, fifth
# session; ms im2col / Winograd F(4x4) with the filter kept; C_in = C_out):
#   C=512: 49 px 2.61/6.29, 98 4.16/6.54, 196 7.19/6.91, 392 12.9/7.42, 784 26.7/11.9
#   C=256: 196 px 1.98/2.39, 392 3.61/2.81, 784 7.16/4.31
#   C=128: 784 px 2.03/1.79
#   C=64:  392 px 0.52/0.62 (2x64x14x14) and 0.60/0.66 (8x64x7x7), 784 0.63/0.76
KEPT_FILTER_MIN_PIXELS = 384
KEPT_FILTER_MIN_WORK = 2**23           # groups * C_in/g * C_out/g * pixels
# F(4x4) does 36 instead of 16 GEMMs but each over a quarter of the tiles (2.25x less
# work), and pads each side of the output to a multiple of 4 instead of 2. It is the
# faster tile unless that padding costs much more area than F(2x2)'s (measured
# interleaved after the transforms were made faster, 2026-11-30, ms F(4x4)/F(2x2), the
# filter kept): 8x256x14x14 (padded area 1.31x F(2x2)'s) 6.65/7.63, 8x512x14x14
# 19.9/24.1, 8x512x7x7 (1.0x) 11.95/12.66, 8x64x8x8 (1.0x) 0.60/0.67, but 4x128x10x10
# (1.44x) 1.48/1.23.
F4_MAX_AREA_RATIO = 1.4
# 5x5 kernels, stride 1: on the CPU `auto` also runs Winograd F(4x4,5x5) (8x8 input tiles,
# 4 instead of 25 multiplies per output). `algorithm="winograd"` itself stays the 3x3
# algorithms of DESIGN.md. Measured interleaved (2-core Zen4, float32, ms im2col /
# F(4x4,5x5) with the filter kept / new weights / F(2x2,5x5)): 8x32x32x32 -> 64 5.79 /
# 3.88 / 4.34 / 8.12, 8x128x16x16 -> 128 10.7 / 5.05 / 6.18 / 8.16, 2x64x56x56 8.46 /
# 4.10 / 4.48 / 8.18, 8x256x8x8 10.6 / 5.62 / 10.0 / 7.12, 8x16x16x16 0.53 / 0.44 / 0.46
# / 0.62, 4x64x16x16 1.54 / 1.19 / 1.27 / 1.95; at 1024 pixels a tie (1x32x32x32 0.62 /
# 0.63), below it im2col (1x16x32x32 0.29 / 0.32): the 3x3 thresholds hold. F(2x2,5x5)
# never won, so 5x5 always takes F(4x4).
WINOGRAD_KERNELS = {"cpu": ((3, 3), (5, 5)), "cuda": ((3, 3),)}
# conv2d_grad_weight by Winograd F(3x3, 4x4) (CPU): its GEMMs reduce over the tiles and
# write alpha^2 x K x C values, so it needs many pixels per channel and enough channels
# to beat im2col's one GEMM. Measured interleaved (2-core Zen4, float32, ms im2col /
# Winograd), C = K: 8x128x28x28 15.0/9.9, 8x256x28x28 43.4/24.8, 4x256x28x28 21.8/16.2,
# 8x128x56x56 49.5/30.7, 2x128x56x56 12.8/9.4, 16x256x14x14 23.3/19.5, 4x128x28x28
# 6.2/5.8, 8x96x28x28 7.5/6.1; but 8x64x56x56 14.8/14.4 (a tie), 1x64x56x56 2.2/2.7,
# 8x256x14x14 (1568 pixels) 11.8/13.3, 8x512x14x14 46.3/49.6, 8x512x7x7 12.9/41.2.
WINOGRAD_GRAD_WEIGHT_MIN_CHANNELS = 96
WINOGRAD_GRAD_WEIGHT_MIN_PIXELS = 3136     # N * out_h * out_w

# The table behind the rule: ms on this machine, one interleaved run, 2026-11-30 14:01
# UTC (Winograd's GEMMs on the micro-kernel), the same weights on every call
# (docs/performance.md has it with ratios and the cost of new weights;
# docs/interleaved-results.json the raw run).
MEASURED = {
    # layer: (direct, im2col, winograd F(4x4), winograd F(2x2), numpy im2col, torch)
    "vgg16_conv1_2 1x64x224x224": (68.6, 25.7, 11.3, 22.9, 45.0, 18.8),
    "vgg16_conv5_2 8x512x14x14": (91.4, 43.7, 17.4, 25.2, 44.7, 31.2),
    "resnet50_56 8x64x56x56": (43.1, 13.8, 7.38, 12.7, 25.0, 9.60),
    "resnet50_28 8x128x28x28": (27.0, 11.8, 5.57, 9.23, 13.6, 8.92),
    "resnet50_14 8x256x14x14": (27.3, 11.9, 5.75, 8.33, 13.0, 8.35),
    "resnet50_7 8x512x7x7": (30.1, 11.7, 6.39, 9.27, 15.0, 8.53),
    "resnet50_1x1 8x256x56x56->64": (19.8, 6.61, None, None, 6.88, 7.54),
    "strided_3x3 8x64x56x56 s2": (14.7, 7.15, None, None, 8.39, 5.21),
    "conv_5x5 8x32x32x32": (14.8, 6.83, 2.68, None, 8.15, 4.00),   # winograd: F(4x4,5x5), auto
    "depthwise_3x3 8x64x56x56": (0.94, 4.30, 5.39, 8.84, 5.46, 1.21),
    "mnist_lenet 64x1x28x28": (0.53, 0.72, 1.91, 3.78, 0.93, 0.44),
    "small_batch_3x3 1x64x56x56": (3.54, 1.61, 0.96, 1.23, 2.01, 1.31),
}


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
