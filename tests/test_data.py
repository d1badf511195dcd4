"""Tests for bnjax.data: IDX/CIFAR readers on files written here, safe unpickling, splits, preprocessing."""

from __future__ import annotations

import ast
import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from bnjax import data
from bnjax.data import _mnist1d

# --------------------------------------------------------------------------------------------------- IDX

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes ``array`` as IDX, written from the format description (independent of the reader)."""
    code = _IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


_IDX_ARRAYS = {
    "uint8-images": np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8),
    "uint8-labels": np.array([0, 9, 3, 3, 7], np.uint8),
    "int8": np.array([[-128, 127], [0, -1]], np.int8),
    "int16": np.array([-30000, 1, 258], np.int16),
    "int32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100000,
    "float32": np.array([1.5, -2.25, np.pi], np.float32),
    "float64": np.array([[np.e, -1e300]], np.float64),
}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("key", list(_IDX_ARRAYS))
def test_load_idx_roundtrip(tmp_path, key, gz):
    source = _IDX_ARRAYS[key]
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), source, gz)
    out = data.load_idx(path)
    assert out.shape == source.shape
    assert out.dtype == source.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, source)


def test_load_idx_detects_gzip_by_content_not_name(tmp_path):
    source = _IDX_ARRAYS["uint8-images"]
    np.testing.assert_array_equal(data.load_idx(write_idx(tmp_path / "no-suffix", source, gz=True)), source)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_idx_truncated_payload(tmp_path, gz):
    payload = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected 7840 bytes of image data") + ".* found 7740"):
        data.load_idx(path)


def test_load_idx_trailing_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected 4 bytes of label data") + ".* found 5"):
        data.load_idx(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x01\x00\x08\x01", "bad magic number 01000801"),
        (b"PK\x03\x04", "bad magic number 504b0304"),
        (b"\x00\x00\x07\x01", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header: expected 16 bytes"),
        (b"\x00\x00", "shorter than the 4-byte magic"),
    ],
)
def test_load_idx_bad_header(tmp_path, header, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(header + (b"\x00" * 8 if len(header) == 4 else b""))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        data.load_idx(path)


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_load_idx_corrupt_gzip(tmp_path, damage):
    rng = np.random.default_rng(1)
    compressed = gzip.compress(idx_bytes(rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    if damage == "cut":
        compressed = compressed[: len(compressed) // 2]
    else:
        middle = len(compressed) // 2
        compressed = compressed[:middle] + bytes([compressed[middle] ^ 0xFF]) + compressed[middle + 1 :]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(compressed)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": corrupt or truncated gzip stream"):
        data.load_idx(path)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.load_idx(tmp_path / "absent.gz")


# ------------------------------------------------------------------------------------- (Fashion-)MNIST

_MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_mnist_dir(root: Path, n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    """Four small IDX files, two gzipped and two raw, as a stand-in for the real download."""
    rng = np.random.default_rng(2)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for i, (key, base) in enumerate(zip(arrays, _MNIST_NAMES)):
        gz = i % 2 == 0
        write_idx(root / (base + ".gz" if gz else base), arrays[key], gz)
    return arrays


@pytest.mark.parametrize("loader", [data.load_mnist, data.load_fashion_mnist])
def test_mnist_loaders_read_the_four_files(tmp_path, loader):
    expected = write_mnist_dir(tmp_path)
    raw = loader(tmp_path)
    assert raw.name == loader.__name__.removeprefix("load_") and raw.num_classes == 10
    for key, array in expected.items():
        np.testing.assert_array_equal(getattr(raw, key), array)
        assert getattr(raw, key).dtype == np.uint8


def test_fashion_mnist_missing_directory_says_how_to_install(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(missing)) + ".*apt-get install dataset-fashion-mnist.*root="
    ):
        data.load_fashion_mnist(missing)


def test_mnist_missing_file_is_named(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "t10k-labels-idx1-ubyte"))):
        data.load_mnist(tmp_path)


def test_mnist_mismatched_counts(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"test images \(12, 28, 28\) and labels \(5,\) do not match"):
        data.load_mnist(tmp_path)


def test_fashion_mnist_real_files():
    if not os.path.isdir(data.FASHION_MNIST_DIR):
        pytest.skip(f"{data.FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
    raw = data.load_fashion_mnist()
    assert raw.x_train.shape == (60000, 28, 28) and raw.x_test.shape == (10000, 28, 28)
    assert raw.y_train.shape == (60000,) and raw.y_test.shape == (10000,)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    np.testing.assert_array_equal(np.bincount(raw.y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(raw.y_test, minlength=10), np.full(10, 1000))


# --------------------------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN_ROWS = (3, 4, 2, 5, 1)  # uneven batch sizes catch concatenation-order mistakes
_CIFAR_TEST_ROWS = 6


def cifar_rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n)


def cifar_batches() -> list[tuple[str, np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return [
        (name, *cifar_rows(10 + i, n)) for i, (name, n) in enumerate(zip(names, (*_CIFAR_TRAIN_ROWS, _CIFAR_TEST_ROWS)))
    ]


def write_cifar_py(directory: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    directory.mkdir(parents=True)
    batches = cifar_batches()
    for name, x, y in batches:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in y],
            b"data": x,
            b"filenames": [f"img{i}.png".encode() for i in range(len(y))],
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


def write_cifar_bin(directory: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    directory.mkdir(parents=True)
    batches = cifar_batches()
    for name, x, y in batches:
        records = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
        (directory / f"{name}.bin").write_bytes(records.tobytes())
    return batches


def pixel(row: np.ndarray, i: int, j: int, c: int) -> int:
    """CIFAR row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major."""
    return int(row[c * 1024 + i * 32 + j])


def check_cifar(raw: data.RawDataset, batches) -> None:
    assert raw.name == "cifar10" and raw.num_classes == 10
    assert raw.x_train.shape == (sum(_CIFAR_TRAIN_ROWS), 32, 32, 3) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (_CIFAR_TEST_ROWS, 32, 32, 3)
    np.testing.assert_array_equal(raw.y_train, np.concatenate([y for _, _, y in batches[:5]]))
    np.testing.assert_array_equal(raw.y_test, batches[5][2])
    train_rows = np.concatenate([x for _, x, _ in batches[:5]])
    for n, i, j, c in [(0, 0, 0, 0), (0, 0, 1, 0), (4, 31, 0, 1), (7, 2, 5, 2), (14, 31, 31, 2), (9, 16, 3, 1)]:
        assert raw.x_train[n, i, j, c] == pixel(train_rows[n], i, j, c)
    # Every pixel: red plane of each row equals x[..., 0], and so on.
    for c in range(3):
        np.testing.assert_array_equal(raw.x_train[..., c].reshape(-1, 1024), train_rows[:, c * 1024 : (c + 1) * 1024])
        np.testing.assert_array_equal(raw.x_test[..., c].reshape(-1, 1024), batches[5][1][:, c * 1024 : (c + 1) * 1024])


def test_cifar_py_format(tmp_path):
    batches = write_cifar_py(tmp_path / "cifar-10-batches-py")
    check_cifar(data.load_cifar10(tmp_path / "cifar-10-batches-py"), batches)
    check_cifar(data.load_cifar10(tmp_path), batches)  # parent directory


def test_cifar_bin_format(tmp_path):
    batches = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    check_cifar(data.load_cifar10(tmp_path / "cifar-10-batches-bin"), batches)
    check_cifar(data.load_cifar10(tmp_path), batches)


def _binint(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _short(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b


def py2_cpickle_batch(x: np.ndarray, labels) -> bytes:
    """A batch as Python 2 cPickle wrote the official files: str (not bytes) keys and raw data, and the NumPy
    1.x global ``numpy.core.multiarray._reconstruct``; assembled opcode by opcode."""
    out = b"\x80\x02}(" + _short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _binint(0) + b"\x85" + _short(b"b") + b"\x87R"
    out += b"(" + _binint(1) + _binint(x.shape[0]) + _binint(x.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + _short(b"u1") + _binint(0) + _binint(1) + b"\x87R"
    out += b"(" + _binint(3) + _short(b"|") + b"NNN" + _binint(-1) + _binint(-1) + _binint(0) + b"tb"
    out += b"\x89T" + struct.pack("<I", x.nbytes) + x.tobytes() + b"tb"
    out += _short(b"labels") + b"](" + b"".join(_binint(int(v)) for v in labels) + b"eu."
    return out


def test_cifar_py2_cpickle_batches(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    batches = cifar_batches()
    for name, x, y in batches:
        (directory / name).write_bytes(py2_cpickle_batch(x, y))
    check_cifar(data.load_cifar10(directory), batches)


class _MkdirOnLoad:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _ExecOnLoad:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_MkdirOnLoad, _ExecOnLoad])
@pytest.mark.parametrize("where", ["top-level", "inside-batch"])
def test_cifar_malicious_pickle_is_refused_unexecuted(tmp_path, payload, where):
    # The fixture really is malicious: plain pickle.loads runs it and creates its marker.
    proof = tmp_path / "proof-marker"
    pickle.loads(pickle.dumps(payload(proof), protocol=2))
    assert proof.exists()

    marker = tmp_path / "pwned-marker"
    evil = payload(marker)
    if where == "inside-batch":
        x, y = cifar_rows(0, 3)
        evil = {b"data": x, b"labels": [int(v) for v in y], b"filenames": evil}
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar_py(directory)
    (directory / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(
        ValueError, match=re.escape(str(directory / "data_batch_3")) + ".*unpickling refused.*refusing to load global"
    ):
        data.load_cifar10(directory)
    assert not marker.exists()


def test_cifar_pickle_of_wrong_content(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar_py(directory)
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": b"\x00" * 3072, b"labels": [1]}, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(directory / "test_batch")) + r": b'data' must be a uint8 array"):
        data.load_cifar10(directory)


def test_cifar_truncated_pickle(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar_py(directory)
    path = directory / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": corrupt CIFAR-10 python batch"):
        data.load_cifar10(directory)


def test_cifar_bin_wrong_size(tmp_path):
    directory = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(directory)
    path = directory / "data_batch_4.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(
        ValueError, match=re.escape(str(path)) + r": size 15358 bytes is not a positive multiple of the 3073"
    ):
        data.load_cifar10(directory)


def test_cifar_bin_label_out_of_range(tmp_path):
    directory = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(directory)
    path = directory / "test_batch.bin"
    records = bytearray(path.read_bytes())
    records[3073] = 12
    path.write_bytes(bytes(records))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": labels must be 0..9, found 12"):
        data.load_cifar10(directory)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data_batch_1 or data_batch_1.bin in " + re.escape(str(tmp_path))):
        data.load_cifar10(tmp_path)
    directory = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(directory)
    (directory / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(directory / "test_batch.bin"))):
        data.load_cifar10(tmp_path)


# ---------------------------------------------------------------------------------------------- prepare


def indexed_raw(n: int = 50, n_test: int = 20, num_classes: int = 5) -> data.RawDataset:
    """Column 0 of each example is its index, so a split's membership can be read off the arrays."""
    rng = np.random.default_rng(3)
    x = np.concatenate([np.arange(n)[:, None], rng.integers(0, 256, size=(n, 5))], axis=1).astype(np.uint8)
    x_test = np.concatenate([1000 + np.arange(n_test)[:, None], rng.normal(size=(n_test, 5))], axis=1)
    return data.RawDataset(
        "toy", x, np.arange(n) % num_classes, x_test.astype(np.float32), np.arange(n_test) % num_classes, num_classes
    )


