"""Small CUDA kernels the API needs besides convolution and pooling:
ReLU forward/backward and the per-channel sum that is grad_bias.

Inputs are contiguous numba device arrays (the API converts them).
"""
from __future__ import annotations

import math

from numba import cuda

_THREADS = 256


@cuda.jit(cache=True)
def _relu_kernel(x, out):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        # v > 0 is False for NaN: keep NaN as it is (torch.relu propagates it).
        out[i] = v if (v > 0 or v != v) else 0


@cuda.jit(cache=True)
def _relu_backward_kernel(grad_out, x, grad_x):
    i = cuda.grid(1)
    if i < x.size:
        grad_x[i] = grad_out[i] if x[i] > 0 else 0


@cuda.jit(cache=True)
def _channel_sum_kernel(grad_out, out):
    # One block per channel; threads stride over (n, pixel) and reduce in
    # shared memory in a fixed order, so the result is deterministic.
    c = cuda.blockIdx.x
    n, channels, plane = grad_out.shape
    partial = cuda.shared.array(_THREADS, dtype=out.dtype)
    tid = cuda.threadIdx.x
    acc = 0.0
    for flat in range(tid, n * plane, _THREADS):
        acc += grad_out[flat // plane, c, flat % plane]
    partial[tid] = acc
    cuda.syncthreads()
    step = _THREADS // 2
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        out[c] = partial[0]


def _blocks(size):
    return max(1, math.ceil(size / _THREADS))


def relu(x, stream=None):
    out = cuda.device_array(x.shape, x.dtype, stream=stream or 0)
    flat_x, flat_out = x.reshape(x.size), out.reshape(x.size)
    if x.size:
        _relu_kernel[_blocks(x.size), _THREADS, stream or 0](flat_x, flat_out)
    return out


def relu_backward(grad_out, x, stream=None):
    grad_x = cuda.device_array(x.shape, x.dtype, stream=stream or 0)
    if x.size:
        _relu_backward_kernel[_blocks(x.size), _THREADS, stream or 0](
            grad_out.reshape(x.size), x.reshape(x.size), grad_x.reshape(x.size))
    return grad_x


def channel_sum(grad_out, stream=None):
    """grad_out (N, C, H, W) -> (C,): the sum over batch and pixels per channel."""
    n, channels, h, w = grad_out.shape
    out = cuda.device_array(channels, grad_out.dtype, stream=stream or 0)
    if n * h * w == 0:
        out[:] = 0
        return out
    _channel_sum_kernel[channels, _THREADS, stream or 0](
        grad_out.reshape(n, channels, h * w), out)
    return out
