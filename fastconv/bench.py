"""`python -m fastconv bench`: run the CPU benchmarks (or read their JSON) and report.

    python -m fastconv bench                         # run benchmarks/test_bench_cpu.py, report
    python benchmarks/interleaved.py --json i.json && python -m fastconv bench --json i.json
    python -m fastconv bench --json cpu.json         # report an existing pytest-benchmark JSON
    python -m fastconv bench -k resnet50 --full      # a selection / the full set

Writes a markdown table (time of each implementation / PyTorch's time, min of the
rounds, and GFLOP/s) to stdout and to ``--out`` (default ./benchmark-results.md), and a
bar chart of the ratios to ``--png`` (default ./benchmark-ratios.png), headed by the
machine (CPU model from /proc/cpuinfo), thread count and date. Both go to the current
directory unless told otherwise, never into the installed package.

Reporting a JSON works wherever fastconv is installed. Running the benchmarks needs
the repository's ``benchmarks/`` folder: the one in the current directory, else the
one next to this package when it is imported from a clone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import numbers
import os
import subprocess
import sys
from collections import OrderedDict

# the clone this package is imported from, if it is: an installed package has no benchmarks/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "torch"
BENCH_FILE = os.path.join("benchmarks", "test_bench_cpu.py")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def benchmarks_root(cwd=None):
    """The repository folder whose benchmarks/test_bench_cpu.py `bench` runs: `cwd`
    (default the current directory) or the clone this package lives in; None if neither."""
    for root in (os.path.abspath(cwd or os.getcwd()), ROOT):
        if os.path.isfile(os.path.join(root, BENCH_FILE)):
            return root
    return None


def threads_here() -> str:
    """CPUs and the thread counts of numba (and torch, if installed) in this process."""
    import numba
    threads = f"{os.cpu_count()} CPUs, numba {numba.get_num_threads()} threads"
    try:
        import torch
        threads += f", torch {torch.get_num_threads()} threads"
    except ImportError:
        pass
    return threads


def machine_of(machine_info):
    """(CPU model, threads) of the machine a JSON was measured on: as the JSON records
    them (benchmarks/interleaved.py's fields, or pytest-benchmark's cpu.brand_raw), else
    this machine's, marked as such."""
    cpu = machine_info.get("cpu_model")
    if not cpu and isinstance(machine_info.get("cpu"), dict):
        cpu = machine_info["cpu"].get("brand_raw")
    threads = machine_info.get("threads")
    if cpu:
        return str(cpu), str(threads or threads_here())
    return (f"{cpu_model()} (the reporting machine: the JSON names no CPU)",
            str(threads or threads_here()))


def run_benchmarks(json_path, select=None, full=False, extra=(), root=None):
    root = root or benchmarks_root() or ROOT
    cmd = [sys.executable, "-m", "pytest", os.path.join(root, BENCH_FILE),
           "--benchmark-only", "-q", f"--benchmark-json={json_path}", "-p", "no:cacheprovider"]
    if select:
        cmd += ["-k", select]
    cmd += list(extra)
    env = dict(os.environ)
    if full:
        env["FASTCONV_BENCH_FULL"] = "1"
    print("running:", " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=env, cwd=root)


def _number(value, positive=False):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and (value > 0 or not positive))


def load(json_path):
    """{group: {impl: (min seconds, gflops or None)}} in file order, and the JSON's machine info.

    A file that cannot be read, is not JSON, holds no benchmarks or an entry without a
    name or a positive ``stats.min`` raises ValueError naming the file (and the entry)."""
    try:
        with open(json_path) as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read --json {json_path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"--json {json_path} is not JSON: {exc}") from None
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list) or not benchmarks:
        raise ValueError(f"--json {json_path} holds no benchmarks (a pytest-benchmark JSON "
                         "with a non-empty \"benchmarks\" list is expected)")
    groups = OrderedDict()
    for i, bench in enumerate(benchmarks):
        bench = bench if isinstance(bench, dict) else {}
        info = bench.get("extra_info")
        info = info if isinstance(info, dict) else {}
        stats = bench.get("stats")
        seconds = stats.get("min") if isinstance(stats, dict) else None
        name = bench.get("name")
        if not isinstance(name, str) or not _number(seconds, positive=True):
            raise ValueError(f"--json {json_path}: benchmarks[{i}] is not a benchmark entry "
                             "(it needs a \"name\" and a positive \"stats\": {\"min\": ...})")
        # "param" and "group" may be null or absent (a benchmark without parameters):
        # the name stands in for them
        impl = str(info.get("impl") or bench.get("param") or name)
        gflops = info.get("gflops")
        groups.setdefault(str(bench.get("group") or name), OrderedDict())[impl] = (
            seconds, gflops if _number(gflops) else None)
    return groups, data


def ratios(groups):
    """{group: {impl: time / torch's time}} for groups with a torch entry."""
    out = OrderedDict()
    for group, impls in groups.items():
        if BASELINE in impls:
            base = impls[BASELINE][0]
            out[group] = OrderedDict((impl, t / base) for impl, (t, _) in impls.items())
    return out


