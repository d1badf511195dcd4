"""``load_dataset``: one call from a dataset name (as written in a config) to a prepared ``Dataset``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from bnjax.data._cifar import load_cifar10
from bnjax.data._digits import load_digits
from bnjax.data._mnist import load_fashion_mnist, load_mnist
from bnjax.data._mnist1d import load_mnist1d
from bnjax.data._prepare import Dataset, prepare
from bnjax.data._raw import RawDataset
from bnjax.data._synthetic import make_synthetic


class _Entry(NamedTuple):
    loader: Callable[..., RawDataset]
    root: str  # "required", "optional" (loader has a default directory) or "unused"
    defaults: Mapping[str, Any]  # prepare() options for this dataset, overridable by the caller


_DATASETS: dict[str, _Entry] = {
    "fashion_mnist": _Entry(load_fashion_mnist, "optional", {"num_val": 1000, "scale": 1 / 255}),
    "mnist": _Entry(load_mnist, "required", {"num_val": 1000, "scale": 1 / 255}),
    "cifar10": _Entry(load_cifar10, "required", {"num_val": 1000, "num_test": 1000, "scale": 1 / 255}),
    "mnist1d": _Entry(load_mnist1d, "unused", {"num_val": 1000}),
    "digits": _Entry(load_digits, "unused", {"num_val": 347, "scale": 1 / 16}),
    "synthetic": _Entry(make_synthetic, "unused", {"num_val": 200}),
}
DATASET_NAMES: tuple[str, ...] = tuple(sorted(_DATASETS))
"""The names ``load_dataset`` accepts."""


def dataset_defaults(name: str) -> dict[str, Any]:
    """The ``prepare`` options ``load_dataset(name)`` uses unless overridden (see ``load_dataset``)."""
    return dict(_entry(name).defaults)


def _entry(name: str) -> _Entry:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _DATASETS[name]


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    loader_options: Mapping[str, Any] | None = None,
    **prepare_options: Any,
) -> Dataset:
    """Loads a dataset by name and prepares it: ``prepare(loader(root, **loader_options), **options)``.

    Names, loaders and default ``prepare`` options (sizes are train/val/test after splitting):

    ==============  =====================  =============================================  ===================
    name            loader                 defaults                                       split
    ==============  =====================  =============================================  ===================
    fashion_mnist   load_fashion_mnist     num_val=1000, scale=1/255                      59000/1000/10000
    mnist           load_mnist (root=)     num_val=1000, scale=1/255                      59000/1000/10000
    cifar10         load_cifar10 (root=)   num_val=1000, num_test=1000, scale=1/255       49000/1000/1000
    mnist1d         load_mnist1d           num_val=1000                                   3000/1000/1000
    digits          load_digits            num_val=347, scale=1/16                        1000/347/450
    synthetic       make_synthetic         num_val=200                                    800/200/200
    ==============  =====================  =============================================  ===================

    Every dataset also gets ``prepare``'s own defaults (``seed=0``, ``flatten=True``,
    ``center="train_mean"``, ``standardize=False``); any option passed here overrides the table (e.g.
    ``num_test=None`` for the full CIFAR-10 test set, ``num_train=1000`` for CS231n's small runs).

    Args:
      name: one of ``DATASET_NAMES``.
      root: data directory; required for ``mnist`` and ``cifar10``, optional for ``fashion_mnist``
        (default ``/usr/share/datasets/fashion-mnist``), must be ``None`` for the generated sets.
      loader_options: keyword arguments for the loader, e.g. ``{"seed": 1}`` for ``mnist1d`` or
        ``{"num_features": 10}`` for ``synthetic``.
      **prepare_options: ``num_train``, ``num_val``, ``num_test``, ``seed``, ``flatten``, ``scale``,
        ``center``, ``standardize`` (see ``prepare``).

    Returns:
      The prepared ``Dataset``.

    Raises:
      ValueError: an unknown name (the message lists the valid names), a missing or unused ``root``,
        unknown loader or prepare options, or bad option values.
      FileNotFoundError: the data files are not where ``root`` points.
    """
    entry = _entry(name)
    if entry.root == "required" and root is None:
        raise ValueError(f"load_dataset({name!r}) needs root=, the directory holding the {name} files")
    if entry.root == "unused" and root is not None:
        raise ValueError(f"load_dataset({name!r}) takes no root (the data is generated or bundled), got {root!r}")
    loader_options = dict(loader_options or {})
    accepted = [p for p in inspect.signature(entry.loader).parameters if p != "root"]
    unknown = sorted(set(loader_options) - set(accepted))
    if unknown:
        raise ValueError(
            f"load_dataset({name!r}): unknown loader_options {unknown}; {entry.loader.__name__} accepts "
            f"{accepted or 'none'}"
        )
    valid_prepare = [p for p in inspect.signature(prepare).parameters if p != "raw"]
    unknown = sorted(set(prepare_options) - set(valid_prepare))
    if unknown:
        raise ValueError(f"load_dataset({name!r}): unknown prepare options {unknown}; valid: {valid_prepare}")
    if entry.root != "unused":
        loader_options["root"] = root
    raw = entry.loader(**loader_options)
    return prepare(raw, **{**entry.defaults, **prepare_options})
