"""Output sizes and padding normalisation: the one place they are computed."""
import pytest

from fastconv import shapes


@pytest.mark.parametrize("value, expected", [
    (3, (3, 3)), ((2, 5), (2, 5)), ([1, 4], (1, 4)), ((2,), (2, 2)), ([3], (3, 3)),
])
def test_pair(value, expected):
    assert shapes.pair(value, "stride") == expected


@pytest.mark.parametrize("value, error", [
    ((), ValueError), ([], ValueError), ((1, 2, 3), ValueError), ((2.0,), TypeError),
    (((2,),), TypeError), ((0,), ValueError),
])
def test_pair_refuses_what_torch_refuses(value, error):
    with pytest.raises(error, match="stride"):
        shapes.pair(value, "stride")


def test_a_one_element_pair_can_be_refused():
    with pytest.raises(ValueError, match="output_size"):
        shapes.pair((2,), "output_size", one_for_both=False)


@pytest.mark.parametrize("stride, expected", [
    (None, (3, 2)), ((), (3, 2)), ([], (3, 2)), ((1,), (1, 1)), (2, (2, 2)), ((1, 2), (1, 2)),
])
def test_pool_stride(stride, expected):
    assert shapes.pool_stride(stride, (3, 2)) == expected


@pytest.mark.parametrize("value, expected", [(None, 0), (1, 1), (-3, -3), (2**31 - 1, 2**31 - 1),
                                             (-(2**31 - 1), -(2**31 - 1))])
def test_divisor(value, expected):
    assert shapes.divisor(value) == expected


@pytest.mark.parametrize("value, error", [(0, ValueError), (2**31, ValueError),
                                          (-(2**31), ValueError), (1.5, TypeError),
                                          (True, TypeError)])
def test_divisor_refuses_zero_and_non_ints(value, error):
    with pytest.raises(error, match="divisor_override"):
        shapes.divisor(value)


@pytest.mark.parametrize("padding, kernel, dilation, expected", [
    (0, (3, 3), (1, 1), (0, 0, 0, 0)),
    (2, (3, 3), (1, 1), (2, 2, 2, 2)),
    ((1, 2), (3, 3), (1, 1), (1, 1, 2, 2)),
    (((0, 3), (1, 2)), (3, 3), (1, 1), (0, 3, 1, 2)),
    ("valid", (5, 5), (1, 1), (0, 0, 0, 0)),
    ("same", (3, 3), (1, 1), (1, 1, 1, 1)),
    ("same", (4, 4), (1, 1), (1, 2, 1, 2)),      # even kernel: extra at bottom/right
    ("same", (2, 5), (1, 1), (0, 1, 2, 2)),
    ("same", (3, 3), (2, 3), (2, 2, 3, 3)),      # dilation widens the kernel
    ("same", (4, 2), (3, 1), (4, 5, 0, 1)),
])
def test_conv_padding(padding, kernel, dilation, expected):
    assert shapes.conv_padding(padding, kernel, dilation, (1, 1)) == expected


@pytest.mark.parametrize("in_hw, kernel, stride, padding, dilation, ceil, expected", [
    ((5, 5), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), False, (3, 3)),
    ((5, 5), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False, (5, 5)),
    ((7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, (4, 4)),
    ((7, 8), (3, 2), (2, 3), (0, 1, 2, 0), (2, 1), False, (2, 3)),
    ((224, 224), (11, 11), (4, 4), (2, 2, 2, 2), (1, 1), False, (55, 55)),  # AlexNet conv1
    ((6, 6), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True, (3, 3)),
    ((5, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, (2, 2)),
    ((5, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True, (3, 3)),
    # ceil mode: a window that would start in the bottom/right padding is dropped
    ((5, 5), (2, 2), (2, 2), (1, 1, 1, 1), (1, 1), True, (3, 3)),
    ((6, 6), (3, 3), (3, 3), (1, 1, 1, 1), (1, 1), True, (3, 3)),
    ((4, 4), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True, (3, 3)),
    ((55, 55), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), True, (27, 27)),
])
def test_output_size(in_hw, kernel, stride, padding, dilation, ceil, expected):
    assert shapes.output_size(in_hw, kernel, stride, padding, dilation, ceil) == expected


def test_output_size_matches_torch_over_a_grid():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    # sizes below the kernel too: in ceil mode PyTorch pools them when a window starts
    # inside the input (1x5 by 2x2/2 -> 1x3), and refuses them otherwise, as we must
    for size in range(1, 9):
        for k in range(1, 6):
            for s in range(1, 5):
                for p in range(0, k // 2 + 1):
                    for ceil in (False, True):
                        x = torch.zeros(1, 1, size, size)
                        try:
                            out = F.max_pool2d(x, k, s, p, ceil_mode=ceil).shape[-1]
                        except RuntimeError:
                            with pytest.raises(ValueError, match="larger than the padded"):
                                shapes.output_size((size, size), (k, k), (s, s),
                                                   (p, p, p, p), (1, 1), ceil)
                            continue
                        ours = shapes.output_size((size, size), (k, k), (s, s),
                                                  (p, p, p, p), (1, 1), ceil)
                        assert ours == (out, out), (size, k, s, p, ceil)


def test_kernel_larger_than_padded_input_is_refused():
    with pytest.raises(ValueError, match="larger than the padded input"):
        shapes.output_size((2, 2), (3, 3), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="larger than the padded input"):
        shapes.output_size((2, 2), (3, 3), (1, 1), (0, 0, 0, 0), ceil_mode=True)


def test_ceil_mode_pools_an_input_smaller_than_the_kernel():
    # PyTorch: 1x5 by 2x2 stride 2 in ceil mode is 1x3 (each window starts inside)
    assert shapes.output_size((1, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True) == (1, 3)
    assert shapes.output_size((1, 1), (4, 4), (4, 4), (0, 0, 0, 0), (1, 1), True) == (1, 1)
