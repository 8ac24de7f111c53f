"""Small CUDA kernels the API needs besides convolution and pooling:
ReLU forward/backward, the per-channel sum that is grad_bias, and the per-channel
bias add of the transposed convolution.

Inputs are contiguous numba device arrays (the API converts them).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from ._kernels import empty, kernel_factory, launch_1d, stream_or_default, zeros

_REDUCE_THREADS = 256


@cuda.jit(cache=True)
def _relu_kernel(x, out):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < x.size:
        v = x[i]
        # torch.relu: v < 0 is False for NaN and -0.0, which stay as they are
        if v < 0:
            out[i] = 0
        else:
            out[i] = v
        i += step


@cuda.jit(cache=True)
def _relu_backward_kernel(grad_out, x, grad_x):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < x.size:
        # torch's threshold_backward: a NaN x passes the gradient. (Not a
        # conditional expression: numba would type `0 if .. else float32` as float64.)
        if x[i] <= 0:
            grad_x[i] = 0
        else:
            grad_x[i] = grad_out[i]
        i += step


@cuda.jit(cache=True)
def _add_channel_bias_kernel(out, bias, plane):
    # out: (N * C * plane,) flat, C-contiguous NCHW; channel = (i // plane) % C
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    channels = bias.size
    while i < out.size:
        out[i] += bias[(i // plane) % channels]
        i += step


@kernel_factory
def _make_channel_sum(dtype_name):
    accumulator = getattr(numba, dtype_name)   # float32 sums stay float32 on the GPU

    @cuda.jit(cache=True)
    def channel_sum(grad_out, out):
        # One block per channel; threads stride over (n, pixel) and reduce in
        # shared memory in a fixed order, so the result is deterministic.
        c = cuda.blockIdx.x
        n, _, plane = grad_out.shape
        partial = cuda.shared.array(_REDUCE_THREADS, dtype=accumulator)
        tid = cuda.threadIdx.x
        acc = accumulator(0)
        for flat in range(tid, n * plane, _REDUCE_THREADS):
            acc += grad_out[flat // plane, c, flat % plane]
        partial[tid] = acc
        cuda.syncthreads()
        step = _REDUCE_THREADS // 2
        while step > 0:
            if tid < step:
                partial[tid] += partial[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            out[c] = partial[0]
    return channel_sum


def _elementwise(kernel, out, *arrays, stream=None):
    if out.size:
        blocks, threads = launch_1d(out.size)
        flat = [a.reshape(a.size) for a in arrays + (out,)]
        kernel[blocks, threads, stream_or_default(stream)](*flat)
    return out


def relu(x, stream=None):
    return _elementwise(_relu_kernel, empty(x.shape, x.dtype, stream), x, stream=stream)


def relu_backward(grad_out, x, stream=None):
    return _elementwise(_relu_backward_kernel, empty(x.shape, x.dtype, stream), grad_out, x,
                        stream=stream)


def channel_sum(grad_out, stream=None):
    """grad_out (N, C, H, W) -> (C,): the sum over batch and pixels per channel."""
    n, channels, h, w = grad_out.shape
    if n * h * w == 0:
        return zeros((channels,), grad_out.dtype, stream)
    out = empty((channels,), grad_out.dtype, stream)
    kernel = _make_channel_sum(np.dtype(grad_out.dtype).name)
    kernel[channels, _REDUCE_THREADS, stream_or_default(stream)](
        grad_out.reshape(n, channels, h * w), out)
    return out


def add_channel_bias(out, bias, stream=None):
    """out (N, C, H, W) += bias (C,) per channel, in place; returns out."""
    n, channels, h, w = out.shape
    if out.size:
        blocks, threads = launch_1d(out.size)
        _add_channel_bias_kernel[blocks, threads, stream_or_default(stream)](
            out.reshape(out.size), bias, h * w)
    return out
