"""The command line: python -m fastconv {info, check, ...}."""
import subprocess
import sys

import pytest


def run(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_info_names_versions_threads_cuda_and_auto():
    result = run("info")
    assert result.returncode == 0, result.stderr
    for word in ("fastconv", "numpy", "numba", "cpu threads", "cuda:", "auto picks", "winograd",
                 "winograd GEMMs:", "cuda compilers:"):
        assert word in result.stdout, (word, result.stdout)


def test_check_passes_every_operator_and_algorithm():
    result = run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "all passed" in lines[-1]
    body = "\n".join(lines)
    for name in ("conv2d_grad_weight", "max_pool2d_backward", "avg_pool2d", "winograd", "im2col",
                 "direct", "float64"):
        assert name in body
    assert "FAIL" not in body


def test_check_fails_loudly_on_a_mismatch(monkeypatch, capsys):
    from fastconv import selfcheck
    real = selfcheck.rows

    def one_wrong(*args, **kwargs):
        for row in real(*args, **kwargs):
            yield row[:5] + (1.0,) + row[6:]   # pretend every result is off by 100%
            return
    monkeypatch.setattr(selfcheck, "rows", one_wrong)
    assert selfcheck.main() == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_unknown_or_missing_command_is_refused(args):
    result = run(*args)
    assert result.returncode == 2
    assert "usage" in result.stderr


@pytest.mark.parametrize("args", [["info", "--bogus"], ["info", "extra", "args"],
                                  ["check", "--bogus"]])
def test_info_and_check_refuse_arguments(args, capsys):
    from fastconv.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m fastconv {args[0]}" in err and "unrecognized arguments" in err
    assert args[1] in err
