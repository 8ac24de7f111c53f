"""The CUDA kernels compile for real GPUs, on a machine without one.

The simulator (tests/cuda) runs kernels as Python; it never types them for the GPU
nor shows where NVVM puts their accumulators. `python -m fastconv.cuda.resources`
compiles every kernel specialisation with NVVM and ptxas for sm_90 (H100/H200) and
reports registers, local memory and the innermost FMA loop; these tests assert on
that report. They run in a subprocess without NUMBA_ENABLE_CUDASIM, so they pass in
either of CI's pytest runs. Without the compiler wheels of the `test` extra
(nvidia-nvvm, nvidia-cuda-nvcc), only typing and lowering to LLVM IR are checked.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba.cuda")

# float64 7x7 grad_weight: 49 float64 accumulators per thread (98 of 255 registers)
# leave ptxas a little short; a few spilled values, outside the multiply-add loop.
# gemm.LARGE_2 caps LARGE at 128 registers on purpose (two blocks per SM): it spills
# outside the FMA loop (test_inner_loops_are_multiply_adds checks the loop).


def _local_memory_allowed(row):
    return ((row["label"], row["dtype"]) == ("direct grad_weight KB=1 7x7", "float64")
            or row["label"].startswith("gemm LARGE_2 "))


def _resources(*args):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-m", "fastconv.cuda.resources", "--json", *args],
                          capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module")
def report():
    """Resources of every kernel for sm_90 (NVVM + ptxas), or the lowering fallback."""
    done = _resources("--cc", "9.0")
    if done.returncode == 3:        # no NVVM/ptxas here: type and lower only
        lowered = _resources("--lower", "--cc", "8.0")
        assert lowered.returncode == 0, lowered.stderr[-3000:]
        return "lowered", json.loads(lowered.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    return "compiled", json.loads(done.stdout)


def _compiled(report):
    kind, rows = report
    if kind != "compiled":
        pytest.skip("NVVM/ptxas not installed: pip install -e '.[test]'")
    return rows


def test_every_kernel_compiles_in_both_dtypes(report):
    from fastconv.cuda import resources
    _, rows = report
    expected = {(spec.label, name) for name in ("float32", "float64")
                for spec in resources.specs(name)}
    assert {(row["label"], row["dtype"]) for row in rows} == expected
    assert any(row["label"].startswith("gemm LARGE") for row in rows)


def test_float32_kernels_do_no_float64_arithmetic(report):
    _, rows = report
    leaks = [row["label"] for row in rows
             if row["dtype"] == "float32" and row["strict"] and row["float64_ops"]]
    assert leaks == []
    # the Winograd filter transform is not strict: it computes in float64 on purpose
    assert any(row["float64_ops"] for row in rows if not row["strict"])


def test_accumulators_live_in_registers(report):
    """No stack frame, no spills: every per-thread array is indexed by constants
    after unrolling (see the epilogue of gemm._make_gemm)."""
    rows = _compiled(report)
    local = [(row["label"], row["dtype"], row["stack_bytes"], row["spill_store_bytes"])
             for row in rows if (row["stack_bytes"] or row["spill_store_bytes"])
             and not _local_memory_allowed(row)]
    assert local == []


def test_blocks_fit_the_default_shared_memory_and_registers(report):
    rows = _compiled(report)
    assert all(row["shared_bytes"] <= 48 * 1024 for row in rows)
    assert all(row["registers"] <= 255 and row["occupancy"] > 0 for row in rows)


@pytest.mark.parametrize("label, dtype, least_fma_share", [
    ("gemm LARGE plain", "float32", 0.8),     # 128 FFMA, 8 LDS.128 (two k steps)
    ("gemm LARGE Sc", "float32", 0.8),
    ("gemm LARGE TaSbSc", "float32", 0.8),
    ("gemm LARGE_2 plain", "float32", 0.8),   # its spills stay out of this loop
    ("gemm LARGE_2 TaSbSc", "float32", 0.8),
    ("gemm WIDE plain", "float32", 0.7),
    ("gemm MEDIUM plain", "float32", 0.65),
    ("gemm WIDE plain", "float64", 0.7),
    ("direct forward KB=4 PX=2", "float32", 0.2),
])
def test_inner_loops_are_multiply_adds(report, label, dtype, least_fma_share):
    """The innermost multiply-add loop of the SASS: FMAs over all its instructions.
    Signed indices cost each load an address computation (numba wraps negative
    indices); the kernels index shared memory with unsigned values to avoid it."""
    rows = _compiled(report)
    row = next(r for r in rows if r["label"] == label and r["dtype"] == dtype)
    if row["loop_instructions"] is None:
        pytest.skip("cuobjdump or nvdisasm not installed")
    assert row["loop_fmas"] > 0, row                 # a multiply-add loop was found
    assert row["loop_local_accesses"] == 0, row      # no spills inside it
    assert row["loop_fmas"] / row["loop_instructions"] >= least_fma_share, row


def test_command_line_prints_a_table():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-m", "fastconv.cuda.resources", "--lower",
                           "--match", "sum_splits", "--dtype", "float32"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "direct sum_splits float32: 0 float64 ops"
    bad = subprocess.run([sys.executable, "-m", "fastconv.cuda.resources", "--cc", "1.0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "known targets" in bad.stderr


_AS_LOADED = """
import json, sys
from numba.cuda.cudadrv import devices
from numba.cuda.dispatcher import _Kernel, CUDACacheImpl
from numba.cuda.serialize import dumps
from fastconv.cuda import resources

class _Device:
    compute_capability = (9, 0)

class _Context:      # numba asks the current context for the target: answer sm_90
    device = _Device()

devices.get_context = lambda devnum=0: _Context()
spec = next(s for s in resources.specs("float32") if s.label == sys.argv[1])
with resources._target((9, 0)):
    kernel = _Kernel(spec.kernel.py_func, spec.argtypes, **spec.kernel.targetoptions)
    loop = resources.loaded_hot_loop(kernel, (9, 0))
blob = dumps(CUDACacheImpl.__new__(CUDACacheImpl).reduce(kernel))
print(json.dumps({"loop": list(loop) if loop else None, "cache_bytes": len(blob)}))
"""


def test_a_kernel_as_numba_loads_it():
    """What the GPU run's compile stage and the GPU GEMM test do to a loaded kernel,
    without a GPU: numba's own kernel object (the one a launch builds, cubin and all)
    for a faked sm_90 context; its FMA loop read from that cubin; and the state
    cache=True pickles into numba's cache."""
    from fastconv.cuda import resources
    if resources.toolchain_missing():
        pytest.skip("NVVM/ptxas not installed: pip install -e '.[test]'")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", _AS_LOADED, "gemm MEDIUM plain"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cache_bytes"] > 0
    if result["loop"] is None:
        pytest.skip("cuobjdump or nvdisasm not installed")
    instructions, fmas, local_accesses = result["loop"]
    assert fmas >= 32 and local_accesses == 0, result
