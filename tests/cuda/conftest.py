"""Fixtures of the CUDA tests. The whole directory is skipped unless numba.cuda is
usable: a real GPU, or the simulator (NUMBA_ENABLE_CUDASIM=1 in the environment
*before* numba is imported, i.e. `NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda`).

The simulator runs every thread in Python: keep shapes tiny (N<=2, C<=4, H,W<=8);
shrink block-size caps with monkeypatch to exercise multi-block grids.
"""
import numpy as np
import pytest

from fastconv.cuda import interop

_USABLE, _WHY = interop.cuda_available()


def pytest_collection_modifyitems(config, items):
    if _USABLE:
        return
    skip = pytest.mark.skip(
        reason=f"numba.cuda not usable ({_WHY}); run on a GPU or with NUMBA_ENABLE_CUDASIM=1")
    for item in items:
        if "tests/cuda/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture
def on_device():
    """on_device(np_array) -> a numba device array (cuda.to_device) with its values."""
    from numba import cuda

    def put(arr):
        return cuda.to_device(np.ascontiguousarray(arr))
    return put


@pytest.fixture
def to_host():
    """to_host(device_array) -> a NumPy array (for numba/simulator, CuPy or torch arrays)."""
    def get(arr):
        if hasattr(arr, "copy_to_host"):
            return arr.copy_to_host()
        if type(arr).__module__.startswith("cupy"):
            return arr.get()
        if type(arr).__module__.startswith("torch"):
            return arr.detach().cpu().numpy()
        return np.asarray(arr)
    return get


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def assert_close(result, expected, dtype):
    """fastconv's accuracy contract: float64 rtol 1e-10, float32 1e-4 of the output's scale."""
    result = np.asarray(result, dtype=np.float64)
    assert result.shape == expected.shape, (result.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    tol = 1e-10 if np.dtype(dtype) == np.float64 else 1e-4
    np.testing.assert_allclose(result, expected, rtol=tol, atol=tol * scale)
