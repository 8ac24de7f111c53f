"""Classic image filters and the Leung-Malik filter bank, applied with `fastconv.conv2d`.

Every kernel is a float64 NumPy array to be used with `fastconv.conv2d`, which is a
cross-correlation (no flip, as in PyTorch): ``sobel_x()`` responds positively where the
image gets brighter to the right.

    >>> import numpy as np, fastconv as fc
    >>> from fastconv import filters
    >>> filters.sobel_x()
    array([[-1.,  0.,  1.],
           [-2.,  0.,  2.],
           [-1.,  0.,  1.]])
    >>> filters.leung_malik().shape
    (48, 49, 49)
    >>> image = np.tile(np.arange(8.0), (8, 1))               # brighter to the right
    >>> w = filters.sobel_x()[None, None]                     # (1, 1, 3, 3)
    >>> float(fc.conv2d(image[None, None], w, padding="same")[0, 0, 4, 4])
    8.0

``python -m fastconv filters [IMAGE] [--out DIR]`` applies the classic kernels and
the Leung-Malik bank to an image (the bundled sample photo by default), each bank in
one `fastconv.conv2d` call with the filters as output channels, and saves grids of
the responses.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

__all__ = ["sobel_x", "sobel_y", "prewitt_x", "prewitt_y", "scharr_x", "scharr_y",
           "laplacian", "gaussian", "sharpen", "box_blur", "emboss", "classic_bank",
           "leung_malik", "stack", "apply_bank", "sample_image_path", "load_image", "main"]


# --------------------------------------------------------------------------
# Classic kernels
# --------------------------------------------------------------------------

def sobel_x():
    """Sobel derivative along x (columns): smoothing [1 2 1] down, difference [-1 0 1] across."""
    return np.array([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]])


def sobel_y():
    """Sobel derivative along y (rows, downwards): the transpose of `sobel_x`."""
    return sobel_x().T.copy()


def prewitt_x():
    """Prewitt derivative along x: box smoothing down, [-1 0 1] across."""
    return np.array([[-1., 0., 1.], [-1., 0., 1.], [-1., 0., 1.]])


def prewitt_y():
    """Prewitt derivative along y."""
    return prewitt_x().T.copy()


def scharr_x():
    """Scharr derivative along x: [3 10 3] smoothing, better rotational symmetry than Sobel."""
    return np.array([[-3., 0., 3.], [-10., 0., 10.], [-3., 0., 3.]])


def scharr_y():
    """Scharr derivative along y."""
    return scharr_x().T.copy()


def laplacian(diagonal=False):
    """The discrete Laplacian: 4-neighbour ``[[0 1 0] [1 -4 1] [0 1 0]]``, or with
    ``diagonal=True`` the 8-neighbour ``[[1 1 1] [1 -8 1] [1 1 1]]``. Sums to 0."""
    if diagonal:
        k = np.ones((3, 3))
        k[1, 1] = -8.0
        return k
    return np.array([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]])


# The sigma accepted by `gaussian`.
SIGMA_MIN, SIGMA_MAX = 1e-150, 1e150


def gaussian(size=5, sigma=1.0):
    """A ``size x size`` Gaussian blur kernel with standard deviation ``sigma`` (pixels),
    normalised to sum 1. ``size`` must be a positive odd int, ``sigma`` a number in
    [SIGMA_MIN, SIGMA_MAX] = [1e-150, 1e150] (ValueError naming sigma otherwise).

    >>> gaussian(3, 1e-100)
    array([[0., 0., 0.],
           [0., 1., 0.],
           [0., 0., 0.]])
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int, got {size!r}")
    if not (isinstance(sigma, (int, float, np.integer, np.floating))
            and not isinstance(sigma, (bool, np.bool_)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    # outside these bounds 2 * sigma**2 is 0 in float64 (0/0: a NaN kernel) or overflows;
    # well inside them the kernel is already a single 1 or a flat box
    if not SIGMA_MIN <= float(sigma) <= SIGMA_MAX:
        raise ValueError(
            f"sigma must lie between {SIGMA_MIN:g} and {SIGMA_MAX:g} (float64 cannot "
            f"hold 2 * sigma**2 much outside them), got {sigma!r}")
    two_variance = 2.0 * float(sigma) ** 2
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r ** 2) / two_variance)
    k = np.outer(g, g)
    return k / k.sum()



