"""Benchmarks run the way `import fastconv` sets a process up: OpenBLAS's idle
threads stop spinning right after a GEMM (OPENBLAS_THREAD_TIMEOUT, read when
NumPy loads OpenBLAS, so it is set here, before any benchmark imports NumPy).
Without it, the NumPy GEMMs of fastconv and of the NumPy baseline leave threads
spinning that slow every other implementation in the run, PyTorch included
(docs/performance.md, "OpenBLAS's idle threads")."""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["OPENBLAS_THREAD_TIMEOUT"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
