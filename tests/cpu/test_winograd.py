"""Winograd F(2x2,3x3) and F(4x4,3x3) on the CPU against the references and
against the other algorithms; and F(m x m, 5x5), which `auto` runs on 5x5 layers."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import reference
from fastconv.cpu import winograd, winograd_cache
from fastconv.shapes import conv_geometry

from ..conftest import assert_close

TILES = [2, 4]
KERNELS = [3, 5]      # kernel sizes the backend serves (5x5 through `auto` only)
CASES = [  # (x shape, K, padding, groups): partial border tiles, asymmetric padding, groups
    ((1, 1, 3, 3), 1, 0, 1),
    ((2, 3, 11, 10), 4, 1, 1),
    ((3, 5, 7, 9), 3, ((0, 2), (1, 0)), 1),
    ((1, 4, 9, 12), 6, ((3, 0), (0, 4)), 2),     # padding beyond the kernel: crops in grad
    ((2, 6, 8, 8), 6, "same", 6),                 # depthwise
    ((1, 6, 13, 6), 9, "valid", 3),
]


def _case(rng, x_shape, k, padding, groups, dtype, r=3):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((k, x_shape[1] // groups, r, r)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    s, p, d, out_hw = conv_geometry(x_shape[2:], (r, r), 1, padding, 1)
    go = rng.standard_normal((x_shape[0], k) + out_hw).astype(dtype)
    return x, w, b, p, out_hw, go


@pytest.mark.parametrize("r", KERNELS)
@pytest.mark.parametrize("tile", TILES)
def test_matrices_compute_a_1d_correlation(tile, r):
    AT, G, BT = winograd.winograd_matrices(tile, r)
    alpha = tile + r - 1
    assert AT.shape == (tile, alpha) and G.shape == (alpha, r) and BT.shape == (alpha, alpha)
    rng = np.random.default_rng(0)
    g, d = rng.standard_normal(r), rng.standard_normal(alpha)
    expected = [g @ d[i:i + r] for i in range(tile)]
    np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), expected, rtol=1e-13, atol=1e-13)
    # B^T is integral: the input transform is exact in any float type.
    np.testing.assert_array_equal(BT, np.round(BT))


@pytest.mark.parametrize("r", KERNELS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, k, padding, groups", CASES)
def test_forward_and_grad_input_match_reference(x_shape, k, padding, groups, dtype, tile, r,
                                                rng):
    x_shape = x_shape[:2] + (x_shape[2] + r - 3, x_shape[3] + r - 3)   # room for r x r
    x, w, b, p, out_hw, go = _case(rng, x_shape, k, padding, groups, dtype, r)
    out = winograd.conv2d(x, w, b, (1, 1), p, (1, 1), groups, out_hw, tile=tile)
    assert out.dtype == dtype
    assert_close(out, reference.conv2d(x, w, b, (1, 1), p, (1, 1), groups), dtype, 1e-3)
    grad = winograd.conv2d_grad_input(go, w, x.shape, (1, 1), p, (1, 1), groups, tile=tile)
    assert_close(grad, reference.conv2d_grad_input(go, w, x.shape, (1, 1), p, (1, 1), groups),
                 dtype, 1e-3)


@pytest.mark.parametrize("x_shape, k, padding, groups", CASES)
def test_public_api_agrees_with_direct(x_shape, k, padding, groups, rng):
    x, w, b, p, out_hw, go = _case(rng, x_shape, k, padding, groups, np.float64)
    kw = dict(padding=padding, groups=groups)
    np.testing.assert_allclose(fc.conv2d(x, w, b, algorithm="winograd", **kw),
                               fc.conv2d(x, w, b, algorithm="direct", **kw), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        fc.conv2d_grad_input(go, w, x.shape, algorithm="winograd", **kw),
        fc.conv2d_grad_input(go, w, x.shape, algorithm="direct", **kw), rtol=1e-10, atol=1e-10)
    # the weight gradient: Winograd F(3x3, 4x4) on the CPU
    np.testing.assert_allclose(
        fc.conv2d_grad_weight(go, x, w.shape, algorithm="winograd", **kw),
        reference.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), groups), rtol=1e-10,
        atol=1e-10)


def test_small_workspace_runs_in_chunks_with_the_same_result(rng):
    x, w, b, p, out_hw, _ = _case(rng, (3, 8, 20, 20), 8, 1, 1, np.float32)
    expected = winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw)
    original = fc.config.workspace_bytes
    try:
        one_row = 36 * 5 * (8 + 8) * 4            # V + M of one row of 5 tiles
        fc.config.workspace_bytes = 3 * one_row    # three tile rows per chunk
        needed = winograd.workspace_bytes_needed(x.shape, w.shape, out_hw)
        assert needed <= fc.config.workspace_bytes
        np.testing.assert_array_equal(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw),
                                      expected)
        fc.config.workspace_bytes = 1024           # not even one row: direct takes over
        assert_close(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw),
                     reference.conv2d(x, w, b, (1, 1), p), np.float32)
    finally:
        fc.config.workspace_bytes = original


@pytest.mark.parametrize("tile, r, bound", [(2, 3, 1e-5), (4, 3, 1e-4), (4, 5, 1e-4)])
def test_float32_error_on_a_vgg_sized_layer(tile, r, bound, rng):
    """Documented in performance.md: F(2x2,3x3) ~1e-6, F(4x4,3x3) and F(4x4,5x5) ~1e-5
    of the output's scale."""
    x = rng.standard_normal((1, 64, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((64, 64, r, r)) * np.sqrt(2 / (r * r * 64))).astype(np.float32)
    pad = (r // 2,) * 4
    out = winograd.conv2d(x, w, None, (1, 1), pad, (1, 1), 1, (28, 28), tile=tile)
    expected = reference.conv2d(x, w, None, (1, 1), pad)
    assert np.abs(out - expected).max() / np.abs(expected).max() < bound


def test_winograd_refuses_what_it_cannot_do():
    x = np.ones((1, 2, 8, 8), np.float32)
    for w_shape, kw, word in [((2, 2, 5, 5), {}, "3x3"), ((2, 2, 3, 3), {"stride": 2}, "stride"),
                              ((2, 2, 3, 3), {"dilation": 2}, "dilation")]:
        with pytest.raises(ValueError, match=word):
            fc.conv2d(x, np.ones(w_shape, np.float32), algorithm="winograd", **kw)


@pytest.mark.parametrize("r", KERNELS)
@pytest.mark.parametrize("tile", TILES)
def test_filter_transform_is_g_w_gt(tile, r, rng):
    w = rng.standard_normal((5, 3, r, r))
    _, G, _ = winograd.winograd_matrices(tile, r)
    expected = np.einsum("ai,kcij,bj->abkc", G, w, G).reshape(-1, 5, 3)
    np.testing.assert_allclose(winograd.transform_filter(w, tile), expected, rtol=1e-13,
                               atol=1e-13)


def test_kept_scratch_does_not_leak_between_shapes(rng):
    """The per-thread scratch is reused: a large call, then a small one, then the large
    one again must each give the reference (no stale tiles, no stale filter)."""
    big = _case(rng, (2, 8, 17, 15), 8, 1, 1, np.float64)
    small = _case(rng, (1, 3, 5, 6), 2, ((0, 1), (2, 0)), 1, np.float64)
    for x, w, b, p, out_hw, _ in (big, small, big):
        np.testing.assert_allclose(
            winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw),
            reference.conv2d(x, w, b, (1, 1), p), rtol=1e-10, atol=1e-10)
    winograd.release_workspace()


@pytest.mark.parametrize("tile", TILES)
def test_agrees_with_im2col_in_float32(tile, rng):
    x, w, b, p, out_hw, go = _case(rng, (3, 7, 10, 13), 5, "same", 1, np.float32)
    ours = winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw, tile=tile)
    theirs = fc.conv2d(x, w, b, padding="same", algorithm="im2col")
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_empty_batch_through_the_api():
    x = np.zeros((0, 4, 9, 9), np.float32)
    w = np.ones((6, 4, 3, 3), np.float32)
    out = fc.conv2d(x, w, padding=1, algorithm="winograd")
    assert out.shape == (0, 6, 9, 9) and out.dtype == np.float32
    gi = fc.conv2d_grad_input(np.zeros((0, 6, 9, 9), np.float32), w, x.shape, padding=1,
                              algorithm="winograd")
    assert gi.shape == x.shape


