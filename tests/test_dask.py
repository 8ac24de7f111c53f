"""fastconv.dask: the operators over chunked dask arrays, against the in-memory calls.

Hypothesis draws chunkings and geometries (threaded scheduler); a LocalCluster of two
worker processes runs the same graphs, also when a worker dies mid-computation.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import fastconv as fc  # noqa: E402
import fastconv.dask as fcd  # noqa: E402
from fastconv import filters  # noqa: E402

from .conftest import assert_close  # noqa: E402


@pytest.fixture(autouse=True)
def threaded():
    with dask.config.set(scheduler="threads"):
        yield


def test_import_fastconv_does_not_import_dask():
    code = ("import sys, fastconv, fastconv.filters, fastconv.nn; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_the_module_uses_the_real_dask():
    assert fcd.da.__name__ == "dask.array"
    assert fcd.da.Array is da.Array


# --------------------------------------------------------------------------
# Chunkings and geometries against the in-memory calls
# --------------------------------------------------------------------------

@st.composite
def chunking(draw, size, min_chunks=1):
    """Uneven chunks of `size` (zero-size ones included now and then)."""
    if size <= 1:
        return (size,)
    cuts = draw(st.lists(st.integers(0, size), max_size=4))
    edges = sorted([0, size] + cuts)
    chunks = tuple(b - a for a, b in zip(edges[:-1], edges[1:]))
    return tuple(c for c in chunks if c) if draw(st.booleans()) else chunks


sides = st.integers(1, 13)
small = st.integers(1, 4)


@settings(max_examples=40)
@given(data=st.data(), n=st.integers(1, 3), groups=st.integers(1, 3), per_group=st.integers(1, 2),
       h=sides, w=sides, kh=small, kw=small, sh=st.integers(1, 3), sw=st.integers(1, 3),
       dh=st.integers(1, 2), dw=st.integers(1, 2), same=st.booleans(),
       pads=st.tuples(*[st.integers(0, 3)] * 4), with_bias=st.booleans())
def test_conv2d_matches_in_memory(data, n, groups, per_group, h, w, kh, kw, sh, sw, dh, dw,
                                  same, pads, with_bias):
    rng = np.random.default_rng(0)
    c = groups * per_group
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((2 * groups, per_group, kh, kw))
    bias = rng.standard_normal(2 * groups) if with_bias else None
    padding = "same" if same else ((pads[0], pads[1]), (pads[2], pads[3]))
    stride = (1, 1) if same else (sh, sw)
    args = dict(stride=stride, padding=padding, dilation=(dh, dw), groups=groups,
                algorithm="direct")
    try:
        expected = fc.conv2d(x, weight, bias, **args)
    except ValueError:
        return  # a kernel larger than the padded input
    group_chunks = data.draw(chunking(groups))
    chunks = (data.draw(chunking(n)), tuple(g * per_group for g in group_chunks),
              data.draw(chunking(h)), data.draw(chunking(w)))
    y = fcd.conv2d(da.from_array(x, chunks=chunks), weight, bias, **args)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    np.testing.assert_array_equal(y.compute(), expected)   # bitwise: same algorithm


@settings(max_examples=40)
@given(data=st.data(), n=st.integers(1, 2), c=st.integers(1, 3), h=sides, w=sides,
       kh=small, kw=small, stride=st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dh=st.integers(1, 2), dw=st.integers(1, 2), ceil_mode=st.booleans(),
       pads=st.tuples(*[st.integers(0, 2)] * 4))
def test_max_pool2d_matches_in_memory(data, n, c, h, w, kh, kw, stride, dh, dw, ceil_mode, pads):
    x = np.random.default_rng(1).standard_normal((n, c, h, w)).astype(np.float32)
    x[x > 1.5] = np.nan          # NaN wins its windows, in blocks as in memory
    padding = ((min(pads[0], kh // 2), min(pads[1], kh // 2)),
               (min(pads[2], kw // 2), min(pads[3], kw // 2)))
    args = dict(stride=stride, padding=padding, dilation=(dh, dw), ceil_mode=ceil_mode,
                return_indices=True)
    try:
        values, indices = fc.max_pool2d(x, (kh, kw), **args)
    except ValueError:
        return
    chunks = tuple(data.draw(chunking(s)) for s in x.shape)
    got_values, got_indices = fcd.max_pool2d(da.from_array(x, chunks=chunks), (kh, kw), **args)
    got_values, got_indices = dask.compute(got_values, got_indices)
    np.testing.assert_array_equal(got_values, values)
    np.testing.assert_array_equal(got_indices, indices)
    del args["return_indices"]
    alone = fcd.max_pool2d(da.from_array(x, chunks=chunks), (kh, kw), **args)
    np.testing.assert_array_equal(alone.compute(), values)


@settings(max_examples=40)
@given(data=st.data(), n=st.integers(1, 2), c=st.integers(1, 3), h=sides, w=sides,
       kh=small, kw=small, stride=st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)),
       ceil_mode=st.booleans(), count_include_pad=st.booleans(),
       divisor=st.none() | st.integers(1, 5), pads=st.tuples(*[st.integers(0, 2)] * 4))
def test_avg_pool2d_matches_in_memory(data, n, c, h, w, kh, kw, stride, ceil_mode,
                                      count_include_pad, divisor, pads):
    x = np.random.default_rng(2).standard_normal((n, c, h, w))
    padding = ((min(pads[0], kh // 2), min(pads[1], kh // 2)),
               (min(pads[2], kw // 2), min(pads[3], kw // 2)))
    args = dict(stride=stride, padding=padding, ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, divisor_override=divisor)
    try:
        expected = fc.avg_pool2d(x, (kh, kw), **args)
    except ValueError:
        return
    chunks = tuple(data.draw(chunking(s)) for s in x.shape)
    got = fcd.avg_pool2d(da.from_array(x, chunks=chunks), (kh, kw), **args)
    np.testing.assert_array_equal(got.compute(), expected)


def test_auto_algorithm_within_the_accuracy_contract():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 30, 30)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    y = fcd.conv2d(da.from_array(x, chunks=(1, 16, 11, 17)), w, padding=1)
    assert_close(y.compute(), fc.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1),
                 np.float32)


def test_three_d_input_and_relu():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 9, 10))
    w = rng.standard_normal((4, 3, 3, 2))
    y = fcd.conv2d(da.from_array(x, chunks=(3, 4, 3)), w, padding="same", algorithm="direct")
    assert y.ndim == 3
    expected = fc.conv2d(x, w, padding="same", algorithm="direct")
    np.testing.assert_array_equal(y.compute(), expected)
    z = fcd.relu(y)
    np.testing.assert_array_equal(z.compute(), fc.relu(expected))
    assert z.chunks == y.chunks


# --------------------------------------------------------------------------
# Chunks, halos, weights in the graph
# --------------------------------------------------------------------------

def test_output_chunks_follow_the_input_and_the_stride():
    x = da.zeros((2, 4, 40, 30), chunks=(1, 2, (16, 16, 8), 10))
    w = np.zeros((6, 4, 5, 5))
    assert fcd.conv2d(x.rechunk({1: 4}), w, padding="same").chunks == (
        (1, 1), (6,), (16, 16, 8), (10, 10, 10))
    assert fcd.max_pool2d(x, 2).chunks == ((1, 1), (2, 2), (8, 8, 4), (5, 5, 5))
    assert fcd.avg_pool2d(x, 3, stride=2, padding=1).chunks[2:] == ((8, 8, 4), (5, 5, 5))
    # a chunk smaller than the stride gives no empty output chunk
    y = fcd.max_pool2d(da.zeros((1, 1, 9, 9), chunks=(1, 1, (3, 1, 5), 9)), 3)
    assert y.chunks[2] == (1, 2)


@pytest.mark.parametrize("kernel, stride, dilation, pads, ceil, conv", [
    (5, 1, 1, (2, 2), False, True), (4, 1, 1, (1, 2), False, True),
    (3, 2, 1, (1, 1), False, False), (3, 3, 2, (0, 2), False, True),
    (2, 2, 1, (0, 1), True, False), (3, 2, 1, (0, 1), True, False),
    (1, 3, 1, (5, 5), False, True), (3, 4, 3, (6, 7), False, True),
    (1, 3, 1, (1, 0), False, True)])
def test_each_block_reads_exactly_its_windows(kernel, stride, dilation, pads, ceil, conv):
    size, in_chunks = 23, (7, 1, 9, 6)
    out_size = fc.shapes.output_size((size, 1), (kernel, 1), (stride, 1),
                                     pads + (0, 0), (dilation, 1), ceil_mode=ceil)[0]
    plan = fcd._axis_plan(in_chunks, size, out_size, kernel, stride, dilation, *pads,
                          zero_padding=conv)
    assert sum(p[0] for p in plan) == out_size
    first = 0
    for count, lo, hi, pad_lo, pad_hi in plan:
        taps = [o * stride - pads[0] + t * dilation
                for o in range(first, first + count) for t in range(kernel)]
        inside = [t for t in taps if 0 <= t < size] or [0, size - 1]  # or: all in padding
        # the smallest window of the input holding every tap the block reads
        assert (lo, hi) == (min(inside), max(inside) + 1)
        # and the padding that makes up the rest of its windows' extent
        assert lo - pad_lo == min(taps)
        assert hi + pad_hi == min(max(taps) + 1, size + pads[1])
        first += count


def test_halos_are_sliced_in_tasks_of_their_own():
    x = da.zeros((1, 1, 30, 30), chunks=(1, 1, 10, 10))
    y = fcd.conv2d(x, np.zeros((1, 1, 3, 3)), padding=1)
    layer = dict(y.dask.layers[y.name])
    halos = [k for k in layer if k[0].startswith("fastconv-halo-")]
    # the centre block reads its own block whole and 8 slices of its neighbours
    centre = layer[(y.name, 0, 0, 1, 1)]
    assert len(centre.dependencies) == 1 + 9 and sum(
        1 for k in centre.dependencies if k[0].startswith("fastconv-halo-")) == 8
    for key in halos:
        block = layer[key](dict.fromkeys(layer[key].dependencies, np.zeros((1, 1, 10, 10))))
        assert block.shape[2] * block.shape[3] in (1, 10)     # a corner or an edge


def test_the_weight_is_in_the_graph_once():
    w = np.random.default_rng(5).standard_normal((8, 2, 5, 5))
    x = da.zeros((4, 4, 64, 64), chunks=(1, 2, 16, 16))
    y = fcd.conv2d(x, w, np.zeros(8), padding=2, groups=2)
    layer = y.dask.layers[y.name]
    data = {k: v.value for k, v in layer.items() if type(v).__name__ == "DataNode"}
    weights = [v for k, v in data.items() if str(k).startswith("fastconv-weight")]
    assert len(weights) == 2 and all(v.shape == (4, 2, 5, 5) for v in weights)
    np.testing.assert_array_equal(np.concatenate(weights), w)
    blocks = [t for k, t in layer.items() if isinstance(k, tuple) and k[0] == y.name]
    assert len(blocks) == 4 * 2 * 4 * 4
    for task in blocks:   # every block references a weight key; none carries an array
        assert not any(isinstance(a, np.ndarray) for a in task.args)
        assert any(str(k).startswith("fastconv-weight") for k in task.dependencies)


def test_meta_and_kinds_are_kept():
    x = da.zeros((1, 2, 8, 8), chunks=4, dtype=np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    for y in (fcd.conv2d(x.rechunk({1: 2}), w), fcd.max_pool2d(x, 2),
              fcd.avg_pool2d(x, 2), fcd.relu(x)):
        assert type(y._meta) is np.ndarray and y.dtype == np.float32
    values, indices = fcd.max_pool2d(x, 2, return_indices=True)
    assert values.dtype == np.float32 and indices.dtype == np.int64


def test_cupy_blocks_run_on_the_cuda_kernels():
    cupy = pytest.importorskip("cupy")
    from fastconv.cuda import interop
    if not interop.cuda_available()[0] or interop.simulated():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)
    w = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    xd = da.from_array(cupy.asarray(x), chunks=(1, 3, 16, 24))
    y = fcd.conv2d(xd, w, padding=2)              # a NumPy weight moves to the device once
    assert isinstance(y._meta, cupy.ndarray)
    result = y.compute()
    assert isinstance(result, cupy.ndarray)
    assert_close(cupy.asnumpy(result), fc.conv2d(x.astype(np.float64), w.astype(np.float64),
                                                 padding=2), np.float32)
    pooled = fcd.max_pool2d(xd, 3, stride=2).compute()
    np.testing.assert_array_equal(cupy.asnumpy(pooled), fc.max_pool2d(x, 3, stride=2))


# --------------------------------------------------------------------------
# Filter banks
# --------------------------------------------------------------------------

def test_filter_banks_match_in_memory():
    rng = np.random.default_rng(7)
    image = rng.random((45, 38)).astype(np.float32)
    lazy = da.from_array(image, chunks=(20, 13))
    bank = filters.leung_malik(9)[:, None].astype(np.float32)
    expected = filters.apply_bank(image, bank, algorithm="direct")
    got = fcd.leung_malik(lazy, size=9, algorithm="direct")
    assert got.shape == (48, 45, 38) and got.chunks[1:] == lazy.chunks
    np.testing.assert_array_equal(got.compute(), expected)
    classic = filters.stack(filters.classic_bank().values())
    np.testing.assert_array_equal(fcd.classic_bank(lazy, algorithm="direct").compute(),
                                  filters.apply_bank(image, classic, algorithm="direct"))
    frames = rng.random((3, 20, 21))                  # a stack: (N, H, W) -> (N, K, H, W)
    stacked = fcd.apply_bank(da.from_array(frames, chunks=(2, 8, 8)), classic, "direct")
    assert stacked.shape == (3, 12, 20, 21)
    np.testing.assert_array_equal(
        stacked.compute(), np.stack([filters.apply_bank(f, classic, "direct") for f in frames]))


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    x = da.zeros((2, 4, 16, 16), chunks=(1, 2, 8, 8), dtype=np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"x's channel chunks \(2, 2\) split a convolution group"):
        fcd.conv2d(x, w)
    with pytest.raises(ValueError, match="multiple of 2 channels"):
        fcd.conv2d(x.rechunk({1: (1, 3)}), np.zeros((4, 2, 3, 3), np.float32), groups=2)
    fcd.conv2d(x, np.zeros((4, 2, 3, 3), np.float32), groups=2)      # whole groups: fine
    with pytest.raises(TypeError, match="x must be a dask.array.Array"):
        fcd.conv2d(np.zeros((1, 4, 8, 8)), w)
    with pytest.raises(TypeError, match="weight must be an in-memory array"):
        fcd.conv2d(x.rechunk({1: 4}), da.from_array(w))
    with pytest.raises(TypeError, match="share one dtype"):
        fcd.conv2d(x.rechunk({1: 4}), w.astype(np.float64))
    with pytest.raises(TypeError, match="x has dtype int64"):
        fcd.conv2d(da.zeros((1, 4, 8, 8), dtype=np.int64), w)
    with pytest.raises(ValueError, match="x must be 4-D or 3-D"):
        fcd.conv2d(da.zeros((8, 8), dtype=np.float32), w)
    with pytest.raises(ValueError, match="weight has 4 input channels per group"):
        fcd.conv2d(da.zeros((1, 3, 8, 8), dtype=np.float32), w)
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        fcd.conv2d(x.rechunk({1: 4}), w, stride=2, padding="same")
    with pytest.raises(ValueError, match="bias must have shape"):
        fcd.conv2d(x.rechunk({1: 4}), w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fcd.conv2d(x.rechunk({1: 4}), w, algorithm="fft")
    with pytest.raises(ValueError, match="winograd"):
        fcd.conv2d(x.rechunk({1: 4}), w, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="kernel extent"):
        fcd.conv2d(x.rechunk({1: 4}), np.zeros((1, 4, 20, 3), np.float32))
    unknown = da.zeros((1, 4, 8, 8), chunks=4, dtype=np.float32)
    unknown = unknown[unknown[:, 0, 0, 0] >= 0]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        fcd.conv2d(unknown, w)
    with pytest.raises(ValueError, match="padding must be at most half"):
        fcd.max_pool2d(x, 2, padding=2)
    with pytest.raises(TypeError, match="ceil_mode must be True or False"):
        fcd.avg_pool2d(x, 2, ceil_mode="yes")
    with pytest.raises(ValueError, match="divisor_override"):
        fcd.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fcd.max_pool2d(x, 2, stride=0)
    with pytest.raises(ValueError, match="image must be 2-D"):
        fcd.leung_malik(da.zeros((1, 2, 8, 8)))
    with pytest.raises(TypeError, match="image must be a dask.array.Array"):
        fcd.classic_bank(np.zeros((8, 8)))


# --------------------------------------------------------------------------
# dask.distributed: a LocalCluster of worker processes
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, worker_dashboard_address=None,
                                  silence_logs=50) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def _network():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 3, 37, 29)).astype(np.float32)
    w = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    expected = fc.max_pool2d(fc.relu(fc.conv2d(x, w, b, padding=2, algorithm="direct")),
                             3, stride=2, ceil_mode=True)
    return x, w, b, expected


def test_local_cluster_matches_in_memory(client):
    x, w, b, expected = _network()
    lazy = da.from_array(x, chunks=(2, 3, 13, 11))
    y = fcd.max_pool2d(fcd.relu(fcd.conv2d(lazy, w, b, padding=2, algorithm="direct")),
                       3, stride=2, ceil_mode=True)
    np.testing.assert_array_equal(client.compute(y).result(), expected)
    workers = client.run(os.getpid)
    assert len(set(workers.values())) == 2 and os.getpid() not in workers.values()


def test_a_worker_dies_mid_computation_and_the_result_is_exact(client, tmp_path):
    marker = str(tmp_path / "killed-a-worker")
    x, w, b, expected = _network()

    def die_once(block, block_info=None):
        # the first time the block in the middle runs, its worker process exits
        if block_info[0]["chunk-location"][2:] == (1, 1) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return block

    lazy = da.from_array(x, chunks=(2, 3, 13, 11)).map_blocks(die_once, dtype=x.dtype)
    y = fcd.max_pool2d(fcd.relu(fcd.conv2d(lazy, w, b, padding=2, algorithm="direct")),
                       3, stride=2, ceil_mode=True)
    before = set(client.run(os.getpid).values())
    result = client.compute(y).result(timeout=120)
    assert os.path.exists(marker)
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != before     # a new worker process
    np.testing.assert_array_equal(result, expected)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def test_cli_filters_dask(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fastconv", "filters", "--dask", "--size", "120", "--chunk", "48",
         "--lm-size", "7", "--preview", "40", "--out", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert "120x80" in out.stdout and "6 chunks" in out.stdout and "100% Completed" in out.stdout
    assert (tmp_path / "lm_responses_dask.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "fastconv", "filters", "--dask", "--lm-size", "4"],
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert bad.returncode == 2 and "--lm-size must be an odd int" in bad.stderr


def test_docs_and_docstring_examples():
    import doctest
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "dask.md")
    failures, tried = doctest.testfile(path, module_relative=False, optionflags=flags)
    assert tried > 0 and failures == 0
    failures, tried = doctest.testmod(fcd, optionflags=flags)
    assert tried > 0 and failures == 0
