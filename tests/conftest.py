"""Shared test fixtures: fixed PRNG keys, a float64 context for gradient checks, and true-float32 matmuls."""

import os

import jax
import pytest

# The CLI turns on JAX's persistent compilation cache by default; in-process CLI calls in the tests must not
# switch it on for the whole pytest process (tests/test_compile_cache.py turns it on in subprocesses).
os.environ.setdefault("BNJAX_COMPILE_CACHE", "0")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Runs the test body with 64-bit floats enabled (gradient checks in float64)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def highest_precision():
    """Runs the test body with float32 matmuls and convolutions computed in float32 (``jax.default_matmul_precision
    ("highest")``). For tests that compare float32 results with a float64 or foreign reference (NumPy, torch,
    Flax, a closed form) more tightly than TF32 allows: JAX's default on NVIDIA GPUs, about 1e-3 relative error
    (https://docs.jax.dev/en/latest/201/precision.html). A CPU computes float32 either way."""
    with jax.default_matmul_precision("highest"):
        yield