def test_prepare_splits_are_disjoint_and_labels_follow():
    raw = indexed_raw()
    ds = data.prepare(raw, num_val=10, center="none")
    train, val = ds.x_train[:, 0].astype(int), ds.x_val[:, 0].astype(int)
    assert len(train) == 40 and len(val) == 10 and len(ds.x_test) == 20
    assert not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(50))
    np.testing.assert_array_equal(ds.y_train, train % 5)
    np.testing.assert_array_equal(ds.y_val, val % 5)
    np.testing.assert_array_equal(ds.x_test[:, 0], 1000 + np.arange(20))
    np.testing.assert_array_equal(ds.x_train[:, 1:], raw.x_train[train, 1:])


def test_prepare_subsamples_and_is_deterministic():
    raw = indexed_raw()
    a = data.prepare(raw, num_train=15, num_val=10, num_test=7, seed=4, center="none")
    b = data.prepare(raw, num_train=15, num_val=10, num_test=7, seed=4, center="none")
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert len(a.x_train) == 15 and len(a.x_test) == 7
    assert not set(a.x_train[:, 0]) & set(a.x_val[:, 0])
    # A larger training set with the same seed and num_val extends the smaller one and keeps val fixed.
    big = data.prepare(raw, num_train=30, num_val=10, num_test=7, seed=4, center="none")
    np.testing.assert_array_equal(big.x_train[:15], a.x_train)
    np.testing.assert_array_equal(big.x_val, a.x_val)
    other = data.prepare(raw, num_train=15, num_val=10, seed=5, center="none")
    assert not np.array_equal(other.x_val[:, 0], a.x_val[:, 0])


