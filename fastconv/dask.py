"""fastconv on Dask: the operators and the filter banks over chunked `dask.array` arrays.

Every function takes a ``dask.array.Array`` and returns one, lazily; its blocks are
computed by the in-memory functions (``fastconv.conv2d`` and friends), so they run
wherever the blocks live: NumPy blocks on the CPU kernels, CuPy blocks on the CUDA
kernels. Any Dask scheduler runs the graph (threads, processes, ``dask.distributed``);
fastconv starts no workers of its own.

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> x = da.ones((4, 3, 64, 64), chunks=(2, 3, 24, 40), dtype=np.float32)
    >>> w = np.ones((8, 3, 3, 3), dtype=np.float32)
    >>> y = fcd.conv2d(x, w, stride=2, padding=1)
    >>> y.shape, y.chunks[2:]
    ((4, 8, 32, 32), ((12, 12, 8), (20, 12)))
    >>> float(y[0, 0, 5, 5].compute())
    27.0

How the work is split
---------------------
Inputs are NCHW (or 3-D ``(C, H, W)``), chunked on any axis with uneven chunks. Along
H and W the output chunks follow the input's: an output belongs to the chunk holding
its window's centre (so a stride-1 'same' filter keeps the input's chunks, and a
stride-s layer divides them by s). Each output block is computed once, by one
in-memory call on exactly the input rows and columns its windows read (the halo its
kernel size, dilation, stride and padding need, on each side separately), with the
block's share of the padding; the halos are sliced from the neighbouring blocks in
tasks of their own, so only they travel. The batch axis and (for pooling and ReLU)
the channel axis pass through. A convolution's channel chunks must each hold whole
groups (with ``groups=1``: all channels in one chunk). The weight (and bias) enters
the graph once per channel chunk as a key of its own, which every block of that
chunk references: a scheduler sends it to each worker once.

The results are those of the in-memory call on the same data: bitwise for pooling,
ReLU and ``algorithm="direct"``; im2col's GEMMs and Winograd's tiles round a block
differently from the whole image, and ``"auto"`` picks each block's algorithm from its
own shape, so those agree within fastconv's accuracy contract.

See docs/dask.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

# Absolute imports: this module is fastconv.dask, and `import dask` here is the
# top-level Dask package (Python 3 imports are absolute).
try:
    import dask.array as da
except ImportError as exc:
    raise ImportError(f"fastconv.dask needs Dask ({exc}): pip install 'fastconv[dask]'") from exc
from dask.array.core import concatenate3
from dask.array.utils import asarray_safe, meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
try:
    from dask.task_spec import DataNode, Task, TaskRef
except ImportError:       # Dask before the task spec was public (2025.1 to 2025.2)
    from dask._task_spec import DataNode, Task, TaskRef

from . import api, checks, filters, shapes
from .plan import ALGORITHMS

__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "relu", "apply_bank", "leung_malik",
           "classic_bank", "main"]


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def _check_dask(x, name, ndims, what):
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__}; for an "
            f"in-memory array call fastconv.{what} (or wrap it with dask.array.from_array)")
    if x.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    if any(math.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError(
            f"{name} has unknown chunk sizes {x.chunks}; call {name}.compute_chunk_sizes() first")
    checks.array_dtype(x.dtype, name, x)


def _is_device(meta) -> bool:
    return checks.is_device_array(meta)


def _concrete(obj, name, x):
    """A weight or bias: a NumPy or CUDA array (not a dask one), of x's dtype."""
    if obj is None:
        return None
    if isinstance(obj, da.Array):
        raise TypeError(
            f"{name} must be an in-memory array (NumPy or CuPy), got a dask array; "
            f"pass {name}.compute()")
    if _is_device(obj) and not _is_device(x._meta):
        raise TypeError(
            f"{name} is a CUDA array but x's blocks are {type(x._meta).__name__}; "
            "use a NumPy weight (or a CuPy-backed x)")
    return obj


# --------------------------------------------------------------------------
# Geometry: which input rows each output block reads
# --------------------------------------------------------------------------

