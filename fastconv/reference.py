"""Float64 NumPy references of every operator, written for a reader, not for speed.

Each function takes NumPy arrays and the *normalised* geometry that
`fastconv.shapes` produces (stride/dilation/kernel_size as (h, w), padding as
(top, bottom, left, right)), works in float64, and returns float64. The tests
hold every kernel, on every device, to these.

Conventions: x is (N, C, H, W); weight is (K, C // groups, kH, kW);
out[n, k, i, j] is indexed by output row i and column j.
"""
from __future__ import annotations

import numpy as np

from .shapes import output_size


def _pad(x, padding, value=0.0):
    top, bottom, left, right = padding
    return np.pad(np.asarray(x, dtype=np.float64),
                  ((0, 0), (0, 0), (top, bottom), (left, right)),
                  constant_values=value)


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0),
           dilation=(1, 1), groups=1):
    """Cross-correlation, exactly `torch.nn.functional.conv2d`.

        out[n, k, i, j] = bias[k] + sum_{c, p, q} w[k, c, p, q] *
                          xpad[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw]

    where g = k // (K // groups) is k's group and Cg = C // groups.
    """
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    out_h, out_w = output_size((h, w), (kh, kw), stride, padding, dilation)
    xp = _pad(x, padding)
    wt = np.asarray(weight, dtype=np.float64)
    out = np.zeros((n, k, out_h, out_w))
    kg = k // groups
    sh, sw = stride
    dh, dw = dilation
    for g in range(groups):
        x_g = xp[:, g * cg:(g + 1) * cg]
        w_g = wt[g * kg:(g + 1) * kg]
        for p in range(kh):
            for q in range(kw):
                # The input pixels that kernel offset (p, q) sees, for every output.
                window = x_g[:, :, p * dh: p * dh + sh * (out_h - 1) + 1: sh,
                             q * dw: q * dw + sw * (out_w - 1) + 1: sw]
                out[:, g * kg:(g + 1) * kg] += np.einsum(
                    "nchw,kc->nkhw", window, w_g[:, :, p, q])
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


