"""Process setup before JAX starts (CPU device count, the persistent compilation cache, ``jax.distributed``)
and the supervised child of a multi-process run. Imports no other bnjax package; the command line uses it."""


class LaunchError(ValueError):
    """A launch flag (``--cpu-devices``, ``--coordinator``, ...) is out of range; the message names it."""
