"""A tiny classification problem and configuration shared by the training tests.

Sharing them lets the tests reuse compiled programs (bnjax.train caches them per configuration).
"""

from __future__ import annotations

import numpy as np

from bnjax import MLPSpec
from bnjax.data import Dataset
from bnjax.train import TrainConfig


def toy_data(seed: int = 0, n_train: int = 64, d: int = 6, classes: int = 3) -> Dataset:
    """Gaussian blobs: 64 train, 24 val, 24 test examples of 6 features, 3 classes."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, d)) * 1.5

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y

    (xtr, ytr), (xv, yv), (xt, yt) = split(n_train), split(24), split(24)
    return Dataset(xtr, ytr, xv, yv, xt, yt, name="toy", num_classes=classes)


TOY_SPEC = MLPSpec(in_features=6, hidden=(8, 8), num_classes=3, norm="batch", weight_scale=0.3)
TOY_CFG = TrainConfig(learning_rate=1e-2, batch_size=16, epochs=2, eval_train_samples=40, eval_batch_size=16)


# The smallest study data: 300 generated MNIST-1D samples, 100/50/50 train/val/test (for `bnjax run` tests).
TINY_MNIST1D_TOML = """
[data]
name = "mnist1d"
loader = { num_samples = 300 }
num_train = 100
num_val = 50
num_test = 50
"""