def test_prepare_centers_with_the_training_mean_only():
    raw = indexed_raw(n=200)
    plain = data.prepare(raw, num_train=20, num_val=50, seed=1, scale=0.5, center="none")
    centered = data.prepare(raw, num_train=20, num_val=50, seed=1, scale=0.5)
    np.testing.assert_array_equal(
        plain.x_train, raw.x_train[(plain.x_train[:, 0] * 2).astype(int)].astype(np.float32) * 0.5
    )
    train_mean = plain.x_train.astype(np.float64).mean(axis=0)
    all_mean = raw.x_train.astype(np.float64).mean(axis=0) * 0.5
    assert np.abs(train_mean - all_mean).max() > 1.0  # the check below can tell the two apart
    for part in ("train", "val", "test"):
        expected = getattr(plain, f"x_{part}").astype(np.float64) - train_mean
        np.testing.assert_allclose(getattr(centered, f"x_{part}"), expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(centered.x_train.mean(axis=0), 0.0, atol=1e-4)


def test_prepare_standardize_uses_training_std():
    raw = indexed_raw(n=200)
    raw.x_train[:, 3] = 7  # a constant feature, like MNIST's border pixels
    plain = data.prepare(raw, num_train=60, num_val=40, seed=2, center="none")
    ds = data.prepare(raw, num_train=60, num_val=40, seed=2, standardize=True)
    mean, std = plain.x_train.astype(np.float64).mean(0), plain.x_train.astype(np.float64).std(0)
    std[3] = 1.0
    for part in ("train", "val", "test"):
        expected = (getattr(plain, f"x_{part}") - mean) / std
        np.testing.assert_allclose(getattr(ds, f"x_{part}"), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.delete(ds.x_train.std(0), 3), 1.0, rtol=1e-5)
    assert np.all(ds.x_val[:, 3] == 0) and np.all(np.isfinite(ds.x_val))


def test_prepare_shapes_dtypes_and_description():
    raw = data.RawDataset(
        "img",
        np.zeros((30, 4, 4, 3), np.uint8),
        np.arange(30) % 3,
        np.zeros((5, 4, 4, 3), np.uint8),
        np.arange(5) % 3,
        3,
    )
    ds = data.prepare(raw, num_val=6, flatten=False, scale=1 / 255)
    assert ds.input_shape == (4, 4, 3) and ds.num_features == 48 and ds.x_val.shape == (6, 4, 4, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    flat = data.prepare(raw, num_val=6)
    assert flat.input_shape == (48,)
    assert repr(flat) == "<Dataset 'img': 3 classes, input (48,) float32; train 24, val 6, test 5>"
    assert flat.preprocessing["num_val"] == 6 and flat.preprocessing["center"] == "train_mean"
    with pytest.raises(TypeError):
        flat.preprocessing["num_val"] = 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"num_train": 1000000},
            r"num_train=1000000 is outside \[1, 40\] \(50 toy training examples minus num_val=10\)",
        ),
        ({"num_train": 0}, r"num_train=0 is outside"),
        ({"num_train": 2.5}, r"num_train must be an int in \[1, 40\], got 2.5"),
        ({"num_val": 50}, r"num_val=50 is outside \[0, 49\] \(the toy training set has 50 examples\)"),
        ({"num_val": -1}, r"num_val=-1 is outside"),
        ({"num_test": 21}, r"num_test=21 is outside \[0, 20\]"),
        ({"seed": -3}, r"seed=-3 is outside"),
        ({"scale": 0.0}, r"scale must be a positive finite number or None, got 0.0"),
        ({"scale": float("nan")}, r"scale must be a positive finite number"),
        ({"center": "mean"}, r"center must be one of \('train_mean', 'none'\), got 'mean'"),
        ({"flatten": "yes"}, r"flatten must be True or False, got 'yes'"),
        ({"standardize": True, "center": "none"}, r"standardize=True needs center='train_mean'"),
    ],
)
def test_prepare_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=r"prepare: " + message):
        data.prepare(indexed_raw(), **{"num_val": 10, **options})