def _axis_plan(in_chunks, size, out_size, kernel, stride, dilation, pad_before, pad_after,
               zero_padding=False):
    """Output blocks along one axis: (out_count, lo, hi, pad_lo, pad_hi) each, where
    input [lo, hi) plus pad_lo/pad_hi of padding is what the block's windows read
    (pad_hi drops a ceil-mode window's overhang past the padding, as the whole-array
    call does). With `zero_padding` (convolution) rows at the ends that no tap reads
    (large padding, sparse taps) are left out and padded instead, so [lo, hi) runs
    from the first row a tap reads to the last."""
    span = dilation * (kernel - 1) + 1
    centre = (span - 1) // 2
    bounds = np.cumsum((0,) + tuple(in_chunks))
    # an output goes to the input chunk holding its window's centre
    cuts = [min(max(-(-(int(b) + pad_before - centre) // stride), 0), out_size)
            for b in bounds[1:-1]]
    edges = sorted(set([0] + cuts + [out_size]))
    ranges = list(zip(edges[:-1], edges[1:]))

    def window(o0, o1):
        start = o0 * stride - pad_before          # input index of the first tap
        stop = (o1 - 1) * stride - pad_before + span
        if zero_padding:
            return (start, stop) + _rows_read(o0, o1, size, kernel, stride, dilation,
                                              pad_before)
        return start, stop, max(start, 0), min(stop, size)

    def reads_input(r):
        _, _, lo, hi = window(*r)
        return hi > lo

    # a block whose windows read no input (possible at the ends with large padding
    # or dilation) joins its neighbour
    while len(ranges) > 1 and not reads_input(ranges[0]):
        ranges[:2] = [(ranges[0][0], ranges[1][1])]
    while len(ranges) > 1 and not reads_input(ranges[-1]):
        ranges[-2:] = [(ranges[-2][0], ranges[-1][1])]
    plan = []
    for o0, o1 in ranges:
        start, stop, lo, hi = window(o0, o1)
        if hi <= lo:   # every window of the axis is in the padding: the whole-axis call
            plan.append((o1 - o0, 0, size, pad_before, pad_after))
            continue
        # zero padding may stand for rows no tap reads; pooling's padding may not
        pad_hi = stop - hi if zero_padding else min(stop - hi, pad_after)
        plan.append((o1 - o0, lo, hi, lo - start, pad_hi))
    return plan


def _rows_read(o0, o1, size, kernel, stride, dilation, pad_before):
    """[first, last + 1) of the input rows that taps of outputs [o0, o1) read."""
    first, last = size, -1
    for t in range(kernel):
        offset = t * dilation - pad_before
        lo_o, hi_o = shapes.valid_range(offset, stride, size, o1)  # outputs reading inside
        lo_o = max(lo_o, o0)
        if lo_o < hi_o:
            first = min(first, lo_o * stride + offset)
            last = max(last, (hi_o - 1) * stride + offset)
    return first, last + 1


def _pieces(bounds, lo, hi):
    """[(block index, slice within it)] covering input [lo, hi) along one axis."""
    out = []
    for i in range(len(bounds) - 1):
        b0, b1 = int(bounds[i]), int(bounds[i + 1])
        a, b = max(lo, b0), min(hi, b1)
        if b > a:
            out.append((i, slice(a - b0, b - b0), b1 - b0))
    return out


class _WindowGraph:
    """Builds the tasks that give each output block its exact input window."""

    def __init__(self, x, token):
        self.x = x
        self.halo_name = f"fastconv-halo-{token}"
        self.layer = {}
        self.hbounds = np.cumsum((0,) + x.chunks[2])
        self.wbounds = np.cumsum((0,) + x.chunks[3])

    def window(self, n, c, hplan, wplan, out_index):
        """Task refs of the pieces of input block row (n, c) that the window of
        hplan x wplan reads, and their layout (rows, cols)."""
        _, hlo, hhi, _, _ = hplan
        _, wlo, whi, _, _ = wplan
        hp = _pieces(self.hbounds, hlo, hhi)
        wp = _pieces(self.wbounds, wlo, whi)
        refs = []
        for ih, hs, hlen in hp:
            for iw, ws, wlen in wp:
                source = (self.x.name, n, c, ih, iw)
                if hs == slice(0, hlen) and ws == slice(0, wlen):
                    refs.append(TaskRef(source))
                    continue
                key = (self.halo_name, n, c, ih, iw) + out_index
                self.layer[key] = Task(key, _take, TaskRef(source),
                                       (slice(None), slice(None), hs, ws))
                refs.append(TaskRef(key))
        return refs, (len(hp), len(wp))


def _take(block, index):
    return block[index]


def _assemble(layout, pieces):
    """The window from its pieces (any array kind: Dask's concatenate dispatches)."""
    if len(pieces) == 1:
        return pieces[0]
    rows, cols = layout
    return concatenate3([[[pieces[r * cols:(r + 1) * cols] for r in range(rows)]]])


def _padding(hplan, wplan):
    return ((hplan[3], hplan[4]), (wplan[3], wplan[4]))


def _data_key(layer, name, value):
    """A key holding `value` once in the graph."""
    key = f"{name}-{tokenize(value)}"
    layer[key] = DataNode(key, value)
    return key


def _on_device_of(layer, key, meta):
    """The key as x's array kind: a NumPy weight for CuPy blocks moves to the device
    once, in one task, not in every block."""
    if key is None or not _is_device(meta):
        return key
    device_key = f"{key}-on-device"
    layer[device_key] = Task(device_key, asarray_safe, TaskRef(key), like=meta)
    return device_key


def _ref(key):
    return None if key is None else TaskRef(key)


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------

def _conv_block(layout, weight, bias, stride, padding, dilation, groups, algorithm, *pieces):
    return api.conv2d(_assemble(layout, pieces), weight, bias, stride, padding, dilation,
                      groups, algorithm)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           algorithm="auto"):
    """`fastconv.conv2d` over a dask array ``x`` (N, C_in, H, W) or (C_in, H, W).

    ``weight`` and ``bias`` are in-memory arrays (NumPy, or CuPy with a CuPy-backed
    ``x``; a NumPy weight is moved to the device once for CuPy blocks). The channel
    chunks of ``x`` must each hold whole groups. Returns a dask array (N, C_out,
    out_h, out_w) whose H/W chunks follow x's (see the module docstring).

    >>> import numpy as np, dask.array as da, fastconv as fc, fastconv.dask as fcd
    >>> x = da.from_array(np.arange(36.0).reshape(1, 1, 6, 6), chunks=(1, 1, 4, 2))
    >>> y = fcd.conv2d(x, np.ones((1, 1, 3, 3)), padding="same")
    >>> y.chunks
    ((1,), (1,), (4, 2), (2, 2, 2))
    >>> bool((y.compute() == fc.conv2d(x.compute(), np.ones((1, 1, 3, 3)), padding="same")).all())
    True
    """
    _check_dask(x, "x", (4, 3), "conv2d")
    squeeze = x.ndim == 3
    x4 = x[None] if squeeze else x
    weight = _concrete(weight, "weight", x)
    bias = _concrete(bias, "bias", x)
    arrays = api._Arrays(weight=weight, bias=bias)   # dtype, kind and shape checks
    w = arrays["weight"]
    if arrays.dtype != x.dtype:
        raise TypeError(f"arrays must share one dtype, got x is {x.dtype}, weight is "
                        f"{arrays.dtype}; cast them to float32 or float64 first")
    problem = api.conv_problem(x4.shape, tuple(w.shape), stride, padding, dilation, groups)
    if bias is not None and tuple(arrays["bias"].shape) != (w.shape[0],):
        raise ValueError(
            f"bias must have shape ({w.shape[0]},) to match weight's output channels, "
            f"got {tuple(arrays['bias'].shape)}")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "winograd":
        ok, why = api.winograd_supports(w.shape, problem.stride, problem.dilation)
        if not ok:
            raise ValueError(f"algorithm='winograd' is not available here: {why}")
    # the graph holds the caller's kind of array (CuPy stays CuPy), sliced per chunk
    w_source = weight if _is_device(weight) else np.asarray(weight)
    b_source = bias if bias is None or _is_device(bias) else np.asarray(bias)
    per_group = w.shape[1]
    out_per_group = w.shape[0] // problem.groups
    channel_bounds = np.cumsum((0,) + x4.chunks[1])
    if any(int(b) % per_group for b in channel_bounds):
        raise ValueError(
            f"x's channel chunks {x4.chunks[1]} split a convolution group: with "
            f"groups={problem.groups} every chunk must hold a multiple of {per_group} "
            f"channels; rechunk x, e.g. x.rechunk({{{x4.ndim - 3}: {x4.shape[1]}}})")

    token = tokenize("conv2d", x4.name, weight, bias, problem.geometry(), algorithm)
    name = f"fastconv-conv2d-{token}"
    (kh, kw), (sh, sw), (dh, dw) = w.shape[2:], problem.stride, problem.dilation
    top, bottom, left, right = problem.padding
    hplans = _axis_plan(x4.chunks[2], x4.shape[2], problem.out_hw[0], kh, sh, dh, top, bottom,
                        zero_padding=True)
    wplans = _axis_plan(x4.chunks[3], x4.shape[3], problem.out_hw[1], kw, sw, dw, left, right,
                        zero_padding=True)
    graph = _WindowGraph(x4, token)
    layer = graph.layer
    out_channel_chunks, channel_params = [], []
    for c, (c0, c1) in enumerate(zip(channel_bounds[:-1], channel_bounds[1:])):
        if c1 == c0:
            continue
        g0, g1 = int(c0) // per_group, int(c1) // per_group
        k0, k1 = g0 * out_per_group, g1 * out_per_group
        w_key = _on_device_of(layer, _data_key(layer, "fastconv-weight", w_source[k0:k1]),
                              x._meta)
        b_key = None if bias is None else _on_device_of(
            layer, _data_key(layer, "fastconv-bias", b_source[k0:k1]), x._meta)
        out_channel_chunks.append(k1 - k0)
        channel_params.append((c, w_key, b_key, g1 - g0))
    for n in range(len(x4.chunks[0])):
        for oc, (c, w_key, b_key, chunk_groups) in enumerate(channel_params):
            for oh, hplan in enumerate(hplans):
                for ow, wplan in enumerate(wplans):
                    key = (name, n, oc, oh, ow)
                    refs, layout = graph.window(n, c, hplan, wplan, (oh, ow))
                    layer[key] = Task(key, _conv_block, layout, TaskRef(w_key), _ref(b_key),
                                      problem.stride, _padding(hplan, wplan),
                                      problem.dilation, chunk_groups, algorithm, *refs)
    chunks = (x4.chunks[0], tuple(out_channel_chunks),
              tuple(p[0] for p in hplans), tuple(p[0] for p in wplans))
    out = _array(name, layer, x4, chunks, x4._meta)
    return out[0] if squeeze else out


def _array(name, layer, x, chunks, meta):
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    return da.Array(graph, name, chunks, meta=meta_from_array(meta, ndim=len(chunks)))


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

def _pool_graph(x, what, kernel_size, stride, padding, dilation, ceil_mode, block, params):
    """The graph of a pooling: every block is `block(window, local_padding, *params)`."""
    ceil_mode = checks.check_bool(ceil_mode, "ceil_mode")
    kernel_size, stride, padding, dilation, out_hw, _ = api._pool_problem(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    token = tokenize(what, x.name, kernel_size, stride, padding, dilation, ceil_mode, params)
    name = f"fastconv-{what}-{token}"
    top, bottom, left, right = padding
    hplans = _axis_plan(x.chunks[2], x.shape[2], out_hw[0], kernel_size[0], stride[0],
                        dilation[0], top, bottom)
    wplans = _axis_plan(x.chunks[3], x.shape[3], out_hw[1], kernel_size[1], stride[1],
                        dilation[1], left, right)
    graph = _WindowGraph(x, token)
    channels = [c for c, size in enumerate(x.chunks[1]) if size]   # empty chunks drop out
    for n in range(len(x.chunks[0])):
        for oc, c in enumerate(channels):
            for oh, hplan in enumerate(hplans):
                for ow, wplan in enumerate(wplans):
                    key = (name, n, oc, oh, ow)
                    refs, layout = graph.window(n, c, hplan, wplan, (oh, ow))
                    local = (kernel_size, stride, _padding(hplan, wplan), dilation, ceil_mode)
                    graph.layer[key] = Task(key, block, layout, local, hplan, wplan,
                                            params, *refs)
    chunks = (x.chunks[0], tuple(x.chunks[1][c] for c in channels), tuple(p[0] for p in hplans),
              tuple(p[0] for p in wplans))
    return name, graph.layer, chunks


def _max_pool_block(layout, local, hplan, wplan, params, *pieces):
    kernel_size, stride, padding, dilation, ceil_mode = local
    return_indices, width = params
    window = _assemble(layout, pieces)
    result = api.max_pool2d(window, kernel_size, stride, padding, dilation, ceil_mode,
                            return_indices)
    if not return_indices:
        return result
    values, local_indices = result
    # indices into the window -> indices h * W + w into the whole input plane
    window_width = wplan[2] - wplan[1]
    rows, cols = local_indices // window_width, local_indices % window_width
    indices = (rows + hplan[1]) * width + (cols + wplan[1])
    indices[local_indices < 0] = -1
    return values, indices


def _getitem(pair, i):
    return pair[i]


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """`fastconv.max_pool2d` over a dask array ``x`` (N, C, H, W), chunked on any axis.

    With ``return_indices=True`` returns (values, indices), two dask arrays from one
    set of tasks; the indices are ``h * W + w`` into the whole input plane, as in memory.

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> x = da.from_array(np.arange(16.0).reshape(1, 1, 4, 4), chunks=(1, 1, 3, 3))
    >>> fcd.max_pool2d(x, 2).compute()[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    _check_dask(x, "x", (4,), "max_pool2d")
    return_indices = checks.check_bool(return_indices, "return_indices")
    what = "max_pool2d_with_indices" if return_indices else "max_pool2d"
    name, layer, chunks = _pool_graph(x, what, kernel_size, stride, padding, dilation,
                                      ceil_mode, _max_pool_block,
                                      (return_indices, x.shape[3]))
    if not return_indices:
        return _array(name, layer, x, chunks, x._meta)
    # one task per block computes both; the two arrays take their halves of it
    pairs = _array(name, layer, x, chunks, x._meta)
    outputs = []
    for i, meta in enumerate((x._meta, meta_from_array(x._meta, dtype=np.int64))):
        part = f"{name}-{i}"
        part_layer = {(part,) + key[1:]: Task((part,) + key[1:], _getitem, TaskRef(key), i)
                      for key in layer if key[0] == name}
        outputs.append(_array(part, part_layer, pairs, chunks, meta))
    return tuple(outputs)


def _avg_pool_block(layout, local, hplan, wplan, params, *pieces):
    kernel_size, stride, padding, _, ceil_mode = local
    count_include_pad, divisor_override = params
    return api.avg_pool2d(_assemble(layout, pieces), kernel_size, stride, padding,
                          ceil_mode, count_include_pad, divisor_override)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """`fastconv.avg_pool2d` over a dask array ``x`` (N, C, H, W), chunked on any axis
    (PyTorch's divisor rules hold at every block border).

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> x = da.from_array(np.arange(16.0).reshape(1, 1, 4, 4), chunks=(1, 1, 1, 3))
    >>> fcd.avg_pool2d(x, 2).compute()[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    _check_dask(x, "x", (4,), "avg_pool2d")
    count_include_pad = checks.check_bool(count_include_pad, "count_include_pad")
    checks.divisor(divisor_override)
    name, layer, chunks = _pool_graph(x, "avg_pool2d", kernel_size, stride, padding, 1,
                                      ceil_mode, _avg_pool_block,
                                      (count_include_pad, divisor_override))
    return _array(name, layer, x, chunks, x._meta)


def relu(x):
    """`fastconv.relu` blockwise over a dask array of any shape and chunking.

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> fcd.relu(da.from_array(np.array([-1.0, 0.5]), chunks=1)).compute()
    array([0. , 0.5])
    """
    _check_dask(x, "x", tuple(range(0, 33)), "relu")
    return x.map_blocks(api.relu, dtype=x.dtype, meta=x._meta,
                        name=f"fastconv-relu-{tokenize('relu', x.name)}")


# --------------------------------------------------------------------------
# Filter banks
# --------------------------------------------------------------------------

def apply_bank(image, weight, algorithm="auto"):
    """`fastconv.filters.apply_bank` over a dask image: the responses of a
    (K, 1, S, S) bank with padding='same'. A 2-D image (H, W) gives (K, H, W); a
    3-D stack of frames (N, H, W) gives (N, K, H, W). The image is cast to the
    weight's dtype, as in memory; the H/W chunks are the image's.

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> from fastconv import filters
    >>> image = da.random.default_rng(0).random((300, 200), chunks=128).astype(np.float32)
    >>> fcd.apply_bank(image, filters.stack([filters.sobel_x(), filters.laplacian()])).chunks
    ((2,), (128, 128, 44), (128, 72))
    """
    if not isinstance(image, da.Array):
        raise TypeError(
            f"image must be a dask.array.Array, got {type(image).__name__}; for an "
            "in-memory image call fastconv.filters.apply_bank")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image must be 2-D (H, W) or a 3-D stack of frames (N, H, W), got shape {image.shape}")
    dtype = getattr(weight, "dtype", None)
    if dtype is not None and np.dtype(dtype) in checks.FLOAT_DTYPES and image.dtype != dtype:
        image = image.astype(dtype)
    x = image[None, None] if image.ndim == 2 else image[:, None]
    out = conv2d(x, weight, padding="same", algorithm=algorithm)
    return out[0] if image.ndim == 2 else out


def _bank_dtype(image):
    if isinstance(image, da.Array) and np.dtype(image.dtype) in checks.FLOAT_DTYPES:
        return image.dtype
    return np.dtype(np.float32)


def leung_malik(image, size=49, algorithm="auto"):
    """The 48 Leung-Malik responses of a dask image (`filters.leung_malik(size)` in
    the image's float dtype, float32 for others): (48, H, W), or (N, 48, H, W) for a stack.

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> fcd.leung_malik(da.zeros((100, 100), chunks=50, dtype=np.float32), size=9).shape
    (48, 100, 100)
    """
    bank = filters.leung_malik(size)[:, None].astype(_bank_dtype(image))
    return apply_bank(image, bank, algorithm)


def classic_bank(image, algorithm="auto"):
    """The responses to `filters.classic_bank()`'s kernels, in its order (12, H, W).

    >>> import numpy as np, dask.array as da, fastconv.dask as fcd
    >>> fcd.classic_bank(da.zeros((64, 64), chunks=32, dtype=np.float32)).shape
    (12, 64, 64)
    """
    bank = filters.stack(filters.classic_bank().values(), dtype=_bank_dtype(image))
    return apply_bank(image, bank, algorithm)


# --------------------------------------------------------------------------
# Command line: python -m fastconv filters --dask
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m fastconv filters --dask",
        description="Filter an image larger than a chunk with the Leung-Malik bank through "
                    "Dask (fastconv.dask.leung_malik), with Dask's progress bar, and save a "
                    "grid of the responses, each averaged down to a preview.")
    p.add_argument("image", nargs="?", default=None,
                   help="a PNG/JPEG (resized to --size) or a 2-D .npy (memory-mapped, "
                        "filtered at its own size); default: the bundled sample photo")
    p.add_argument("--dask", action="store_true", help="(this command)")
    p.add_argument("--out", default="fastconv-filters",
                   help="output folder (default ./fastconv-filters/)")
    p.add_argument("--size", type=int, default=1024,
                   help="resize a picture's longer side to this many pixels (default 1024)")
    p.add_argument("--chunk", type=int, default=256,
                   help="chunk side in pixels (default 256; each block's 48 responses take "
                        "48 * chunk^2 * 4 bytes)")
    p.add_argument("--lm-size", type=int, default=49,
                   help=f"Leung-Malik filter size (odd, 3..{filters.LM_MAX_SIZE}, default 49)")
    p.add_argument("--preview", type=int, default=256,
                   help="longer side of each response's preview (default 256)")
    p.add_argument("--scheduler", default=None,
                   help="address of a running dask.distributed scheduler (tcp://host:8786); "
                        "default: Dask's threaded scheduler in this process")
    args = p.parse_args(argv)
    if not (3 <= args.lm_size <= filters.LM_MAX_SIZE and args.lm_size % 2):
        p.error(f"--lm-size must be an odd int in 3..{filters.LM_MAX_SIZE}, got {args.lm_size}")
    for option in ("size", "chunk", "preview"):
        if getattr(args, option) < 8:
            p.error(f"--{option} must be >= 8, got {getattr(args, option)}")
    return args


def _load(path, size):
    """The image as a float32 dask-ready array: a .npy memory-mapped, a picture resized."""
    if path is not None and os.fspath(path).endswith(".npy"):
        try:
            image = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from None
        if image.ndim != 2:
            raise ValueError(f"{path} must hold a 2-D image, got shape {image.shape}")
        return image
    from PIL import Image
    picture = filters.load_image(path)
    h, w = picture.shape
    scale = size / max(h, w)
    resized = Image.fromarray(picture).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return np.asarray(resized, dtype=np.float32)


def _compute(array, scheduler):
    """Compute with Dask's progress bar: the local one, or distributed's for a cluster."""
    if scheduler is None:
        from dask.diagnostics import ProgressBar
        with ProgressBar():
            return array.compute(scheduler="threads")
    from distributed import Client, progress
    with Client(scheduler) as client:   # connects to a running cluster; starts nothing
        future = client.compute(array)
        progress(future)
        print()
        return future.result()


def main(argv=None) -> int:
    """CLI entry: ``fastconv.dask.main(["--size", "4096", "--chunk", "1024"])``. Writes
    ``lm_responses_dask.png`` (previews of the 48 responses) into ``--out``."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        image = _load(args.image, args.size)
    except ValueError as exc:
        raise SystemExit(f"fastconv filters --dask: {exc}") from None
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"fastconv filters --dask: cannot create --out {args.out}: "
                         f"{exc.strerror or exc}") from None
    h, w = image.shape
    chunk = min(args.chunk, max(h, w))
    x = da.from_array(image, chunks=chunk).astype(np.float32)
    x = x - x.mean()            # as the in-memory command: a small step at the zero padding
    responses = leung_malik(x, args.lm_size)
    # each response averaged over factor x factor squares, block by block: the
    # 48 full-size responses never exist at once
    factor = max(1, math.ceil(max(h, w) / args.preview))
    preview = da.coarsen(np.mean, responses, {1: factor, 2: factor}, trim_excess=True)
    blocks = math.prod(len(c) for c in x.chunks)
    print(f"image: {args.image or 'bundled sample'}, {w}x{h} grayscale float32 "
          f"({image.nbytes / 2**20:.0f} MiB), {blocks} chunks of up to {chunk}x{chunk}; "
          f"responses: 48 x {w}x{h} float32 ({48 * h * w * 4 / 2**30:.2f} GiB), "
          f"previews averaged {factor}x{factor}")
    t0 = time.perf_counter()
    result = _compute(preview, args.scheduler)
    seconds = time.perf_counter() - t0
    path = os.path.join(args.out, "lm_responses_dask.png")
    filters._grid(list(result), filters.leung_malik_names(), path,
                  f"Leung-Malik responses of a {w}x{h} image through Dask "
                  f"({blocks} chunks; previews averaged {factor}x{factor})",
                  cols=8, cmaps=["RdBu_r"] * 36 + ["gray"] * 4 + ["RdBu_r"] * 8, cell=1.8)
    print(f"Leung-Malik ({args.lm_size}x{args.lm_size}): 48 filters over {blocks} chunks in "
          f"{seconds:.2f} s -> {path}")
    return 0
