"""`conv_transpose2d` and its gradients on CUDA arrays against the float64 references.

Run on a GPU or with ``NUMBA_ENABLE_CUDASIM=1`` (tiny shapes). The transposed
convolution runs conv2d's CUDA kernels (its input gradient, forward and weight
gradient), so these check the mapping and the device-side bias and zero fill.
"""
import numpy as np
import pytest

import fastconv as fc
from fastconv import nn, reference
from fastconv.shapes import conv_transpose_geometry

from .conftest import assert_close

CASES = [
    # x_shape, w_shape, stride, padding, output_padding, groups, dilation
    ((2, 2, 3, 3), (2, 3, 3, 3), 2, 1, 1, 1, 1),
    ((1, 4, 3, 2), (4, 1, 2, 3), (1, 2), ((1, 0), (0, 1)), (0, 1), 2, 1),
    ((1, 2, 2, 3), (2, 2, 3, 3), 1, 0, 1, 1, 2),     # output_padding >= stride: zero fill
]


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, output_padding, groups, dilation",
                         CASES)
def test_conv_transpose_and_gradients_on_device(rng, on_device, to_host, algorithm, x_shape,
                                                w_shape, stride, padding, output_padding,
                                                groups, dilation):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1] * groups)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation, algorithm=algorithm)
    s, p, op, d, out_hw = conv_transpose_geometry(x_shape[2:], w_shape[2:], stride, padding,
                                                  output_padding, dilation)[:5]
    out = fc.conv_transpose2d(on_device(x), on_device(w), on_device(b), **kw)
    assert_close(to_host(out), reference.conv_transpose2d(x, w, b, s, p, op, d, groups),
                 np.float64)
    go = rng.standard_normal(tuple(out.shape))
    gi = fc.conv_transpose2d_grad_input(on_device(go), on_device(w), x_shape, **kw)
    assert_close(to_host(gi), reference.conv_transpose2d_grad_input(go, w, x_shape, s, p, d,
                                                                    groups), np.float64)
    gw = fc.conv_transpose2d_grad_weight(on_device(go), on_device(x), w_shape, **kw)
    assert_close(to_host(gw), reference.conv_transpose2d_grad_weight(go, x, w_shape, s, p, d,
                                                                     groups), np.float64)
    assert_close(to_host(fc.conv_transpose2d_grad_bias(on_device(go))), go.sum((0, 2, 3)),
                 np.float64)


def test_unbatched_float32_layer_on_device(rng, on_device, to_host):
    layer = nn.ConvTranspose2d(2, 3, 2, stride=2, rng=0)
    layer.bias.data[:] = [1, 2, 3]
    x = rng.standard_normal((2, 3, 3)).astype(np.float32)
    expected = layer(x)
    layer.weight.data = on_device(layer.weight.data)
    layer.bias.data = on_device(layer.bias.data)
    out = layer(on_device(x))
    assert out.shape == (3, 6, 6)
    assert_close(to_host(out), np.asarray(expected, np.float64), np.float32)
    gx = layer.backward(on_device(np.ones((3, 6, 6), np.float32)))
    assert gx.shape == (2, 3, 3)
