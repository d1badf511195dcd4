"""``bnjax bench``: bnjax's speed against what a user would write by hand (a jitted JAX step, flax.linen, a
flax.linen ``lax.scan`` epoch), timed interleaved in one process. Imports :mod:`bnjax.nn` and
:mod:`bnjax.train`; nothing in the library imports it."""

from bnjax.bench._suite import run_bench as run_bench

__all__ = ["run_bench"]