def markdown(groups, header):
    impls = []
    for per in groups.values():
        impls += [i for i in per if i not in impls]
    lines = [header, "",
             "Each cell: min time in ms, (time / PyTorch's time), [GFLOP/s]. "
             "Ratio < 1: faster than PyTorch. Bold: fastest fastconv entry (an algorithm or "
             "`auto`, which alone runs Winograd F(4x4,5x5) on 5x5 layers).", "",
             "| group | " + " | ".join(impls) + " |",
             "|---|" + "---|" * len(impls)]
    for group, per in groups.items():
        base = per.get(BASELINE, (None,))[0]
        fc_times = {i: t for i, (t, _) in per.items()
                    if i in ("direct", "im2col", "winograd", "winograd_f2", "auto", "fastconv")}
        best = min(fc_times, key=fc_times.get) if fc_times else None
        cells = []
        for impl in impls:
            if impl not in per:
                cells.append("")
                continue
            t, gf = per[impl]
            cell = f"{t * 1e3:.2f}"
            if base:
                cell += f" ({t / base:.2f}x)"
            if gf:
                cell += f" [{gf:.0f}]"
            cells.append(f"**{cell}**" if impl == best else cell)
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(groups, png, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    rat = ratios(groups)
    impls = []
    for per in rat.values():
        impls += [i for i in per if i not in impls and i != BASELINE]
    names = list(rat)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(names) + 2), 5))
    width = 0.8 / max(1, len(impls))
    xs = np.arange(len(names))
    for j, impl in enumerate(impls):
        vals = [rat[g].get(impl, np.nan) for g in names]
        ax.bar(xs + j * width - 0.4 + width / 2, vals, width, label=impl)
    ax.axhline(1.0, color="k", lw=1, ls="--", label="PyTorch")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("time / PyTorch time (log; lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastconv bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="append",
                        help="report this pytest-benchmark JSON (or benchmarks/interleaved.py "
                             "output) instead of running; repeat to merge files")
    parser.add_argument("-k", dest="select", help="pytest -k selection of benchmarks")
    parser.add_argument("--full", action="store_true", help="also the large VGG layers")
    parser.add_argument("--out", default="benchmark-results.md",
                        help="markdown report (default: ./benchmark-results.md; '' for none)")
    parser.add_argument("--png", default=None,
                        help="bar chart of the ratios, needs matplotlib (default: "
                             "./benchmark-ratios.png when matplotlib is installed; '' for none)")
    args = parser.parse_args(argv)
    if args.png is None or args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if args.png:
                parser.error(f"--png {args.png}: the chart needs matplotlib "
                             "(pip install matplotlib), or pass --png ''")
            print("fastconv bench: no chart (matplotlib is not installed)", file=sys.stderr)
            args.png = ""
    if args.png is None:
        args.png = "benchmark-ratios.png"
    # checked before the benchmarks run (minutes), not when the report is written
    for option, path in (("--out", args.out), ("--png", args.png)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            parser.error(f"{option} {path}: the folder {folder} does not exist")
    json_paths = args.json
    if not json_paths:
        root = benchmarks_root()
        if root is None:
            parser.error(f"no {BENCH_FILE} here or next to the fastconv package (an installed "
                         "fastconv has no benchmarks): run it from a clone of the repository, "
                         "or report an existing run with --json FILE")
        import tempfile
        json_paths = [os.path.join(tempfile.mkdtemp(prefix="fastconv-bench-"), "cpu.json")]
        rc = run_benchmarks(json_paths[0], args.select, args.full, root=root)
        if rc not in (0, 5) or not os.path.exists(json_paths[0]):
            print(f"benchmarks failed (exit {rc})", file=sys.stderr)
            return rc or 1
    try:
        groups, data = load(json_paths[0])
        for path in json_paths[1:]:
            more, _ = load(path)
            for group, impls in more.items():
                groups.setdefault(group, OrderedDict()).update(impls)
    except ValueError as exc:
        raise SystemExit(f"fastconv bench: {exc}") from None
    machine = data.get("machine_info")
    machine = machine if isinstance(machine, dict) else {}
    when = str(data.get("datetime") or datetime.datetime.now(datetime.timezone.utc).isoformat())
    cpu, threads = machine_of(machine)
    title = f"{cpu} ({threads}); {when[:16]} UTC; float32"
    header = (f"## fastconv CPU benchmarks\n\nMachine: {cpu}, {threads}; "
              f"Python {machine.get('python_version', '?')}; run {when}; float32, "
              "min of the timed rounds; OPENBLAS_THREAD_TIMEOUT="
              f"{machine.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}.")
    text = markdown(groups, header)
    print(text)
    try:
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        if args.png:
            plot(groups, args.png, title)
    except OSError as exc:
        raise SystemExit(f"fastconv bench: cannot write {exc.filename}: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
