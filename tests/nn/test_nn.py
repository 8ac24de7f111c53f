"""fastconv.nn: gradients by finite differences (float64), training, state files, summary."""
import numpy as np
import pytest

from fastconv import nn


# --------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------

def _numeric_grad(f, array, index, eps=1e-6):
    old = array[index]
    array[index] = old + eps
    up = f()
    array[index] = old - eps
    down = f()
    array[index] = old
    return (up - down) / (2 * eps)


def _sample(shape, rng, count=12):
    """A few multi-indices into an array of `shape` (all of them when small)."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= count else rng.choice(size, count, replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def check_layer_gradients(layer, x, rng, tol=1e-6):
    """Compare backward with central differences of L = sum(forward(x) * R)."""
    out = layer.forward(x)
    r = rng.standard_normal(out.shape)

    def loss():
        return float((layer.forward(x) * r).sum())

    layer.forward(x)
    for p in layer.parameters():
        p.grad = None
    grad_x = layer.backward(r)
    assert grad_x.shape == x.shape
    analytic = {p.name: p.grad.copy() for p in layer.parameters()}
    for idx in _sample(x.shape, rng):
        num = _numeric_grad(loss, x, idx)
        assert abs(grad_x[idx] - num) <= tol * max(1.0, abs(num)), ("x", idx, grad_x[idx], num)
    for p in layer.parameters():
        for idx in _sample(p.shape, rng):
            num = _numeric_grad(loss, p.data, idx)
            got = analytic[p.name][idx]
            assert abs(got - num) <= tol * max(1.0, abs(num)), (p.name, idx, got, num)


F64 = dict(dtype=np.float64)


@pytest.mark.parametrize("kwargs, x_shape", [
    (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 6, 6)),
    (dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, groups=2),
     (2, 4, 7, 6)),
    (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2, padding="same", bias=False),
     (1, 2, 7, 7)),
])
def test_conv2d_gradients(kwargs, x_shape, rng):
    layer = nn.Conv2d(**kwargs, **F64, rng=rng)
    if layer.bias is not None:
        layer.bias.data[:] = rng.standard_normal(layer.bias.shape)
    check_layer_gradients(layer, rng.standard_normal(x_shape), rng)


def test_conv2d_unbatched_input(rng):
    layer = nn.Conv2d(2, 3, 3, padding=1, **F64, rng=rng)
    x = rng.standard_normal((2, 5, 5))
    batched = layer(x[None])[0]
    out = layer(x)
    assert out.shape == (3, 5, 5)
    np.testing.assert_allclose(out, batched)
    assert layer.backward(np.ones_like(out)).shape == x.shape
    assert layer.weight.grad.shape == layer.weight.shape


def test_pooling_relu_linear_flatten_gradients(rng):
    # distinct values keep max pooling (and ReLU) away from ties/kinks
    x = (rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) + 0.5) / 50.0 - 2.0
    check_layer_gradients(nn.MaxPool2d(3, stride=2, padding=1), x.copy(), rng)
    check_layer_gradients(nn.MaxPool2d(2, ceil_mode=True), x.copy(), rng)
    check_layer_gradients(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
                          x.copy(), rng)
    check_layer_gradients(nn.AvgPool2d(2, ceil_mode=True), x.copy(), rng)
    check_layer_gradients(nn.ReLU(), x.copy(), rng)
    check_layer_gradients(nn.Flatten(), x.copy(), rng)
    lin = nn.Linear(5, 4, **F64, rng=rng)
    lin.bias.data[:] = rng.standard_normal(4)
    check_layer_gradients(lin, rng.standard_normal((3, 5)), rng)


def test_adaptive_avg_pool():
    pool = nn.AdaptiveAvgPool2d(2)
    x = np.arange(32.0).reshape(1, 2, 4, 4)
    out = pool(x)
    np.testing.assert_allclose(out[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    assert pool.backward(np.ones_like(out)).shape == x.shape
    assert nn.AdaptiveAvgPool2d(4)(x) is x
    with pytest.raises(ValueError, match="multiples"):
        nn.AdaptiveAvgPool2d(3).output_shape((1, 2, 4, 4))


def test_adaptive_avg_pool_checks_like_the_other_layers():
    with pytest.raises(ValueError, match=r"x must be 4-D.*\(8,\)"):
        nn.AdaptiveAvgPool2d(2)(np.ones(8))
    identity = nn.AdaptiveAvgPool2d(2)
    with pytest.raises(RuntimeError, match="before forward"):
        identity.backward(np.ones((1, 1, 2, 2), np.float32))
    identity(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"grad_out.*\(1, 1, 2, 2\)"):
        identity.backward(np.ones((1, 1, 3, 2), np.float32))
    with pytest.raises(TypeError, match="grad_out"):
        identity.backward(np.ones((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        nn.AdaptiveAvgPool2d(2)(np.ones((1, 1, 2, 2), np.int64))


def test_dropout():
    d = nn.Dropout(0.5, rng=0)
    x = np.ones((100, 50))
    y = d(x)
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert 0.4 < (y == 0).mean() < 0.6
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)  # grad = mask
    d.eval()
    assert d(x) is x
    assert d.backward(x) is x
    with pytest.raises(ValueError, match="p must"):
        nn.Dropout(1.5)


def test_dropout_seed_gives_a_new_mask_each_step():
    d = nn.Dropout(0.5, rng=0)
    x = np.ones((20, 20))
    assert not np.array_equal(d(x), d(x))
    np.testing.assert_array_equal(nn.Dropout(0.5, rng=0)(x), nn.Dropout(0.5, rng=0)(x))


def _forwarded(layer, x):
    layer(x)
    return layer


@pytest.mark.parametrize("make, x, out_shape", [
    (lambda: nn.Linear(3, 2), np.ones((4, 3), np.float32), (4, 2)),
    (lambda: nn.Dropout(0.5, rng=0), np.ones((4, 3), np.float32), (4, 3)),
    (lambda: nn.Dropout(0.5).eval(), np.ones((4, 3), np.float32), (4, 3)),
    (lambda: nn.Flatten(), np.ones((2, 3, 2, 2), np.float32), (2, 12)),
    (lambda: nn.AvgPool2d(2), np.ones((1, 2, 4, 4), np.float32), (1, 2, 2, 2)),
    (lambda: nn.MaxPool2d(2), np.ones((1, 2, 4, 4), np.float32), (1, 2, 2, 2)),
    (lambda: nn.ReLU(), np.ones((2, 3), np.float32), (2, 3)),
    (lambda: nn.Conv2d(2, 3, 3), np.ones((1, 2, 4, 4), np.float32), (1, 3, 2, 2)),
])
def test_backward_checks_grad_out(make, x, out_shape):
    """Every layer's backward refuses what the API's backward functions refuse,
    instead of broadcasting it or returning another dtype."""
    with pytest.raises(RuntimeError, match="before forward"):
        make().backward(np.ones(out_shape, np.float32))
    layer = _forwarded(make(), x)
    for bad in (None, np.ones(out_shape, np.float64), np.ones(out_shape, np.int64)):
        with pytest.raises(TypeError, match="grad_out"):
            layer.backward(bad)
    wrong = out_shape[:-1] + (out_shape[-1] + 1,)
    with pytest.raises(ValueError, match=r"grad_out.*shape"):
        layer.backward(np.ones(wrong, np.float32))
    for p in layer.parameters():
        assert p.grad is None, p.name  # nothing accumulated by a refused gradient
    grad_x = layer.backward(np.ones(out_shape, np.float32))
    assert grad_x.shape == x.shape and grad_x.dtype == np.float32


def test_conv2d_backward_with_a_frozen_weight_checks_grad_out():
    conv = _forwarded(nn.Conv2d(2, 3, 3), np.ones((1, 2, 4, 4), np.float32))
    conv.weight.requires_grad = False
    with pytest.raises(TypeError, match="grad_out"):
        conv.backward(None)
    with pytest.raises(TypeError, match="grad_out"):
        conv.backward(np.ones((1, 3, 2, 2)).tolist())  # float64: the layer is float32
    assert conv.bias.grad is None
    assert conv.backward(np.ones((1, 3, 2, 2), np.float32)).shape == (1, 2, 4, 4)
    assert conv.bias.grad.shape == (3,)


def _small_net(rng, dtype=np.float64):
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, dtype=dtype, rng=rng), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=1, padding=1, dtype=dtype, rng=rng), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16, 5, dtype=dtype, rng=rng))


def test_network_and_loss_gradients(rng):
    model = _small_net(rng)
    for p in model.parameters():
        p.data += 0.01 * rng.standard_normal(p.shape)  # non-zero biases too
    x = rng.standard_normal((3, 1, 8, 8))
    y = np.array([0, 3, 4])
    loss_fn = nn.CrossEntropyLoss()

    def loss():
        return loss_fn(model(x), y)

    loss()
    model.zero_grad()
    grad_x = model.backward(loss_fn.backward())
    for idx in _sample(x.shape, rng, 8):
        num = _numeric_grad(loss, x, idx)
        assert abs(grad_x[idx] - num) < 1e-6 * max(1, abs(num))
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        for idx in _sample(p.shape, rng, 4):
            num = _numeric_grad(loss, p.data, idx)
            assert abs(grads[p.name][idx] - num) < 1e-6 * max(1, abs(num)), (p.name, idx)


def test_cross_entropy_values():
    loss_fn = nn.CrossEntropyLoss()
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss = loss_fn(logits, np.array([0, 2]))
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, np.log(3) / 2)
    grad = loss_fn.backward()
    np.testing.assert_allclose(grad, [[0, 0, 0], [1 / 6, 1 / 6, -1 / 3]], atol=1e-12)
    with pytest.raises(ValueError, match="targets"):
        loss_fn(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="targets"):
        loss_fn(logits, np.array([0.0, 1.0]))


def test_sgd_momentum_weight_decay():
    p = nn.Parameter(np.array([1.0, -2.0]), "w")
    opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    p.grad = np.array([0.5, 0.5])
    opt.step()
    g1 = np.array([0.5, 0.5]) + 0.01 * np.array([1.0, -2.0])
    np.testing.assert_allclose(p.data, [1.0, -2.0] - 0.1 * g1)
    before = p.data.copy()
    p.grad = np.array([0.5, 0.5])
    opt.step()
    g2 = 0.9 * g1 + np.array([0.5, 0.5]) + 0.01 * before
    np.testing.assert_allclose(p.data, before - 0.1 * g2)
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError, match="lr"):
        nn.SGD([p], lr=0)
    with pytest.raises(ValueError, match="momentum"):
        nn.SGD([p], lr=0.1, momentum=-1)


def test_sgd_and_accumulate_refuse_a_mismatched_gradient():
    w = nn.Parameter(np.ones((4, 3, 3, 3), np.float32), "0.weight")
    b = nn.Parameter(np.ones(4, np.float32), "0.bias")
    opt = nn.SGD([b, w], lr=0.1)
    b.grad = np.ones(4, np.float32)
    for grad, exc in ((np.ones(3, np.float32), ValueError), (np.ones(1, np.float32), ValueError),
                      (np.ones((4, 3, 3, 3)), TypeError), ([1.0], TypeError)):
        w.grad = grad
        with pytest.raises(exc, match=r"'0\.weight'"):
            opt.step()
        assert (w.data == 1).all() and (b.data == 1).all()  # no parameter was updated
    w.grad = None
    with pytest.raises(ValueError, match=r"'0\.weight'.*\(4, 3, 3, 3\).*\(3,\)"):
        w.accumulate(np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"'0\.weight'.*float32.*float64"):
        w.accumulate(np.ones((4, 3, 3, 3)))
    assert w.grad is None


@pytest.mark.parametrize("params", [None, 3, nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)),
                                    nn.Parameter(np.ones(2), "w")])
def test_sgd_params_must_be_parameters(params):
    with pytest.raises(TypeError, match=r"params.*parameters\(\)"):
        nn.SGD(params, lr=0.1)


def test_training_reduces_loss():
    """A few SGD steps on fixed data (64 digits) clearly lower the loss."""
    from sklearn.datasets import load_digits

    from fastconv import models
    digits = load_digits()
    x = (digits.images[:64, None] / 16.0).astype(np.float32)
    y = digits.target[:64]
    model = models.digits_cnn(rng=0, dropout=0.0)
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(15):
        losses.append(loss_fn(model(x), y))
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------
# Construction, repr, counting, shapes
# --------------------------------------------------------------------------

def test_conv2d_parameters_and_repr():
    conv = nn.Conv2d(3, 10, 5, rng=0)
    assert conv.num_parameters() == 760
    assert conv.weight.shape == (10, 3, 5, 5) and conv.bias.shape == (10,)
    assert conv.weight.dtype == np.float32
    assert repr(conv) == "Conv2d(3, 10, kernel_size=5, stride=1)"
    assert "groups=2" in repr(nn.Conv2d(4, 4, 3, groups=2))
    # He init: std sqrt(2 / fan_in)
    big = nn.Conv2d(64, 64, 3, rng=0)
    assert abs(big.weight.data.std() - np.sqrt(2 / (64 * 9))) < 0.01 * np.sqrt(2 / (64 * 9)) * 10
    # seeding
    a = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(5)).weight.data
    b = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(5)).weight.data
    np.testing.assert_array_equal(a, b)
    nn.manual_seed(3)
    c = nn.Conv2d(3, 4, 3).weight.data
    nn.manual_seed(3)
    np.testing.assert_array_equal(c, nn.Conv2d(3, 4, 3).weight.data)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, rng=-1), ValueError, "rng"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, rng="a"), TypeError, "rng"),
    (dict(in_channels=2**30, out_channels=2**30, kernel_size=3, init="zeros"), ValueError,
     r"weight of shape \(1073741824, 1073741824, 3, 3\)"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), ValueError, "in_channels"),
    (dict(in_channels=2.0, out_channels=4, kernel_size=3), TypeError, "in_channels"),
    (dict(in_channels=3, out_channels=-1, kernel_size=3), ValueError, "out_channels"),
    (dict(in_channels=3, out_channels=4, kernel_size=0), ValueError, "kernel_size"),
    (dict(in_channels=3, out_channels=6, kernel_size=3, groups=2), ValueError, "groups"),
    (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), ValueError, "groups"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=0), ValueError, "stride"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=-1), ValueError, "padding"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="full"), ValueError, "padding"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding="same"),
     ValueError, "same"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, algorithm="fft"), ValueError, "algorithm"),
    (dict(in_channels=3, out_channels=4, kernel_size=5, algorithm="winograd"),
     ValueError, "winograd"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, dtype=np.int32), TypeError, "dtype"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, bias=1), TypeError, "bias"),
])
def test_conv2d_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nn.Conv2d(**kwargs)


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), ("a", TypeError), (1.5, TypeError),
                                        (True, TypeError)])
def test_manual_seed_errors(seed, exc):
    with pytest.raises(exc, match="seed"):
        nn.manual_seed(seed)
    with pytest.raises(exc, match="rng"):
        nn.Dropout(0.5, rng=seed)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.AvgPool2d(0)
    with pytest.raises(TypeError, match="layer 1"):
        nn.Sequential(nn.ReLU(), "relu")
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="3 input channels"):
        conv(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(TypeError):  # the API refuses mixed dtypes
        conv(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(4, 2)(np.zeros((2, 5), np.float32))


def test_output_shapes_match_forward(rng):
    model = _small_net(rng)
    x = rng.standard_normal((2, 1, 8, 8))
    assert model.output_shape(x.shape) == model(x).shape == (2, 5)
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    z = rng.standard_normal((1, 2, 8, 8))
    assert pool.output_shape(z.shape) == pool(z).shape
    with pytest.raises(ValueError):
        nn.Conv2d(1, 1, 9).output_shape((1, 1, 8, 8))


def test_summary():
    model = _small_net(np.random.default_rng(0), dtype=np.float32)
    s = model.summary((1, 8, 8))
    shapes = [row[2] for row in s.rows]
    assert shapes == [(None, 3, 8, 8), (None, 3, 8, 8), (None, 3, 4, 4), (None, 4, 4, 4),
                      (None, 4, 4, 4), (None, 4, 2, 2), (None, 16), (None, 5)]
    assert s.total_params == model.num_parameters() == 30 + 112 + 85
    assert s.trainable_params == s.total_params
    assert "Total params: 227" in s and "(None, 4, 2, 2)" in s
    assert repr(s) == str(s)
    batched = model.summary((7, 1, 8, 8))
    assert batched.output_shape == (7, 5)
    model[0].weight.requires_grad = False
    assert model.summary((1, 8, 8)).trainable_params == 227 - 27
    with pytest.raises(ValueError, match="layer 0"):
        model.summary((2, 8, 8))


def test_train_eval_and_repr():
    model = _small_net(np.random.default_rng(0))
    assert model.eval() is model and not model[0].training
    model.train()
    assert all(layer.training for layer in model)
    text = repr(model)
    assert text.startswith("Sequential(") and "(7): Linear(in_features=16, out_features=5)" in text
    assert [p.name for p in model.parameters()][:2] == ["0.weight", "0.bias"]


def test_to_dtype(rng):
    model = _small_net(rng, dtype=np.float32)
    model.to(dtype=np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(rng.standard_normal((1, 1, 8, 8))).dtype == np.float64
    with pytest.raises(ValueError, match="device"):
        model.to("tpu")


# --------------------------------------------------------------------------
# State files
# --------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path, rng):
    a = _small_net(np.random.default_rng(1), dtype=np.float32)
    b = _small_net(np.random.default_rng(2), dtype=np.float32)
    path = tmp_path / "state.npz"
    a.save_state(path)
    b.load_state(path)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(p.name for p in a.parameters())


def test_load_state_mismatch(tmp_path):
    small = _small_net(np.random.default_rng(1), dtype=np.float32)
    path = tmp_path / "state.npz"
    small.save_state(path)
    other = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(24, 5))
    before = [p.data.copy() for p in other.parameters()]
    with pytest.raises(ValueError, match=r"'3\.weight'.*\(4, 3, 3, 3\).*\(6, 3, 3, 3\)"):
        other.load_state(path)
    for p, old in zip(other.parameters(), before):  # untouched
        np.testing.assert_array_equal(p.data, old)
    with pytest.raises(ValueError, match="missing"):
        nn.Sequential(nn.Linear(2, 2)).load_state(path)
    with pytest.raises(ValueError, match="dtype"):
        _small_net(np.random.default_rng(1), dtype=np.float64).load_state(path)


def test_load_state_corrupt(tmp_path):
    model = _small_net(np.random.default_rng(1), dtype=np.float32)
    path = tmp_path / "state.npz"
    model.save_state(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cannot read"):
        model.load_state(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(ValueError, match="cannot read"):
        model.load_state(garbage)
    # flip bytes inside the compressed member data: CRC/format errors, still ValueError
    broken = bytearray(data)
    for i in range(200, min(len(broken) - 200, 1200)):
        broken[i] ^= 0x5A
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(broken))
    with pytest.raises(ValueError):
        model.load_state(bad)
    with pytest.raises(FileNotFoundError):
        model.load_state(tmp_path / "missing.npz")


def test_load_state_of_an_npy_file(tmp_path):
    model = _small_net(np.random.default_rng(1), dtype=np.float32)
    path = tmp_path / "weights.npy"
    np.save(path, model[0].weight.data)
    with pytest.raises(ValueError, match=r"weights\.npy.*not an \.npz state file"):
        model.load_state(path)


# --------------------------------------------------------------------------
# Settings (fastconv.config)
# --------------------------------------------------------------------------

def test_config_takes_numpy_integers():
    from fastconv import config
    before = config.workspace_bytes, config.num_threads
    try:
        config.workspace_bytes = np.int64(2**20)
        config.num_threads = np.int64(1)
        assert config.workspace_bytes == 2**20 and type(config.workspace_bytes) is int
        assert config.num_threads == 1 and type(config.num_threads) is int
        with pytest.raises(TypeError, match="num_threads"):
            config.num_threads = True
        with pytest.raises(TypeError, match="workspace_bytes"):
            config.workspace_bytes = 2.0**20
    finally:
        config.workspace_bytes, config.num_threads = before


def test_to_cuda_needs_cupy():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="CuPy"):
        nn.Linear(2, 2).to("cuda")
    with pytest.raises(TypeError, match="CuPy"):
        nn.Dropout(0.5)(_FakeDeviceArray())


class _FakeDeviceArray:
    __cuda_array_interface__ = {}


_SIMULATOR_SCRIPT = r"""
import numpy as np
from numba import cuda
from fastconv import nn
rng = np.random.default_rng(0)
model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2))
x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
g = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
y_cpu = model(x)
gx_cpu = model.backward(g)
gw_cpu, gb_cpu = model[0].weight.grad.copy(), model[0].bias.grad.copy()
for p in model.parameters():
    p.data, p.grad = cuda.to_device(p.data), None
