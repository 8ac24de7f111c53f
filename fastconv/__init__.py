"""fastconv: convolution and pooling kernels for Python, hand-written in Numba.

    >>> import numpy as np, fastconv as fc
    >>> x = np.ones((1, 3, 8, 8), dtype=np.float32)
    >>> w = np.ones((4, 3, 3, 3), dtype=np.float32)
    >>> fc.conv2d(x, w, padding="same").shape
    (1, 4, 8, 8)

CPU kernels run on NumPy arrays; CUDA kernels run on CuPy arrays, Numba device
arrays and CUDA torch tensors. See README.md and docs/.
"""
from .api import (avg_pool2d, avg_pool2d_backward, conv2d, conv2d_grad_bias,
                  conv2d_grad_input, conv2d_grad_weight, explain, max_pool2d,
                  max_pool2d_backward, relu, relu_backward)
from .config import config
from . import filters, models, nn  # noqa: E402  (pure Python, no kernels compiled)

__version__ = "0.1.0"

__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
           "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "relu", "relu_backward", "explain", "config", "nn", "models", "filters",
           "__version__"]
