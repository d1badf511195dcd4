"""Data: loaders that return NumPy arrays (no downloads), deterministic splits and preprocessing.

Loaders return a ``RawDataset`` (stored dtypes, train/test); ``prepare`` splits off validation data and
preprocesses into a float32/int32 ``Dataset``; ``load_dataset(name, ...)`` does both from a config name.
NumPy only: nothing here imports JAX.
"""

from bnjax.data._cifar import load_cifar10 as load_cifar10
from bnjax.data._digits import load_digits as load_digits
from bnjax.data._idx import load_idx as load_idx
from bnjax.data._mnist import FASHION_MNIST_DIR as FASHION_MNIST_DIR
from bnjax.data._mnist import load_fashion_mnist as load_fashion_mnist
from bnjax.data._mnist import load_mnist as load_mnist
from bnjax.data._mnist1d import default_cache_dir as default_cache_dir
from bnjax.data._mnist1d import load_mnist1d as load_mnist1d
from bnjax.data._prepare import Dataset as Dataset
from bnjax.data._prepare import prepare as prepare
from bnjax.data._raw import RawDataset as RawDataset
from bnjax.data._registry import DATASET_NAMES as DATASET_NAMES
from bnjax.data._registry import dataset_defaults as dataset_defaults
from bnjax.data._registry import load_dataset as load_dataset
from bnjax.data._synthetic import make_synthetic as make_synthetic

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "Dataset",
    "RawDataset",
    "dataset_defaults",
    "default_cache_dir",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_mnist",
    "load_mnist1d",
    "make_synthetic",
    "prepare",
]
