"""Tensors with more than 2**31 elements (index arithmetic must be 64-bit).
~10 GiB of memory: marked slow, run with `python -m pytest --runslow tests/test_scale.py`."""
import resource

import numpy as np
import pytest

import fastconv as fc
from fastconv import reference

SIDE = 46341  # SIDE**2 > 2**31
GIB = 2**30


def _big_input():
    x = np.empty((1, 1, SIDE, SIDE), np.float32)
    rows = (np.arange(SIDE, dtype=np.float32) % 7)[:, None]
    cols = (np.arange(SIDE, dtype=np.float32) % 5)[None, :]
    np.add(rows, cols, out=x[0, 0])  # no full-size temporary
    assert x.size > 2**31
    return x


def _samples(out_hw):
    h, w = out_hw
    return [(0, 0), (h - 1, w - 1), (h // 2, w - 1), (h - 1, 3), (h - 2, w // 3)]


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv_over_2_31_elements(algorithm):
    x = _big_input()
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) / 10
    out = fc.conv2d(x, w, stride=4, padding=1, algorithm=algorithm)
    for i, j in _samples(out.shape[2:]):
        r0, c0 = 4 * i - 1, 4 * j - 1
        patch = np.zeros((1, 1, 3, 3))
        rs, cs = slice(max(r0, 0), r0 + 3), slice(max(c0, 0), c0 + 3)
        block = x[:, :, rs, cs]
        patch[:, :, max(0, -r0):max(0, -r0) + block.shape[2],
              max(0, -c0):max(0, -c0) + block.shape[3]] = block
        expected = reference.conv2d(patch, w)[0, 0, 0, 0]
        assert abs(out[0, 0, i, j] - expected) <= 1e-4 * max(1, abs(expected)), (i, j)
    # input 8 GiB + output 0.5 GiB + at most the workspace bound, and some slack
    assert _peak_rss_bytes() < x.nbytes + out.nbytes + fc.config.workspace_bytes + 1.5 * GIB


@pytest.mark.slow
def test_pooling_over_2_31_elements():
    x = _big_input()
    values, indices = fc.max_pool2d(x, 4, return_indices=True)
    avg = fc.avg_pool2d(x, 4)
    for i, j in _samples(values.shape[2:]):
        window = x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
        ref_values, ref_indices = reference.max_pool2d(window, (4, 4), (4, 4))
        assert values[0, 0, i, j] == ref_values[0, 0, 0, 0]
        r, c = divmod(int(ref_indices[0, 0, 0, 0]), 4)
        assert indices[0, 0, i, j] == (4 * i + r) * SIDE + (4 * j + c)  # > 2**31 at the end
        assert abs(avg[0, 0, i, j] - window.astype(np.float64).mean()) < 1e-5
