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


# The simulator runs kernels as Python and never types them for the GPU. This script
# lowers kernels with numba's CUDA target for sm_80 (typing + LLVM IR; no GPU, no NVVM)
# in a process without the simulator, and checks float32 kernels do no float64 arithmetic.
_LOWER = r'''
import numba.cuda.dispatcher as dispatcher
from numba import types
from numba.cuda.compiler import compile_cuda
{imports}


class _Device:                      # device functions ask for the current device's cc
    compute_capability = (8, 0)


dispatcher.get_current_device = lambda: _Device()
i64, b = types.int64, types.boolean


def arr(dt, nd, layout="C"):
    return types.Array(dt, nd, layout)


def cases_for(name, dt):
{cases}


for name in ("float32", "float64"):
    for kernel, sig, strict in cases_for(name, getattr(types, name)):
        ir = compile_cuda(kernel.py_func, types.void, sig, cc=(8, 0)).library.get_llvm_str()
        if name == "float32" and strict:
            doubles = sum(ir.count(op + " double") for op in ("fadd", "fmul", "fdiv", "fpext"))
            assert doubles == 0, (kernel.py_func.__name__, "float64 arithmetic in float32 kernel")
print("lowered")
'''


def assert_kernels_lower(imports, cases):
    """Lower kernels for sm_80 in a fresh process without the simulator.

    `cases` is the body of `cases_for(name, dt)` (name "float32"/"float64", dt the numba
    type; `arr(dt, nd, layout)`, `i64` and `b` are defined): it returns a list of
    (kernel, argument types, strict), strict meaning "float32 must stay float32".
    """
    import os
    import subprocess
    import sys
    import textwrap
    script = _LOWER.format(imports=imports, cases=textwrap.indent(textwrap.dedent(cases), "    "))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert done.returncode == 0 and "lowered" in done.stdout, done.stderr[-3000:]
