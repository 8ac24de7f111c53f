"""Winograd F(m x m, r x r), device-neutral: the transform matrices, how much they
magnify values, and the rule by which `algorithm="auto"` may use them.

Both backends (`fastconv.cpu.winograd`, `fastconv.cuda.winograd`) build their
transforms from `winograd_matrices`; the API asks `winograd_safe` before `auto` runs
Winograd. Nothing here compiles a kernel at import.

1-D correlation of m outputs with an r-tap filter, from alpha = m + r - 1 inputs d:

    y[i] = sum_k g[k] d[i + k] = A^T [ (G g) * (B^T d) ]        (* elementwise)

and in 2-D, per m x m output tile and alpha x alpha input tile,
Y = A^T [ (G g G^T) * (B^T d B) ] A.

Accuracy and range (docs/reliability.md, "Winograd"): the transforms multiply and add
an input tile with coefficients up to 5 (F(4x4,3x3)) or 160 (F(4x4,5x5)), so an
intermediate value can be far larger than any input or output (`growth`), and the
rounding error of an output grows with the largest value of its whole input tile, not
only with the values under its kernel. `winograd_safe` bounds both from one pass over
the operands.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

# `auto` takes Winograd only while growth().position x (max / mean |value|), the most
# one value can add to an output's error in units of im2col's, stays within this:
# see `winograd_safe`; docs/reliability.md ("Winograd") has what it guarantees.
ERROR_LIMIT = 2.0 ** 14
# ... and while every intermediate value stays this far below the dtype's largest
# finite value (room for the bias, and for rounding, which the bounds leave out).
OVERFLOW_MARGIN = 16.0
OPERATIONS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")


# --------------------------------------------------------------------------
# transform matrices, built exactly from the interpolation points
# --------------------------------------------------------------------------

def _points(count):
    """0, 1, -1, 2, -2, 1/2, -1/2, ...: small points keep the transforms accurate."""
    candidates = [Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2),
                  Fraction(1, 2), Fraction(-1, 2), Fraction(3), Fraction(-3)]
    if count > len(candidates):
        raise ValueError(f"no Winograd points for {count} finite points")
    return candidates[:count]


def _evaluation(points, n):
    """(alpha x n): row j evaluates a polynomial with n coefficients at point j;
    the last row, the point at infinity, picks its leading coefficient."""
    rows = [[p ** i for i in range(n)] for p in points]
    rows.append([Fraction(int(i == n - 1)) for i in range(n)])
    return rows


def _inverse(matrix):
    """Exact inverse of a small square matrix of Fractions (Gauss-Jordan)."""
    n = len(matrix)
    work = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if work[r][col] != 0)
        work[col], work[pivot] = work[pivot], work[col]
        scale = work[col][col]
        work[col] = [v / scale for v in work[col]]
        for r in range(n):
            if r != col and work[r][col] != 0:
                factor = work[r][col]
                work[r] = [a - factor * b for a, b in zip(work[r], work[col])]
    return [row[n:] for row in work]


def _lcm(values):
    result = 1
    for v in values:
        result = result * v // np.gcd(result, v)
    return result


@lru_cache(maxsize=None)
def _matrices(m, r):
    alpha = m + r - 1
    points = _points(alpha - 1)
    G = _evaluation(points, r)
    AT = [list(col) for col in zip(*_evaluation(points, m))]
    BT = [list(col) for col in zip(*_inverse(_evaluation(points, alpha)))]
    for j, row in enumerate(BT):
        scale = _lcm([v.denominator for v in row])
        BT[j] = [v * scale for v in row]
        G[j] = [v / scale for v in G[j]]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (AT, G, BT))


def winograd_matrices(m, r=3):
    """(A^T, G, B^T) of F(m, r) as float64 arrays of shapes (m, a), (a, r), (a, a),
    a = m + r - 1: 1-D correlation y[i] = sum_k g[k] d[i + k] = A^T [(G g) * (B^T d)].

    Toom-Cook: a linear convolution is c = C [(G g) * (H h)] with G, H the
    evaluations at the points `_points(a - 1)` and infinity and C = inverse of the
    a x a evaluation (the interpolation); correlation is its transpose,
    A^T = H^T and B^T = C^T. Each row of B^T is scaled to integers (its
    factor moved into G), so the input transform adds and multiplies exactly.
    Returns fresh copies (the cached originals stay unchanged).

    >>> from fastconv.winograd_transforms import winograd_matrices
    >>> AT, G, BT = winograd_matrices(2, 3)        # F(2, 3)
    >>> AT.shape, G.shape, BT.shape
    ((2, 4), (4, 3), (4, 4))
    """
    m, r = int(m), int(r)
    if m < 1 or r < 1:
        raise ValueError(f"F(m, r) needs m >= 1 and r >= 1, got m={m!r}, r={r!r}")
    return tuple(mat.copy() for mat in _matrices(m, r))


# --------------------------------------------------------------------------
# magnification
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Growth:
    """How far F(m, r)'s intermediate values and errors can exceed their operands.

    With X = the largest |value| of the tiled operand and W = the largest sum over
    the reduced channels of the filters' 1-norms (sum_c ||w[k, c]||_1):
    input: |B^T d B| <= input * X;  filter: |G w G^T| <= filter * ||w[k, c]||_1;
    product: |sum_c U V| <= product * X * W; output_rows (A^T M) and output
    (A^T M A) <= output_rows, output * X * W: every value a call computes.
    Rounding errors (u the dtype's unit roundoff): an output's error is at most
    u * W * sum over its input tile of c(x, y) |d[x, y]|, where c <= `position` for
    every position; im2col's is u * W * (the mean |value| under its kernel). So one
    value v adds at most u * position * |v| * W to any output of its tile.
    """
    input: float
    filter: float
    product: float
    output_rows: float
    output: float
    position: float


@lru_cache(maxsize=None)
def growth(m, r):
    """The `Growth` of F(m x m, r x r), from its matrices.

    >>> from fastconv.winograd_transforms import growth
    >>> growth(4, 3).input                       # B^T's largest row has |4| + |5| + |1|
    100.0
    """
    AT, G, BT = (np.abs(mat) for mat in _matrices(int(m), int(r)))
    b_row = BT.sum(axis=1)                    # |(B^T d)[a]| <= b_row[a] * max|d|
    g_row = G.max(axis=1)                     # |(G g)[a]| <= g_row[a] * ||g||_1
    product = np.outer(g_row, g_row) * np.outer(b_row, b_row)     # per tile element
    # value d[x, y] reaches output (i, j) through tile element (a, b) with weight
    # |A^T[i, a] A^T[j, b]| * filter bound * |B^T[a, x] B^T[b, y]|
    reach = AT[:, :, None] * BT[None, :, :]                        # (i, a, x)
    position = np.einsum("iax,jby,ab->ijxy", reach, reach, np.outer(g_row, g_row))
    return Growth(input=float(np.outer(b_row, b_row).max()),
                  filter=float(np.outer(g_row, g_row).max()),
                  product=float(product.max()),
                  output_rows=float((AT @ product).max()),
                  output=float((AT @ product @ AT.T).max()),
                  position=float(position.max()))


# --------------------------------------------------------------------------
# the rule for `auto`
# --------------------------------------------------------------------------

def _transform_of(operation, tile, r):
    """(m, r) of the transform `operation` runs: the forward and grad_input F(tile, r);
    the weight gradient F(r, tile), filter and output swapped."""
    return (r, tile) if operation == "conv2d_grad_weight" else (tile, r)


def _range(stats):
    """max |value| / mean |nonzero value| per image, the largest over the batch (1 for
    images of zeros): how far the largest value stands above the typical one."""
    peak, total, count = stats
    peak_n = peak.max(axis=1).astype(np.float64)
    count_n = np.maximum(count.sum(axis=1), 1)
    # a sum beyond float64 (values near its largest) makes the mean a lower bound
    mean_n = np.minimum(total.sum(axis=1), np.finfo(np.float64).max) / count_n
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(peak_n > 0, peak_n / mean_n, 1.0)
    return float(ratio.max(initial=1.0))


_weight_stats = OrderedDict()     # id -> (weakref to the array, sample, operand_stats)
_weight_stats_lock = threading.Lock()
WEIGHT_STATS_KEPT = 16


def _weight_rows(weight, rows):
    """rows(weight), measured once for weights that repeat: reused while the same
    C-contiguous array object holds the sampled values it held when measured (the test
    by which the Winograd filter cache keeps a transformed filter), so an inference call
    does not pass over its weights again. A new array is always measured, even at a
    freed one's address."""
    if not weight.flags.c_contiguous:
        return rows(weight)
    from .cpu.winograd_cache import _sample
    key = id(weight)
    sample = _sample(weight)
    with _weight_stats_lock:
        entry = _weight_stats.get(key)
    if entry is not None and entry[0]() is weight and np.array_equal(entry[1], sample):
        return entry[2]
    stats = rows(weight)
    with _weight_stats_lock:
        _weight_stats[key] = (weakref.ref(weight), sample, stats)
        _weight_stats.move_to_end(key)
        while len(_weight_stats) > WEIGHT_STATS_KEPT:
            _weight_stats.popitem(last=False)
    return stats


def winograd_safe(operation, data, other, tile, kernel_hw):
    """(ok, reason): whether `algorithm="auto"` may run Winograd on these operands.

    operation: "conv2d" (data = x, other = weight), "conv2d_grad_input" (grad_out,
    weight) or "conv2d_grad_weight" (grad_out, x); tile: the output tile m of
    F(m x m, r x r) (the weight gradient runs F(r x r, m x m)); kernel_hw: (r, r).

    One pass over each operand (per image and channel: the largest |value|, the sum of
    |values| and the count of nonzeros; `fastconv.cpu.operand_stats`) decides three
    things, in this order:

    1. finite: a NaN or Inf spreads over a whole tile (PyTorch's outputs stay finite);
    2. no overflow: every intermediate value is bounded by `growth` times the
       operands' largest values (X, W); all must stay below finfo.max / OVERFLOW_MARGIN;
    3. accuracy: one value v adds at most u * position * |v| * W to the rounding error
       of every output of its tile, also outside v's window, where im2col's error
       on an output is about u * W * (the mean |value| under its kernel). With
       rho = max|x| / mean|x| (per image, nonzero values; the tiled operand, both
       operands for the weight gradient), one value adds at most position * rho
       times im2col's error on a typical output: that must stay within
       ERROR_LIMIT (rho <= 144 for F(4x4,3x3), 76 for F(4x4,5x5)). Ordinary data
       (Gaussian, ReLU'd, images, Laplace) has rho of 2-15; one value of 1e3 among
       unit values has rho ~1e3.

    Otherwise `auto` takes im2col. Device (CUDA) arrays are not inspected: (True, ...)
    as before, docs/reliability.md says what that leaves open.

    >>> import numpy as np
    >>> from fastconv.winograd_transforms import winograd_safe
    >>> x = np.ones((1, 16, 8, 8), np.float32); w = np.ones((16, 16, 3, 3), np.float32)
    >>> winograd_safe("conv2d", x, w, 4, (3, 3))[0]
    True
    >>> x[0, 0, 0, 0] = 1e6
    >>> winograd_safe("conv2d", x, w, 4, (3, 3))[1].split(":")[0]
    'dynamic range 1.02e+03 (max / mean |value|)'
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
    if not (isinstance(data, np.ndarray) and isinstance(other, np.ndarray)):
        return True, "device arrays are not inspected"
    from .cpu.operand_stats import operand_stats
    r = int(kernel_hw[0])
    m, taps = _transform_of(operation, int(tile), r)
    g = growth(m, taps)
    # long rows: images whole (a 3-D (C, H, W) one is one image), a weight per output
    # channel k; the weight gradient's grad_out per (image, channel), for its sums per k
    def rows(array, per_channel=False):
        array = array[None] if array.ndim == 3 else array
        if not per_channel:
            array = array.reshape(array.shape[0], 1, int(np.prod(array.shape[1:])))
        return operand_stats(array)

    weight_gradient = operation == "conv2d_grad_weight"
    first = rows(data, per_channel=weight_gradient)
    second = rows(other) if weight_gradient else _weight_rows(other, rows)
    names = {"conv2d": ("x", "weight"), "conv2d_grad_input": ("grad_out", "weight"),
             "conv2d_grad_weight": ("grad_out", "x")}[operation]
    for name, (peak, total, _) in zip(names, (first, second)):
        if np.isnan(total).any() or np.isinf(peak).any():
            return False, f"{name} is not finite"
    biggest = float(np.finfo(data.dtype).max) / OVERFLOW_MARGIN
    if operation == "conv2d_grad_weight":
        # tiled: x (input transform) and grad_out, whose m x m tiles are the "filters";
        # the product sums over all tiles: W = the largest sum_{n,h,w} |grad_out[:, k]|
        x_peak = float(second[0].max(initial=0))
        filter_norm = float(first[0].max(initial=0)) * tile * tile
        reduced = float(first[1].sum(axis=0).max(initial=0))
        rho = max(_range(first), _range(second))
    else:
        # W: the forward reduces sum_c ||w[k, c]||_1 (the row sums); grad_input's
        # rotated kernel reduces over k instead, bounded by K r^2 max|w| (as is each
        # filter's ||w[k, c]||_1 by r^2 max|w|)
        k_out = other.shape[0]
        w_peak = float(second[0].max(initial=0))
        row_sums = second[1][:, 0]
        x_peak = float(first[0].max(initial=0))
        filter_norm = min(r * r * w_peak, float(row_sums.max(initial=0)))
        if operation == "conv2d_grad_input":
            reduced = min(k_out * r * r * w_peak, float(row_sums.sum()))
        else:
            reduced = float(row_sums.max(initial=0))
        rho = _range(first)
    largest = max(g.input * x_peak, g.filter * filter_norm,
                  max(g.product, g.output_rows, g.output) * x_peak * reduced)
    if not largest <= biggest:
        return False, (f"an intermediate value could reach {largest:.1e} > "
                       f"{biggest:.1e} (finfo.max / {OVERFLOW_MARGIN:g})")
    if not g.position * rho <= ERROR_LIMIT:
        return False, (f"dynamic range {rho:.3g} (max / mean |value|): one value's error "
                       f"up to {g.position * rho:.3g} x im2col's > {ERROR_LIMIT:g}")
    return True, f"finite, no overflow, dynamic range {rho:.1f}"