INPUT_TRANSFORMS = ["rows", "gather", "channels_last"]


def _force_input_transform(monkeypatch, kernel):
    """Make every call take one input-transform kernel, whatever the shape."""
    monkeypatch.setattr(winograd, "ROW_KERNEL_MIN_TILES", {})
    monkeypatch.setattr(winograd, "ROW_KERNEL_MIN_TILES_OTHER",
                        1 if kernel == "rows" else 10**9)
    monkeypatch.setattr(winograd, "_channels_last_wins",
                        lambda c_in, tiles, tiles_w: kernel == "channels_last")


@pytest.mark.parametrize("kernel", INPUT_TRANSFORMS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("x_shape, k, padding, groups, r", [c + (3,) for c in CASES] + [
    ((3, 2, 13, 30), 3, 2, 1, 3),
    ((3, 2, 13, 30), 3, 2, 1, 5),
    ((2, 3, 11, 17), 4, ((0, 3), (2, 1)), 1, 5),
    ((1, 6, 9, 9), 6, "same", 6, 5),
])
def test_every_input_transform_matches_reference(x_shape, k, padding, groups, r, tile,
                                                 kernel, rng, monkeypatch):
    """Each kernel over the grid, in chunks too; the channels-last one also in blocks of
    tiles that do not divide a chunk's tiles."""
    _force_input_transform(monkeypatch, kernel)
    x, w, b, p, out_hw, _ = _case(rng, x_shape, k, padding, groups, np.float64, r)
    expected = reference.conv2d(x, w, b, (1, 1), p, (1, 1), groups)
    np.testing.assert_allclose(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), groups, out_hw,
                                               tile=tile), expected, rtol=1e-10, atol=1e-10)
    # chunks of a few tile rows: bands that start inside an image and cross into the next
    tiles_h, tiles_w = winograd._tile_grid(out_hw, tile)
    alpha = tile + r - 1
    row_bytes = alpha * alpha * tiles_w * (x_shape[1] + k) * 8
    monkeypatch.setattr(winograd, "CHUNK_TARGET_BYTES", 3 * row_bytes)
    np.testing.assert_allclose(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), groups, out_hw,
                                               tile=tile), expected, rtol=1e-10, atol=1e-10)


