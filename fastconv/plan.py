"""The one place that decides which algorithm runs a convolution, and why.

    plan(problem, device, operation, algorithm, operands=(), weight=None, record=True)
        -> Plan(algorithm, options, reason)

The operators (`fastconv.api`) run the plan `plan` returns and `fc.explain` prints it,
so the two cannot disagree; `last_plan()` is the plan the calling thread's latest
convolution ran (for tests and debugging). The steps, in order:

1. the request: `auto` takes the measured shape rule (`fastconv.autotune.choose`); a
   named algorithm is checked (`winograd_supports`);
2. the device: there is no CUDA Winograd weight gradient, im2col serves it;
3. the kept filter (CPU forward, `auto`): on layers where Winograd wins only when its
   transformed filter is kept (`autotune.winograd_with_kept_filter`), Winograd runs
   when these weights repeat an earlier call's (`fastconv.cpu.winograd.weights_repeat`,
   asked only here);
4. the operands' values (`auto`): Winograd mixes whole tiles, so it runs only on
   operands `winograd_safe` accepts (finite, nothing can overflow, no outlier whose
   error would spread over its tile); otherwise im2col.

Steps 1 and 2 depend on shapes and options alone and are memoised per problem; 3 and 4
look at the arrays on every call.

    >>> from fastconv import api, plan
    >>> problem = api.conv_problem((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1)
    >>> plan.plan(problem, "cpu", "conv2d", "auto").algorithm
    'winograd'
"""
from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Mapping, NamedTuple


import numpy as np

from . import autotune

ALGORITHMS = ("auto", "direct", "im2col", "winograd")
CONV_OPERATIONS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")
DEVICES = ("cpu", "cuda")
_NO_OPTIONS = MappingProxyType({})


class Plan(NamedTuple):
    """What runs a convolution: `algorithm` ("direct", "im2col" or "winograd"), the
    backend's keyword `options` (Winograd's CPU tile) and the `reason`, in words."""

    algorithm: str
    options: Mapping
    reason: str


def winograd_supports(w_shape, stride, dilation):
    """(ok, reason): `algorithm="winograd"` needs a 3x3 kernel, stride 1, dilation 1.

    >>> winograd_supports((8, 8, 3, 3), (1, 1), (2, 2))
    (False, 'it needs dilation 1, got dilation=(2, 2)')
    """
    if tuple(w_shape[2:]) != (3, 3):
        hint = (" (algorithm='auto' runs Winograd F(4x4,5x5) on 5x5 layers where it "
                "measured faster)" if tuple(w_shape[2:]) == (5, 5) else "")
        return False, f"it needs a 3x3 kernel, got {w_shape[2]}x{w_shape[3]}{hint}"
    if tuple(stride) != (1, 1):
        return False, f"it needs stride 1, got stride={tuple(stride)}"
    if tuple(dilation) != (1, 1):
        return False, f"it needs dilation 1, got dilation={tuple(dilation)}"
    return True, "3x3, stride 1, dilation 1"


def winograd_safe(problem, operation, operands, tile):
    """(ok, reason): whether `auto` may run Winograd on these (name, array) operands:
    finite, no intermediate that can overflow, no value so far above the others that
    Winograd's error on its neighbours would exceed im2col's by much. Step 4 of the
    plan; the rule itself is `fastconv.winograd_transforms.winograd_safe`."""
    from .winograd_transforms import winograd_safe as values_allow
    if len(operands) == 1:          # explain() given one array: its finiteness only
        name, arr = operands[0]
        if isinstance(arr, np.ndarray) and not np.isfinite(arr).all():
            return False, f"{name} holds a NaN or Inf, which Winograd would spread"
        return True, f"{name} is finite"
    (_, data), (_, other) = operands
    return values_allow(operation, data, other, tile, problem.w_shape[2:])


def _tile(problem, operation):
    """Winograd's tile on the CPU (autotune.winograd_tile); grad_input is a Winograd
    convolution whose output is the input's size."""
    out_hw = problem.x_shape[2:] if operation == "conv2d_grad_input" else problem.out_hw
    return autotune.winograd_tile(problem.x_shape, problem.w_shape, out_hw)


def _options(problem, device, operation, algorithm):
    if algorithm != "winograd" or device != "cpu":
        return _NO_OPTIONS            # the CUDA module picks its own tile
    return MappingProxyType({"tile": _tile(problem, operation)})


