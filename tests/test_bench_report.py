"""fastconv.bench: the report from a pytest-benchmark JSON (no benchmark is run here)."""
import json

from fastconv import bench


def _entry(group, impl, seconds, gflops=None):
    info = {"impl": impl}
    if gflops:
        info["gflops"] = gflops
    return {"group": group, "name": f"test[{impl}]", "param": impl, "extra_info": info,
            "stats": {"min": seconds}}


def test_report_has_ratios_to_torch_and_a_chart(tmp_path):
    data = {"machine_info": {"python_version": "3.11"}, "datetime": "2026-11-24T22:00:00",
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
