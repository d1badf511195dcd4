"""The container every loader returns: train and test arrays in their stored dtype, before preprocessing."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class RawDataset:
    """Arrays exactly as a loader read or generated them (no scaling, no split into validation).

    Attributes:
      name: short dataset name, e.g. ``"fashion_mnist"``.
      x_train: ``(N_train, *example_shape)`` inputs in the stored dtype (``uint8`` pixels for the image
        sets, ``float64`` for MNIST-1D, ``float32`` for synthetic data).
      y_train: ``(N_train,)`` integer class labels in ``[0, num_classes)``.
      x_test: ``(N_test, *example_shape)``, same dtype and example shape as ``x_train``.
      y_test: ``(N_test,)`` integer labels.
      num_classes: number of classes.

    ``eq=False``: comparing arrays with ``==`` is ambiguous, so instances compare by identity.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
                raise TypeError(f"RawDataset {self.name!r}: x_{part} and y_{part} must be NumPy arrays")
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    f"RawDataset {self.name!r}: y_{part} must be a 1-D integer array, got shape {y.shape} "
                    f"dtype {y.dtype}"
                )
            if x.ndim < 2 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"RawDataset {self.name!r}: x_{part} must have shape (N, ...) with N = len(y_{part}) = "
                    f"{y.shape[0]}, got {x.shape}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"RawDataset {self.name!r}: train and test examples differ in shape: "
                f"{self.x_train.shape[1:]} vs {self.x_test.shape[1:]}"
            )
        if self.num_classes < 1:
            raise ValueError(f"RawDataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
