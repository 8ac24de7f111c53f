"""numba's OpenMP runtime and the other thread pools in the process (fastconv.threads)."""
import os
import subprocess
import sys
import textwrap

import pytest

from fastconv import threads


def _run(code):
    # a fresh process, without the variables this process's fastconv import set
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_openmp_runtimes_lists_numbas_after_a_kernel():
    out = _run("""
        import numpy as np, fastconv as fc
        from fastconv import threads
        fc.conv2d(np.ones((1, 2, 4, 4), np.float32), np.ones((2, 2, 3, 3), np.float32))
        import numba
        print(numba.threading_layer(), threads.openmp_runtimes())
    """)
    layer, runtimes = out.split(" ", 1)
    if layer == "omp" and sys.platform.startswith("linux"):
        assert "libgomp" in runtimes


def test_contention_names_numpy_imported_first():
    out = _run("""
        import numpy, fastconv
        from fastconv import threads
        print(threads.contention())
    """)
    assert "OPENBLAS_THREAD_TIMEOUT" in out
    out = _run("""
        import fastconv, numpy
        from fastconv import threads
        print(threads.contention())
    """)
    assert "OPENBLAS_THREAD_TIMEOUT" not in out


@pytest.mark.parametrize("torch_first", [True, False])
def test_import_loads_numbas_openmp_layer_whatever_came_first(torch_first):
    """fastconv loads numba's OpenMP layer at import, so that the libgomp it runs on
    (its own, or torch's when torch came first) serves torch and fastconv alike."""
    pytest.importorskip("torch")
    first, second = ("torch", "fastconv") if torch_first else ("fastconv", "torch")
    out = _run(f"""
        import sys
        import {first}, {second}
        import numba
        print("numba.np.ufunc.omppool" in sys.modules, numba.config.THREADING_LAYER)
    """)
    loaded, layer = out.split()
    assert loaded == "True" or layer not in ("default", "omp")


def test_spin_count_is_set_unless_the_user_chose_a_policy():
    out = _run("""
        import os, fastconv
        print(os.environ.get("GOMP_SPINCOUNT"))
    """)
    assert int(out) == threads.SPIN_COUNT
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("GOMP_SPINCOUNT", None)
    result = subprocess.run([sys.executable, "-c", "import os, fastconv; "
                             "print(os.environ.get('GOMP_SPINCOUNT'))"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.strip() == "None"


def test_cpu_slot_restores_numba_threads():
    import numba
    previous = numba.get_num_threads()
    with threads.cpu_slot() as share:
        assert 1 <= share <= previous
    assert numba.get_num_threads() == previous


def test_cpu_slot_limit_caps_the_share():
    import numba
    with threads.cpu_slot(1) as share:
        assert share == 1 and numba.get_num_threads() == 1
    with threads.cpu_slot(None) as share:
        assert share == numba.get_num_threads()


def test_small_work_runs_on_one_thread_and_large_work_on_all(monkeypatch):
    """The plan gives calls below autotune.SERIAL_BELOW_FLOPS one thread, so they do not
    wake numba's idle threads; larger calls get the fair share."""
    import numba
    import numpy as np

    import fastconv as fc
    from fastconv import autotune, plan
    from fastconv.cpu import direct
    assert plan.cpu_threads(autotune.SERIAL_BELOW_FLOPS - 1) == 1
    assert plan.cpu_threads(autotune.SERIAL_BELOW_FLOPS) is None
    seen = []
    original = direct.conv2d

    def recording(*args, **kwargs):
        seen.append(numba.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(direct, "conv2d", recording)
    tiny = fc.conv2d(np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32),
                     algorithm="direct")
    np.testing.assert_array_equal(tiny, np.full((1, 1, 6, 6), 9, np.float32))
    x = np.ones((4, 32, 32, 32), np.float32)      # 2 * 4 * 32 * 30 * 30 * 32 * 9 flops
    fc.conv2d(x, np.ones((32, 32, 3, 3), np.float32), algorithm="direct")
    with threads.cpu_slot() as fair:
        pass
    assert seen == [1, fair]
