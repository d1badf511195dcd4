"""Shared test fixtures: fixed PRNG keys and a float64 context for gradient checks."""

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Runs the test body with 64-bit floats enabled (gradient checks in float64)."""
    with jax.enable_x64(True):
        yield