def conv2d_grad_input(grad_out, weight, input_shape, stride=(1, 1),
                      padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Gradient of `conv2d` with respect to x: the adjoint of the forward sum.

        grad_xpad[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw] += w[k, c, p, q] * grad_out[n, k, i, j]

    then the padding is cropped away.
    """
    n, c, h, w = input_shape
    k, cg, kh, kw = weight.shape
    top, bottom, left, right = padding
    go = np.asarray(grad_out, dtype=np.float64)
    wt = np.asarray(weight, dtype=np.float64)
    out_h, out_w = go.shape[2:]
    grad_xp = np.zeros((n, c, h + top + bottom, w + left + right))
    kg = k // groups
    sh, sw = stride
    dh, dw = dilation
    for g in range(groups):
        go_g = go[:, g * kg:(g + 1) * kg]
        w_g = wt[g * kg:(g + 1) * kg]
        for p in range(kh):
            for q in range(kw):
                grad_xp[:, g * cg:(g + 1) * cg,
                        p * dh: p * dh + sh * (out_h - 1) + 1: sh,
                        q * dw: q * dw + sw * (out_w - 1) + 1: sw] += np.einsum(
                    "nkhw,kc->nchw", go_g, w_g[:, :, p, q])
    return grad_xp[:, :, top:top + h, left:left + w]


def conv2d_grad_weight(grad_out, x, weight_shape, stride=(1, 1),
                       padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Gradient of `conv2d` with respect to the weight.

        grad_w[k, c, p, q] = sum_{n, i, j} grad_out[n, k, i, j] *
                             xpad[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw]
    """
    k, cg, kh, kw = weight_shape
    xp = _pad(x, padding)
    go = np.asarray(grad_out, dtype=np.float64)
    out_h, out_w = go.shape[2:]
    grad_w = np.zeros(weight_shape)
    kg = k // groups
    sh, sw = stride
    dh, dw = dilation
    for g in range(groups):
        x_g = xp[:, g * cg:(g + 1) * cg]
        go_g = go[:, g * kg:(g + 1) * kg]
        for p in range(kh):
            for q in range(kw):
                window = x_g[:, :, p * dh: p * dh + sh * (out_h - 1) + 1: sh,
                             q * dw: q * dw + sw * (out_w - 1) + 1: sw]
                grad_w[g * kg:(g + 1) * kg, :, p, q] = np.einsum(
                    "nkhw,nchw->kc", go_g, window)
    return grad_w


def conv2d_grad_bias(grad_out):
    """grad_bias[k] = sum_{n, i, j} grad_out[n, k, i, j]."""
    return np.asarray(grad_out, dtype=np.float64).sum(axis=(0, 2, 3))


def _windows(h, w, kernel_size, stride, padding, dilation, out_hw):
    """Yield (i, j, rows, cols): each output position and the input rows/cols
    (possibly outside [0, H) x [0, W), i.e. in the padding or beyond) it covers,
    in row-major window order."""
    kh, kw = kernel_size
    sh, sw = stride
    dh, dw = dilation
    top, _, left, _ = padding
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            rows = [i * sh - top + p * dh for p in range(kh)]
            cols = [j * sw - left + q * dw for q in range(kw)]
            yield i, j, rows, cols


def max_pool2d(x, kernel_size, stride, padding=(0, 0, 0, 0), dilation=(1, 1),
               ceil_mode=False):
    """Max pooling with PyTorch's rules. Returns (values, indices).

        out[n, c, i, j] = max over the window's in-bounds x[n, c, r, s]
        (padding is -inf), indices[n, c, i, j] = r * W + s of the winner.

    A NaN wins (with several, the last in row-major window order, as PyTorch's
    `val > max || isnan(val)`); among equal maxima the first in row-major window
    order wins. A window wholly in the padding
    (possible with dilation) gives -inf and index -1.
    """
    n, c, h, w = x.shape
    out_hw = output_size((h, w), kernel_size, stride, padding, dilation, ceil_mode)
    xd = np.asarray(x, dtype=np.float64)
    values = np.empty((n, c) + out_hw)
    indices = np.empty((n, c) + out_hw, dtype=np.int64)
    for i, j, rows, cols in _windows(h, w, kernel_size, stride, padding, dilation, out_hw):
        best = np.full((n, c), -np.inf)
        best_index = np.full((n, c), -1, dtype=np.int64)
        for r in rows:
            for s in cols:
                if not (0 <= r < h and 0 <= s < w):
                    continue
                v = xd[:, :, r, s]
                # Strictly greater keeps the first maximum; a NaN replaces
                # anything, an earlier NaN included (PyTorch's rule).
                take = (v > best) | np.isnan(v)
                take |= best_index < 0
                best = np.where(take, v, best)
                best_index = np.where(take, r * w + s, best_index)
        values[:, :, i, j] = best
        indices[:, :, i, j] = best_index
    return values, indices


def max_pool2d_backward(grad_out, x, kernel_size, stride, padding=(0, 0, 0, 0),
                        dilation=(1, 1), ceil_mode=False):
    """grad_x[n, c, r, s] = sum of grad_out over the windows whose winner is (r, s)."""
    n, c, h, w = x.shape
    _, indices = max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    grad_x = np.zeros((n, c, h * w))
    planes = indices.shape[:2] + (indices.shape[2] * indices.shape[3],)  # no -1: N may be 0
    go = np.asarray(grad_out, dtype=np.float64).reshape(planes)
    flat = indices.reshape(planes)
    for a in range(n):
        for b in range(c):
            won = flat[a, b] >= 0  # a window wholly in the padding has no winner (-1)
            np.add.at(grad_x[a, b], flat[a, b][won], go[a, b][won])
    return grad_x.reshape(n, c, h, w)


def _avg_divisors(h, w, kernel_size, stride, padding, out_hw, count_include_pad,
                  divisor_override):
    """Per-output divisor and the clipped window bounds, PyTorch's rule:

        hstart = i*sh - top; hend = min(hstart + kh, H + bottom)
        pool = (hend - hstart) * (wend - wstart)      # window inside the padded input
        then clip hstart/hend to [0, H) and wstart/wend to [0, W)
        divisor = divisor_override or (pool if count_include_pad else clipped size)
    """
    kh, kw = kernel_size
    sh, sw = stride
    top, bottom, left, right = padding
    result = {}
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            hstart, wstart = i * sh - top, j * sw - left
            hend, wend = min(hstart + kh, h + bottom), min(wstart + kw, w + right)
            pool = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, h), min(wend, w)
            if divisor_override:
                divisor = divisor_override
            elif count_include_pad:
                divisor = pool
            else:
                divisor = (hend - hstart) * (wend - wstart)
            result[i, j] = (hstart, hend, wstart, wend, divisor)
    return result


