"""Compile every CUDA kernel for a real GPU without one, and report what it costs.

The CUDA simulator runs kernels as Python, so it never types them for the GPU,
never sees NVVM's optimiser and cannot say whether an accumulator array lives in
registers or in (slow, off-chip) local memory. This module compiles the kernel
specialisations the backends launch, with the CUDA toolchain's compilers and no
GPU or driver:

- :func:`lower`: numba's CUDA typing and LLVM IR (needs only numba-cuda);
- :func:`compile_ptx`: NVVM (the ``nvidia-nvvm`` and ``nvidia-cuda-nvrtc`` wheels);
- :func:`assemble`: ``ptxas -v`` for the target (the ``nvidia-cuda-nvcc`` wheel):
  registers, stack frame, spills, static shared memory; and, with ``cuobjdump`` and
  ``nvdisasm`` (their wheels), the innermost FMA loop of the machine code
  (:func:`hot_loop`).

``python -m fastconv.cuda.resources [--cc 9.0] [--dtype float32]`` prints the table
that docs/cuda.md records; tests/test_cuda_resources.py asserts on it.

Kernels that ask for the current device's compute capability (device functions)
are compiled under :func:`_target`, which answers for the requested target.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from typing import NamedTuple

from . import _kernels, direct, elementwise, gemm, im2col, pooling, winograd


class Spec(NamedTuple):
    """One kernel specialisation as a backend launches it."""
    label: str          # "<module> <kernel> <compile-time parameters>"
    kernel: object      # the numba CUDA dispatcher
    argtypes: tuple     # numba types of its arguments
    threads: int        # threads per block of its largest launch on a GPU
    strict: bool        # float32 kernels must do no float64 arithmetic


def specs(dtype_name: str) -> list[Spec]:
    """Every kernel specialisation of the CUDA backends for one dtype."""
    from numba import types
    dt = getattr(types, dtype_name)
    i64, b = types.int64, types.boolean

    def arr(nd, layout="C", of=dt):
        return types.Array(of, nd, layout)

    a1, a3, a4 = arr(1), arr(3), arr(4)
    index3 = arr(3, of=types.int64)
    out = []
    for kb, px in ((4, 2), (2, 1), (1, 2)):
        out.append(Spec(f"direct forward KB={kb} PX={px}", direct._make_forward(dtype_name, kb, px),
                        (a4, a4, a1, b, a4) + (i64,) * 11 + (b,), 128, True))
    for cb, px in ((4, 2), (1, 1)):
        out.append(Spec(f"direct grad_input CB={cb} PX={px}",
                        direct._make_grad_input(dtype_name, cb, px), (a4, a4, a4) + (i64,) * 9,
                        128, True))
    for kb, kh, kw in ((4, 3, 3), (1, 7, 7), (2, 1, 1)):
        out.append(Spec(f"direct grad_weight KB={kb} {kh}x{kw}",
                        direct._make_grad_weight(dtype_name, kb, kh, kw),
                        (a4, a4, a4) + (i64,) * 9, direct._GW_THREADS, True))
    out.append(Spec("direct sum_splits", direct._make_sum_splits(dtype_name),
                    (arr(2), a1), 256, True))
    for values, indices in ((True, True), (False, True), (True, False)):
        out.append(Spec(f"pooling max_forward values={values} indices={indices}",
                        pooling._make_max_forward(dtype_name, values, indices),
                        (a3, a3, index3 if indices else a3) + (i64,) * 8, 256, True))
    out += [Spec("pooling max_backward", pooling._make_max_backward(dtype_name),
                 (a3, index3, a3) + (i64,) * 8, 256, True),
            Spec("pooling avg_forward", pooling._make_avg_forward(dtype_name),
                 (a3, a3) + (i64,) * 8 + (b, i64), 256, True),
            Spec("pooling avg_backward", pooling._make_avg_backward(dtype_name),
                 (a3, a3) + (i64,) * 8 + (b, i64), 256, True),
            Spec("_kernels fill", _kernels._make_fill(dtype_name), (a1, dt), 256, True),
            Spec("elementwise relu", elementwise._relu_kernel, (a1, a1), 256, True),
            Spec("elementwise relu_backward", elementwise._relu_backward_kernel, (a1,) * 3,
                 256, True),
            Spec("elementwise channel_sum", elementwise._make_channel_sum(dtype_name),
                 (a3, a1), elementwise._REDUCE_THREADS, True),
            Spec("elementwise add_channel_bias", elementwise._add_channel_bias_kernel,
                 (a1, a1, i64), 256, True)]
    operand = arr(3, "A")
    gemm_args = (operand, operand, operand, arr(1, "A")) + (i64,) * 10 + (dt, dt, b)
    # gemm.choose_config never takes LARGE for float64 (ptxas spills it)
    names = ("LARGE", "LARGE_2", "WIDE", "MEDIUM") if dtype_name == "float32" else ("WIDE", "MEDIUM")
    for name in names:
        cfg = getattr(gemm, name)
        # (trans_a, trans_b, split_a, split_b, split_c): plain, im2col forward (split
        # C), grad_weight (A^T, split B, split C), grad_input (B^T, split A), both ^T
        for modes in ((False, False, False, False, False), (False, False, False, False, True),
                      (True, False, False, True, True), (False, True, True, False, False),
                      (True, True, False, False, False)):
            flags = "".join(f for f, on in zip(("Ta", "Tb", "Sa", "Sb", "Sc"), modes) if on)
            out.append(Spec(f"gemm {name} {flags or 'plain'}",
                            gemm._make_gemm(cfg, dtype_name, *modes), gemm_args, cfg.threads,
                            True))
    out += [Spec("im2col im2col", im2col._make_im2col(dtype_name), (a4, a3) + (i64,) * 14,
                 128, True),
            Spec("im2col col2im", im2col._make_col2im(dtype_name),
                 (a3, a4) + (i64,) * 18 + (b,), 256, True)]
    for m in winograd.TILES:
        filt, inp, outp = winograd._make_kernels(dtype_name, m)
        # The filter transform computes in float64 on purpose: it runs once per weight.
        out += [Spec(f"winograd F({m}x{m}) filter_transform", filt, (a4, a3, i64, i64, b),
                     256, False),
                Spec(f"winograd F({m}x{m}) input_transform", inp, (a4, a3) + (i64,) * 7,
                     256, True),
                Spec(f"winograd F({m}x{m}) output_transform", outp,
                     (a3, a4, a1, b) + (i64,) * 5, 256, True)]
    return out


@contextlib.contextmanager
def _target(cc):
    """Answer "the current device" with compute capability `cc` (no GPU needed)."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = tuple(cc)

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device()
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def lower(spec: Spec, cc=(9, 0)) -> str:
    """The kernel's LLVM IR as numba's CUDA target types and lowers it."""
    from numba import types
    from numba.cuda.compiler import compile_cuda
    with _target(cc):
        result = compile_cuda(spec.kernel.py_func, types.void, spec.argtypes, cc=tuple(cc))
    return result.library.get_llvm_str()


