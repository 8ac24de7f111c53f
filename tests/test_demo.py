"""`python -m fastconv demo --quick` end to end."""
import json

import pytest

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
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    args = demo.parse_args(["--quick"])
    assert args.epochs == 3 and args.out == "fastconv-demo"
    assert demo.pick_device("cpu") == ("cpu", "--device cpu")


@pytest.mark.parametrize("args, name", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"),
    (["--seed", "-1"], "--seed"), (["--seed", "99999999999999999999"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
])
def test_demo_refuses_bad_arguments_before_training(args, name, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run", _no_training)
    with pytest.raises(SystemExit) as exc:
        demo.main(args)
    assert exc.value.code == 2
    assert name in capsys.readouterr().err


def test_demo_refuses_an_unusable_out_folder_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "run", _no_training)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"--out .*a_file.x"):
        demo.main(["--quick", "--out", str(blocker / "x")])


def _no_training(**kwargs):
    pytest.fail("training started although the arguments are bad")