def test_prepare_rejects_out_of_range_labels():
    raw = indexed_raw()
    raw.y_test[2] = 5
    with pytest.raises(ValueError, match=r"toy y_test has labels in \[0, 5\], expected \[0, 5\)"):
        data.prepare(raw, num_val=10)


def test_dataset_checks_dtypes():
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    with pytest.raises(TypeError, match="x_val must be a float32 NumPy array, got float64"):
        data.Dataset(x, y, x.astype(np.float64), y, x, y, name="d", num_classes=2)
    with pytest.raises(ValueError, match=r"x_test has shape \(2, 3\), expected \(1, \*\(3,\)\)"):
        data.Dataset(x, y, x, y, x, y[:1], name="d", num_classes=2)


# ----------------------------------------------------------------------------------------- load_dataset


def test_load_dataset_unknown_name_lists_names():
    with pytest.raises(
        ValueError,
        match="unknown dataset 'nope'; valid names: cifar10, digits, fashion_mnist, mnist, mnist1d, synthetic",
    ):
        data.load_dataset("nope")
    assert data.DATASET_NAMES == ("cifar10", "digits", "fashion_mnist", "mnist", "mnist1d", "synthetic")


def test_load_dataset_root_and_option_checks(tmp_path):
    with pytest.raises(ValueError, match=r"load_dataset\('cifar10'\) needs root="):
        data.load_dataset("cifar10")
    with pytest.raises(ValueError, match=r"load_dataset\('synthetic'\) takes no root"):
        data.load_dataset("synthetic", root=tmp_path)
    with pytest.raises(
        ValueError, match=r"unknown loader_options \['classes'\]; make_synthetic accepts \['num_samples'"
    ):
        data.load_dataset("synthetic", loader_options={"classes": 4})
    with pytest.raises(ValueError, match=r"unknown prepare options \['num_vals'\]; valid: \['num_train'"):
        data.load_dataset("synthetic", num_vals=3)


