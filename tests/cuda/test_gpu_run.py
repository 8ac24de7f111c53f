""".ci/gpu-run, the one budgeted GPU run: its stage machinery and summary schema.

The machinery (limits, timeouts, a hung stage, the files it leaves) is tested with
stand-in stages that touch no GPU, so these tests are cheap anywhere. The dry run
itself (every real stage under the simulator) runs in .ci/run; here its fastest
stages run once in a subprocess, under the simulator only (on a GPU this test runs
inside the GPU run's own tests stage).
"""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from fastconv.cuda import _kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, ".ci", "gpu-run")

STAGE_KEYS = {"status", "seconds"}
TOP_KEYS = {"device", "dry_run", "versions", "budget_s", "stages", "conv", "gemm", "pool",
            "copy_gbps", "call_overhead_us"}


def _load():
    loader = importlib.machinery.SourceFileLoader("fastconv_gpu_run", SCRIPT)
    spec = importlib.util.spec_from_loader("fastconv_gpu_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def gpu_run():
    return _load()


def _args(gpu_run, out, budget=420.0):
    return gpu_run.argparse.Namespace(dry_run=True, out=str(out), budget=budget, jobs=1,
                                      test_timeout=60.0)


def _files(out):
    return sorted(os.listdir(out))


def test_overruns_failures_and_the_files_left(gpu_run, tmp_path):
    gpu_run.LIMITS = dict(gpu_run.LIMITS, compile=1.0, smoke=1.0, timings=30.0)
    gpu_run.GRACE_S = 0.3
    run = gpu_run.Run(_args(gpu_run, tmp_path), {})
    try:
        def cooperative(run_, record):        # checks its deadline between cases
            while True:
                time.sleep(0.05)
                run_.check()

        def busy(run_, record):               # never checks: the watchdog stops it
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                pass

        def broken(run_, record):
            raise RuntimeError("a typo")

        run.stage("compile", cooperative)
        run.stage("smoke", busy)
        run.stage("timings", broken)
        run.stage("tests", lambda run_, record: record.update(passed=3, failed=0))
        assert run.finish() == 1
    finally:
        run.close()
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = summary["stages"]
    assert stages["compile"]["status"] == "timeout"
    assert stages["smoke"]["status"] == "timeout"
    assert stages["smoke"]["seconds"] < 10
    assert stages["timings"]["status"] == "fail"
    assert "a typo" in stages["timings"]["error"]
    assert stages["tests"]["status"] == "pass" and stages["tests"]["passed"] == 3
    assert stages["ncu"]["status"] == "skipped" and stages["ncu"]["reason"]
    assert set(summary) >= TOP_KEYS
    assert all(set(s) >= STAGE_KEYS for s in stages.values())
    assert _files(tmp_path) == ["logs.tar.gz", "summary.json"]
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/timings.log" in names and "logs/compile.log" in names


def test_budget_limits_the_stages(gpu_run, tmp_path):
    run = gpu_run.Run(_args(gpu_run, tmp_path, budget=42.0), {})
    try:
        assert run.limit("compile") == pytest.approx(8.0, abs=0.1)   # scaled by 42/420
        run.end = time.monotonic() + 2          # almost nothing left
        run.stage("ncu", lambda run_, record: "pass")
        assert run.summary["stages"]["ncu"]["status"] == "skipped"
        assert "budget" in run.summary["stages"]["ncu"]["reason"]
    finally:
        run.close()


def test_a_failed_preflight_stops_the_run(gpu_run, tmp_path):
    run = gpu_run.Run(_args(gpu_run, tmp_path), {})
    try:
        run.stage("preflight", lambda run_, record: "fail")
        run.stage("compile", lambda run_, record: "pass")
        assert run.finish() == 2
        assert run.summary["stages"]["compile"]["status"] == "skipped"
        assert "preflight" in run.summary["stages"]["compile"]["reason"]
    finally:
        run.close()


def test_a_hung_stage_still_leaves_a_summary(tmp_path):
    """A stage stuck in a call that never returns to Python (a hung kernel; here a
    long sleep): the watchdog writes the summary and ends the process."""
    code = f"""
import importlib.machinery, importlib.util, time, sys
loader = importlib.machinery.SourceFileLoader("g", {SCRIPT!r})
spec = importlib.util.spec_from_loader("g", loader)
g = importlib.util.module_from_spec(spec); loader.exec_module(g)
g.GRACE_S, g.HUNG_S = 0.2, 1.0
g.LIMITS["smoke"] = 0.5
args = g.argparse.Namespace(dry_run=True, out={str(tmp_path)!r}, budget=420.0, jobs=1,
                            test_timeout=60.0)
run = g.Run(args, {{}})
run.stage("smoke", lambda r, rec: time.sleep(60))
print("not reached")
"""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - t0 < 30
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["smoke"]["status"] == "timeout"
    assert "hung" in summary["stages"]["smoke"]["reason"]
    assert summary["stages"]["tests"]["reason"] == "smoke hung"


def test_cuda_home_is_found_or_explained(gpu_run, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    home, how = gpu_run.find_cuda_home()
    assert isinstance(how, str) and how
    if home is not None:
        assert os.path.isdir(home)
    monkeypatch.setenv("CUDA_HOME", "/opt/somewhere")
    assert gpu_run.find_cuda_home() == ("/opt/somewhere", "CUDA_HOME was set")


def test_compile_shards_cover_every_kernel_once(gpu_run):
    """Round-robin shards (with the index lock) partition the specialisations."""
    specs = gpu_run._all_specs()
    shards = [specs[i::3] for i in range(3)]
    labels = [(d, s.label) for shard in shards for d, s in shard]
    assert sorted(labels) == sorted((d, s.label) for d, s in specs)
    assert len(set(labels)) == len(labels)


@pytest.mark.skipif(not _kernels.simulated(), reason="the dry run needs the simulator "
                    "(on a GPU this test runs inside the GPU run)")
def test_dry_run_preflight_compile_and_tests_stages(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("OUT", None)
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(tmp_path),
                           "--stages", "preflight,compile,smoke", "--jobs", "2"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= TOP_KEYS and summary["dry_run"] is True
    stages = summary["stages"]
    assert stages["preflight"]["status"] == "pass"
    assert stages["preflight"]["tiny_kernel"] == "ok"
    assert stages["compile"]["status"] == "pass" and stages["compile"]["kernels"] > 50
    assert stages["smoke"]["status"] == "pass" and stages["smoke"]["failed"] == 0
    assert stages["tests"]["reason"] == "not chosen (--stages)"
    assert _files(tmp_path) == ["logs.tar.gz", "summary.json"]


def _fake_tool(folder, name, output, code=0):
    path = folder / name
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' {output!r}\nexit {code}\n")
    path.chmod(0o755)


def test_sanitizer_and_ncu_stages_read_their_tools(gpu_run, tmp_path, monkeypatch):
    """The GPU-only branches of the sanitizer and ncu stages, with stand-in tools
    that print what compute-sanitizer and ncu print."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "compute-sanitizer", "========= ERROR SUMMARY: 2 errors")
    _fake_tool(bin_dir, "ncu", "  Section: GPU Speed Of Light Throughput")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = _args(gpu_run, tmp_path / "out")
    args.dry_run = False
    run = gpu_run.Run(args, {})
    try:
        run.stage("sanitizer", gpu_run.stage_sanitizer)
        run.stage("ncu", gpu_run.stage_ncu)
    finally:
        run.close()
    stages = run.summary["stages"]
    assert stages["sanitizer"]["status"] == "fail"
    assert stages["sanitizer"]["memcheck_errors"] == 2
    assert stages["sanitizer"]["racecheck_errors"] == 2
    assert stages["ncu"]["status"] == "pass" and stages["ncu"]["profiled_kernels"] == 1


def test_cuda_home_from_nvcc_on_the_path(gpu_run, tmp_path, monkeypatch):
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "nvvm" / "lib64").mkdir(parents=True)
    (toolkit / "nvvm" / "lib64" / "libnvvm.so.4").write_bytes(b"")
    _fake_tool(toolkit / "bin", "nvcc", "")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{toolkit / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert gpu_run.find_cuda_home() == (str(toolkit), "nvcc on PATH")