def _by_shape(problem, device, operation, algorithm):
    """Steps 1 and 2: (Plan, the tile a kept filter would take or None)."""
    if algorithm == "auto":
        chosen, reason = autotune.choose(device, problem.x_shape, problem.w_shape,
                                         problem.stride, problem.dilation, problem.groups,
                                         operation)
        kept = None
        if chosen != "winograd" and autotune.winograd_with_kept_filter(
                device, problem.x_shape, problem.w_shape, problem.stride, problem.dilation,
                problem.groups, operation):
            kept = _tile(problem, operation)
        return Plan(chosen, _options(problem, device, operation, chosen), reason), kept
    if algorithm == "winograd":
        ok, why = winograd_supports(problem.w_shape, problem.stride, problem.dilation)
        if not ok:
            raise ValueError(f"algorithm='winograd' is not available here: {why}")
        if operation == "conv2d_grad_weight" and device == "cuda":
            return Plan("im2col", _NO_OPTIONS,
                        "there is no CUDA Winograd weight gradient: im2col serves "
                        "algorithm='winograd'"), None
        return Plan("winograd", _options(problem, device, operation, "winograd"),
                    "requested"), None
    return Plan(algorithm, _NO_OPTIONS, "requested"), None


def cpu_threads(work):
    """How many of numba's threads a CPU call of `work` FLOPs (or window reads, for
    pooling) takes: 1 below `autotune.SERIAL_BELOW_FLOPS`, so that small calls do not
    wake the idle threads; None (a fair share of all) otherwise.

    >>> cpu_threads(2 * 9 * 64), cpu_threads(10**9)
    (1, None)
    """
    return 1 if work < autotune.SERIAL_BELOW_FLOPS else None


_last = threading.local()


def plan(problem, device, operation, algorithm, operands=(), weight=None, record=True):
    """The Plan for a checked convolution `problem` (`fastconv.api.conv_problem`).

    operands: (name, array) pairs whose values step 4 looks at; weight: the
    C-contiguous CPU weight of a forward call, for step 3. With record=False (explain)
    step 3 is not asked, since asking records the weights (that is how a later call
    tells a repeat): the plan is the one for weights seen the first time, and its reason
    says that a repeat runs Winograd. record=True also makes this plan `last_plan()`.
    """
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    key = (device, operation, algorithm)
    cached = problem.plans.get(key)
    if cached is None:
        cached = problem.plans[key] = _by_shape(problem, device, operation, algorithm)
    chosen, kept_tile = cached
    if kept_tile is not None and weight is not None and record:
        from .cpu import winograd
        if winograd.weights_repeat(weight, kept_tile):
            chosen = Plan("winograd", MappingProxyType({"tile": kept_tile}),
                          "these weights repeat an earlier call's: Winograd with the "
                          "transformed filter kept")
    if algorithm == "auto" and chosen.algorithm == "winograd" and operands:
        ok, why = winograd_safe(problem, operation, operands, chosen.options.get("tile", 4))
        if not ok:
            chosen = Plan("im2col", _NO_OPTIONS, f"{why}: im2col instead")
    if record:
        _last.plan = chosen
    return chosen


def last_plan():
    """The Plan of the calling thread's latest convolution (None before the first):
    what ran, fallbacks included.

    >>> import numpy as np, fastconv as fc
    >>> _ = fc.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))
    >>> last_plan().algorithm
    'direct'
    """
    return getattr(_last, "plan", None)


def describe(problem, device, operation, chosen):
    """One line for fc.explain: the problem, the algorithm (Winograd with its F(m, r))
    and the reason."""
    name = chosen.algorithm
    tile = chosen.options.get("tile")
    if tile is not None:
        kh, kw = problem.w_shape[2:]
        sizes = [f"{tile}x{tile}", f"{kh}x{kw}"]
        if operation == "conv2d_grad_weight":     # F(r x r, m x m): the roles swap
            sizes.reverse()
        name += f" F({sizes[0]},{sizes[1]})"
    return (f"{operation} {problem.x_shape} * {problem.w_shape} -> {problem.out_shape} "
            f"on {device}: {name} ({chosen.reason})")


__all__ = ["Plan", "plan", "last_plan", "winograd_supports", "winograd_safe", "describe",
           "cpu_threads",
           "ALGORITHMS", "CONV_OPERATIONS", "DEVICES"]