def test_load_dataset_synthetic_defaults_and_overrides():
    ds = data.load_dataset("synthetic")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (800, 200, 200)
    ds = data.load_dataset("synthetic", loader_options={"num_features": 7, "num_classes": 4}, num_val=100, seed=3)
    assert ds.input_shape == (7,) and ds.num_classes == 4 and len(ds.y_val) == 100
    assert data.dataset_defaults("cifar10") == {"num_val": 1000, "num_test": 1000, "scale": 1 / 255}


def test_load_dataset_cifar10_and_mnist_from_files(tmp_path):
    write_cifar_bin(tmp_path / "cifar" / "cifar-10-batches-bin")
    ds = data.load_dataset("cifar10", root=tmp_path / "cifar", num_val=5, num_test=3, num_train=8)
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((8, 3072), (5, 3072), (3, 3072))
    assert float(np.abs(ds.x_train).max()) <= 1.0  # scaled by 1/255, then centered
    write_mnist_dir(tmp_path / "mnist")
    ds = data.load_dataset("mnist", root=tmp_path / "mnist", num_val=10, center="none")
    assert ds.name == "mnist" and ds.x_train.shape == (20, 784) and ds.x_test.shape == (12, 784)
    assert 0.9 < float(ds.x_train.max()) <= 1.0


# ----------------------------------------------------------------------------------- digits, synthetic