def test_kept_filters_serve_only_the_same_weights(rng, monkeypatch):
    winograd.release_workspace()
    transforms = []
    original = winograd_cache.transform_filter
    monkeypatch.setattr(winograd_cache, "transform_filter",
                        lambda w, tile=4, out=None: transforms.append(w.shape) or
                        original(w, tile, out))
    x, w, b, p, out_hw, go = _case(rng, (2, 6, 9, 11), 5, 1, 1, np.float64)

    def check():
        np.testing.assert_allclose(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw),
                                   reference.conv2d(x, w, b, (1, 1), p), rtol=1e-10, atol=1e-10)

    check()
    check()
    assert len(transforms) == 1                    # the second call reused the transform
    w[2, 1, 0, 2] += 1.0                           # changed in place: transformed again
    check()
    assert len(transforms) == 2
    w[0, 0, 0, 0] = 0.0
    check()
    w[0, 0, 0, 0] = -0.0                           # equal as floats, not as bits
    check()
    assert len(transforms) == 4
    w = w.copy()                                   # another array: its own entry
    check()
    assert len(transforms) == 5
    winograd.conv2d_grad_input(go, w, x.shape, (1, 1), p, (1, 1), 1)
    assert len(winograd_cache._filters) == 2             # grad_input's rotated kernel is not kept
    winograd.release_workspace()
    assert not winograd_cache._filters


def test_kept_filters_stay_within_their_bound(rng, monkeypatch):
    winograd.release_workspace()
    x, w, b, p, out_hw, _ = _case(rng, (1, 8, 6, 6), 8, 1, 1, np.float32)
    entry_bytes = w.nbytes + 36 * w.shape[0] * w.shape[1] * 4
    monkeypatch.setattr(winograd_cache, "FILTER_CACHE_BYTES", 2 * entry_bytes)
    weights = [w + np.float32(i) for i in range(4)]
    for wi in weights:
        assert_close(winograd.conv2d(x, wi, b, (1, 1), p, (1, 1), 1, out_hw),
                     reference.conv2d(x, wi, b, (1, 1), p), np.float32)
    assert sum(a.nbytes + u.nbytes for a, u in winograd_cache._filters.values()) <= 2 * entry_bytes
    assert len(winograd_cache._filters) == 2
    monkeypatch.setattr(winograd_cache, "FILTER_CACHE_BYTES", entry_bytes - 1)   # too big to keep
    winograd.release_workspace()
    winograd.conv2d(x, weights[0], b, (1, 1), p, (1, 1), 1, out_hw)
    assert not winograd_cache._filters


