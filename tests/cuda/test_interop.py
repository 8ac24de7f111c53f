"""fastconv.cuda.interop: array kinds, contiguous device views, streams, allocation.

The simulator parts run under NUMBA_ENABLE_CUDASIM=1; the CuPy and torch parts
skip unless those libraries can use a real GPU.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv.cuda import _kernels, interop


def _cupy():
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


def _torch_cuda():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


cupy = _cupy()
torch = _torch_cuda()
needs_cupy = pytest.mark.skipif(cupy is None or _kernels.simulated(),
                                reason="needs CuPy on a real GPU")
needs_torch = pytest.mark.skipif(torch is None or _kernels.simulated(),
                                 reason="needs torch with CUDA on a real GPU")


# --------------------------------------------------------------------------
# Numba / simulator arrays
# --------------------------------------------------------------------------

def test_is_device_array(on_device):
    assert interop.is_device_array(on_device(np.zeros((2, 3))))
    for host in (np.zeros(3), [1.0, 2.0], 3.0, None, "x", np.float32(1)):
        assert not interop.is_device_array(host)


def test_host_torch_tensor_is_not_a_device_array():
    torch_cpu = pytest.importorskip("torch")
    assert not interop.is_device_array(torch_cpu.zeros(3))


def test_cuda_available_reports():
    usable, why = interop.cuda_available()
    assert usable and isinstance(why, str) and why
    if _kernels.simulated():
        assert "simulator" in why


def test_to_numba_contiguous_is_a_view(on_device, to_host):
    d = on_device(np.arange(12.0).reshape(3, 4))
    assert interop.to_numba(d) is d


def test_to_numba_noncontiguous_copies(on_device, to_host):
    host = np.arange(60.0).reshape(3, 4, 5)
    d = on_device(host)
    matrix = np.arange(12.0).reshape(3, 4)
    # numba-cuda transposes 2-D device arrays only (.T of a 3-D one raises on a GPU)
    for view, expected in ((d[:, ::2, 1:], host[:, ::2, 1:]), (on_device(matrix).T, matrix.T)):
        out = interop.to_numba(view)
        assert out.is_c_contiguous()
        np.testing.assert_array_equal(to_host(out), expected)
    np.testing.assert_array_equal(to_host(d), host)  # the source is untouched


def test_whole_array_index_suits_numba_device_arrays():
    """_contiguous_numba copies with ``out.setitem(whole(ndim), arr)``. On a GPU,
    DeviceNDArray.setitem indexes numba's dummy array (the simulator never does):
    it takes a tuple of full slices, not Ellipsis. Checked here on that dummy array
    (loaded from its file: the simulator replaces numba.cuda.cudadrv)."""
    import importlib.util

    import numba.cuda
    path = os.path.join(os.path.dirname(numba.cuda.__file__), "cudadrv", "dummyarray.py")
    spec = importlib.util.spec_from_file_location("_numba_cuda_dummyarray", path)
    dummyarray = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dummyarray)
    for shape in ((5,), (3, 4), (2, 3, 4), (2, 1, 3, 2)):
        strides = tuple(int(s) for s in np.empty(shape, np.float32).strides)
        dummy = dummyarray.Array.from_desc(0, shape, strides, 4)
        part = dummy[interop.whole(len(shape))]
        assert part.shape == shape and part.extent == dummy.extent
        with pytest.raises(TypeError):
            dummy[Ellipsis]      # what the copy used to pass


def test_to_numba_noncontiguous_views_of_every_rank(on_device, to_host):
    host = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    d = on_device(host)
    for key in ((slice(None), slice(None), slice(None), slice(None, None, 2)),
                (0, slice(None), slice(1, None)), (1, 2, slice(None, None, 3))):
        out = interop.to_numba(d[key])
        assert out.is_c_contiguous()
        np.testing.assert_array_equal(to_host(out), host[key])


class _FakeCudaTensor:
    """What interop sees of a CUDA torch tensor that requires grad (nn.Parameter):
    a torch type whose __cuda_array_interface__ raises RuntimeError."""
    __module__ = "torch.nn.parameter"
    is_cuda = True
    requires_grad = True

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires "
                           "grad. Use var.detach().__cuda_array_interface__ instead.")


def test_tensor_that_requires_grad_is_a_device_array():
    assert interop.is_device_array(_FakeCudaTensor())
    torch_cpu = pytest.importorskip("torch")
    assert not interop.is_device_array(torch_cpu.nn.Parameter(torch_cpu.zeros(3)))


def test_like_and_stream_for_numba(on_device):
    d = on_device(np.zeros(4))
    assert interop.like(d, d) is d
    assert interop.stream_of(d) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_device_zeros_and_empty(to_host, dtype):
    z = interop.device_zeros((2, 3, 4), dtype, 0)
    assert tuple(z.shape) == (2, 3, 4) and z.dtype == dtype
    np.testing.assert_array_equal(to_host(z), np.zeros((2, 3, 4), dtype))
    e = _kernels.empty((0, 3), dtype, 0)
    assert tuple(e.shape) == (0, 3)
    assert tuple(interop.device_zeros((0, 2), dtype).shape) == (0, 2)


def test_import_is_cheap():
    """Importing fastconv (and interop) must not import numba.cuda, CuPy or torch."""
    code = ("import sys, fastconv, fastconv.cuda.interop as i; "
            "i.is_device_array([1.0]); "
            "print(sorted(m for m in ('numba.cuda', 'cupy', 'torch') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__)))), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_api_mixing_host_and_device_is_refused(on_device):
    with pytest.raises(TypeError, match="one device"):
        fc.conv2d(on_device(np.zeros((1, 1, 3, 3))), np.ones((1, 1, 2, 2)))


def test_api_dtype_checks_on_device(on_device):
    with pytest.raises(TypeError, match="int64"):
        fc.relu(on_device(np.zeros(3, np.int64)))
    with pytest.raises(TypeError, match="dtype"):
        fc.conv2d(on_device(np.zeros((1, 1, 3, 3), np.float32)),
                  on_device(np.ones((1, 1, 2, 2), np.float64)))


# --------------------------------------------------------------------------
# Real GPU: CuPy and torch (skipped elsewhere)
# --------------------------------------------------------------------------

@needs_cupy
def test_cupy_roundtrip_and_kind():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    cx = cupy.asarray(x)[:, :, :, ::-1]            # negative strides: a copy on the GPU
    out = fc.conv2d(cx, cupy.asarray(w), padding=1, algorithm="direct")
    assert isinstance(out, cupy.ndarray)
    expected = fc.conv2d(np.ascontiguousarray(x[:, :, :, ::-1]), w, padding=1,
                         algorithm="direct")
    np.testing.assert_allclose(cupy.asnumpy(out), expected, rtol=1e-4, atol=1e-4)


@needs_cupy
def test_cupy_stream_is_used():
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        stream = interop.stream_of(cupy.zeros(3))
        assert int(stream) == s.ptr
        x = cupy.ones((1, 1, 4, 4), cupy.float64)
        out = fc.max_pool2d(x, 2)
        s.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(out), np.ones((1, 1, 2, 2)))


@needs_torch
def test_torch_roundtrip_and_kind():
    x = torch.randn(2, 3, 5, 6, device="cuda", dtype=torch.float64)
    w = torch.randn(4, 3, 2, 2, device="cuda", dtype=torch.float64)
    xt = x.transpose(2, 3)                          # non-contiguous
    out = fc.conv2d(xt, w, stride=2, algorithm="direct")
    assert isinstance(out, torch.Tensor) and out.device == x.device
    expected = torch.nn.functional.conv2d(xt, w, stride=2)
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-10)


@needs_torch
def test_torch_parameter_converts():
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3, device="cuda"))
    assert interop.is_device_array(w)
    np.testing.assert_array_equal(interop.to_numba(w).copy_to_host(),
                                  w.detach().cpu().numpy())


@needs_torch
def test_torch_parameter_weight_works():
    """An nn.Parameter (requires_grad=True) is read through .detach(); the result
    carries no autograd history."""
    x = torch.randn(2, 3, 6, 6, device="cuda", dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3, device="cuda", dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, device="cuda", dtype=torch.float64))
    out = fc.conv2d(x, w, b, padding=1, algorithm="direct")
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    expected = torch.nn.functional.conv2d(x, w.detach(), b.detach(), padding=1)
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-10)
    assert w.grad is None


@needs_torch
def test_torch_noncontiguous_numba_view_copies_on_the_device():
    """A strided numba view of torch memory: the device-side copy (setitem) path."""
    from numba import cuda
    t = torch.arange(60, device="cuda", dtype=torch.float32).reshape(3, 4, 5)
    view = cuda.as_cuda_array(t)[:, ::2, 1:]
    out = interop.to_numba(view)
    assert out.is_c_contiguous()
    np.testing.assert_array_equal(out.copy_to_host(), t.cpu().numpy()[:, ::2, 1:])


@needs_torch
def test_torch_stream_is_used():
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.ones(1, 1, 4, 4, device="cuda")
        stream = interop.stream_of(x)
        assert int(stream) == s.cuda_stream
        out = fc.avg_pool2d(x, 2)
    s.synchronize()
    assert torch.equal(out.cpu(), torch.ones(1, 1, 2, 2))
