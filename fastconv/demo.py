"""``python -m fastconv demo``: train a small CNN on scikit-learn's digits with fastconv.

The 1,797 8x8 handwritten digits that ship with scikit-learn (no download) are split
80/20, stratified, with a fixed seed; `fastconv.models.digits_cnn` (three 3x3
convolutions, two max poolings, two fully connected layers) is trained with SGD +
momentum and a cosine learning-rate schedule, every convolution, pooling and ReLU
running on fastconv's kernels (forward and backward). It prints a progress bar per
epoch, the test accuracy (above 97% with the defaults), and writes to ``--out``:

    curves.png        training loss and train/test accuracy per epoch
    filters.png       the learned 3x3 filters of the first convolution
    feature_maps.png  one test digit through each convolution (after its ReLU)
    confusion.png     the test set's confusion matrix
    metrics.json      accuracies, losses, timings, device
    model.npz         the trained weights (`Sequential.load_state`)

It runs on the GPU when `fastconv.cuda.interop.cuda_available()` says one is usable
(not under the CUDA simulator) and CuPy is installed; otherwise on the CPU.

    python -m fastconv demo [--epochs 15] [--out ./fastconv-demo] [--seed 0] [--quick]

BLAS (used by im2col and Linear) runs single-threaded during the demo
(``--blas-threads``): its matrices are tiny, and multi-threaded OpenBLAS only
contends with numba's kernel threads (7x slower on a busy 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict

import numpy as np

from . import models, nn

DEFAULT_OUT = "fastconv-demo"


def pick_device(requested="auto"):
    """("cpu" | "cuda", reason)."""
    if requested == "cpu":
        return "cpu", "--device cpu"
    reason = None
    try:
        import numba
        from .cuda import interop
        usable, why = interop.cuda_available()
        if numba.config.ENABLE_CUDASIM:
            usable, why = False, "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1); too slow to train"
    except Exception as exc:  # no numba-cuda, no driver, CUDA backend not installed
        usable, why = False, f"CUDA backend unavailable ({type(exc).__name__}: {exc})"
    if usable:
        try:
            import cupy  # noqa: F401
        except ImportError:
            usable, why = False, "a GPU is usable but CuPy is not installed (pip install 'fastconv[cuda]')"
    if usable:
        return "cuda", why
    reason = why
    if requested == "cuda":
        raise SystemExit(f"--device cuda: no usable GPU: {reason}")
    return "cpu", reason


def load_data(seed, test_size=0.2):
    """Digits as float32 (N, 1, 8, 8) in [0, 1]; stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)


def blas_threads(n):
    """A context limiting BLAS (NumPy's matmul, which im2col and Linear use) to `n` threads.

    The demo's matrices are tiny (batch 32, at most 64 channels on 8x8 images): there,
    OpenBLAS's worker threads only spin against numba's kernel threads, and on a busy
    2-core machine that made training ~7x slower. numba's kernels keep all their threads."""
    import contextlib
    if not n:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _host(arr):
    return arr if isinstance(arr, np.ndarray) else arr.get()


def evaluate(model, x, y, batch_size=512):
    """(accuracy, predictions) in eval mode."""
    model.eval()
    preds = []
    for i in range(0, len(x), batch_size):
        preds.append(_host(model(x[i:i + batch_size]).argmax(axis=1)))
    model.train()
    preds = np.concatenate(preds)
    return float((preds == _host(y)).mean()), preds