@pytest.mark.parametrize("kernel", INPUT_TRANSFORMS)
@pytest.mark.parametrize("tile", [3, 6])
def test_other_tile_sizes_take_the_generic_passes(tile, kernel, rng, monkeypatch):
    """F(2x2) and F(4x4) run written-out passes (_split_phases; _mix6 for F(4x4)); any
    other tile size runs the generic loops (F(6x6)'s input transform: _mix8), which
    must agree with the reference too."""
    _force_input_transform(monkeypatch, kernel)
    x, w, b, p, out_hw, _ = _case(rng, (2, 3, 14, 17), 4, ((1, 0), (2, 1)), 1, np.float64)
    expected = reference.conv2d(x, w, b, (1, 1), p, (1, 1), 1)
    np.testing.assert_allclose(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw,
                                               tile=tile), expected, rtol=1e-9, atol=1e-9)


def test_auto_runs_winograd_on_5x5_layers_and_matches_reference(rng, monkeypatch):
    """`auto` takes F(4x4,5x5) on a large enough 5x5 stride-1 layer (forward and
    grad_input); algorithm="winograd" itself stays 3x3 (docs/api.md)."""
    x = rng.standard_normal((2, 16, 24, 24)).astype(np.float32)
    w = rng.standard_normal((16, 16, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    assert "winograd F(4x4,5x5)" in fc.explain(x.shape, w.shape, padding=2)
    assert "winograd F(4x4,5x5)" in fc.explain(x.shape, w.shape, padding=2,
                                              operation="conv2d_grad_input")
    calls = []
    original = winograd.conv2d

    def spy(*args, **kwargs):
        calls.append(kwargs["tile"] if "tile" in kwargs else args[8])   # (..., out_hw, tile)
        return original(*args, **kwargs)

    monkeypatch.setattr(winograd, "conv2d", spy)
    out = fc.conv2d(x, w, b, padding=2)
    go = rng.standard_normal(out.shape).astype(np.float32)
    gi = fc.conv2d_grad_input(go, w, x.shape, padding=2)
    assert calls == [4, 4]
    assert_close(out, reference.conv2d(x, w, b, (1, 1), (2, 2, 2, 2)), np.float32, 1e-3)
    assert_close(gi, reference.conv2d_grad_input(go, w, x.shape, (1, 1), (2, 2, 2, 2)),
                 np.float32, 1e-3)
    with pytest.raises(ValueError, match="3x3 kernel.*auto"):
        fc.conv2d(x, w, padding=2, algorithm="winograd")


@pytest.mark.parametrize("threads_block", [1, 3, 16])
def test_channels_last_blocks_of_tiles(threads_block, rng, monkeypatch):
    """The channels-last kernel's blocks: one tile, a block that does not divide the
    tiles (a short last block), and blocks longer than the chunk."""
    monkeypatch.setattr(winograd, "_channels_last_wins", lambda c_in, tiles, tiles_w: True)
    monkeypatch.setattr(winograd, "CHANNELS_LAST_BLOCK", threads_block)
    x, w, b, p, out_hw, _ = _case(rng, (3, 5, 9, 11), 4, 1, 1, np.float64)
    np.testing.assert_allclose(winograd.conv2d(x, w, b, (1, 1), p, (1, 1), 1, out_hw),
                               reference.conv2d(x, w, b, (1, 1), p), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c_in, tiles, tiles_w, expected", [
    (512, 32, 2, True), (256, 16, 4, True), (256, 128, 4, True),   # ResNet 7x7, 14x14
    (512, 64, 4, True),
    (512, 128, 4, False), (256, 256, 4, False), (384, 128, 4, False),   # many values
    (128, 16, 4, False), (64, 8, 4, False),                        # few channels
    (256, 49, 7, False), (512, 14, 14, False),                     # wide images
])
def test_channels_last_rule(c_in, tiles, tiles_w, expected):
    assert winograd._channels_last_wins(c_in, tiles, tiles_w) == expected


@pytest.mark.parametrize("r", KERNELS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, k, padding, groups", CASES)
def test_grad_weight_matches_reference(x_shape, k, padding, groups, dtype, tile, r, rng,
                                       monkeypatch):
    """F(r x r, m x m): the forward's input transform, grad_out tiles through the filter
    transform, GEMMs over the tiles; also in chunks of a few tile rows."""
    x_shape = x_shape[:2] + (x_shape[2] + r - 3, x_shape[3] + r - 3)
    x, w, b, p, out_hw, go = _case(rng, x_shape, k, padding, groups, dtype, r)
    expected = reference.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), groups)
    got = winograd.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), groups, tile=tile)
    assert got.dtype == dtype and got.shape == w.shape
    assert_close(got, expected, dtype, 1e-3)
    tiles_h, tiles_w = winograd._tile_grid(out_hw, tile)
    alpha = tile + r - 1
    row_bytes = alpha * alpha * tiles_w * (x_shape[1] + k) * np.dtype(dtype).itemsize
    monkeypatch.setattr(winograd, "CHUNK_TARGET_BYTES", 2 * row_bytes)
    assert_close(winograd.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), groups,
                                             tile=tile), expected, dtype, 1e-3)


