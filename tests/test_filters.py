"""fastconv.filters: kernels, the Leung-Malik bank, and `python -m fastconv filters`."""
import os

import numpy as np
import pytest

import fastconv as fc
from fastconv import filters


def test_classic_kernels():
    assert filters.sobel_x().shape == (3, 3)
    np.testing.assert_array_equal(filters.sobel_y(), filters.sobel_x().T)
    for k in (filters.sobel_x(), filters.prewitt_y(), filters.scharr_x(), filters.laplacian(),
              filters.laplacian(diagonal=True)):
        assert abs(k.sum()) < 1e-12
    for k in (filters.gaussian(7, 1.5), filters.box_blur(5), filters.sharpen(), filters.emboss()):
        assert abs(k.sum() - 1) < 1e-12
    g = filters.gaussian(5, 1.0)
    np.testing.assert_allclose(g, g.T)
    assert g[2, 2] == g.max()
    with pytest.raises(ValueError, match="size"):
        filters.gaussian(4)
    with pytest.raises(ValueError, match="sigma"):
        filters.gaussian(5, 0)
    assert len(filters.classic_bank()) == 12


def test_sobel_on_a_ramp():
    image = np.tile(np.arange(8.0), (8, 1))  # brighter to the right
    out = fc.conv2d(image[None, None], filters.sobel_x()[None, None], padding="same")[0, 0]
    np.testing.assert_allclose(out[1:-1, 1:-1], 8.0)  # cross-correlation: positive


def test_leung_malik_bank():
    bank = filters.leung_malik()
    assert bank.shape == (48, 49, 49)
    assert len(filters.leung_malik_names()) == 48
    derivative_and_log = np.r_[0:36, 40:48]
    np.testing.assert_allclose(bank[derivative_and_log].sum(axis=(1, 2)), 0, atol=1e-10)
    np.testing.assert_allclose(np.abs(bank[derivative_and_log]).sum(axis=(1, 2)), 1)
    np.testing.assert_allclose(bank[36:40].sum(axis=(1, 2)), 1)
    # first derivatives are odd, second derivatives and LoGs even (under 180 deg rotation)
    np.testing.assert_allclose(bank[:18], -bank[:18, ::-1, ::-1], atol=1e-12)
    np.testing.assert_allclose(bank[18:], bank[18:, ::-1, ::-1], atol=1e-12)
    # filter 0 (0 degrees) differentiates along y; filter 3 (90 degrees) along x
    assert np.abs(bank[0].sum(axis=1)).max() > 10 * np.abs(bank[0].sum(axis=0)).max()
    assert np.abs(bank[3].sum(axis=0)).max() > 10 * np.abs(bank[3].sum(axis=1)).max()
    # larger scales are wider
    assert (np.abs(bank[12]) > 1e-4).sum() > (np.abs(bank[0]) > 1e-4).sum()
    assert filters.leung_malik(15).shape == (48, 15, 15)
    with pytest.raises(ValueError, match="odd"):
        filters.leung_malik(10)


def test_stack_and_apply():
    w = filters.stack([filters.sobel_x(), filters.gaussian(5, 1.0)])
    assert w.shape == (2, 1, 5, 5) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0, 0, 1:4, 1:4], filters.sobel_x())
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    out = filters.apply_bank(image, w)
    assert out.shape == (2, 20, 30)
    direct = fc.conv2d(image[None, None], filters.sobel_x()[None, None].astype(np.float32),
                       padding="same")[0, 0]
    np.testing.assert_allclose(out[0], direct, atol=1e-5)


def test_sample_image():
    image = filters.load_image()
    assert image.dtype == np.float32 and image.ndim == 2
    assert image.shape == (171, 256)
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.1


def test_cli_on_sample_image(tmp_path, capsys):
    from fastconv.__main__ import main
    out = tmp_path / "gallery"
    assert main(["filters", "--out", str(out), "--max-size", "96", "--lm-size", "25"]) == 0
    for name in ("classic.png", "lm_bank.png", "lm_responses.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert "pictures in" in capsys.readouterr().out


def test_cli_on_given_image(tmp_path):
    from PIL import Image
    path = tmp_path / "img.jpg"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    assert filters.main([str(path), "--out", str(tmp_path / "o"), "--lm-size", "11"]) == 0
    assert os.path.exists(tmp_path / "o" / "lm_responses.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read"):
        filters.main([str(bad), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("size", ["100001", "103", "10", "1"])
def test_cli_lm_size_bound(size, capsys):
    with pytest.raises(SystemExit) as exc:
        filters.main(["--lm-size", size])
    assert exc.value.code == 2
    assert f"--lm-size must be an odd int in 3..{filters.LM_MAX_SIZE}" in capsys.readouterr().err


def test_cli_unusable_out_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="cannot create --out"):
        filters.main(["--out", str(blocker / "x"), "--lm-size", "11"])


@pytest.mark.parametrize("sigma", [1e-200, 1e-151, 1e151, 1e300, np.float32(1e-30) * np.float32(1e-20)])
def test_gaussian_sigma_outside_float64s_reach_is_a_value_error(sigma):
    """gaussian(5, 1e-200) once gave an all-NaN kernel, gaussian(5, 1e300) an OverflowError."""
    with pytest.raises(ValueError, match="sigma"):
        filters.gaussian(5, sigma)


@pytest.mark.parametrize("sigma", [filters.SIGMA_MIN, 1e-100, 0.3, 1, 1e100, filters.SIGMA_MAX])
def test_gaussian_at_the_sigma_bounds_is_finite_and_normalised(sigma):
    k = filters.gaussian(5, sigma)
    assert np.isfinite(k).all() and abs(k.sum() - 1) < 1e-12
    assert k[2, 2] == k.max()
