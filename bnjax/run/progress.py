"""A tqdm progress bar per variant: epoch, loss and accuracy (mean over members) and an ETA."""

from __future__ import annotations

import sys
from typing import Any, Self

import numpy as np
from tqdm.auto import tqdm


def _nanmean(a: Any) -> float:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


class EpochBar:
    """Progress of one variant's ensemble; ``update(epoch, metrics)`` is the training callback's display half.

    Args:
      name: the variant's name.
      epochs: total epochs.
      members: ensemble size ``K`` (shown in the description).
      start: epochs already done (a resumed run).
      enabled: False gives a silent bar (tests, ``--quiet``).
    """

    def __init__(self, name: str, epochs: int, members: int, *, start: int = 0, enabled: bool = True) -> None:
        self.bar = tqdm(total=epochs, initial=start, desc=f"{name} ({members} member{'s' * (members != 1)})",
                        unit="epoch", disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=True)
        # The first epoch also pays for compilation; say so instead of looking stuck.
        self.bar.set_postfix_str("compiling" if start == 0 else "resuming")

    def update(self, epoch: int, metrics: dict[str, Any]) -> None:
        post = {}
        if "loss" in metrics:
            post["loss"] = f"{_nanmean(metrics['loss']):.3f}"
        for key, short in (("train_acc", "train"), ("val_acc", "val")):
            if key in metrics:
                post[short] = f"{_nanmean(metrics[key]):.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(max(0, epoch - self.bar.n))

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
