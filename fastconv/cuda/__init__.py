"""CUDA backends (numba.cuda kernels): direct, im2col, gemm, winograd, pooling, elementwise.

Importing ``fastconv.cuda`` imports nothing heavy; ``interop`` is the only module that
knows array kinds (CuPy, torch, Numba, simulator arrays), every other module takes and
returns Numba device arrays. See docs/cuda.md.
"""
