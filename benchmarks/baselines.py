"""CPU competitors of fastconv in benchmarks/test_bench_cpu.py.

- ``numpy_im2col_conv2d``: the textbook NumPy convolution: pad, take every
  (kh, kw) patch with ``as_strided`` (no copy), then one ``tensordot``/matmul
  (BLAS) over (C, kh, kw). This is the baseline fastconv must beat by its own
  kernels.
- ``numpy_max_pool2d`` / ``numpy_avg_pool2d``: a loop over window offsets with
  whole-array NumPy operations (PyTorch's padding rules, floor mode).
- PyTorch CPU (oneDNN) is called directly in the benchmark file.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _pad(x, padding, value=0.0):
    top, bottom, left, right = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def numpy_im2col_conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0),
                        dilation=(1, 1), groups=1):
    """NCHW cross-correlation, PyTorch semantics, by as_strided patches + matmul."""
    xp = _pad(x, padding)
    n, c, hp, wp = xp.shape
    k, cg, kh, kw = weight.shape
    sh, sw = stride
    dh, dw = dilation
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    s = xp.strides
    # (n, c, kh, kw, oh, ow) view of the patches
    patches = as_strided(xp, (n, c, kh, kw, oh, ow),
                         (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw),
                         writeable=False)
    kg = k // groups
    out = np.empty((n, k, oh, ow), dtype=x.dtype)
    for g in range(groups):
        cols = patches[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, oh * ow)  # copies
        wg = weight[g * kg:(g + 1) * kg].reshape(kg, cg * kh * kw)
        out[:, g * kg:(g + 1) * kg] = np.matmul(wg, cols).reshape(n, kg, oh, ow)
    if bias is not None:
        out += bias.reshape(1, k, 1, 1)
    return out


def _windows(x, kernel, stride, padding, value):
    xp = _pad(x, padding, value)
    kh, kw = kernel
    sh, sw = stride
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def numpy_max_pool2d(x, kernel, stride, padding=(0, 0, 0, 0)):
    it = _windows(x, kernel, stride, padding, -np.inf)
    out = next(it).copy()
    for view in it:
        np.maximum(out, view, out=out)
    return out


def numpy_avg_pool2d(x, kernel, stride, padding=(0, 0, 0, 0)):
    """count_include_pad=True (PyTorch's default)."""
    it = _windows(x, kernel, stride, padding, 0.0)
    out = next(it).copy()
    for view in it:
        out += view
    out *= 1.0 / (kernel[0] * kernel[1])
    return out
