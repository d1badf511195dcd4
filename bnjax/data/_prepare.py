"""Deterministic train/validation/test splits and preprocessing: the ``Dataset`` the trainer consumes."""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from bnjax.data._raw import RawDataset

CENTER_OPTIONS = ("train_mean", "none")
STD_FLOOR = 1e-8
"""Features whose training standard deviation is below this (e.g. MNIST's always-black border pixels) are
divided by 1 instead when standardizing, so they stay 0 instead of becoming NaN or huge."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Split and preprocessed arrays, ready for training.

    Attributes:
      x_train, x_val, x_test: float32 inputs ``(N_split, *input_shape)``.
      y_train, y_val, y_test: int32 labels ``(N_split,)`` in ``[0, num_classes)``.
      name: dataset name, e.g. ``"cifar10"``.
      num_classes: number of classes.
      preprocessing: the ``prepare`` options that produced the arrays (read-only mapping; empty when the
        dataset was built by hand).

    ``input_shape`` (one example's shape) and ``num_features`` (its size) are derived properties.
    ``describe()``/``repr`` give the sizes without printing arrays. ``eq=False``: instances compare by
    identity, since ``==`` on arrays is ambiguous.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    preprocessing: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = self.x_train.shape[1:]
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise TypeError(f"Dataset {self.name!r}: x_{part} must be a float32 NumPy array, got {_desc(x)}")
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise TypeError(f"Dataset {self.name!r}: y_{part} must be a 1-D int32 NumPy array, got {_desc(y)}")
            if x.shape[0] != y.shape[0] or x.shape[1:] != shape:
                raise ValueError(
                    f"Dataset {self.name!r}: x_{part} has shape {x.shape}, expected ({y.shape[0]}, *{shape}) "
                    f"to match y_{part} and x_train"
                )
        object.__setattr__(self, "preprocessing", types.MappingProxyType(dict(self.preprocessing)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example after preprocessing, e.g. ``(784,)`` flattened or ``(28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        """``prod(input_shape)``: the input size of a dense first layer."""
        return math.prod(self.input_shape)

    def describe(self) -> str:
        """One line: name, classes, input shape, and the size of each split."""
        return (
            f"Dataset {self.name!r}: {self.num_classes} classes, input {self.input_shape} float32; "
            f"train {len(self.y_train)}, val {len(self.y_val)}, test {len(self.y_test)}"
        )

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


def _desc(a: object) -> str:
    return f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _count(name: str, value: Any, lo: int, hi: int, hint: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"prepare: {name} must be an int in [{lo}, {hi}], got {value!r}") from None
    if not lo <= n <= hi:
        raise ValueError(f"prepare: {name}={n} is outside [{lo}, {hi}] {hint}")
    return n


def _preprocess(splits: tuple[np.ndarray, ...], *, flatten: bool, scale: float | None, center: str,
                standardize: bool) -> tuple[np.ndarray, ...]:
    """Steps 1-4 of :func:`prepare` on ``(x_train, x_val, x_test)``, statistics from ``x_train`` only."""
    def inputs(x: np.ndarray) -> np.ndarray:
        x = x.reshape(x.shape[0], int(np.prod(x.shape[1:]))) if flatten else x  # -1 fails for 0 rows
        x = x.astype(np.float32)
        return x * np.float32(scale) if scale is not None else x

    splits = tuple(inputs(x) for x in splits)
    if center == "train_mean":
        mean = splits[0].mean(axis=0, dtype=np.float64).astype(np.float32)
        splits = tuple(x - mean for x in splits)
    if standardize:
        # x_train is already centered, so the one-pass E[x^2] - E[x]^2 cannot cancel catastrophically (the
        # residual mean is float32 rounding); np.std's float64 two-pass copy took 14x longer on CIFAR-10.
        residual = splits[0].mean(axis=0, dtype=np.float64)
        var = np.square(splits[0]).mean(axis=0, dtype=np.float64) - residual**2
        std = np.sqrt(np.maximum(var, 0.0))
        std = np.where(std < STD_FLOOR, 1.0, std).astype(np.float32)
        splits = tuple(x / std for x in splits)
    return splits


def prepare(
    raw: RawDataset,
    *,
    num_train: int | None = None,
    num_val: int = 1000,
    num_test: int | None = None,
    seed: int = 0,
    flatten: bool = True,
    scale: float | None = None,
    center: str = "train_mean",
    standardize: bool = False,
) -> Dataset:
    """Splits ``raw`` into train/val/test and preprocesses the inputs, deterministically.

    Split: ``perm = np.random.default_rng(seed).permutation(N_train_raw)``; validation is the last
    ``num_val`` indices of ``perm``, training the first ``num_train`` (all remaining by default), in
    permuted order. Test is the first ``num_test`` raw test examples (all by default), in file order.
    On CIFAR-10, ``num_val=1000, num_test=1000, num_train=49000`` gives CS231n's split; ``num_train=1000``
    its small-training-set runs. Larger ``num_train`` with the same seed and ``num_val`` extends the
    smaller training set (prefixes of one permutation).

    Preprocessing, in this order, with statistics from the **training split only**:
      1. ``flatten``: reshape each example to 1-D (CIFAR NHWC rows become ``(3072,)`` ordered h, w, c).
      2. cast to float32, then multiply by ``scale`` if given (e.g. ``1/255`` for 8-bit images).
      3. ``center="train_mean"``: subtract the per-feature mean of ``x_train`` (accumulated in float64)
         from all three splits; ``"none"`` leaves the data as is.
      4. ``standardize``: divide all splits by the per-feature standard deviation of the (centered)
         training split (population std, ``ddof=0``); features with std < ``STD_FLOOR`` are divided by 1.

    Args:
      raw: the output of a loader.
      num_train: training examples kept, ``1 <= num_train <= N - num_val``; ``None``: all of them.
      num_val: validation examples carved from the raw training set, ``0 <= num_val < N`` (default 1000).
      num_test: test examples kept, ``0 <= num_test <= N_test``; ``None``: all.
      seed: seed of the split permutation (default 0).
      flatten: flatten examples to vectors (default True); otherwise keep e.g. ``(32, 32, 3)``.
      scale: positive finite factor applied after the float32 cast; ``None`` (default) leaves values.
      center: ``"train_mean"`` (default) or ``"none"``.
      standardize: also divide by the training standard deviation (default False); requires
        ``center="train_mean"``.

    Returns:
      ``Dataset`` with float32 inputs, int32 labels and ``preprocessing`` recording these options.

    Raises:
      ValueError: an option out of range or of the wrong kind (the message names the option and value),
        or labels outside ``[0, num_classes)``.
    """
    n = raw.x_train.shape[0]
    num_val = _count("num_val", num_val, 0, n - 1, f"(the {raw.name} training set has {n} examples)")
    available = n - num_val
    if num_train is None:
        num_train = available
    num_train = _count(
        "num_train", num_train, 1, available, f"({n} {raw.name} training examples minus num_val={num_val})"
    )
    n_test = raw.x_test.shape[0]
    num_test = n_test if num_test is None else num_test
    num_test = _count("num_test", num_test, 0, n_test, f"(the {raw.name} test set has {n_test} examples)")
    seed = _count("seed", seed, 0, 2**63 - 1, "")
    if not isinstance(flatten, bool):
        raise ValueError(f"prepare: flatten must be True or False, got {flatten!r}")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale > 0)
    ):
        raise ValueError(f"prepare: scale must be a positive finite number or None, got {scale!r}")
    if center not in CENTER_OPTIONS:
        raise ValueError(f"prepare: center must be one of {CENTER_OPTIONS}, got {center!r}")
    if not isinstance(standardize, bool):
        raise ValueError(f"prepare: standardize must be True or False, got {standardize!r}")
    if standardize and center != "train_mean":
        raise ValueError("prepare: standardize=True needs center='train_mean' (the std is taken about the mean)")
    for part, y in (("train", raw.y_train), ("test", raw.y_test)):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= raw.num_classes):
            raise ValueError(
                f"prepare: {raw.name} y_{part} has labels in [{int(y.min())}, {int(y.max())}], expected "
                f"[0, {raw.num_classes})"
            )

    perm = np.random.default_rng(seed).permutation(n)
    train_idx, val_idx = perm[:num_train], perm[n - num_val :]
    x_train, x_val, x_test = _preprocess(
        (raw.x_train[train_idx], raw.x_train[val_idx], raw.x_test[:num_test]), flatten=flatten, scale=scale,
        center=center, standardize=standardize)
    options = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "seed": seed,
        "flatten": flatten,
        "scale": scale,
        "center": center,
        "standardize": standardize,
    }
    return Dataset(
        x_train=x_train,
        y_train=raw.y_train[train_idx].astype(np.int32),
        x_val=x_val,
        y_val=raw.y_train[val_idx].astype(np.int32),
        x_test=x_test,
        y_test=raw.y_test[:num_test].astype(np.int32),
        name=raw.name,
        num_classes=raw.num_classes,
        preprocessing=options,
    )