def test_digits():
    raw = data.load_digits()
    assert raw.x_train.shape == (1347, 64) and raw.x_test.shape == (450, 64) and raw.x_train.dtype == np.uint8
    assert raw.x_train.max() == 16 and raw.x_train.min() == 0
    counts = np.bincount(raw.y_train, minlength=10) + np.bincount(raw.y_test, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 174  # sklearn's class counts are 174..183
    # Stratified: each class's test share is 450/1797 of its size, to within one example.
    assert np.all(np.abs(np.bincount(raw.y_test, minlength=10) - counts * 450 / 1797) <= 1)
    ds = data.load_dataset("digits")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (1000, 347, 450) and ds.input_shape == (64,)


def test_make_synthetic_deterministic_and_separation_matters():
    a, b = data.make_synthetic(seed=7), data.make_synthetic(seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, data.make_synthetic(seed=8).x_train)
    assert a.x_train.shape == (1000, 20) and a.x_test.shape == (200, 20) and a.x_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(a.y_train), [334, 333, 333])

    def nearest_centroid_accuracy(raw):
        centroids = np.stack([raw.x_train[raw.y_train == k].mean(0) for k in range(raw.num_classes)])
        pred = np.argmin(((raw.x_test[:, None, :] - centroids) ** 2).sum(-1), axis=1)
        return (pred == raw.y_test).mean()

    assert nearest_centroid_accuracy(data.make_synthetic(separation=10.0, num_test=600)) > 0.97
    assert nearest_centroid_accuracy(data.make_synthetic(separation=0.0, num_test=600)) < 0.45


def test_make_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="make_synthetic: num_classes must be an int >= 1, got 0"):
        data.make_synthetic(num_classes=0)
    with pytest.raises(ValueError, match="make_synthetic: separation must be a finite number >= 0, got -1.0"):
        data.make_synthetic(separation=-1.0)


# -------------------------------------------------------------------------------------------- MNIST-1D


@pytest.fixture(scope="module")
def mnist1d_first_load(tmp_path_factory):
    """Generates a small MNIST-1D (200 sequences) into a fresh disk cache; records the global RNG draws."""
    cache = tmp_path_factory.mktemp("bnjax-cache")
    _mnist1d._load_cached.cache_clear()
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    raw = data.load_mnist1d(num_samples=200, cache_dir=cache)
    draw_after_load = np.random.rand()
    yield raw, cache, expected_draw, draw_after_load
    _mnist1d._load_cached.cache_clear()


def test_mnist1d_small_shapes_and_reference_values(mnist1d_first_load):
    raw, _, expected_draw, draw_after_load = mnist1d_first_load
    assert raw.x_train.shape == (160, 40) and raw.x_test.shape == (40, 40) and raw.x_train.dtype == np.float64
    assert raw.y_train.shape == (160,) and raw.y_test.shape == (40,) and raw.num_classes == 10
    # Reference values: mnist1d.data.make_dataset(args) called directly, args = get_dataset_args() with
    # num_samples=200 (mnist1d 0.0.2.post1).
    np.testing.assert_allclose(raw.x_train[0, :4], [-0.249917742, 0.2487195944, 0.3274170703, 0.8725475716], rtol=1e-8)
    np.testing.assert_allclose(
        raw.x_test[0, :4], [-6.6953336410e-01, -5.1540412385e-01, -2.0654795420e-04, 4.4759281432e-01], rtol=1e-7
    )
    np.testing.assert_array_equal(raw.y_train[:10], [5, 4, 3, 7, 3, 5, 4, 3, 9, 9])
    np.testing.assert_array_equal(np.bincount(raw.y_test), [1, 4, 3, 4, 4, 6, 7, 4, 4, 3])
    # make_dataset reseeds np.random; the loader restores the caller's state.
    assert draw_after_load == expected_draw


