"""Shared test fixtures: fixed PRNG keys and a float64 context for gradient checks."""

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
