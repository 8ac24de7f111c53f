"""CPU convolution kernels (direct, im2col) against the float64 references.

The grid is a structured selection, not a full product: every kernel size meets
every stride and every padding form, while batch, channels, groups and
dilation cycle with co-prime periods so that each value meets many others.
"""
import itertools

import numba
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference
from fastconv.cpu import direct, im2col
from fastconv.shapes import conv_geometry

from ..conftest import assert_close

ALGORITHMS = ["direct", "im2col"]
DTYPES = [np.float32, np.float64]

KERNELS = [(1, 1), (2, 2), (3, 3), (5, 5), (7, 7), (2, 3)]
STRIDES = [1, 2, 3]
PADDINGS = [0, 1, (2, 1), ((1, 0), (0, 2)), "same", "valid"]
BATCHES = [1, 3]
CHANNELS_PER_GROUP = [1, 3, 5]
GROUPS = [1, 2, "depthwise"]
DILATIONS = [1, 2]


def _make_case(index, kernel, stride, padding):
    if padding == "same":
        stride = 1  # PyTorch's rule: 'same' needs stride 1
    dilation = DILATIONS[(index // 2) % 2]
    batch = BATCHES[index % 2]
    cpg = CHANNELS_PER_GROUP[index % 3]
    groups = GROUPS[(index // 3) % 3]
    if groups == "depthwise":
        c_in = 3 if cpg == 1 else cpg
        groups, c_out = c_in, 2 * c_in
    else:
        c_in, c_out = groups * cpg, groups * (1 + index % 4)
    # an input large enough for the dilated kernel whatever the padding
    h = max(6 + index % 5, dilation * (kernel[0] - 1) + 1)
    w = max(7 + index % 4, dilation * (kernel[1] - 1) + 1)
    return dict(x_shape=(batch, c_in, h, w), w_shape=(c_out, c_in // groups) + kernel,
                stride=stride, padding=padding, dilation=dilation, groups=groups)


CASES = [_make_case(i, k, s, p)
         for i, (k, s, p) in enumerate(itertools.product(KERNELS, STRIDES, PADDINGS))]


def _case_id(case):
    return "x{}-w{}-s{}-p{}-d{}-g{}".format(
        "x".join(map(str, case["x_shape"])), "x".join(map(str, case["w_shape"])),
        case["stride"], str(case["padding"]).replace(" ", ""), case["dilation"], case["groups"])


def _geometry(case):
    return conv_geometry(case["x_shape"][2:], case["w_shape"][2:], case["stride"],
                         case["padding"], case["dilation"])


def _kwargs(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


def _data(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    w = rng.standard_normal(case["w_shape"]).astype(dtype)
    b = rng.standard_normal(case["w_shape"][0]).astype(dtype)
    return x, w, b


def test_the_grid_covers_every_value():
    seen = {key: {str(c[key]) for c in CASES} for key in ("stride", "padding", "dilation")}
    assert seen["stride"] == {"1", "2", "3"} and seen["dilation"] == {"1", "2"}
    assert len(seen["padding"]) == len(PADDINGS)
    assert {c["w_shape"][2:] for c in CASES} == set(KERNELS)
    assert {c["x_shape"][0] for c in CASES} == set(BATCHES)
    assert {c["groups"] for c in CASES} >= {1, 2, 3, 5}                      # incl. depthwise
    assert any(c["groups"] == c["x_shape"][1] > 1 for c in CASES)
    assert {c["w_shape"][1] for c in CASES} >= {1, 3, 5}
    assert any(c["padding"] == "same" and c["w_shape"][2] % 2 == 0 for c in CASES)


# The direct kernels have two loop orders: over output columns (depthwise and small
# groups) and over channels (groups with >= direct.CHANNELS_INNER_MIN of them).
# The small grid forces the second with "direct-channels-inner" (here and in
# test_gradients.py). im2col packs through a padded window unless it would not fit
# the workspace (huge dilation or stride): "im2col-unbuffered" forces the other path.
VARIANTS = ["direct", "direct-channels-inner", "im2col", "im2col-unbuffered"]


def _use_variant(variant, monkeypatch):
    """Force the variant's loop order or packing; -> the `algorithm` to pass."""
    monkeypatch.setattr(direct, "CHANNELS_INNER_MIN",
                        1 if variant == "direct-channels-inner" else 10**9)
    if variant == "im2col-unbuffered":
        monkeypatch.setattr(im2col, "_window_fits", lambda *args: False)
    return variant.split("-")[0]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_reference(case, variant, monkeypatch):
    algorithm = _use_variant(variant, monkeypatch)
    s, p, d, _ = _geometry(case)
    for dtype in DTYPES:
        x, w, b = _data(case, dtype)
        expected = reference.conv2d(x, w, b, s, p, d, case["groups"])
        out = fc.conv2d(x, w, b, algorithm=algorithm, **_kwargs(case))
        assert out.dtype == dtype and out.flags.c_contiguous
        assert_close(out, expected, dtype)
        # and without bias
        assert_close(fc.conv2d(x, w, algorithm=algorithm, **_kwargs(case)),
                     reference.conv2d(x, w, None, s, p, d, case["groups"]), dtype)


def test_hand_computed_example():
    x = np.array([[1.0, 2.0, 3.0],
                  [4.0, 5.0, 6.0],
                  [7.0, 8.0, 9.0]]).reshape(1, 1, 3, 3)
    w = np.array([[1.0, 2.0],
                  [3.0, 4.0]]).reshape(1, 1, 2, 2)
    # out[i, j] = x[i, j]*1 + x[i, j+1]*2 + x[i+1, j]*3 + x[i+1, j+1]*4
    valid = [[1 + 4 + 12 + 20, 2 + 6 + 15 + 24],
             [4 + 10 + 21 + 32, 5 + 12 + 24 + 36]]   # [[37, 47], [67, 77]]
    # padding 1, stride 2: windows start at rows/cols -1 and 1
    strided = [[1 * 4, 2 * 3 + 3 * 4],
               [4 * 2 + 7 * 4, 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4]]   # [[4, 18], [36, 77]]
    for algorithm in ALGORITHMS:
        for dtype in DTYPES:
            xd, wd = x.astype(dtype), w.astype(dtype)
            np.testing.assert_array_equal(fc.conv2d(xd, wd, algorithm=algorithm)[0, 0], valid)
            np.testing.assert_array_equal(
                fc.conv2d(xd, wd, stride=2, padding=1, algorithm=algorithm)[0, 0], strided)
            np.testing.assert_array_equal(
                fc.conv2d(xd, wd, np.array([0.5], dtype), algorithm=algorithm)[0, 0],
                np.array(valid) + 0.5)


def _layouts(array):
    """The same values as `array` in other memory layouts."""
    big = np.zeros(tuple(2 * s + 1 for s in array.shape), array.dtype)
    sliced = big[tuple(slice(1, None, 2) for _ in array.shape)]
    sliced[...] = array
    readonly = array.copy()
    readonly.flags.writeable = False
    return {
        "fortran": np.asfortranarray(array),
        "negative": np.ascontiguousarray(array[:, :, ::-1, ::-1])[:, :, ::-1, ::-1],
        "sliced": sliced,
        "readonly": readonly,
        "transposed": np.ascontiguousarray(array.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_give_the_same_result_and_are_unchanged(algorithm, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 2)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    go = rng.standard_normal((2, 6, 5, 8)).astype(dtype)
    kw = dict(stride=(2, 1), padding=((1, 1), (0, 1)), groups=2, algorithm=algorithm)
    expected = fc.conv2d(x, w, b, **kw)
    expected_gi = fc.conv2d_grad_input(go, w, x.shape, **kw)
    expected_gw = fc.conv2d_grad_weight(go, x, w.shape, **kw)
    assert_close(expected, reference.conv2d(x, w, b, (2, 1), (1, 1, 0, 1), (1, 1), 2), dtype)
    for name, xl in _layouts(x).items():
        wl, bl, gol = _layouts(w)[name], b[::-1].copy()[::-1], _layouts(go)[name]
        copies = [a.copy() for a in (xl, wl, bl, gol)]
        np.testing.assert_array_equal(fc.conv2d(xl, wl, bl, **kw), expected, err_msg=name)
        np.testing.assert_array_equal(fc.conv2d_grad_input(gol, wl, x.shape, **kw),
                                      expected_gi, err_msg=name)
        np.testing.assert_array_equal(fc.conv2d_grad_weight(gol, xl, w.shape, **kw),
                                      expected_gw, err_msg=name)
        for before, after in zip(copies, (xl, wl, bl, gol)):
            np.testing.assert_array_equal(before, after, err_msg=f"{name} input was written")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inf_and_nan_in_the_input_follow_the_reference(algorithm):
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 7))
    x[0, 0, 3, 3] = np.nan
    x[0, 1, 0, 6] = np.inf
    w = np.abs(np.random.default_rng(4).standard_normal((3, 2, 3, 3))) + 0.1
    out = fc.conv2d(x, w, padding=1, stride=2, algorithm=algorithm)
    expected = reference.conv2d(x, w, None, (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))


def test_one_by_one_and_large_channel_counts(rng):
    # the GEMM-only 1x1 path (with groups and bias) and a wide reduction in float32
    for groups in (1, 4):
        x = rng.standard_normal((3, 64, 5, 6)).astype(np.float32)
        w = rng.standard_normal((32, 64 // groups, 1, 1)).astype(np.float32)
        b = rng.standard_normal(32).astype(np.float32)
        expected = reference.conv2d(x, w, b, groups=groups)
        for algorithm in ALGORITHMS:
            assert_close(fc.conv2d(x, w, b, groups=groups, algorithm=algorithm), expected,
                         np.float32)
    x = rng.standard_normal((2, 96, 9, 9)).astype(np.float32)
    w = rng.standard_normal((20, 96, 3, 3)).astype(np.float32)
    expected = reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1))
    for algorithm in ALGORITHMS:
        assert_close(fc.conv2d(x, w, padding=1, algorithm=algorithm), expected, np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_results_do_not_depend_on_the_thread_count(algorithm, rng):
    x = rng.standard_normal((2, 5, 13, 12)).astype(np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    go = rng.standard_normal((2, 7, 7, 6)).astype(np.float32)
    kw = dict(stride=2, padding=1, algorithm=algorithm)

    def results():
        return [fc.conv2d(x, w, **kw), fc.conv2d_grad_input(go, w, x.shape, **kw),
                fc.conv2d_grad_weight(go, x, w.shape, **kw)]

    previous = fc.config.num_threads
    try:
        fc.config.num_threads = 1
        single = results()
        fc.config.num_threads = numba.config.NUMBA_NUM_THREADS
        full = results()
    finally:
        fc.config.num_threads = previous
    for a, b in zip(single, full):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for case in CASES[::7]:
        x, w, b = _data(case, dtype, seed=5)
        s, p, d, _ = _geometry(case)
        top, bottom, left, right = p
        xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))
        expected = F.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b), stride=s,
                            dilation=d, groups=case["groups"]).numpy()
        for algorithm in ALGORITHMS:
            out = fc.conv2d(x, w, b, algorithm=algorithm, **_kwargs(case))
            tol = 1e-10 if dtype == np.float64 else 1e-4
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * scale,
                                       err_msg=f"{algorithm} {_case_id(case)}")


# ---------------------------------------------------------------- im2col workspace

@pytest.fixture
def watched_workspace(monkeypatch):
    """Record every im2col scratch allocation, and restore the bound afterwards."""
    sizes = []
    original = im2col._allocate_workspace

    def allocate(nbytes, dtype):
        space = original(nbytes, dtype)
        sizes.append(space.nbytes)
        return space

    monkeypatch.setattr(im2col, "_allocate_workspace", allocate)
    bound = fc.config.workspace_bytes
    yield sizes
    fc.config.workspace_bytes = bound


# (x shape, weight shape, stride, padding, bound in bytes, expected tile (images, rows, cols))
WORKSPACE_CASES = [
    ((5, 3, 10, 9), (4, 3, 3, 3), 1, 1, 2 * (27 + 4) * 90 * 8, (2, 10, 9)),   # images
    ((2, 3, 10, 9), (4, 3, 3, 3), 1, 1, 3 * (27 + 4) * 9 * 8, (1, 3, 9)),     # rows
    ((2, 8, 10, 9), (4, 8, 3, 3), 2, 1, 2 * (72 + 4) * 8, (1, 1, 2)),         # columns
    ((2, 4, 11, 10), (6, 2, 3, 2), (2, 1), ((2, 0), (1, 1)), 1024, (1, 1, 4)),  # groups
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, bound, tile", WORKSPACE_CASES)
def test_im2col_workspace_stays_under_the_bound(watched_workspace, x_shape, w_shape, stride,
                                                padding, bound, tile):
    groups = x_shape[1] // w_shape[1]
    s, p, d, out_hw = conv_geometry(x_shape[2:], w_shape[2:], stride, padding, 1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    go = rng.standard_normal((x_shape[0], w_shape[0]) + out_hw)
    fc.config.workspace_bytes = bound
    assert im2col.plan_tiles(x_shape[0], x_shape[1], w_shape[0], w_shape[2:], out_hw, 8) == tile
    needed = im2col.workspace_bytes_needed(x_shape, w_shape, out_hw, s, p, 8)
    assert 0 < needed <= bound
    kw = dict(stride=stride, padding=padding, groups=groups, algorithm="im2col")
    assert_close(fc.conv2d(x, w, **kw), reference.conv2d(x, w, None, s, p, d, groups), np.float64)
    assert_close(fc.conv2d_grad_input(go, w, x_shape, **kw),
                 reference.conv2d_grad_input(go, w, x_shape, s, p, d, groups), np.float64)
    assert_close(fc.conv2d_grad_weight(go, x, w_shape, **kw),
                 reference.conv2d_grad_weight(go, x, w_shape, s, p, d, groups), np.float64)
    assert watched_workspace == [needed] * 3


def test_im2col_default_bound_takes_whole_batches_and_small_bounds_fall_back(watched_workspace,
                                                                              rng):
    x = rng.standard_normal((8, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    expected = reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1))
    assert im2col.plan_tiles(8, 16, 8, (3, 3), (12, 12), 4) == (8, 12, 12)
    assert_close(fc.conv2d(x, w, padding=1, algorithm="im2col"), expected, np.float32)
    assert watched_workspace == [(16 * 9 + 8) * 8 * 144 * 4]
    # one output pixel needs (16*9 + 8) * 4 = 608 bytes: above 1024 it still tiles...
    fc.config.workspace_bytes = 1024
    assert_close(fc.conv2d(x, w, padding=1, algorithm="im2col"), expected, np.float32)
    assert watched_workspace[-1] <= 1024
    # ...but with 64 input channels one pixel is (64*9 + 8) * 4 > 1024 bytes: no
    # tile fits, so the direct kernels (no workspace) answer
    x = rng.standard_normal((2, 64, 6, 6)).astype(np.float32)
    w = rng.standard_normal((8, 64, 3, 3)).astype(np.float32)
    del watched_workspace[:]
    assert im2col.plan_tiles(2, 64, 8, (3, 3), (6, 6), 4) is None
    assert_close(fc.conv2d(x, w, padding=1, algorithm="im2col"),
                 reference.conv2d(x, w, None, (1, 1), (1, 1, 1, 1)), np.float32)
    assert watched_workspace == []


def test_im2col_one_by_one_needs_no_workspace(watched_workspace, rng):
    x = rng.standard_normal((4, 6, 5, 7))
    w = rng.standard_normal((8, 3, 1, 1))
    go = rng.standard_normal((4, 8, 5, 7))
    kw = dict(groups=2, algorithm="im2col")
    assert_close(fc.conv2d(x, w, **kw), reference.conv2d(x, w, groups=2), np.float64)
    assert_close(fc.conv2d_grad_input(go, w, x.shape, **kw),
                 reference.conv2d_grad_input(go, w, x.shape, groups=2), np.float64)
    assert_close(fc.conv2d_grad_weight(go, x, w.shape, **kw),
                 reference.conv2d_grad_weight(go, x, w.shape, groups=2), np.float64)
    assert watched_workspace == []
    assert im2col.workspace_bytes_needed(x.shape, w.shape, (5, 7), (1, 1), (0, 0, 0, 0), 8) == 0


def test_im2col_whole_image_tiles_and_the_tile_target(watched_workspace, rng, monkeypatch):
    # one image per tile: the GEMM writes the output (reads grad_out) in place, so the
    # workspace is the columns alone
    x = rng.standard_normal((1, 6, 10, 11))
    w = rng.standard_normal((5, 6, 3, 3))
    b = rng.standard_normal(5)
    go = rng.standard_normal((1, 5, 10, 11))
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert im2col.plan_tiles(1, 6, 5, (3, 3), (10, 11), 8) == (1, 10, 11)
    for target in (None, 6 * 11 * 59 * 8):  # default; then 6 rows: less than the bound
        if target:
            monkeypatch.setattr(im2col, "TILE_TARGET_BYTES", target)
            assert im2col.plan_tiles(1, 6, 5, (3, 3), (10, 11), 8) == (1, 5, 11)
        del watched_workspace[:]
        assert_close(fc.conv2d(x, w, b, padding=1, algorithm="im2col"),
                     reference.conv2d(x, w, b, *geometry), np.float64)
        assert_close(fc.conv2d_grad_input(go, w, x.shape, padding=1, algorithm="im2col"),
                     reference.conv2d_grad_input(go, w, x.shape, *geometry), np.float64)
        assert_close(fc.conv2d_grad_weight(go, x, w.shape, padding=1, algorithm="im2col"),
                     reference.conv2d_grad_weight(go, x, w.shape, *geometry), np.float64)
        pixels = 110 if target is None else 55
        rows = 54 if target is None else 54 + 5
        assert watched_workspace == [rows * pixels * 8] * 3
        assert watched_workspace[0] == im2col.workspace_bytes_needed(
            x.shape, w.shape, (10, 11), (1, 1), (1, 1, 1, 1), 8)


@pytest.mark.parametrize("padding", [0, 1, ((3, 0), (1, 4)), "same"])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 5)])
def test_depthwise_planes_kernel_forward_and_grad_input(rng, kernel, dilation, padding):
    # one channel per group and per output: the padded-plane forward kernel, and
    # grad_input at stride 1 as its forward with the rotated kernel (padding beyond
    # the kernel's reach crops grad_out instead)
    x = rng.standard_normal((3, 5, 9, 11))
    w = rng.standard_normal((5, 1) + kernel)
    kw = dict(padding=padding, dilation=dilation, groups=5, algorithm="direct")
    y = fc.conv2d(x, w, **kw)
    s, p, d, _ = conv_geometry(x.shape[2:], kernel, 1, padding, dilation)
    assert_close(y, reference.conv2d(x, w, None, s, p, d, 5), np.float64)
    go = rng.standard_normal(y.shape)
    assert_close(fc.conv2d_grad_input(go, w, x.shape, **kw),
                 reference.conv2d_grad_input(go, w, x.shape, s, p, d, 5), np.float64)


@pytest.mark.parametrize("k_block", [1, 2, 3, 5])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", [
    ((4, 1, 12, 13), (5, 1, 3, 3), 1, 0, 1, 1),            # single-channel input (MNIST)
    ((2, 1, 12, 13), (5, 1, 5, 5), 1, 2, 1, 1),            # 5x5: taps 3 + 2 per row
    ((2, 2, 11, 9), (10, 1, 2, 7), 1, ((1, 0), (3, 2)), 2, 2),  # 5 planes per group
    ((3, 3, 10, 12), (6, 1, 3, 3), 2, 1, 1, 3),             # depthwise x2, strided
])
def test_planes_kernel_blocks_of_output_planes(rng, monkeypatch, k_block, x_shape, w_shape,
                                               stride, padding, dilation, groups):
    """One input channel per group: each task computes a block of output planes from
    one padded input plane; blocks that do not divide the group's planes included."""
    monkeypatch.setattr(direct, "_planes_block", lambda n, g, k_per_group: k_block)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
              algorithm="direct")
    s, p, d, out_hw = conv_geometry(x_shape[2:], w_shape[2:], stride, padding, dilation)
    assert direct._planes_fit(w, s, d, out_hw, 8, groups)
    assert_close(fc.conv2d(x, w, b, **kw), reference.conv2d(x, w, b, s, p, d, groups),
                 np.float64)


def test_depthwise_planes_kernel_falls_back_when_planes_exceed_the_workspace(rng,
                                                                           monkeypatch):
    x = rng.standard_normal((2, 4, 40, 40)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    expected = reference.conv2d(x, w, None, (2, 2), (1, 1, 1, 1), (1, 1), 4)
    assert direct._planes_fit(w, (2, 2), (1, 1), (20, 20), 4, 4)
    monkeypatch.setattr(fc.config, "workspace_bytes", 1024)   # the row-by-row kernel answers
    assert not direct._planes_fit(w, (2, 2), (1, 1), (20, 20), 4, 4)
    assert_close(fc.conv2d(x, w, stride=2, padding=1, groups=4, algorithm="direct"),
                 expected, np.float32)
