"""The 8x8 handwritten digits bundled with scikit-learn (UCI optdigits test set)."""

from __future__ import annotations

import numpy as np

from bnjax.data._raw import RawDataset

NUM_TEST = 450
"""Size of the fixed, stratified test split of the 1797 digits (25 %)."""


def load_digits() -> RawDataset:
    """Loads scikit-learn's 8x8 digits (shipped with the package, no download) with a fixed test split.

    The 1797 images are split once, stratified by class, with ``sklearn.model_selection.train_test_split(
    test_size=450, stratify=y, random_state=0)``; the split does not depend on any bnjax seed.

    Returns:
      ``RawDataset`` named ``"digits"``: ``x_train`` uint8 ``(1347, 64)``, ``y_train`` int64 ``(1347,)``,
      ``x_test`` uint8 ``(450, 64)``, ``y_test`` int64 ``(450,)``; pixel values 0..16 (4-bit intensities,
      row-major 8x8), labels 0..9; ``num_classes = 10``.
    """
    # Imported here: scikit-learn is only needed for this data set.
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    # The values are integral 0..16 stored as float64; uint8 is exact and keeps raw data in pixel form.
    x = x.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=NUM_TEST, stratify=y, random_state=0)
    return RawDataset("digits", x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), num_classes=10)