def sharpen():
    """Sharpening: the image plus its negative 4-neighbour Laplacian. Sums to 1."""
    return np.array([[0., -1., 0.], [-1., 5., -1.], [0., -1., 0.]])


def box_blur(size=3):
    """A ``size x size`` mean filter (sums to 1)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return np.full((size, size), 1.0 / (size * size))


def emboss():
    """Emboss: a diagonal derivative plus the image (sums to 1), lit from the top left."""
    return np.array([[-2., -1., 0.], [-1., 1., 1.], [0., 1., 2.]])


def classic_bank():
    """{name: kernel} of the classic kernels above (Gaussian 5x5, sigma 1)."""
    return {"sobel_x": sobel_x(), "sobel_y": sobel_y(), "prewitt_x": prewitt_x(),
            "prewitt_y": prewitt_y(), "scharr_x": scharr_x(), "scharr_y": scharr_y(),
            "laplacian": laplacian(), "laplacian_diag": laplacian(diagonal=True),
            "gaussian_5x5_s1": gaussian(5, 1.0), "sharpen": sharpen(),
            "box_blur_5x5": box_blur(5), "emboss": emboss()}


def stack(kernels, dtype=np.float32):
    """Stack 2-D odd-sized kernels into one ``(K, 1, S, S)`` conv2d weight, zero-padding the
    smaller ones symmetrically to the largest size S (so their centres stay put and
    ``padding='same'`` responses line up)."""
    kernels = [np.asarray(k, dtype=np.float64) for k in kernels]
    if not kernels:
        raise ValueError("kernels must not be empty")
    for k in kernels:
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(f"kernels must be 2-D with odd sides, got shape {k.shape}")
    size = max(max(k.shape) for k in kernels)
    out = np.zeros((len(kernels), 1, size, size), dtype=dtype)
    for i, k in enumerate(kernels):
        top, left = (size - k.shape[0]) // 2, (size - k.shape[1]) // 2
        out[i, 0, top:top + k.shape[0], left:left + k.shape[1]] = k
    return out


# --------------------------------------------------------------------------
# Leung-Malik filter bank
# --------------------------------------------------------------------------

def _gauss1d(sigma, x, order):
    """LM's gauss1d: a 1-D Gaussian (or its 1st/2nd derivative) at points x."""
    variance = sigma ** 2
    g = np.exp(-x * x / (2 * variance)) / np.sqrt(2 * np.pi * variance)
    if order == 1:
        g = -g * (x / variance)
    elif order == 2:
        g = g * ((x * x - variance) / variance ** 2)
    return g


def _normalise(f):
    """LM's normalise: zero mean, unit L1 norm."""
    f = f - f.mean()
    return f / np.abs(f).sum()


