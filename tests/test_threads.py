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
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RTLD_DEEPBIND, /proc")
def test_torch_imported_first_does_not_lend_numba_its_spinning_openmp():
    """With torch first, numba's kernels run on a libgomp of their own (which sleeps
    when idle), not on torch's: a torch op after a fastconv call then starts threads
    of its own instead of reusing numba's team."""
    pytest.importorskip("torch")
    out = _run("""
        import os
        import torch, numpy as np, fastconv as fc, numba
        fc.conv2d(np.ones((2, 8, 16, 16), np.float32), np.ones((8, 8, 3, 3), np.float32))
        assert numba.threading_layer() == "omp", numba.threading_layer()
        before = len(os.listdir("/proc/self/task"))
        torch.set_num_threads(2)
        torch.nn.functional.conv2d(torch.randn(8, 32, 32, 32), torch.randn(32, 32, 3, 3))
        print(before, len(os.listdir("/proc/self/task")), len(fc.threads.openmp_runtimes()))
    """)
    before, after, runtimes = map(int, out.split())
    assert runtimes == 2
    assert after > before


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