def test_grad_weight_float32_error_and_workspace_fallback(rng):
    """~1e-5 of the scale on a 64-channel layer (performance.md has the VGG table); a
    bound below one tile row's V and transformed grad_out falls back to im2col."""
    x = rng.standard_normal((2, 64, 28, 28)).astype(np.float32)
    go = rng.standard_normal((2, 64, 28, 28)).astype(np.float32)
    expected = reference.conv2d_grad_weight(go, x, (64, 64, 3, 3), (1, 1), (1, 1, 1, 1))
    got = winograd.conv2d_grad_weight(go, x, (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
    original = fc.config.workspace_bytes
    try:
        fc.config.workspace_bytes = 1024
        assert_close(winograd.conv2d_grad_weight(go, x, (64, 64, 3, 3), (1, 1), (1, 1, 1, 1),
                                                 (1, 1), 1), expected, np.float32)
    finally:
        fc.config.workspace_bytes = original


def test_auto_weight_gradient_rule_and_non_finite_inputs(rng):
    """`auto` takes Winograd for the weight gradient of large 3x3 layers (CPU), im2col
    for small ones, and im2col whenever an operand holds NaN or Inf."""
    text = fc.explain((8, 128, 28, 28), (128, 128, 3, 3), padding=1,
                      operation="conv2d_grad_weight")
    assert "on cpu: winograd F(3x3,4x4) (" in text
    for x_shape, w_shape in [((8, 64, 56, 56), (64, 64, 3, 3)),      # few channels
                             ((8, 256, 14, 14), (256, 256, 3, 3)),   # few pixels
                             ((8, 128, 28, 28), (128, 128, 5, 5))]:  # not 3x3
        assert "on cpu: im2col (" in fc.explain(x_shape, w_shape, padding=1,
                                                 operation="conv2d_grad_weight")
    assert "on cuda: im2col (" in fc.explain((8, 128, 28, 28), (128, 128, 3, 3), padding=1,
                                             operation="conv2d_grad_weight", device="cuda")
    x = rng.standard_normal((2, 96, 40, 40)).astype(np.float32)
    go = rng.standard_normal((2, 96, 40, 40)).astype(np.float32)
    x[1, 3, 5, 7] = np.inf
    np.testing.assert_array_equal(
        fc.conv2d_grad_weight(go, x, (96, 96, 3, 3), padding=1),
        fc.conv2d_grad_weight(go, x, (96, 96, 3, 3), padding=1, algorithm="im2col"))


def test_grad_weight_stays_within_the_workspace_bound(rng, monkeypatch):
    """The chunks' scratch (V, grad_out tiles and their transform) plus dW and one
    dW-sized temporary stay within config.workspace_bytes; below that, im2col."""
    x, w, b, p, out_hw, go = _case(rng, (3, 8, 21, 19), 8, 1, 1, np.float32)
    expected = reference.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), 1)
    reserved = winograd._grad_weight_reserved_bytes(w.shape, 4, 4)
    tiles_w = winograd._tile_grid(out_hw, 4)[1]
    row_bytes = tiles_w * (36 * (8 + 8) + 8 * 16) * 4
    chunk_bytes = []
    original_scratch = winograd_cache.scratch

    def spy(slot, shape, dtype):
        if slot == "V":
            chunk_bytes.append(0)
        chunk_bytes[-1] += int(np.prod(shape)) * np.dtype(dtype).itemsize
        return original_scratch(slot, shape, dtype)

    monkeypatch.setattr(winograd_cache, "scratch", spy)
    monkeypatch.setattr(fc.config, "workspace_bytes", reserved + 2 * row_bytes)
    got = winograd.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), 1)
    assert len(chunk_bytes) == -(-3 * 6 // 2)          # 18 tile rows, 2 per chunk
    assert max(chunk_bytes) + reserved <= fc.config.workspace_bytes
    assert_close(got, expected, np.float32, 1e-3)
    monkeypatch.setattr(fc.config, "workspace_bytes", reserved + row_bytes - 1)
    from fastconv.cpu import im2col
    calls = []
    monkeypatch.setattr(im2col, "conv2d_grad_weight",
                        lambda *a: calls.append(1) or reference.conv2d_grad_weight(*a))
    winograd.conv2d_grad_weight(go, x, w.shape, (1, 1), p, (1, 1), 1)
    assert calls == [1]