def avg_pool2d(x, kernel_size, stride, padding=(0, 0, 0, 0), ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Average pooling, `torch.nn.functional.avg_pool2d`:
    out[n, c, i, j] = sum of x over the clipped window / divisor (see `_avg_divisors`)."""
    n, c, h, w = x.shape
    out_hw = output_size((h, w), kernel_size, stride, padding, (1, 1), ceil_mode)
    xd = np.asarray(x, dtype=np.float64)
    out = np.zeros((n, c) + out_hw)
    windows = _avg_divisors(h, w, kernel_size, stride, padding, out_hw,
                            count_include_pad, divisor_override)
    for (i, j), (h0, h1, w0, w1, divisor) in windows.items():
        out[:, :, i, j] = xd[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / divisor
    return out


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride,
                        padding=(0, 0, 0, 0), ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """grad_x[n, c, r, s] = sum over windows covering (r, s) of grad_out / divisor."""
    n, c, h, w = input_shape
    go = np.asarray(grad_out, dtype=np.float64)
    grad_x = np.zeros((n, c, h, w))
    windows = _avg_divisors(h, w, kernel_size, stride, padding, go.shape[2:],
                            count_include_pad, divisor_override)
    for (i, j), (h0, h1, w0, w1, divisor) in windows.items():
        grad_x[:, :, h0:h1, w0:w1] += (go[:, :, i, j] / divisor)[:, :, None, None]
    return grad_x


def relu(x):
    """max(x, 0); NaN stays NaN (as torch.relu)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, np.where(np.isnan(x), x, 0.0))


def relu_backward(grad_out, x):
    """0 where x <= 0, else grad_out: where x is NaN the gradient passes (as torch's
    threshold_backward, which tests `x <= 0`)."""
    return np.where(np.asarray(x) <= 0, 0.0, np.asarray(grad_out, dtype=np.float64))


def _transposed_padded_grad(grad_out, in_hw, weight_hw, stride, padding, dilation):
    """grad_out placed in the padded output frame of `conv_transpose2d`, big enough
    for every tap: row r of the frame is output row r - top."""
    top, _, left, _ = padding
    (h, w), (kh, kw) = in_hw, weight_hw
    rows = max(top + grad_out.shape[2], (h - 1) * stride[0] + (kh - 1) * dilation[0] + 1)
    cols = max(left + grad_out.shape[3], (w - 1) * stride[1] + (kw - 1) * dilation[1] + 1)
    frame = np.zeros(grad_out.shape[:2] + (rows, cols))
    frame[:, :, top:top + grad_out.shape[2], left:left + grad_out.shape[3]] = grad_out
    return frame


