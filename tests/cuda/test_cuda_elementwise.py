"""ReLU, its gradient and grad_bias on the CUDA path, through the public API."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_backward(dtype, on_device, to_host):
    x = np.array([[-2.0, -0.0, 0.0, 1.5], [np.nan, np.inf, -np.inf, 3.0]], dtype)
    go = np.arange(8, dtype=dtype).reshape(2, 4)
    out = fc.relu(on_device(x))
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_array_equal(to_host(out), reference.relu(x))
    grad = to_host(fc.relu_backward(on_device(go), on_device(x)))
    np.testing.assert_array_equal(grad, reference.relu_backward(go, x))
    assert grad[1, 0] == go[1, 0]        # a NaN x passes the gradient, as in PyTorch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_bias_is_a_channel_sum(dtype, on_device, to_host, rng):
    go = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    result = to_host(fc.conv2d_grad_bias(on_device(go)))
    np.testing.assert_allclose(result, reference.conv2d_grad_bias(go),
                               rtol=1e-10 if dtype == np.float64 else 1e-5)
    empty = to_host(fc.conv2d_grad_bias(on_device(np.zeros((0, 3, 2, 2), dtype))))
    np.testing.assert_array_equal(empty, np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_channel_bias_adds_per_channel_in_place(dtype, on_device, to_host, rng):
    from fastconv.cuda import elementwise
    out = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    device = on_device(out)
    assert elementwise.add_channel_bias(device, on_device(bias)) is device
    np.testing.assert_array_equal(to_host(device), out + bias.reshape(-1, 1, 1))
    empty = on_device(np.zeros((0, 3, 2, 2), dtype))
    assert to_host(elementwise.add_channel_bias(empty, on_device(bias))).shape == (0, 3, 2, 2)


def test_mixed_host_and_device_is_refused(on_device):
    with pytest.raises(TypeError, match="one device"):
        fc.conv2d(on_device(np.ones((1, 1, 4, 4), np.float32)), np.ones((1, 1, 3, 3), np.float32))