@pytest.mark.slow  # generates the full 5000 sequences: ~4 s alone, over 10 s on a busy 2-core machine
def test_mnist1d_default_shapes_and_reference_values(tmp_path):
    _mnist1d._load_cached.cache_clear()
    raw = data.load_mnist1d(cache_dir=tmp_path)
    assert raw.x_train.shape == (4000, 40) and raw.x_test.shape == (1000, 40)
    assert raw.y_train.shape == (4000,) and raw.y_test.shape == (1000,)
    # Reference values: mnist1d.data.make_dataset(get_dataset_args()) called directly.
    np.testing.assert_allclose(
        raw.x_train[0, :4], [-0.3320056674, -0.4719103657, -0.7786970763, -1.0097408265], rtol=1e-8
    )
    np.testing.assert_allclose(
        raw.x_test[0, :4], [-0.0787707805, -0.2107317059, -0.0917513811, 0.2826711174], rtol=1e-8
    )
    np.testing.assert_array_equal(raw.y_train[:10], [2, 6, 4, 5, 6, 6, 6, 0, 3, 1])
    np.testing.assert_array_equal(np.bincount(raw.y_test), [102, 104, 89, 106, 106, 98, 99, 96, 98, 102])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNJAX_CACHE_DIR", str(tmp_path))
        ds = data.load_dataset("mnist1d")  # served from the disk cache just written
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((3000, 40), (1000, 40), (1000, 40))
    _mnist1d._load_cached.cache_clear()


def test_mnist1d_disk_cache_and_copies(mnist1d_first_load, monkeypatch):
    raw, cache, _, _ = mnist1d_first_load
    assert [f.name for f in cache.iterdir()] == [_mnist1d._cache_file(str(cache), 42, 200).name]
    _mnist1d._load_cached.cache_clear()

    def no_generation(seed, num_samples):
        raise AssertionError("generated although a cache file exists")

    monkeypatch.setattr(_mnist1d, "_generate", no_generation)
    monkeypatch.setenv("BNJAX_CACHE_DIR", str(cache))  # the default directory, as load_dataset uses it
    again = data.load_mnist1d(num_samples=200)
    np.testing.assert_array_equal(again.x_train, raw.x_train)
    np.testing.assert_array_equal(again.y_test, raw.y_test)
    again.x_train[0, 0] = 99.0  # returned arrays are copies: the cached ones are untouched
    assert data.load_mnist1d(num_samples=200).x_train[0, 0] == raw.x_train[0, 0]
    ds = data.load_dataset("mnist1d", loader_options={"num_samples": 200}, num_val=60)
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((100, 40), (60, 40), (40, 40))
    _mnist1d._load_cached.cache_clear()


def test_mnist1d_damaged_cache_is_regenerated(mnist1d_first_load, tmp_path, monkeypatch):
    raw = mnist1d_first_load[0]
    path = _mnist1d._cache_file(str(tmp_path), 42, 200)
    path.write_bytes(b"PK\x03\x04 not a zip")
    calls = []

    def fake_generate(seed, num_samples):
        calls.append((seed, num_samples))
        return {k: getattr(raw, k) for k in ("x_train", "y_train", "x_test", "y_test")}

    monkeypatch.setattr(_mnist1d, "_generate", fake_generate)
    _mnist1d._load_cached.cache_clear()
    out = data.load_mnist1d(num_samples=200, cache_dir=tmp_path)
    assert calls == [(42, 200)]
    np.testing.assert_array_equal(out.x_test, raw.x_test)
    with np.load(path) as f:  # rewritten whole
        np.testing.assert_array_equal(f["x_train"], raw.x_train)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    _mnist1d._load_cached.cache_clear()
    data.load_mnist1d(num_samples=200, cache_dir=False)  # no disk cache: generates again
    assert calls == [(42, 200), (42, 200)]
    _mnist1d._load_cached.cache_clear()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 55}, "num_samples must be a positive multiple of 10, got 55"),
        ({"seed": -1}, "seed must be a non-negative int, got -1"),
        ({"cache_dir": True}, "cache_dir must be a directory"),
    ],
)
def test_mnist1d_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load_mnist1d(**kwargs)


# ------------------------------------------------------------------------------------------------ misc


def test_data_package_does_not_import_jax():
    for source in Path(data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "jax" or n.startswith("jax.") for n in names), f"{source.name} imports {names}"


def test_public_api_is_reexported():
    assert sorted(data.__all__) == sorted(set(data.__all__))
    for name in data.__all__:
        assert getattr(data, name) is not None


def test_prepare_with_no_test_examples():
    # num_test=0 is allowed by the docstring: an empty, correctly shaped test split.
    raw = indexed_raw()
    ds = data.prepare(raw, num_train=15, num_val=10, num_test=0, seed=4, center="train_mean")
    assert ds.x_test.shape == (0, ds.x_train.shape[1]) and ds.y_test.shape == (0,)