def float64_ops(code: str) -> int:
    """Double-precision arithmetic in LLVM IR or PTX (0 for a clean float32 kernel)."""
    if re.search(r"^\.version ", code, re.M):      # PTX
        return len(re.findall(r"\b(?:add|sub|mul|fma|div)(?:\.r[nzmp])?\.f64\b|cvt\.f64\.f32",
                              code))
    # Unoptimised IR: count arithmetic only (comparisons with integer literals are
    # typed as double and folded by NVVM; the PTX count above sees what remains).
    return sum(code.count(op + " double") for op in ("fadd", "fsub", "fmul", "fdiv"))


def compile_ptx(spec: Spec, cc=(9, 0)) -> str:
    """The kernel's PTX from NVVM, optimised as numba does for a launch."""
    from numba.cuda.compiler import compile_ptx as numba_compile_ptx
    # launch bounds are a jit option of the dispatcher (gemm.LARGE_2)
    bounds = spec.kernel.targetoptions.get("launch_bounds")
    with _target(cc):
        ptx, _ = numba_compile_ptx(spec.kernel.py_func, spec.argtypes, cc=tuple(cc),
                                   launch_bounds=bounds)
    return ptx


def tool(name: str) -> str | None:
    """Path of a CUDA toolkit binary (ptxas, cuobjdump, nvdisasm), or None."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        found = find_nvidia_binary_utility(name)
    except Exception:  # no cuda-pathfinder, or an older one
        found = None
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", name)):
            return os.path.join(root, "bin", name)
    return None


class Resources(NamedTuple):
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int            # static shared memory (dynamic is sized at launch)


def assemble(ptx: str, cc=(9, 0), cubin_path: str | None = None) -> Resources:
    """Run ``ptxas -v`` on the PTX for sm_<cc>; optionally keep the cubin."""
    ptxas = tool("ptxas")
    if ptxas is None:
        raise FileNotFoundError("ptxas not found: pip install nvidia-cuda-nvcc")
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o",
                               cubin_path or os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}:\n{done.stderr[-3000:]}")
    info = done.stdout + done.stderr
    if not re.search(r"Used \d+ registers", info):   # never report zeros for a new format
        raise RuntimeError(f"ptxas -v printed no resource usage:\n{info[-3000:]}")

    def number(pattern):
        found = re.search(pattern, info)
        return int(found.group(1)) if found else 0

    return Resources(number(r"Used (\d+) registers"), number(r"(\d+) bytes stack frame"),
                     number(r"(\d+) bytes spill stores"), number(r"(\d+) bytes spill loads"),
                     number(r"(\d+) bytes smem"))


_FMA = re.compile(r"\b[FD]FMA\b")
_LOCAL = re.compile(r"\b(?:LDL|STL)(?:\.\w+)*\b")     # local memory (stack, spills)


class Loop(NamedTuple):
    instructions: int
    fmas: int
    local_accesses: int          # LDL/STL in the loop: spills where they cost most


def hot_loop(cubin_path: str) -> Loop | None:
    """The loop with the highest FMA share (>= 8 FMAs): its instructions, FMAs and
    local-memory accesses.

    A loop is a backward branch in the SASS that cuobjdump prints; the innermost
    multiply-add loop of a GEMM or convolution kernel is what this finds. (0, 0, 0)
    when the kernel has no such loop; None when cuobjdump or nvdisasm is missing.
    """
    cuobjdump, nvdisasm = tool("cuobjdump"), tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:       # cuobjdump runs nvdisasm
        return None
    env = dict(os.environ, NVDISASM_PATH=os.path.dirname(nvdisasm))
    done = subprocess.run([cuobjdump, "-sass", cubin_path], capture_output=True, text=True,
                          env=env, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {done.stderr[-2000:]}")
    sass = done.stdout
    code = [(int(m.group(1), 16), m.group(2)) for m in
            re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    position = {address: i for i, (address, _) in enumerate(code)}
    best = None
    for i, (address, text) in enumerate(code):
        target = re.search(r"\bBRA(?:\.\w+)*\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", text)
        if not target or int(target.group(1), 16) >= address:
            continue
        body = code[position.get(int(target.group(1), 16), i):i + 1]
        fmas = sum(1 for _, t in body if _FMA.search(t))
        if fmas >= 8 and (best is None or fmas * best.instructions > best.fmas * len(body)):
            best = Loop(len(body), fmas, sum(1 for _, t in body if _LOCAL.search(t)))
    return best or Loop(0, 0, 0)


def loaded_hot_loop(kernel, cc) -> Loop | None:
    """:func:`hot_loop` of a kernel numba compiled and loaded (a ``_Kernel``, one
    overload of a dispatcher), from its cubin: what runs on the GPU, whatever NVVM."""
    cubin = kernel._codelibrary.get_cubin(cc=tuple(cc))
    code = getattr(cubin, "code", cubin)     # numba-cuda >= 0.2x: a cuda.core ObjectCode
    if isinstance(code, str) and os.path.exists(code):
        return hot_loop(code)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "loaded.cubin")
        with open(path, "wb") as f:
            f.write(bytes(code))
        return hot_loop(path)


# Per-SM limits: registers, warps, blocks, shared memory (bytes), reserved per block.
_SM_LIMITS = {(8, 0): (65536, 64, 32, 164 * 1024, 1024),
              (8, 6): (65536, 48, 16, 100 * 1024, 1024),
              (8, 9): (65536, 48, 24, 100 * 1024, 1024),
              (9, 0): (65536, 64, 32, 228 * 1024, 1024)}


def occupancy(res: Resources, threads: int, cc=(9, 0), dynamic_shared_bytes: int = 0) -> float:
    """Resident warps per SM over the SM's maximum (registers are allocated per
    warp in units of 256)."""
    regs_per_sm, max_warps, max_blocks, smem_per_sm, reserved = _SM_LIMITS[tuple(cc)]
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(res.registers, 1) * 32 / 256) * 256
    blocks = min(max_blocks, max_warps // warps, regs_per_sm // (regs_per_warp * warps))
    shared = res.shared_bytes + dynamic_shared_bytes
    if shared:
        blocks = min(blocks, smem_per_sm // (shared + reserved))
    return blocks * warps / max_warps


class Row(NamedTuple):
    spec: Spec
    dtype: str
    resources: Resources
    occupancy: float
    loop: Loop | None
    float64_ops: int


def report(cc=(9, 0), dtypes=("float32", "float64"), match: str = "") -> list[Row]:
    """Compile and assemble every specialisation (those whose label contains `match`)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        for dtype_name in dtypes:
            for spec in specs(dtype_name):
                if match not in spec.label:
                    continue
                ptx = compile_ptx(spec, cc)
                res = assemble(ptx, cc, cubin)
                rows.append(Row(spec, dtype_name, res, occupancy(res, spec.threads, cc),
                                hot_loop(cubin), float64_ops(ptx)))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| kernel | dtype | threads | registers | stack / spills (B) | static shared (B) "
             "| occupancy | hot loop: FMA / instructions |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        r = row.resources
        loop = f"{row.loop[1]} / {row.loop[0]}" if row.loop and row.loop[0] else ""
        lines.append(f"| {row.spec.label} | {row.dtype} | {row.spec.threads} | {r.registers} "
                     f"| {r.stack_bytes} / {r.spill_store_bytes + r.spill_load_bytes} "
                     f"| {r.shared_bytes} | {row.occupancy:.0%} | {loop} |")
    return "\n".join(lines)


