"""fastconv.bench: the report from a pytest-benchmark JSON (no benchmark is run here)."""
import json

import pytest

from fastconv import bench


def _entry(group, impl, seconds, gflops=None):
    info = {"impl": impl}
    if gflops:
        info["gflops"] = gflops
    return {"group": group, "name": f"test[{impl}]", "param": impl, "extra_info": info,
            "stats": {"min": seconds}}


def test_report_has_ratios_to_torch_and_a_chart(tmp_path):
    pytest.importorskip("matplotlib")
    data = {"machine_info": {"python_version": "3.11"}, "datetime": "2000-01-01T00:00:00",
            "benchmarks": [_entry("conv a", "winograd", 0.010, 120.0),
                           _entry("conv a", "torch", 0.020, 60.0),
                           _entry("pool b", "fastconv", 0.003), _entry("pool b", "torch", 0.002)]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    out, png = tmp_path / "r.md", tmp_path / "r.png"
    assert bench.main(["--json", str(path), "--out", str(out), "--png", str(png)]) == 0
    text = out.read_text()
    assert "(0.50x)" in text and "(1.50x)" in text and "[120]" in text
    assert bench.cpu_model() in text and "threads" in text
    assert png.stat().st_size > 1000


def test_an_entry_without_param_is_named_by_its_name(tmp_path):
    entry = {"group": "conv a", "name": "test_torch", "stats": {"min": 0.002}}
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [_entry("conv a", None, 0.001), entry]}))
    out = tmp_path / "r.md"
    assert bench.main(["--json", str(path), "--out", str(out), "--png", ""]) == 0
    assert "test_torch" in out.read_text()


@pytest.mark.parametrize("content, match", [
    (None, "cannot read --json"),
    ("not json {", "is not JSON"),
    (b"\xff\xfe\x00garbage", "is not JSON"),
    ('{"benchmarks": []}', "holds no benchmarks"),
    ("[1, 2]", "holds no benchmarks"),
    ('{"benchmarks": [{"group": "g"}]}', r"benchmarks\[0\]"),
    ('{"benchmarks": [{"name": "t", "stats": {"min": 0}}]}', r"benchmarks\[0\]"),
])
def test_bad_json_is_a_one_line_error(tmp_path, content, match):
    path = tmp_path / "b.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=match) as exc:
        bench.main(["--json", str(path), "--out", str(tmp_path / "r.md"), "--png", ""])
    assert str(path) in str(exc.value.code) and "\n" not in str(exc.value.code)
    assert not (tmp_path / "r.md").exists()


def _good_json(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [_entry("conv a", "torch", 0.002)]}))
    return str(path)


def test_out_in_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--json", _good_json(tmp_path), "--out", str(tmp_path / "no" / "x.md")])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_out_that_cannot_be_written_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="cannot write"):  # a folder, not a file
        bench.main(["--json", _good_json(tmp_path), "--out", str(tmp_path), "--png", ""])


def test_report_goes_to_the_current_directory_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--json", _good_json(tmp_path), "--png", ""]) == 0
    assert "| conv a |" in (tmp_path / "benchmark-results.md").read_text()


def test_running_without_the_benchmarks_folder_says_where_they_are(tmp_path, monkeypatch,
                                                                   capsys):
    # as in an installed package: no benchmarks/ here nor next to the package
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--out", "", "--png", ""])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "benchmarks" in err and "--json" in err
    assert list(tmp_path.iterdir()) == []


def test_the_benchmarks_are_found_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "test_bench_cpu.py").write_text("")
    monkeypatch.setattr(bench, "ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    assert bench.benchmarks_root() == str(tmp_path)


def _tuning_report():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "tuning_report.py")
    spec = importlib.util.spec_from_file_location("tuning_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_tuning_is_generated_from_the_measurements_and_the_code():
    report = _tuning_report()
    with open(report.OUT) as f:
        committed = f.read()
    assert report.render() == committed, "docs/tuning.md is stale: run benchmarks/tuning_report.py"


def test_a_constant_gone_from_the_code_is_named(tmp_path):
    report = _tuning_report()
    data = {"machine": "m", "setup": "s", "harness": "h",
            "constants": [{"names": ["NO_SUCH_CONSTANT"], "module": "fastconv.autotune",
                           "reason": "r"}]}
    path = tmp_path / "tuning-x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LookupError, match="NO_SUCH_CONSTANT"):
        report.render([str(path)])


def test_without_matplotlib_the_default_chart_is_skipped(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # import fails
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--json", _good_json(tmp_path)]) == 0
    assert "matplotlib" in capsys.readouterr().err
    assert (tmp_path / "benchmark-results.md").exists()
    assert not (tmp_path / "benchmark-ratios.png").exists()
    with pytest.raises(SystemExit) as exc:   # asked for explicitly: a usage error
        bench.main(["--json", _good_json(tmp_path), "--png", str(tmp_path / "c.png")])
    assert exc.value.code == 2


def test_the_report_names_the_cpu_the_json_was_measured_on(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"machine_info": {"cpu_model": "Some CPU 9000",
                                                 "threads": "2 CPUs, numba 2 threads"},
                                "benchmarks": [_entry("conv a", "torch", 0.002)]}))
    out = tmp_path / "r.md"
    assert bench.main(["--json", str(path), "--out", str(out), "--png", ""]) == 0
    assert "Machine: Some CPU 9000, 2 CPUs, numba 2 threads" in out.read_text()
    info = {"cpu": {"brand_raw": "Other CPU"}}      # pytest-benchmark's field
    assert bench.machine_of(info)[0] == "Other CPU"
    assert "the JSON names no CPU" in bench.machine_of({})[0]
