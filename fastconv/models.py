"""Classic CNNs built from `fastconv.nn` layers (random He-initialised weights).

    >>> from fastconv import models
    >>> models.lenet5().num_parameters()
    61706
    >>> models.alexnet(init="zeros").num_parameters()
    61100840
    >>> models.vgg16(init="zeros").num_parameters()
    138357544

`alexnet()` and `vgg16()` have torchvision's layer shapes (``torchvision.models.alexnet``,
``vgg16``), so their parameter counts match torchvision's exactly; `lenet5()` is LeNet-5
with ReLU and max pooling; `small_cnn()` takes CIFAR-10-sized 32x32x3 images and
`digits_cnn()` scikit-learn's 8x8 digits (the demo's model).

Every builder takes ``num_classes``, ``dtype`` (float32, or float64 for gradient
checks), ``rng`` (a numpy Generator or seed; default `fastconv.nn.manual_seed`'s) and
``init`` (``"kaiming_normal"``, ``"kaiming_uniform"``, or ``"zeros"``, which allocates
lazily: ``vgg16(init="zeros")`` costs no memory until written, handy for counting).
``alexnet``/``vgg16`` also take ``width`` (a factor on every channel and hidden-unit
count, for quick tests: ``vgg16(width=1/16)``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import nn

__all__ = ["lenet5", "alexnet", "vgg16", "small_cnn", "digits_cnn"]


def _scaled(n, width):
    if not (isinstance(width, numbers.Real) and not isinstance(width, bool)
            and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    return max(1, int(round(n * width)))


def _common(num_classes, rng):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return nn._rng(rng)


def lenet5(num_classes=10, in_channels=1, dtype=np.float32, rng=None, init="kaiming_normal"):
    """LeNet-5 (LeCun et al. 1998) for 32x32 inputs, with ReLU and max pooling in place of
    the original scaled tanh and trainable subsampling (the usual modern reading).

    C1 conv 5x5 -> 6@28x28, S2 pool -> 6@14x14, C3 conv 5x5 -> 16@10x10, S4 pool ->
    16@5x5, C5 conv 5x5 -> 120@1x1, F6 fully connected 84, output 10: 61,706 parameters.
    (C3 here connects to all 6 maps, as in most implementations, not the paper's sparse table.)
    """
    g = _common(num_classes, rng)
    kw = dict(dtype=dtype, rng=g, init=init)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5, **kw), nn.ReLU(), nn.Flatten(),
        nn.Linear(120, 84, **kw), nn.ReLU(),
        nn.Linear(84, num_classes, **kw))


def alexnet(num_classes=1000, dropout=0.5, width=1.0, dtype=np.float32, rng=None,
            init="kaiming_normal"):
    """AlexNet with torchvision's layer shapes (``torchvision.models.alexnet``, the
    one-GPU variant of Krizhevsky et al. 2012 from "One weird trick", 2014):
    61,100,840 parameters for 1000 classes. Input ``(N, 3, 224, 224)``.

    torchvision puts ``AdaptiveAvgPool2d((6, 6))`` between the features and the classifier.
    At 224x224 input the features are already 256@6x6, so there it is the identity; here it
    is `fastconv.nn.AdaptiveAvgPool2d`, which is the identity at 6x6 and a plain average
    pooling when the feature map is a multiple of 6 (other input sizes raise ValueError
    instead of using PyTorch's uneven windows).

    ``width`` scales every channel and hidden-unit count (for fast tests); the classifier's
    input is then ``round(256 * width) * 6 * 6``.
    """
    g = _common(num_classes, rng)
    kw = dict(dtype=dtype, rng=g, init=init)
    c = [_scaled(n, width) for n in (64, 192, 384, 256, 256)]
    hidden = _scaled(4096, width)
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, stride=4, padding=2, **kw), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2, **kw), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1, **kw), nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1, **kw), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(dropout, rng=g), nn.Linear(c[4] * 36, hidden, **kw), nn.ReLU(),
        nn.Dropout(dropout, rng=g), nn.Linear(hidden, hidden, **kw), nn.ReLU(),
        nn.Linear(hidden, num_classes, **kw))


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M")


def vgg16(num_classes=1000, dropout=0.5, width=1.0, dtype=np.float32, rng=None,
          init="kaiming_normal"):
    """VGG-16 (Simonyan & Zisserman 2014, configuration D) with torchvision's layer shapes
    (``torchvision.models.vgg16``, no batch norm): 13 3x3 convolutions with padding 1 in
    five blocks, each block ending in 2x2 max pooling, then three fully connected layers:
    138,357,544 parameters for 1000 classes (about 528 MiB in float32). Input
    ``(N, 3, 224, 224)``.

    torchvision's ``AdaptiveAvgPool2d((7, 7))`` before the classifier is the identity at
    224x224 input (the features are 512@7x7); here it is `fastconv.nn.AdaptiveAvgPool2d`
    (identity at 7x7, plain average pooling for multiples of 7, ValueError otherwise).

    ``width`` scales every channel and hidden-unit count (for fast tests).
    """
    g = _common(num_classes, rng)
    kw = dict(dtype=dtype, rng=g, init=init)
    layers, c_in = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            c_out = _scaled(v, width)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, **kw), nn.ReLU()]
            c_in = c_out
    hidden = _scaled(4096, width)
    layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(),
               nn.Linear(c_in * 49, hidden, **kw), nn.ReLU(), nn.Dropout(dropout, rng=g),
               nn.Linear(hidden, hidden, **kw), nn.ReLU(), nn.Dropout(dropout, rng=g),
               nn.Linear(hidden, num_classes, **kw)]
    return nn.Sequential(*layers)


def small_cnn(num_classes=10, in_channels=3, dropout=0.5, dtype=np.float32, rng=None,
              init="kaiming_normal"):
    """A small VGG-style CNN for 32x32 inputs (CIFAR-10 sized): two blocks of two 3x3
    convolutions (32 and 64 channels) each followed by 2x2 max pooling, then a 256-unit
    hidden layer with dropout: 1,116,970 parameters for 10 classes."""
    g = _common(num_classes, rng)
    kw = dict(dtype=dtype, rng=g, init=init)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, **kw), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, **kw), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 256, **kw), nn.ReLU(), nn.Dropout(dropout, rng=g),
        nn.Linear(256, num_classes, **kw))


def digits_cnn(num_classes=10, dropout=0.25, dtype=np.float32, rng=None,
               init="kaiming_normal"):
    """The demo's CNN for scikit-learn's 8x8 digits, input ``(N, 1, 8, 8)``:
    conv 3x3 16 -> conv 3x3 32 -> pool -> conv 3x3 64 -> pool -> 64 hidden -> 10
    (all convolutions 'same' padded): 40,394 parameters."""
    g = _common(num_classes, rng)
    kw = dict(dtype=dtype, rng=g, init=init)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, **kw), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout, rng=g), nn.Linear(64 * 2 * 2, 64, **kw), nn.ReLU(),
        nn.Linear(64, num_classes, **kw))