def train(model, x_train, y_train, x_test, y_test, epochs, batch_size, lr, seed,
          progress=True, log=print):
    """SGD (momentum 0.9, weight decay 5e-4) with a cosine schedule. Returns history."""
    from tqdm.auto import tqdm
    xp = np if isinstance(x_train, np.ndarray) else __import__("cupy")
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order_rng = np.random.default_rng(seed)
    n = len(x_train)
    steps = math.ceil(n / batch_size)
    history = {"loss": [], "train_acc": [], "test_acc": [], "epoch_s": []}
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        opt.lr = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
        order = order_rng.permutation(n)
        total_loss = correct = seen = 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1:>2}/{epochs}", unit="batch",
                   disable=not progress, leave=True, file=sys.stdout, dynamic_ncols=True)
        for step in range(steps):
            idx = xp.asarray(order[step * batch_size:(step + 1) * batch_size])
            xb, yb = x_train[idx], y_train[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            total_loss += loss * len(idx)
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(idx)
            bar.set_postfix(OrderedDict(loss=f"{total_loss / seen:.4f}",
                                        acc=f"{correct / seen:.3f}"), refresh=False)
            bar.update(1)
        test_acc, _ = evaluate(model, x_test, y_test)
        history["loss"].append(total_loss / seen)
        history["train_acc"].append(correct / seen)
        history["test_acc"].append(test_acc)
        history["epoch_s"].append(time.perf_counter() - t0)
        bar.set_postfix(OrderedDict(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                                    test_acc=f"{test_acc:.3f}"))
        bar.close()
        if not progress:
            log(f"epoch {epoch + 1}/{epochs}: loss {total_loss / seen:.4f}, "
                f"train acc {correct / seen:.3f}, test acc {test_acc:.3f}")
    return history


# --------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history, path):
    plt = _plt()
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, history["loss"], "o-", color="tab:red")
    a.set(title="training loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    a.set_yscale("log")
    a.grid(alpha=0.3)
    b.plot(epochs, np.array(history["train_acc"]) * 100, "o-", label="train (with dropout)")
    b.plot(epochs, np.array(history["test_acc"]) * 100, "s-", label="test")
    b.set(title="accuracy", xlabel="epoch", ylabel="%")
    b.grid(alpha=0.3)
    b.legend(loc="lower right")
    final = history["test_acc"][-1] * 100
    b.annotate(f"{final:.1f}%", (epochs[-1], final), textcoords="offset points",
               xytext=(-10, -18), ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_filters(weight, path, title="first-layer filters"):
    plt = _plt()
    w = _host(weight)
    k = w.shape[0]
    cols = min(8, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.5), squeeze=False)
    lim = float(np.abs(w).max()) or 1.0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(w[i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"{i}", fontsize=8)
    fig.suptitle(f"{title} ({w.shape[2]}x{w.shape[3]}; red +, blue -)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def feature_maps(model, image):
    """[(label, (C, H, W) activations)] of one image after each Conv2d (+ its ReLU)."""
    model.eval()
    x = image[None]
    maps = []
    layers = list(model)
    conv_index = 0
    for i, layer in enumerate(layers):
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            conv_index += 1
            label = f"conv{conv_index}"
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU):
                continue
            maps.append((label, _host(x[0])))
        elif isinstance(layer, nn.ReLU) and i > 0 and isinstance(layers[i - 1], nn.Conv2d):
            maps.append((f"conv{conv_index} + ReLU", _host(x[0])))
    model.train()
    return maps


def plot_feature_maps(model, image, label, path, max_channels=16):
    plt = _plt()
    maps = feature_maps(model, image)
    cols = max_channels
    fig, axes = plt.subplots(len(maps), cols + 1, figsize=(1.0 * (cols + 1), 1.15 * len(maps) + 0.6),
                             squeeze=False)
    for r, (name, fmap) in enumerate(maps):
        ax = axes[r, 0]
        ax.imshow(_host(image)[0], cmap="gray_r", interpolation="nearest")
        ax.set_title("input" if r == 0 else "", fontsize=8)
        ax.set_ylabel(f"{name}\n{fmap.shape[0]}@{fmap.shape[1]}x{fmap.shape[2]}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if r:
            ax.set_visible(True)
        for c in range(cols):
            ax = axes[r, c + 1]
            ax.axis("off")
            if c < fmap.shape[0]:
                ax.imshow(fmap[c], cmap="viridis", interpolation="nearest")
    fig.suptitle(f"feature maps of a test digit (label {label}); first {max_channels} channels "
                 "per convolution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_matrix(y_true, y_pred, classes=10):
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def plot_confusion(cm, path, accuracy):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"test confusion matrix (accuracy {accuracy * 100:.1f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastconv demo",
                                description="Train a small CNN on scikit-learn's 8x8 digits "
                                            "with fastconv's kernels and plot what it learned.")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 15; 3 with --quick)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT}/)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split, weights and batches (0 <= seed < 2**32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (cosine schedule)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads for the small matrix products (default 1; 0: BLAS's default)")
    p.add_argument("--quick", action="store_true",
                   help="a cut-down run for tests: 3 epochs (accuracy is lower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; one line per epoch")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.quick else 15
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.blas_threads < 0:
        p.error(f"--blas-threads must be >= 0, got {args.blas_threads}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a finite number > 0, got {args.lr}")
    if not 0 <= args.seed < 2**32:  # scikit-learn's split takes no other seed
        p.error(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
    return args


def run(epochs=15, out=DEFAULT_OUT, seed=0, batch_size=32, lr=0.05, device="auto",
        progress=True, log=print):
    """Train, evaluate, plot. Returns the metrics dict (also written to metrics.json)."""
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)  # before training: a bad folder should not cost a run
    device, why = pick_device(device)
    log(f"fastconv demo: training digits_cnn on scikit-learn's 8x8 digits on the "
        f"{'GPU' if device == 'cuda' else 'CPU'} ({why})")
    x_train, x_test, y_train, y_test = load_data(seed)
    log(f"data: {len(x_train)} training and {len(x_test)} test images (1x8x8), "
        f"stratified split, seed {seed}")
    model = models.digits_cnn(rng=np.random.default_rng(seed))
    if device == "cuda":
        import cupy
        model.to("cuda")
        x_train, y_train = cupy.asarray(x_train), cupy.asarray(y_train)
        x_test_dev, y_test_dev = cupy.asarray(x_test), cupy.asarray(y_test)
    else:
        x_test_dev, y_test_dev = x_test, y_test
    log(f"model: {model.num_parameters():,} parameters; {epochs} epochs, batch {batch_size}, "
        f"SGD momentum 0.9, lr {lr} cosine")
    history = train(model, x_train, y_train, x_test_dev, y_test_dev, epochs, batch_size, lr,
                    seed, progress=progress, log=log)
    test_acc, preds = evaluate(model, x_test_dev, y_test_dev)
    t_train = time.perf_counter() - t_start

    pictures = {name: os.path.join(out, name) for name in
                ("curves.png", "filters.png", "feature_maps.png", "confusion.png")}
    plot_curves(history, pictures["curves.png"])
    plot_filters(model[0].weight.data, pictures["filters.png"])
    sample = int(np.flatnonzero(y_test == 8)[0]) if (y_test == 8).any() else 0
    plot_feature_maps(model, x_test_dev[sample], int(y_test[sample]), pictures["feature_maps.png"])
    cm = confusion_matrix(y_test, preds)
    plot_confusion(cm, pictures["confusion.png"], test_acc)
    model.save_state(os.path.join(out, "model.npz"))
    metrics = {"device": device, "epochs": epochs, "seed": seed, "test_accuracy": test_acc,
               "train_accuracy": history["train_acc"][-1], "final_loss": history["loss"][-1],
               "history": history, "train_seconds": t_train,
               "first_epoch_seconds": history["epoch_s"][0],
               "total_seconds": time.perf_counter() - t_start,
               "confusion_matrix": cm.tolist()}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    log(f"test accuracy: {test_acc * 100:.2f}% ({int(round(test_acc * len(y_test)))}/{len(y_test)}) "
        f"after {epochs} epochs")
    log(f"time: {metrics['total_seconds']:.1f} s in all (first epoch {history['epoch_s'][0]:.1f} s, "
        "which includes compiling the kernels unless numba's cache has them)")
    log(f"pictures in {os.path.abspath(out)}{os.sep}: " + ", ".join(pictures))
    return metrics


def main(argv=None) -> int:
    """CLI entry: ``fastconv.demo.main(["--epochs", "5", "--out", "dir"])``."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    # the folder is checked before training, so a bad --out fails at once
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"fastconv demo: cannot create --out {args.out}: {exc.strerror or exc}") from None
    if not os.access(args.out, os.W_OK):
        raise SystemExit(f"fastconv demo: --out {args.out} is not writable")
    with blas_threads(args.blas_threads):
        run(epochs=args.epochs, out=args.out, seed=args.seed, batch_size=args.batch_size,
            lr=args.lr, device=args.device, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