def conv_transpose2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0),
                     output_padding=(0, 0), dilation=(1, 1), groups=1):
    """Transposed convolution, exactly `torch.nn.functional.conv_transpose2d`: each input
    pixel scatters its weighted kernel into the output.

        out[n, g*Og + o, i*sh - top + p*dh, j*sw - left + q*dw] +=
            x[n, g*Cg + c, i, j] * w[g*Cg + c, o, p, q]

    with weight (C_in, C_out // groups, kH, kW), Cg = C_in // groups, Og = C_out // groups;
    out is (H - 1)*sh - top - bottom + dh*(kH - 1) + output_padding + 1 rows high.
    """
    n, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    top, bottom, left, right = padding
    out_h = (h - 1) * stride[0] - top - bottom + dilation[0] * (kh - 1) + output_padding[0] + 1
    out_w = (w - 1) * stride[1] - left - right + dilation[1] * (kw - 1) + output_padding[1] + 1
    xd = np.asarray(x, dtype=np.float64)
    wt = np.asarray(weight, dtype=np.float64)
    frame = _transposed_padded_grad(np.zeros((n, og * groups, out_h, out_w)), (h, w),
                                    (kh, kw), stride, padding, dilation)
    cg = c // groups
    sh, sw = stride
    dh, dw = dilation
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                frame[:, g * og:(g + 1) * og, p * dh: p * dh + sh * (h - 1) + 1: sh,
                      q * dw: q * dw + sw * (w - 1) + 1: sw] += np.einsum(
                    "nchw,co->nohw", xd[:, g * cg:(g + 1) * cg],
                    wt[g * cg:(g + 1) * cg, :, p, q])
    out = frame[:, :, top:top + out_h, left:left + out_w]
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


def conv_transpose2d_grad_input(grad_out, weight, input_shape, stride=(1, 1),
                                padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Gradient of `conv_transpose2d` with respect to x: each input pixel gathers what it
    scattered.

        grad_x[n, g*Cg + c, i, j] = sum_{o, p, q} w[g*Cg + c, o, p, q] *
                                    grad_out[n, g*Og + o, i*sh - top + p*dh, j*sw - left + q*dw]

    (terms outside the output count zero).
    """
    n, c, h, w = input_shape
    _, og, kh, kw = weight.shape
    frame = _transposed_padded_grad(np.asarray(grad_out, dtype=np.float64), (h, w),
                                    (kh, kw), stride, padding, dilation)
    wt = np.asarray(weight, dtype=np.float64)
    grad_x = np.zeros((n, c, h, w))
    cg = c // groups
    sh, sw = stride
    dh, dw = dilation
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                window = frame[:, g * og:(g + 1) * og, p * dh: p * dh + sh * (h - 1) + 1: sh,
                               q * dw: q * dw + sw * (w - 1) + 1: sw]
                grad_x[:, g * cg:(g + 1) * cg] += np.einsum(
                    "nohw,co->nchw", window, wt[g * cg:(g + 1) * cg, :, p, q])
    return grad_x


def conv_transpose2d_grad_weight(grad_out, x, weight_shape, stride=(1, 1),
                                 padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Gradient of `conv_transpose2d` with respect to the weight.

        grad_w[g*Cg + c, o, p, q] = sum_{n, i, j} x[n, g*Cg + c, i, j] *
                                    grad_out[n, g*Og + o, i*sh - top + p*dh, j*sw - left + q*dw]
    """
    _, og, kh, kw = weight_shape
    n, c, h, w = x.shape
    frame = _transposed_padded_grad(np.asarray(grad_out, dtype=np.float64), (h, w),
                                    (kh, kw), stride, padding, dilation)
    xd = np.asarray(x, dtype=np.float64)
    grad_w = np.zeros(weight_shape)
    cg = c // groups
    sh, sw = stride
    dh, dw = dilation
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                window = frame[:, g * og:(g + 1) * og, p * dh: p * dh + sh * (h - 1) + 1: sh,
                               q * dw: q * dw + sw * (w - 1) + 1: sw]
                grad_w[g * cg:(g + 1) * cg, :, p, q] = np.einsum(
                    "nchw,nohw->co", xd[:, g * cg:(g + 1) * cg], window)
    return grad_w