def _log_kernel(size, sigma):
    """MATLAB's fspecial('log', size, sigma): Laplacian of Gaussian, centre negative."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    r2 = x * x + y * y
    g = np.exp(-r2 / (2 * sigma ** 2))
    g /= g.sum()
    h = g * (r2 - 2 * sigma ** 2) / sigma ** 4
    return h - h.mean()


def leung_malik(size=49):
    """The Leung-Malik filter bank (Leung & Malik 2001; the makeLMfilters.m of the
    Oxford VGG texture page), 48 filters of ``size x size`` (odd; 49 originally):

    - 0-17: first derivatives of an elongated Gaussian (sigma_x = 3 sigma_y, elongation 3),
      at 3 scales sigma_y = sqrt(2)^{1,2,3} x 6 orientations 0, 30, ..., 150 degrees
      (index = 6 * scale + orientation);
    - 18-35: second derivatives, same scales and orientations;
    - 36-39: Gaussians at the 4 base scales sqrt(2)^{1,2,3,4};
    - 40-43: Laplacians of Gaussian at those sigmas; 44-47: at 3 x those sigmas.

    The derivative and LoG filters are zero-mean with unit L1 norm, as in the original.
    The Gaussians are normalised to unit sum (they are the bank's smoothing filters; the
    original's zero-mean normalisation would turn them into centre-surround filters).
    Returns float64 ``(48, size, size)``: ``filters.stack(leung_malik())`` or
    ``leung_malik()[:, None]`` is a conv2d weight.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 3 or size % 2 == 0:
        raise ValueError(f"size must be an odd int >= 3, got {size!r}")
    half = (size - 1) / 2
    # MATLAB: [x, y] = meshgrid(-h:h, h:-1:-h), y pointing up.
    x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(half, -half - 1, -1))
    pts = np.stack([x.ravel(), y.ravel()])
    scales = np.sqrt(2.0) ** np.arange(1, 4)
    n_orient = 6
    bank = np.zeros((48, size, size))
    n_edge = len(scales) * n_orient  # 18
    count = 0
    for scale in scales:
        for orient in range(n_orient):
            angle = np.pi * orient / n_orient
            c, s = np.cos(angle), np.sin(angle)
            rx, ry = np.array([[c, -s], [s, c]]) @ pts
            gx = _gauss1d(3 * scale, rx, 0)
            bank[count] = _normalise((gx * _gauss1d(scale, ry, 1)).reshape(size, size))
            bank[count + n_edge] = _normalise((gx * _gauss1d(scale, ry, 2)).reshape(size, size))
            count += 1
    base = np.sqrt(2.0) ** np.arange(1, 5)
    for i, sigma in enumerate(base):
        g = np.exp(-(x * x + y * y) / (2 * sigma ** 2))
        bank[36 + i] = g / g.sum()
        bank[40 + i] = _normalise(_log_kernel(size, sigma))
        bank[44 + i] = _normalise(_log_kernel(size, 3 * sigma))
    return bank


