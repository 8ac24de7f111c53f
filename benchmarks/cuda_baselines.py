"""Competitors of fastconv's CUDA kernels in benchmarks/test_bench_cuda.py.

- :func:`im2col_conv2d`: im2col with array slicing + one batched ``matmul`` per
  chunk, written against the array-module API so that with CuPy arrays it is
  "CuPy im2col + cuBLAS" (``cupy.matmul`` calls cuBLAS) and with NumPy arrays it
  can be checked on a machine without a GPU. Like fastconv's im2col it bounds the
  column workspace (``workspace_bytes``) by chunking the batch.
- :func:`configure_torch`: cuDNN as PyTorch users get it for training
  (``cudnn.benchmark = True``: per-shape algorithm search), with TF32 off so that
  float32 is compared with float32.
- :func:`torch_conv2d`, :func:`torch_grad_input`, :func:`torch_grad_weight`:
  cuDNN forward and the two backward convolutions (``torch.nn.grad``).
"""
from __future__ import annotations

import numpy as np


def array_module(arr):
    """cupy for CuPy arrays, else numpy."""
    if type(arr).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _padding4(padding):
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def im2col_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                  workspace_bytes=256 * 2**20):
    """Cross-correlation (torch.nn.functional.conv2d) by im2col + matmul.

    ``x`` (N, C, H, W), ``weight`` (K, C/groups, kh, kw), CuPy or NumPy arrays;
    ``padding`` an int, (ph, pw) or (top, bottom, left, right). Returns
    (N, K, out_h, out_w) in x's module and dtype.
    """
    xp = array_module(x)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    top, bottom, left, right = _padding4(padding)
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    kg = k // groups
    xpad = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    hp, wp = xpad.shape[2:]
    out_h = (hp - dh * (kh - 1) - 1) // sh + 1
    out_w = (wp - dw * (kw - 1) - 1) // sw + 1
    rows = cg * kh * kw
    plane = out_h * out_w
    per_image = c * kh * kw * plane * x.dtype.itemsize
    nb = max(1, min(n, workspace_bytes // max(1, per_image)))
    w3 = weight.reshape(groups, kg, rows)
    out = xp.empty((n, k, out_h, out_w), dtype=x.dtype)
    s = xpad.strides
    for n0 in range(0, n, nb):
        chunk = xpad[n0:n0 + nb]
        b = chunk.shape[0]
        # (b, C, kh, kw, oh, ow) view of the patches; reshape copies it: the columns.
        view = xp.lib.stride_tricks.as_strided(
            chunk, shape=(b, c, kh, kw, out_h, out_w),
            strides=(s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw))
        cols = view.reshape(b, groups, rows, plane)
        res = xp.matmul(w3[None], cols)                     # (b, G, Kg, plane): cuBLAS
        out[n0:n0 + b] = res.reshape(b, k, out_h, out_w)
    if bias is not None:
        out += bias.reshape(1, k, 1, 1)
    return out


# --------------------------------------------------------------------------
# PyTorch / cuDNN
# --------------------------------------------------------------------------

def configure_torch():
    """cuDNN autotuning on, TF32 off (float32 means float32). Returns torch."""
    import torch
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch


def _torch_padding(padding):
    """torch.nn.functional.conv2d takes symmetric padding only: (ph, pw)."""
    top, bottom, left, right = _padding4(padding)
    if top != bottom or left != right:
        raise ValueError(f"torch needs symmetric padding, got {padding!r}")
    return (top, left)


def torch_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    import torch.nn.functional as F
    return F.conv2d(x, weight, bias, stride, _torch_padding(padding), dilation, groups)


def torch_grad_input(grad_out, weight, input_shape, stride=1, padding=0, dilation=1,
                     groups=1):
    import torch
    return torch.nn.grad.conv2d_input(tuple(input_shape), weight, grad_out, stride,
                                      _torch_padding(padding), dilation, groups)


def torch_grad_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1,
                      groups=1):
    import torch
    return torch.nn.grad.conv2d_weight(x, tuple(weight_shape), grad_out, stride,
                                       _torch_padding(padding), dilation, groups)


__all__ = ["array_module", "im2col_conv2d", "configure_torch", "torch_conv2d",
           "torch_grad_input", "torch_grad_weight"]
