"""fastconv.models: exact parameter counts, shapes, and a forward+backward of each."""
import numpy as np
import pytest

from fastconv import models, nn


@pytest.mark.parametrize("builder, count", [
    (models.lenet5, 61_706),
    (models.alexnet, 61_100_840),      # torchvision.models.alexnet()
    (models.vgg16, 138_357_544),       # torchvision.models.vgg16()
    (models.small_cnn, 1_116_970),
    (models.digits_cnn, 40_394),
])
def test_parameter_counts(builder, count):
    model = builder(init="zeros")  # lazily allocated zeros: no 550 MB of random numbers
    assert model.num_parameters() == count
    assert model.num_parameters(trainable_only=True) == count


def test_torchvision_layer_shapes():
    vgg = models.vgg16(init="zeros")
    convs = [layer for layer in vgg if isinstance(layer, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256,
                                               512, 512, 512, 512, 512, 512]
    linears = [layer for layer in vgg if isinstance(layer, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [
        (25088, 4096), (4096, 4096), (4096, 1000)]
    s = vgg.summary((3, 224, 224))
    assert s.rows[30][2] == (None, 512, 7, 7) and s.output_shape == (None, 1000)
    alex = models.alexnet(init="zeros")
    shapes = [row[2] for row in alex.summary((3, 224, 224)).rows]
    assert shapes[0] == (None, 64, 55, 55)
    assert shapes[2] == (None, 64, 27, 27)
    assert shapes[12] == (None, 256, 6, 6)
    assert shapes[-1] == (None, 1000)
    assert [(l.in_features, l.out_features) for l in alex if isinstance(l, nn.Linear)] == [
        (9216, 4096), (4096, 4096), (4096, 1000)]
    # AdaptiveAvgPool to 7x7 is a 2x2 average at 448 input
    assert vgg.output_shape((1, 3, 448, 448)) == (1, 1000)
    lenet = models.lenet5(init="zeros").summary((1, 32, 32))
    assert [r[2] for r in lenet.rows][:7] == [
        (None, 6, 28, 28), (None, 6, 28, 28), (None, 6, 14, 14), (None, 16, 10, 10),
        (None, 16, 10, 10), (None, 16, 5, 5), (None, 120, 1, 1)]


def _forward_backward(model, x_shape, classes):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    logits = model(x)
    assert logits.shape == (x_shape[0], classes) == model.output_shape(x_shape)
    assert np.isfinite(logits).all()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(logits, np.arange(x_shape[0]) % classes)
    grad_x = model.backward(loss_fn.backward())
    assert grad_x.shape == x_shape
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape, p.name


def test_small_models_forward_backward():
    _forward_backward(models.lenet5(rng=0), (2, 1, 32, 32), 10)
    _forward_backward(models.small_cnn(rng=0), (2, 3, 32, 32), 10)
    _forward_backward(models.digits_cnn(rng=0), (3, 1, 8, 8), 10)


def test_alexnet_vgg16_reduced_width_forward_backward():
    """Their smallest input is 224x224 (the classifier expects 6x6 / 7x7 features);
    width=1/16 keeps that cheap on a CPU."""
    _forward_backward(models.alexnet(width=1 / 16, num_classes=7, rng=0), (1, 3, 224, 224), 7)
    _forward_backward(models.vgg16(width=1 / 16, num_classes=5, rng=0), (1, 3, 224, 224), 5)


def test_builder_arguments():
    assert models.digits_cnn(dtype=np.float64)[0].weight.dtype == np.float64
    a = models.lenet5(rng=3)
    b = models.lenet5(rng=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    with pytest.raises(ValueError, match="num_classes"):
        models.lenet5(num_classes=0)
    with pytest.raises(ValueError, match="width"):
        models.vgg16(width=0)


@pytest.mark.parametrize("width", [float("inf"), float("nan"), -1.0, "1", True])
@pytest.mark.parametrize("builder", [models.alexnet, models.vgg16])
def test_width_must_be_a_finite_positive_number(builder, width):
    with pytest.raises(ValueError, match="width"):
        builder(width=width, init="zeros")
    with pytest.raises(ValueError, match="multiples"):
        models.vgg16(init="zeros").output_shape((1, 3, 256, 256))
