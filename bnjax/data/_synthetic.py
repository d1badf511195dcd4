"""Gaussian-blob classification data for fast, deterministic tests and smoke runs."""

from __future__ import annotations

import math

import numpy as np

from bnjax.data._raw import RawDataset


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"make_synthetic: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def make_synthetic(
    num_samples: int = 1000,
    num_features: int = 20,
    num_classes: int = 3,
    seed: int = 0,
    *,
    num_test: int = 200,
    separation: float = 3.0,
) -> RawDataset:
    """Draws isotropic Gaussian blobs, one per class, from ``np.random.default_rng(seed)``.

    Class centers ``mu_k ~ N(0, s^2 I)`` with ``s = separation / sqrt(2 * num_features)``, so the expected
    distance between two centers is about ``separation`` noise standard deviations; an example of class
    ``k`` is ``mu_k + N(0, I)``. Labels cycle through the classes (balanced to within one) and are then
    shuffled. Train and test examples come from the same blobs.

    Args:
      num_samples: number of training examples (default 1000).
      num_features: input dimension D (default 20).
      num_classes: number of blobs/classes (default 3).
      seed: generator seed (default 0); the same arguments always give the same arrays.
      num_test: number of test examples (default 200, may be 0).
      separation: center distance in noise standard deviations (default 3.0); larger is easier.

    Returns:
      ``RawDataset`` named ``"synthetic"``: ``x_train`` float32 ``(num_samples, D)``, ``y_train`` int64
      ``(num_samples,)``, ``x_test`` float32 ``(num_test, D)``, ``y_test`` int64 ``(num_test,)``.

    Raises:
      ValueError: a size below its minimum, a negative seed, or a non-finite or negative separation.
    """
    num_samples = _positive_int("num_samples", num_samples)
    num_features = _positive_int("num_features", num_features)
    num_classes = _positive_int("num_classes", num_classes)
    num_test = _positive_int("num_test", num_test, minimum=0)
    seed = _positive_int("seed", seed, minimum=0)
    if (
        isinstance(separation, bool)
        or not isinstance(separation, (int, float))
        or not (math.isfinite(separation) and separation >= 0)
    ):
        raise ValueError(f"make_synthetic: separation must be a finite number >= 0, got {separation!r}")
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=separation / math.sqrt(2 * num_features), size=(num_classes, num_features))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes)
        x = centers[y] + rng.normal(size=(n, num_features))
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(num_samples)
    x_test, y_test = draw(num_test)
    return RawDataset("synthetic", x_train, y_train, x_test, y_test, num_classes=num_classes)
