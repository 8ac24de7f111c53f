"""What the CPU Winograd backend keeps between calls: per-thread scratch buffers, the
transformed filters of recently used weights, and samples of weights seen before
(`weights_repeat`, for `auto`). `release_workspace()` frees all of it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..winograd_transforms import winograd_matrices
from .winograd_kernels import _filter_transform

DEFAULT_TILE = 4                    # F(4x4, r x r)


_pool = threading.local()


def scratch(slot, shape, dtype):
    """A scratch array of `shape` for this thread, reused across calls (fresh pages
    cost a page fault each, a measurable part of a call: docs/tuning.md). Only this
    call sees it; results are always new arrays. `release_workspace()` frees it."""
    buffers = getattr(_pool, "buffers", None)
    if buffers is None:
        buffers = _pool.buffers = {}
    size = int(np.prod(shape))
    dtype = np.dtype(dtype)
    buf = buffers.get((slot, dtype))
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        buffers[(slot, dtype)] = buf
    return buf[:size].reshape(shape)


def release_workspace():
    """Free this thread's kept scratch buffers and the kept transformed filters."""
    _pool.buffers = {}
    with _filters_lock:
        _filters.clear()
        _sightings.clear()


# Transformed filters kept between calls, so that a convolution called again with the
# same weights (inference, benchmarks) skips the filter transform, which writes
# K*C*alpha^2 values (on deep layers with small images, a large part of the call). An
# entry serves only weights bitwise equal to those it was made from (compared in full),
# so weights changed in place, or a new array at a reused address, are transformed again.
FILTER_CACHE_BYTES = 128 * 2**20
_filters = OrderedDict()        # (address, shape, dtype, tile) -> (weight copy, U), LRU
_filters_lock = threading.Lock()


def _bits(array):
    """The array's bits as integers: equality without float rules (-0.0 vs 0.0, NaN).
    64-bit words where the length allows: np.array_equal then compares half as many."""
    flat = array.reshape(-1)
    return flat.view(np.int64 if flat.nbytes % 8 == 0 else np.int32)


def transient_filter(weight, tile):
    """U for weights that will not be seen again (or too big to keep): transformed
    into this thread's scratch, which the next call overwrites."""
    u_shape = (_alpha(tile, weight.shape) ** 2,) + weight.shape[:2]
    return transform_filter(weight, tile, out=scratch("U", u_shape, weight.dtype))


def kept_filter(weight, tile):
    """U for `weight`: from the cache when these exact weights were transformed
    before; for an array seen before whose values changed (a training step updates
    weights in place), transformed again into that entry's own buffers; else
    transformed now and kept, least recently used entries dropped beyond
    FILTER_CACHE_BYTES. Like the weights, the returned U must not change while a
    call uses it."""
    key = (weight.ctypes.data, weight.shape, weight.dtype.str, tile)
    with _filters_lock:
        entry = _filters.get(key)
        if entry is not None:
            _filters.move_to_end(key)
    if entry is not None:
        kept_weight, U = entry
        if not np.array_equal(_bits(kept_weight), _bits(weight)):
            np.copyto(kept_weight, weight)
            transform_filter(weight, tile, out=U)
        return U
    r = weight.shape[2]
    u_bytes = weight.nbytes // (r * r) * _alpha(tile, weight.shape) ** 2   # alpha^2 per r x r
    if weight.nbytes + u_bytes > FILTER_CACHE_BYTES:
        return transient_filter(weight, tile)
    U = transform_filter(weight, tile)
    with _filters_lock:
        _filters[key] = (weight.copy(), U)
        while sum(w.nbytes + u.nbytes for w, u in _filters.values()) > FILTER_CACHE_BYTES:
            _filters.popitem(last=False)
    return U


# `auto` on layers where a per-call filter transform would cost more than Winograd saves
# (autotune.winograd_with_kept_filter): Winograd wins there only when the transform is
# kept, i.e. when the same weights come back (inference, evaluation, frozen layers). A
# call tells that from the weights themselves: it records a sample of their values, and
# a later call with the same array holding the same sampled values is taken to repeat
# them. A training step changes the values, so training keeps im2col. A wrong guess
# costs only speed: Winograd's kept filter is checked against the weights in full.
SAMPLE_SIZE = 1024
MAX_SIGHTINGS = 256
_sightings = OrderedDict()      # (address, shape, dtype, tile) -> sampled bits, LRU


def _sample(weight):
    flat = weight.reshape(-1)
    return _bits(np.ascontiguousarray(flat[::max(1, flat.size // SAMPLE_SIZE)]))


def weights_repeat(weight, tile):
    """True when C-contiguous `weight` is an array an earlier call used, with the same
    sampled values: its transformed filter is kept, or an earlier call of this
    function recorded them. Records this call's sample for the next one."""
    key = (weight.ctypes.data, weight.shape, weight.dtype.str, tile)
    sample = _sample(weight)
    with _filters_lock:
        entry = _filters.get(key)
        if entry is not None and np.array_equal(_sample(entry[0]), sample):
            return True
        # changed since its filter was kept (a training step): repeats from now on
        # are seen by the sightings, as for an array never seen before
        previous = _sightings.pop(key, None)
        _sightings[key] = sample
        while len(_sightings) > MAX_SIGHTINGS:
            _sightings.popitem(last=False)
    return previous is not None and np.array_equal(previous, sample)


def _alpha(tile, weight_shape):
    """Input tile size of F(tile x tile, r x r) for an r x r weight."""
    return tile + weight_shape[2] - 1


def transform_filter(weight, tile=DEFAULT_TILE, out=None):
    """U (alpha^2, K, C_per_group) = (G w G^T) for every r x r filter (numba, parallel
    over K; float64 arithmetic, rounded once to the weight's dtype)."""
    _, G, _ = winograd_matrices(tile, weight.shape[2])
    alpha = G.shape[0]
    weight = np.ascontiguousarray(weight)
    U = np.empty((alpha * alpha,) + weight.shape[:2], dtype=weight.dtype) if out is None else out
    _filter_transform(weight, G, U)
    return U