def toolchain_missing() -> str | None:
    """Why :func:`report` cannot run here, or None when NVVM and ptxas are found."""
    try:
        from numba.cuda.cudadrv.nvvm import NVVM
        NVVM()
    except Exception as exc:  # numba-cuda raises several kinds when libnvvm is absent
        return f"NVVM not usable ({type(exc).__name__}: {exc})"
    if tool("ptxas") is None:
        return "ptxas not found"
    return None


def _rows_json(rows):
    return [dict(label=row.spec.label, dtype=row.dtype, threads=row.spec.threads,
                 strict=row.spec.strict, float64_ops=row.float64_ops,
                 **row.resources._asdict(), occupancy=row.occupancy,
                 loop_instructions=row.loop[0] if row.loop else None,
                 loop_fmas=row.loop[1] if row.loop else None,
                 loop_local_accesses=row.loop[2] if row.loop else None) for row in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastconv.cuda.resources",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), action="append")
    parser.add_argument("--match", default="", help="only kernels whose label contains this")
    parser.add_argument("--lower", action="store_true",
                        help="only type and lower to LLVM IR (no NVVM needed); report "
                             "float64 arithmetic per kernel")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args(argv)
    cc = tuple(int(part) for part in args.cc.split("."))
    if cc not in _SM_LIMITS:
        parser.error(f"--cc {args.cc}: known targets are "
                     + ", ".join(f"{a}.{b}" for a, b in _SM_LIMITS))
    dtypes = tuple(args.dtype or ("float32", "float64"))
    if args.lower:
        rows = [dict(label=spec.label, dtype=name, strict=spec.strict,
                     float64_ops=float64_ops(lower(spec, cc)))
                for name in dtypes for spec in specs(name) if args.match in spec.label]
        print(json.dumps(rows) if args.json else "\n".join(
            f"{r['label']} {r['dtype']}: {r['float64_ops']} float64 ops" for r in rows))
        return 0
    missing = toolchain_missing()
    if missing:
        print(f"{missing}: pip install 'numba-cuda[cu13]' 'cuda-toolkit[nvcc]'",
              file=sys.stderr)
        return 3
    rows = report(cc, dtypes, args.match)
    print(json.dumps(_rows_json(rows)) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
