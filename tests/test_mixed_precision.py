"""Tests of ``TrainConfig.compute_dtype="bfloat16"`` (mixed precision): bf16 matmuls, float32 state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import MLPSpec
from bnjax.data import load_dataset
from bnjax.train import TrainConfig, init_train_state, make_train_step, train_ensemble


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", num_train=1000, num_val=300, standardize=True)


def test_bf16_step_runs_matmuls_in_bf16_and_keeps_state_float32(digits):
    spec = MLPSpec(in_features=digits.num_features, hidden=(32, 32), num_classes=10, norm="batch")
    cfg = TrainConfig(batch_size=16, compute_dtype="bfloat16")
    state = init_train_state(spec, cfg, seed=0)
    step = make_train_step(spec, cfg, steps_per_epoch=10)
    batch = (jnp.asarray(digits.x_train[:16]), jnp.asarray(digits.y_train[:16]))
    jaxpr = str(jax.make_jaxpr(step)(state, batch))
    # Independent evidence of the policy: the compiled step's matrix products take bf16 operands.
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and any("bf16" in line for line in dots)
    new, metrics = jax.jit(step)(state, batch)
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    for tree in (new.params, new.batch_stats, new.opt_state):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
    # The running statistics moved (they were updated from float32 batch statistics).
    assert not np.allclose(new.batch_stats["bn_0"]["mean"], state.batch_stats["bn_0"]["mean"])


def test_bf16_training_matches_float32_within_margin(digits):
    # Same seeds, same batches: bfloat16 (8-bit mantissa) ends within 0.05 validation accuracy of float32.
    spec = MLPSpec(in_features=digits.num_features, hidden=(64, 64), num_classes=10, norm="batch")
    acc = {}
    for dt in ("float32", "bfloat16"):
        cfg = TrainConfig(epochs=4, batch_size=32, learning_rate=3e-3, compute_dtype=dt)
        r = train_ensemble(spec, cfg, digits, {"seed": [0, 1]})
        assert np.all(np.isfinite(r.history["val_loss"]))
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(r.batch_stats))
        acc[dt] = r.history["val_acc"][:, -1]
    assert acc["float32"].mean() > 0.8
    assert abs(acc["bfloat16"].mean() - acc["float32"].mean()) < 0.05, acc


def test_compute_dtype_is_checked():
    with pytest.raises(ValueError, match="compute_dtype"):
        TrainConfig(compute_dtype="float16")
