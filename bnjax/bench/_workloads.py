"""The models and synthetic data every part of the bench trains: BN MLPs (dense -> batch norm -> ReLU per
hidden layer, softmax cross-entropy, Adam at 1e-3) on standard-normal inputs with random labels."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from bnjax.nn import MLPSpec
from bnjax.train import TrainConfig


@dataclass(frozen=True)
class Workload:
    """A BN MLP ``in_features -> hidden -> 10`` trained at batch size ``batch``."""

    name: str
    in_features: int
    hidden: tuple[int, ...]
    batch: int

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths, input to output."""
        return (self.in_features, *self.hidden, 10)


CS231N_B50 = Workload("cs231n_b50", 3072, (100,) * 5, 50)
FMNIST_B50 = Workload("fmnist_b50", 784, (100,) * 5, 50)
WIDE_B256 = Workload("wide_b256", 1024, (1024,) * 3, 256)
STEP_WORKLOADS = (
    CS231N_B50,
    Workload("cs231n_b256", 3072, (100,) * 5, 256),
    FMNIST_B50,
    Workload("fmnist_b256", 784, (100,) * 5, 256),
    WIDE_B256,
)


def synthetic(w: Workload, n: int | None = None) -> tuple[jax.Array, jax.Array]:
    """``n`` (default one batch) standard-normal inputs and random labels in 0..9, on the default device."""
    rng = np.random.default_rng(0)
    n = w.batch if n is None else n
    x = jnp.asarray(rng.standard_normal((n, w.in_features), np.float32))
    return x, jnp.asarray(rng.integers(0, 10, n).astype(np.int32))


def spec_cfg(w: Workload) -> tuple[MLPSpec, TrainConfig]:
    """bnjax's spec of the model (He init) and its training configuration."""
    spec = MLPSpec(in_features=w.in_features, hidden=w.hidden, num_classes=10, norm="batch", init="he")
    return spec, TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=w.batch)
