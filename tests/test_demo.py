"""`python -m fastconv demo --quick` end to end."""
import json

from fastconv import demo


def test_demo_quick(tmp_path, capsys):
    from fastconv.__main__ import main
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy:" in text and "on the CPU" in text and str(out) in text
    for name in ("curves.png", "filters.png", "feature_maps.png", "confusion.png"):
        assert (out / name).stat().st_size > 5_000, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["device"] == "cpu"
    assert metrics["test_accuracy"] > 0.85, metrics["test_accuracy"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 360
    assert (out / "model.npz").exists()


def test_demo_arguments(tmp_path):
    import pytest
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    args = demo.parse_args(["--quick"])
    assert args.epochs == 3 and args.out == "fastconv-demo"
    assert demo.pick_device("cpu") == ("cpu", "--device cpu")
