"""fastconv: convolution and pooling kernels for Python, hand-written in Numba.

    >>> import numpy as np, fastconv as fc
    >>> x = np.ones((1, 3, 8, 8), dtype=np.float32)
    >>> w = np.ones((4, 3, 3, 3), dtype=np.float32)
    >>> fc.conv2d(x, w, padding="same").shape
    (1, 4, 8, 8)

CPU kernels run on NumPy arrays; CUDA kernels run on CuPy arrays, Numba device
arrays and CUDA torch tensors. See README.md and docs/.
"""
import os as _os
import sys as _sys

# NumPy's OpenBLAS keeps its idle threads busy-waiting for a long while after each
# GEMM. im2col and Winograd alternate numba kernels with GEMMs, and on a 2-core
# machine those spinning threads took the cores from the numba kernels and from
# any other library in the process, PyTorch included (measured 1.2-1.9x slower
# layers; docs/performance.md). OpenBLAS reads this variable once, when NumPy
# loads it, so it helps only when fastconv is imported before NumPy (or the user
# sets it); a value the user set is kept. 4 is OpenBLAS's shortest wait.
BLAS_WAIT_SET_BEFORE_NUMPY = ("numpy" not in _sys.modules
                              or "OPENBLAS_THREAD_TIMEOUT" in _os.environ)
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .api import (avg_pool2d, avg_pool2d_backward, conv2d, conv2d_grad_bias,
                  conv2d_grad_input, conv2d_grad_weight, explain, max_pool2d,
                  max_pool2d_backward, relu, relu_backward)
from .api import (conv_transpose2d, conv_transpose2d_grad_bias,  # noqa: E402
                  conv_transpose2d_grad_input, conv_transpose2d_grad_weight)
from .config import config
from . import filters, models, nn  # noqa: E402  (pure Python, no kernels compiled)
from . import plan  # noqa: E402  (fc.plan.last_plan(): the plan the latest call ran)

__version__ = "0.1.0"

__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
           "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "relu", "relu_backward", "conv_transpose2d", "conv_transpose2d_grad_input",
           "conv_transpose2d_grad_weight", "conv_transpose2d_grad_bias", "explain", "config", "nn", "models", "filters",
           "__version__"]
