"""Command line: python -m fastconv {info, check, demo, filters, bench}."""
from __future__ import annotations

import argparse
import os
import platform
import sys


def info() -> int:
    """Versions, threads, CUDA availability, and what `auto` picks."""
    import numba
    import numpy as np

    from . import __version__, api
    from .config import config
    from .cuda import interop

    print(f"fastconv {__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()})")
    print(f"numpy    {np.__version__}")
    print(f"numba    {numba.__version__}")
    from . import threads
    api.conv2d(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 1, 1), np.float32))
    print(f"cpu threads: numba uses {numba.get_num_threads()} of {os.cpu_count()} "
          f"(threading layer: {numba.threading_layer()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")
    print("openmp runtimes loaded: " + (", ".join(threads.openmp_runtimes()) or "none"))
    import fastconv
    wait = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    print(f"OpenBLAS idle wait: OPENBLAS_THREAD_TIMEOUT={wait} "
          + ("(in effect)" if fastconv.BLAS_WAIT_SET_BEFORE_NUMPY else
             "(NOT in effect: NumPy was imported before fastconv)"))
    for warning in threads.contention():
        print(f"warning: {warning}")
    print(f"workspace_bytes: {config.workspace_bytes} ({config.workspace_bytes / 2**20:.0f} MiB)")
    from .cpu import gemm
    if gemm.HOST is None:
        print("winograd GEMMs: np.matmul (the target CPU has neither AVX-512 nor AVX2 + FMA)")
    else:
        narrow, wide = gemm.HOST
        print(f"winograd GEMMs: fastconv's micro-kernel, {narrow.vector_bytes}-byte vectors, "
              f"tiles {narrow.rows}x{narrow.vectors} and {wide.rows}x{wide.vectors} "
              "(np.matmul where gemm.tile_for says it is faster)")
    usable, why = interop.cuda_available()
    print(f"cuda: {'usable' if usable else 'not usable'} ({why})")
    print(f"cuda compilers: {_cuda_compilers()}")
    layers = [((8, 64, 56, 56), (64, 64, 3, 3), 1), ((8, 256, 56, 56), (64, 256, 1, 1), 0),
              ((8, 64, 56, 56), (64, 1, 3, 3), 1)]
    print("auto picks:")
    for x_shape, w_shape, padding in layers:
        groups = x_shape[1] // w_shape[1]
        print("  " + api.explain(x_shape, w_shape, padding=padding, groups=groups))
        if usable:
            print("  " + api.explain(x_shape, w_shape, padding=padding, groups=groups,
                                     device="cuda"))
    return 0


def _cuda_compilers() -> str:
    """Whether the kernels can be compiled for a GPU here (no GPU needed)."""
    try:
        from .cuda import resources
        missing = resources.toolchain_missing()
    except Exception as exc:  # numba-cuda absent or broken: say so, info must not fail
        return f"not usable ({type(exc).__name__}: {exc})"
    if missing:
        return f"not usable ({missing})"
    return "NVVM and ptxas found: python -m fastconv.cuda.resources compiles every kernel"


def check() -> int:
    """Every operator and algorithm against the float64 references, on each usable device."""
    from . import selfcheck
    from .cuda import interop
    devices = ("cpu", "cuda") if interop.cuda_available()[0] else ("cpu",)
    return selfcheck.main(devices)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__)
    parser.add_argument("command", choices=["info", "check", "demo", "filters", "bench"])
    args = parser.parse_args(argv[:1])
    rest = argv[1:]
    if args.command in ("info", "check"):
        command = info if args.command == "info" else check
        # it takes no arguments: a parser of its own makes any a usage error (exit 2)
        # instead of ignoring it, and gives it --help
        argparse.ArgumentParser(prog=f"python -m fastconv {args.command}",
                                description=command.__doc__).parse_args(rest)
        return command()
    if args.command == "demo":
        from . import demo
        return demo.main(rest) or 0
    if args.command == "filters":
        if "--dask" in rest:
            try:
                from . import dask
            except ImportError as exc:
                raise SystemExit(f"fastconv filters --dask: {exc}") from None
            return dask.main(rest) or 0
        from . import filters
        return filters.main(rest) or 0
    from . import bench
    return bench.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