y = model(cuda.to_device(x))
gx = model.backward(cuda.to_device(g))
assert not isinstance(y, np.ndarray) and not isinstance(gx, np.ndarray)
np.testing.assert_allclose(y.copy_to_host(), y_cpu, atol=1e-5)
np.testing.assert_allclose(gx.copy_to_host(), gx_cpu, atol=1e-5)
np.testing.assert_allclose(model[0].weight.grad.copy_to_host(), gw_cpu, atol=1e-5)
np.testing.assert_allclose(model[0].bias.grad.copy_to_host(), gb_cpu, atol=1e-5)
print("ok")
"""


@pytest.mark.cuda
def test_layers_take_the_cuda_path_under_the_simulator():
    """Conv2d, ReLU and MaxPool2d on device arrays run the CUDA kernels (here Numba's
    CUDA simulator, in a subprocess) and agree with the CPU."""
    import os
    import subprocess
    import sys
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", _SIMULATOR_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------- reliability (issue-found)

@pytest.mark.parametrize("named", [True, False])
def test_sgd_checks_every_parameter_before_moving_any(named):
    """A read-only parameter once raised NumPy's "output array is read-only" after the
    parameters before it had moved and their momentum buffers were stored."""
    a = nn.Parameter(np.ones(3), "a" if named else "")
    b = nn.Parameter(np.ones(3), "b" if named else "")
    b.data.flags.writeable = False
    a.grad, b.grad = np.ones(3), np.ones(3)
    opt = nn.SGD([a, b], lr=0.5, momentum=0.9)
    with pytest.raises(ValueError, match=r"'b'.*read-only" if named else r"params\[1\].*read-only"):
        opt.step()
    np.testing.assert_array_equal(a.data, np.ones(3))
    assert opt._buffers == {}
    b.data = b.data.copy()
    opt.step()
    np.testing.assert_array_equal(a.data, np.full(3, 0.5))


@pytest.mark.parametrize("data, grad, exc, match", [
    (np.ones(3, np.int64), np.ones(3, np.int64), TypeError, "float32 or float64"),
    ([1.0, 1.0, 1.0], np.ones(3), TypeError, "list"),
    (np.ones(3), np.ones(4), ValueError, r"shape \(3,\)"),
    (np.ones(3), np.ones(3, np.float32), TypeError, "dtype float64"),
    (np.ones(3), object(), TypeError, "object"),
])
def test_sgd_names_the_bad_parameter_and_moves_none(data, grad, exc, match):
    good = nn.Parameter(np.ones(3), "0.weight")
    bad = nn.Parameter(data, "1.weight")
    good.grad, bad.grad = np.ones(3), grad
    opt = nn.SGD([good, bad], lr=0.5, momentum=0.9)
    with pytest.raises(exc, match=match) as info:
        opt.step()
    assert "'1.weight'" in str(info.value)
    np.testing.assert_array_equal(good.data, np.ones(3))
    assert opt._buffers == {}


def test_sgd_refuses_a_momentum_buffer_of_a_replaced_parameter():
    a, b = nn.Parameter(np.ones(3), "a"), nn.Parameter(np.ones(2), "b")
    opt = nn.SGD([a, b], lr=0.5, momentum=0.9)
    a.grad, b.grad = np.ones(3), np.ones(2)
    opt.step()
    b.data, b.grad = np.ones(5), np.ones(5)
    before = a.data.copy()
    with pytest.raises(ValueError, match="'b'.*momentum buffer"):
        opt.step()
    np.testing.assert_array_equal(a.data, before)


def test_a_cpu_torch_tensor_is_not_called_a_gpu_array():
    torch = pytest.importorskip("torch")
    p = nn.Parameter(np.ones(3, np.float32), "w")
    p.grad = torch.ones(3)
    for call in (nn.SGD([p], lr=0.1).step, lambda: p.check_grad(p.grad),
                 lambda: p.accumulate(torch.ones(3))):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert "torch.Tensor" in message and "NumPy" in message, message
        assert "cuda" not in message.lower().replace("cupy (or other cuda)", ""), message
    np.testing.assert_array_equal(p.data, np.ones(3))
    assert "torch.Tensor" in repr(nn.Parameter(torch.ones(2), "t"))


@pytest.mark.parametrize("dtype", [np.int64, np.int8, bool, np.float16])
@pytest.mark.parametrize("training", [True, False])
def test_dropout_refuses_non_float_input(dtype, training):
    """The 1/(1-p) scale was truncated to 1 on integers: 0/1 values came out."""
    d = nn.Dropout(0.3, rng=0).train(training)
    with pytest.raises(TypeError, match="float32 or float64"):
        d(np.ones(8, dtype))


@pytest.mark.parametrize("shape", [(), []])
def test_summary_of_an_empty_shape_is_a_value_error(shape, rng):
    model = _small_net(rng)
    with pytest.raises(ValueError):
        model.output_shape(shape)
    with pytest.raises(ValueError, match="layer 0"):
        model.summary(shape)


def _kept_input_layers(rng):
    """(layer, x, grad_out shape) for every layer that keeps its forward input."""
    return [
        (nn.Conv2d(3, 4, 3, padding=1, rng=0, dtype=np.float64), rng.standard_normal((2, 3, 6, 6)),
         (2, 4, 6, 6)),
        (nn.MaxPool2d(2), rng.standard_normal((2, 3, 6, 6)), (2, 3, 3, 3)),
        (nn.ReLU(), rng.standard_normal((2, 3, 6, 6)), (2, 3, 6, 6)),
        (nn.Linear(5, 4, rng=0, dtype=np.float64), rng.standard_normal((6, 5)), (6, 4)),
        (nn.ConvTranspose2d(3, 4, 3, stride=2, rng=0, dtype=np.float64),
         rng.standard_normal((2, 3, 4, 4)), (2, 4, 9, 9)),
    ]


@pytest.mark.parametrize("change", ["refill", "first_rows", "nan_in_place", "view"])
@pytest.mark.parametrize("index", range(5),
                         ids=["Conv2d", "MaxPool2d", "ReLU", "Linear", "ConvTranspose2d"])
def test_a_kept_input_modified_before_backward_is_refused(index, change, rng):
    """Conv2d's weight gradient once came silently from data a loader had refilled the
    input buffer with (torch: "modified by an inplace operation")."""
    layer, x, go_shape = _kept_input_layers(rng)[index]
    if change == "view":        # a non-contiguous input, modified through its base
        base = np.ascontiguousarray(np.swapaxes(x, -1, -2))
        x = np.swapaxes(base, -1, -2)
    layer.forward(x)
    if change == "refill":
        x[...] = rng.standard_normal(x.shape)
    elif change == "first_rows":
        x[: 1 + x.shape[0] // 4] += 1.0
    elif change == "nan_in_place":
        x.reshape(-1)[:: max(1, x.size // 10)] = np.nan
    else:
        base += 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        layer.backward(np.ones(go_shape))


@pytest.mark.parametrize("index", range(5),
                         ids=["Conv2d", "MaxPool2d", "ReLU", "Linear", "ConvTranspose2d"])
def test_an_unchanged_kept_input_passes_even_with_nan(index, rng):
    layer, x, go_shape = _kept_input_layers(rng)[index]
    x.reshape(-1)[::3] = np.nan          # NaN != NaN must not read as a change
    layer.forward(x)
    layer.backward(np.ones(go_shape))
    layer.forward(x)                     # a new forward keeps the new input
    x += 1.0
    layer.forward(x)
    layer.backward(np.ones(go_shape))


def test_a_kept_torch_input_modified_in_place_is_refused():
    torch = pytest.importorskip("torch")
    layer = nn.Conv2d(3, 4, 3, rng=0)
    x = torch.ones((1, 3, 6, 6))
    layer.forward(x)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        layer.backward(np.ones((1, 4, 4, 4), np.float32))
