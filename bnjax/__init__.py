"""bnjax: normalization and dropout you can see through.

Every layer is a pair of pure functions, ``init`` and
``apply(params, batch_stats, x, train, *, key=None, **options) -> (y, new_batch_stats)``; running statistics
are threaded by the caller. Public names are re-exported here; modules starting with ``_`` are private.
"""

from bnjax._typing import Layer as Layer
from bnjax._typing import Params as Params
from bnjax._typing import PRNGKey as PRNGKey
from bnjax._typing import State as State
from bnjax.nn import *  # noqa: F401,F403  (the names listed in bnjax.nn, re-exported)
from bnjax.nn import __all__ as _nn_all
from bnjax import train as train  # the training engine (imports bnjax.nn only, so no cycle)

__version__ = "0.1.0"
__all__ = ["Layer", "Params", "PRNGKey", "State", "__version__", *_nn_all]
