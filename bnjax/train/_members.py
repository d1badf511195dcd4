"""An ensemble's members: the validated :class:`Member` list of what a caller asks for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bnjax._typing import FieldError, Layer
from bnjax.nn._mlp import MLPSpec, as_layer
from bnjax.train._config import MEMBER_FIELDS, MODEL_OPTIONS, Member, TrainConfig
from bnjax.train._model import takes
from bnjax.train._state import member_defaults

_READERS = {"weight_scale": "bnjax.Dense", "dropout": "bnjax.Dropout", "bn_momentum": "bnjax.BatchNorm"}
Members = Mapping[str, Sequence[Any]] | Sequence[Member] | None


def _rows(members: Members, fn: str) -> tuple[list[str], list[dict[str, Any]]]:
    """``(the settings given explicitly, one dict per member)`` of a dict of lists or a list of Member."""
    if isinstance(members, Mapping):
        unknown = sorted(set(members) - set(MEMBER_FIELDS))
        if unknown:
            raise ValueError(f"{fn}: members has unknown keys {unknown}; valid keys are {MEMBER_FIELDS}.")
        lengths = {k: len(v) for k, v in members.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"{fn}: members must hold non-empty lists of one common length, got lengths {lengths}.")
        return list(members), [{k: members[k][i] for k in members} for i in range(next(iter(lengths.values())))]
    if isinstance(members, Sequence) and members and all(isinstance(x, Member) for x in members):
        given = sorted({k for x in members for k in x.to_dict() if k in MODEL_OPTIONS})
        return given, [x.to_dict() for x in members]
    raise TypeError(f"{fn}: members must be a dict of equal-length lists over {MEMBER_FIELDS} or a non-empty "
                    f"list of bnjax.train.Member, got {type(members).__name__}.")


def resolve_members(model: Layer | MLPSpec, cfg: TrainConfig, members: Members) -> list[Member]:
    """The validated :class:`Member` list of ``members``, with defaults filled in.

    ``members`` is a dict of equal-length lists over ``"seed"``, ``"learning_rate"``, ``"weight_scale"``,
    ``"dropout"``, ``"bn_momentum"`` (one entry per member), a sequence of :class:`Member`, or None (one
    member). Missing settings take ``cfg.seed`` and ``cfg.learning_rate``, and the model's ``Layer.defaults``
    (an MLP's ``weight_scale``, ``dropout`` and ``bn_momentum``; other layers keep their own values). A setting
    that members give explicitly must be an option the model takes (ValueError otherwise: a sweep that the
    model ignores would train identical members).
    """
    fn = "train_ensemble"
    layer = as_layer(model, fn)
    defaults = {"seed": cfg.seed, "learning_rate": cfg.learning_rate} | member_defaults(layer)
    if members is None:
        return [Member(**defaults)]
    given, rows = _rows(members, fn)
    out = []
    for k, row in enumerate(rows):
        try:
            out.append(Member(**(defaults | row)))
        except FieldError as e:
            raise ValueError(f"{fn}: members[{e.field!r}][{k}]={e.value!r} {e.expected}") from None
    for name in given:
        where = MODEL_OPTIONS.get(name)
        if where is not None and not takes(layer, name, where):
            raise ValueError(
                f"{fn}: members set {name!r}, but the model's {where} takes no {name!r} option, so every member "
                f"would train alike; drop it from the members, or give the model a layer that reads it "
                f"({_READERS[name]})."
            )
    return out