def leung_malik_names():
    """Short labels of the 48 LM filters, in `leung_malik`'s order."""
    names = []
    for kind in ("d1", "d2"):
        for s in (1, 2, 3):
            for o in range(6):
                names.append(f"{kind} s{s} {30 * o}°")
    names += [f"G s{i}" for i in (1, 2, 3, 4)]
    names += [f"LoG s{i}" for i in (1, 2, 3, 4)]
    names += [f"LoG 3s{i}" for i in (1, 2, 3, 4)]
    return names


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def sample_image_path():
    """The bundled 256x171 sample photo (scikit-learn's china.jpg, CC BY 2.0)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sample.png")


def load_image(path=None, max_size=None):
    """An image file (PNG, JPEG, anything Pillow reads) as grayscale float32 (H, W) in
    [0, 1]; the bundled sample when ``path`` is None. ``max_size`` downsizes the longer side."""
    from PIL import Image, UnidentifiedImageError
    path = sample_image_path() if path is None else os.fspath(path)
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if max_size and max(im.size) > max_size:
                scale = max_size / max(im.size)
                im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                               Image.LANCZOS)
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read {path} as an image: {exc}") from None


def apply_bank(image, weight, algorithm="auto"):
    """Responses of a (K, 1, S, S) bank to a (H, W) image: one `fastconv.conv2d` call with
    padding='same'. Returns (K, H, W)."""
    from . import api
    image = np.asarray(image, dtype=weight.dtype)
    return api.conv2d(image[None, None], weight, padding="same", algorithm=algorithm)[0]


# --------------------------------------------------------------------------
# Pictures and CLI
# --------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _grid(images, titles, path, suptitle, cols, cmaps, cell=2.0):
    plt = _plt()
    rows = math.ceil(len(images) / cols)
    h, w = images[0].shape
    aspect = h / w
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * aspect * rows + 0.35 * rows + 0.6),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            img = images[i]
            cmap = cmaps[i] if isinstance(cmaps, (list, tuple)) else cmaps
            if cmap == "RdBu_r":
                lim = float(np.percentile(np.abs(img), 99.5)) or float(np.abs(img).max()) or 1.0
                ax.imshow(img, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The widest LM filter, the LoG at sigma 3 * sqrt(2)^4 = 12, is negligible beyond 3 sigma
# (a 73x73 support); 101 leaves room to spare, and far larger sizes only cost memory
# (48 * size^2 doubles: 3.8 TB for size 100001) and conv2d time.
LM_MAX_SIZE = 101


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastconv filters",
                                description="Apply classic kernels and the Leung-Malik filter "
                                            "bank to an image with fastconv.conv2d; save grids.")
    p.add_argument("image", nargs="?", default=None,
                   help="PNG/JPEG to filter (grayscale); default: the bundled sample photo")
    p.add_argument("--out", default="fastconv-filters", help="output folder (default ./fastconv-filters/)")
    p.add_argument("--max-size", type=int, default=256,
                   help="downsize the image's longer side to this many pixels (default 256)")
    p.add_argument("--lm-size", type=int, default=49,
                   help=f"Leung-Malik filter size (odd, 3..{LM_MAX_SIZE}, default 49)")
    args = p.parse_args(argv)
    if not (3 <= args.lm_size <= LM_MAX_SIZE and args.lm_size % 2):
        p.error(f"--lm-size must be an odd int in 3..{LM_MAX_SIZE}, got {args.lm_size}")
    return args


def main(argv=None) -> int:
    """CLI entry: ``fastconv.filters.main([IMAGE, "--out", DIR])``. Writes
    ``classic.png`` (classic kernels' responses), ``lm_bank.png`` (the 48 LM filters) and
    ``lm_responses.png`` (their responses)."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.max_size < 8:
        raise SystemExit(f"--max-size must be >= 8, got {args.max_size}")
    try:
        image = load_image(args.image, args.max_size)
        lm = leung_malik(args.lm_size)
    except ValueError as exc:
        raise SystemExit(f"fastconv filters: {exc}") from None
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"fastconv filters: cannot create --out {args.out}: {exc.strerror or exc}") from None
    source = args.image or f"bundled sample ({sample_image_path()})"
    print(f"image: {source}, {image.shape[1]}x{image.shape[0]} grayscale")

    bank = classic_bank()
    # Zero padding is a step from the image to 0 at the border; filtering the
    # mean-free image keeps that step (and its border response) small.
    centred = image - image.mean()
    t0 = time.perf_counter()
    classic = apply_bank(centred, stack(bank.values()))
    t_classic = time.perf_counter() - t0
    images = [image] + list(classic)
    titles = ["input"] + list(bank)
    cmaps = ["gray"] + ["gray" if name.startswith(("gaussian", "sharpen", "box", "emboss"))
                        else "RdBu_r" for name in bank]
    paths = {"classic": os.path.join(args.out, "classic.png"),
             "lm_bank": os.path.join(args.out, "lm_bank.png"),
             "lm_responses": os.path.join(args.out, "lm_responses.png")}
    _grid(images, titles, paths["classic"], "classic kernels (fastconv.conv2d, padding='same')",
          cols=5, cmaps=cmaps, cell=2.6)
    print(f"classic: {len(bank)} kernels in one conv2d call, {t_classic:.2f} s -> {paths['classic']}")

    names = leung_malik_names()
    _grid(list(lm), names, paths["lm_bank"], f"Leung-Malik filter bank (48 filters, {args.lm_size}x{args.lm_size})",
          cols=12, cmaps="RdBu_r", cell=1.2)
    t0 = time.perf_counter()
    responses = apply_bank(centred, lm[:, None].astype(np.float32))
    t_lm = time.perf_counter() - t0
    _grid(list(responses), names, paths["lm_responses"],
          "Leung-Malik responses (one fastconv.conv2d call, 48 output channels)",
          cols=8, cmaps=["RdBu_r"] * 36 + ["gray"] * 4 + ["RdBu_r"] * 8, cell=1.8)
    print(f"Leung-Malik: 48 filters in one conv2d call, {t_lm:.2f} s -> {paths['lm_responses']}")
    print(f"pictures in {os.path.abspath(args.out)}{os.sep}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
