"""Training any model (a :class:`bnjax.Layer`; an :class:`bnjax.MLPSpec` is built into one by
:func:`bnjax.mlp` at the boundary): optax optimizers, a pure jitted step, epochs as ``lax.scan``, vmapped
ensembles of :class:`Member` settings (in chunks of members, sharded over a device mesh with
:class:`Parallel`), precise BN, checkpoints. Imports :mod:`bnjax.nn`; never :mod:`bnjax.run`."""

from bnjax.train._checkpoint import load_checkpoint as load_checkpoint
from bnjax.train._checkpoint import make_fingerprint as make_fingerprint
from bnjax.train._checkpoint import save_checkpoint as save_checkpoint
from bnjax.train._config import TrainConfig as TrainConfig
from bnjax.train._config import lr_factor as lr_factor
from bnjax.train._config import make_optimizer as make_optimizer
from bnjax.train._ensemble import train_ensemble as train_ensemble
from bnjax.train._members import Member as Member
from bnjax.train._members import TrainState as TrainState
from bnjax.train._members import init_ensemble as init_ensemble
from bnjax.train._members import init_train_state as init_train_state
from bnjax.train._members import resolve_members as resolve_members
from bnjax.train._parallel import make_data_parallel_ensemble_step as make_data_parallel_ensemble_step
from bnjax.train._parallel import make_data_parallel_step as make_data_parallel_step
from bnjax.train._precise_bn import recompute_batch_stats as recompute_batch_stats
from bnjax.train._programs import make_epoch_fn as make_epoch_fn
from bnjax.train._programs import make_eval_fn as make_eval_fn
from bnjax.train._result import EnsembleResult as EnsembleResult
from bnjax.train._sharded import Parallel as Parallel
from bnjax.train._step import evaluate as evaluate
from bnjax.train._step import l2_penalty as l2_penalty
from bnjax.train._step import make_shared_batch_ensemble_step as make_shared_batch_ensemble_step
from bnjax.train._step import make_train_step as make_train_step

__all__ = [
    "EnsembleResult",
    "Member",
    "Parallel",
    "TrainConfig",
    "TrainState",
    "evaluate",
    "init_ensemble",
    "init_train_state",
    "l2_penalty",
    "load_checkpoint",
    "lr_factor",
    "make_data_parallel_ensemble_step",
    "make_data_parallel_step",
    "make_epoch_fn",
    "make_eval_fn",
    "make_fingerprint",
    "make_optimizer",
    "make_shared_batch_ensemble_step",
    "make_train_step",
    "recompute_batch_stats",
    "resolve_members",
    "save_checkpoint",
    "train_ensemble",
]
