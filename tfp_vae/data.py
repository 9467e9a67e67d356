"""MNIST-family data: finding the files, parsing them safely, binarising, the input pipelines.

`load(name)` takes "mnist", "fashion_mnist" or "npz:PATH" (a user's own arrays, see
`load_npz`). For the two known datasets, the places looked in, in order (the first that holds
the dataset wins):

1. an explicit ``data_dir`` (the ``--data_dir`` flag of the binaries);
2. the environment variable ``TFP_VAE_DATA_DIR``;
3. Debian's location ``/usr/share/datasets/<name>/`` (package ``dataset-fashion-mnist``);
4. the Keras cache ``~/.keras/datasets/`` (``mnist.npz`` or ``<name>/`` with IDX files);
5. for MNIST only, the copy shipped inside the package (``tfp_vae/datasets/mnist/``,
   `SHIPPED_DATASETS`), which must be the published dataset: a damaged copy is an error;
6. a download through ``keras.utils.get_file`` into the Keras cache (only if ``download``).

In each place the files are looked for in its subfolder named after the dataset
(``mnist/``, ``fashion_mnist/`` or ``fashion-mnist/``), then in the place itself: the four IDX
files (``train-images-idx3-ubyte[.gz]`` ...) or a Keras-style ``<name>.npz``.

A dataset never stands in for another (MNIST and Fashion-MNIST use the same file names). Every
array's SHA-256 is compared with those of the published datasets (`KNOWN_DATASETS`):
- files whose content is another known dataset's are refused, wherever they are;
- files in a folder named after the dataset, or a ``<name>.npz``, are otherwise accepted (a
  user's own copy or subset);
- files anywhere else (a folder not named after the dataset) are accepted only if all four are
  the published dataset's.
The arrays' digests identify the content whatever the file format or compression; the
`ImageDataset` also records the SHA-256 of every file read (`files`).

Images are kept as ``uint8`` arrays of shape ``[N, 28, 28]``; models see ``float32`` arrays of
shape ``[N, 784]`` in {0, 1} after binarisation.

The pipelines (`train_dataset`, `eval_dataset`) are tf.data on Keras' TensorFlow backend and
NumPy `keras.utils.PyDataset`s on the others (`tfp_vae.data_numpy`, with the same arguments and
errors); loading needs no TensorFlow, which this module imports only to build a tf.data pipeline.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # Imported where a tf.data pipeline is built (loading needs no TensorFlow).
    import tensorflow as tf

ENV_VAR = "TFP_VAE_DATA_DIR"
DATASETS = ("mnist", "fashion_mnist")
NPZ_PREFIX = "npz:"
DEBIAN_DATASETS = "/usr/share/datasets"  # Where Debian's dataset-* packages install.
# The datasets installed with the package (package data): MNIST's four IDX files, 11 MB, with
# their source and terms in its README.md. Fashion-MNIST is not shipped.
SHIPPED_DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")
_SHIPPED_NAMES = ("mnist",)
_SHIPPED_PLACE = "shipped with tfp_vae"  # Its description in candidate_dirs.
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28
NUM_CLASSES = 10  # MNIST's digits (also `checks.NUM_CLASSES`).
# Every evaluation binarises with this seed so numbers are comparable across runs.
STATIC_BINARIZATION_SEED = 0

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
_KERAS_FASHION_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# Debian's dataset-fashion-mnist and the Keras cache spell the name with a dash.
_DIR_ALIASES = {"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")}
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}

# SHA-256 of each published array's data: the uint8 bytes after the IDX header (images row by
# row, labels one byte each), which are also the arrays of Keras' mnist.npz. They identify the
# content whatever the file's compression or format: Debian's fashion-mnist .gz files, for one,
# are recompressed (their gzip digests differ from the publisher's) but hold the same bytes.
# For reference, the uncompressed IDX files' SHA-256 (header included) are
#   MNIST          train-images ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
#                  train-labels 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
#                  t10k-images  0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
#                  t10k-labels  ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
#   Fashion-MNIST  train-images c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
#                  train-labels bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
#                  t10k-images  5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
#                  t10k-labels  0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
KNOWN_DATASETS = {
    "mnist": {
        "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
    "fashion_mnist": {
        "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}
_KNOWN_DIGESTS = {
    digest: (name, key) for name, arrays in KNOWN_DATASETS.items() for key, digest in arrays.items()
}


class DataError(ValueError):
    """A data file is missing, unreadable or corrupted, or holds another dataset than the one
    asked for; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train/test split of a 10-class 28x28 grayscale image dataset.

    Attributes:
      x_train: uint8, shape [N, 28, 28] (60000 for MNIST and Fashion-MNIST).
      y_train: int64, shape [N]; None for a user's npz without labels.
      x_test: uint8, shape [M, 28, 28] (10000).
      y_test: int64, shape [M]; None for a user's npz without labels.
      source: where the arrays were read from (a directory or an .npz file).
      files: {absolute path: SHA-256 of the file} of every file read.
      identified_as: "mnist" or "fashion_mnist" when all four arrays are that dataset's
        published ones (`KNOWN_DATASETS`), else None (a user's own data, or a subset).
      x_validation, y_validation: the training examples held out for validation by
        `split_validation` (uint8 [V, 28, 28], int64 [V] or None), not in x_train; None when the
        training set is whole.
      train_indices, validation_indices: after `split_validation`, the rows of the loaded
        training set that x_train and x_validation hold (int64, ascending); None before.
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    source: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    identified_as: str | None = None
    x_validation: np.ndarray | None = None
    y_validation: np.ndarray | None = None
    train_indices: np.ndarray | None = None
    validation_indices: np.ndarray | None = None

    @property
    def has_labels(self) -> bool:
        return self.y_train is not None and self.y_test is not None


# --------------------------------------------------------------------------------------------
# Parsing


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def split_parts(path: str) -> list[str] | None:
    """The parts of a file kept split in pieces beside it (`PATH.part1of2`, `PATH.part2of2`, ...;
    the shipped MNIST's training images, as no file of the repository may pass 5 MiB), in
    order; None when `path` is not kept so (or a part is missing)."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    counts = {n.rsplit("of", 1)[-1] for n in names if n.startswith(name + ".part") and "of" in n}
    if len(counts) != 1 or not next(iter(counts)).isdigit():
        return None
    total = int(next(iter(counts)))
    parts = [os.path.join(folder, f"{name}.part{i}of{total}") for i in range(1, total + 1)]
    return parts if all(os.path.isfile(p) for p in parts) else None


def _read_file(path: str) -> tuple[bytes, str]:
    """(the file's content, gunzipped if it ends in .gz; the SHA-256 of the file itself). A file
    kept in parts (`split_parts`) is read as their concatenation."""
    parts = None if os.path.isfile(path) else split_parts(path)
    try:
        blob = b""
        for part in parts or [path]:
            with open(part, "rb") as f:
                blob += f.read()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {_one_line(e)}.") from e
    digest = hashlib.sha256(blob).hexdigest()
    if path.endswith(".gz"):
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
            raise DataError(
                f"Cannot read {path}: {_one_line(e)}. The file is truncated or not "
                "gzip; replace it with a fresh copy."
            ) from e
    return blob, digest


def _parse_idx(raw: bytes, path: str) -> np.ndarray:
    if len(raw) < 8:
        raise DataError(
            f"{path}: only {len(raw)} bytes; an IDX file has at least an 8-byte header."
        )
    magic, n = struct.unpack(">II", raw[:8])
    if magic == _IMAGES_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path}: truncated IDX image header.")
        rows, cols = struct.unpack(">II", raw[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == _LABELS_MAGIC:
        shape, offset = (n,), 8
    else:
        raise DataError(
            f"{path}: bad magic number {magic}; expected {_IMAGES_MAGIC} (images) or "
            f"{_LABELS_MAGIC} (labels). The file is not an MNIST IDX file."
        )
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - offset}; the file is truncated or corrupted."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (images: magic 2051, labels: magic 2049), optionally gzipped.

    Returns:
      uint8 array of shape [N, rows, cols] for images or [N] for labels.

    Raises:
      DataError: unreadable file, bad magic number, or fewer bytes than the header promises.
    """
    return _parse_idx(_read_file(path)[0], path)


def _find_file(directory: str, stem: str) -> str | None:
    for candidate in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path) or split_parts(path):
            return path
    return None


def _load_idx_dir(directory: str) -> ImageDataset | None:
    """The four IDX files of `directory`, validated (not yet identified); None if it has none."""
    paths = {key: _find_file(directory, stem) for key, stem in _IDX_FILES.items()}
    if not any(paths.values()):
        return None
    missing = [_IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{directory} holds only part of the dataset; missing: {missing}.")
    arrays, files = {}, {}
    for key, path in paths.items():
        raw, files[os.path.abspath(path)] = _read_file(path)
        arrays[key] = _parse_idx(raw, path)
    return _validated(arrays, directory, files)


def _read_npz(path: str, required: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """({key: array} of the _IDX_FILES keys present, the file's SHA-256); never unpickles."""
    if not os.path.isfile(path):
        raise DataError(
            f"{path}: no such file" + (" (it is a directory)." if os.path.isdir(path) else ".")
        )
    try:
        with open(path, "rb") as f:
            blob = f.read()
        digest = hashlib.sha256(blob).hexdigest()
        try:
            loaded = np.load(io.BytesIO(blob), allow_pickle=False)  # Read once, hashed and parsed.
        except ValueError as e:  # Neither zip nor .npy: np.load would have to unpickle it.
            raise DataError(
                f"{path} is not an .npz archive (nor any NumPy file); pickled data "
                "is never loaded. Save the arrays with np.savez."
            ) from e
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"{path} holds a single array, not an .npz archive; save the arrays "
                "with np.savez(path, x_train=..., x_test=...)."
            )
        with loaded as f:
            keys = sorted(f.files)
            missing = [k for k in required if k not in keys]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {missing}; the file holds {keys}, "
                    f"expected {list(required)}"
                    + ("." if "y_test" in required else " (and optionally y_train, y_test).")
                )
            arrays = {}
            for key in _IDX_FILES:
                if key in keys:
                    try:
                        arrays[key] = f[key]
                    except ValueError as e:  # An object array: loading it would unpickle.
                        raise DataError(
                            f"{path}: array {key} is not numeric ({_one_line(e)}); "
                            "save plain numeric arrays."
                        ) from e
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # Not a zip (np.load refuses to unpickle it), a damaged archive or member.
        reason = _one_line(e).rstrip(".")
        raise DataError(
            f"Cannot read {path} as an .npz archive: {reason}. Supply a fresh copy "
            "written by np.savez."
        ) from e
    return arrays, digest


def _load_npz(path: str) -> ImageDataset:
    """A Keras-style `<name>.npz` found in a data folder: all four arrays, as Keras writes."""
    arrays, digest = _read_npz(path, required=list(_IDX_FILES))
    return _validated(arrays, path, {os.path.abspath(path): digest})


def _npz_images(x: np.ndarray, path: str, key: str) -> np.ndarray:
    """A user's array as the dataset keeps it: images (uint8 intensities, [N, H, W] or
    [N, H, W, C], or flat vectors [N, D]; MNIST's [N, 784] and [N, 28, 28, 1] as [N, 28, 28]),
    or real-valued data (floats outside [0, 1], kept as float32)."""
    if x.ndim == 2 and x.shape[1] == NUM_PIXELS:
        x = x.reshape(len(x), *IMAGE_SHAPE)
    elif x.ndim == 4 and x.shape[1:] == IMAGE_SHAPE + (1,):
        x = x.reshape(len(x), *IMAGE_SHAPE)
    if x.ndim < 2 or x.ndim > 4 or 0 in x.shape[1:]:
        raise DataError(
            f"{path}: {key} has shape {list(x.shape)}; expected [N, H, W] or [N, H, W, C] "
            "images, or [N, D] vectors."
        )
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{path}: {key} holds integers from {x.min()} to {x.max()}; integer "
                "images are intensities 0..255 (give floats in [0, 1] otherwise)."
            )
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DataError(f"{path}: {key} holds NaN or infinite values.")
        if x.size and (x.min() < 0 or x.max() > 1):
            # Real-valued data (for a Gaussian likelihood): kept as they are, in float32.
            return x.astype(np.float32)
        scaled = x.astype(np.float64)  # One float64 copy, scaled and rounded in place.
        scaled *= 255
        return np.rint(scaled, out=scaled).astype(np.uint8)
    raise DataError(
        f"{path}: {key} has dtype {x.dtype}; expected uint8 intensities 0..255 or floats in [0, 1]."
    )


def _npz_labels(y: np.ndarray, path: str, key: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(
            f"{path}: {key} has shape {list(y.shape)}; expected [N] class indices "
            "0..9 (not one-hot)."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {y.dtype}; labels must be integers 0..9.")
    return y


def load_npz(path: str) -> ImageDataset:
    """A user's own dataset from an .npz file, read without unpickling anything.

    The archive holds `x_train` and `x_test`: images of shape [N, 28, 28] (or [N, 784], or
    [N, 28, 28, 1]) as uint8 (or other integer) intensities 0..255, bool, or floats in [0, 1]
    (rounded to the nearest 1/255); and optionally `y_train` and `y_test`, both or neither:
    integer class labels 0..9 of shape [N] (needed by the semi-supervised models only).
    Other arrays are ignored.

    Returns:
      An ImageDataset with uint8 [N, 28, 28] images, int64 labels (or None), `files` holding the
      file's SHA-256, and `identified_as` set when the arrays are a known dataset's.

    Raises:
      DataError (one line): a missing or unreadable file, a missing array, or arrays of the
        wrong shape, type or range.
    """
    arrays, digest = _read_npz(path, required=("x_train", "x_test"))
    has = [k for k in ("y_train", "y_test") if k in arrays]
    if len(has) == 1:
        other = "y_test" if has == ["y_train"] else "y_train"
        raise DataError(f"{path} holds {has[0]} but no {other}: give both label arrays or neither.")
    for key in ("x_train", "x_test"):
        arrays[key] = _npz_images(arrays[key], path, key)
    for key in has:
        arrays[key] = _npz_labels(arrays[key], path, key)
    ds = _validated(arrays, path, {os.path.abspath(path): digest})
    return dataclasses.replace(ds, identified_as=_identify(ds)[1])


def _validated(arrays, source: str, files: dict[str, str]) -> ImageDataset:
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{source}: training examples of shape {list(arrays['x_train'].shape[1:])} and test "
            f"examples of shape {list(arrays['x_test'].shape[1:])}; both splits need one shape."
        )
    if (arrays["x_train"].dtype == np.float32) != (arrays["x_test"].dtype == np.float32):
        raise DataError(
            f"{source}: one split holds images (uint8, or floats in [0, 1]) and the other "
            "real values outside [0, 1]; give both splits the same kind of data."
        )
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays.get("y_" + split)
        if y is not None and x.shape[0] != y.shape[0]:
            raise DataError(
                f"{source}: {x.shape[0]} {split} images but {y.shape[0]} labels; "
                "the files do not belong together."
            )
        if x.shape[0] == 0:
            raise DataError(f"{source}: the {split} split is empty.")
        if y is not None and y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"{source}: {split} labels outside 0..9.")
    labels = {
        k: None if arrays.get(k) is None else np.asarray(arrays[k], np.int64)
        for k in ("y_train", "y_test")
    }
    kind = np.float32 if arrays["x_train"].dtype == np.float32 else np.uint8
    return ImageDataset(
        x_train=np.asarray(arrays["x_train"], kind),
        y_train=labels["y_train"],
        x_test=np.asarray(arrays["x_test"], kind),
        y_test=labels["y_test"],
        source=source,
        files=files,
    )


# --------------------------------------------------------------------------------------------
# Identification


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).data).hexdigest()


def _identify(ds: ImageDataset) -> tuple[dict[str, str], str | None]:
    """({array key: the known dataset it is}, the dataset all four are, or None)."""
    matches = {}
    for key in _IDX_FILES:
        array = getattr(ds, key)
        if array is not None:
            known = _KNOWN_DIGESTS.get(_array_digest(array))
            if known is not None:
                matches[key] = known
    first = matches.get("x_train", (None,))[0]
    whole = first if all(matches.get(key) == (first, key) for key in _IDX_FILES) else None
    return {key: known for key, (known, _) in matches.items()}, whole


class _Refused(Exception):
    """Files found but not accepted as the dataset asked for; the message says why."""


def _accepted(ds: ImageDataset, name: str, named: bool) -> ImageDataset:
    """`ds` as `name`, if its content allows (see the module docstring); else raises _Refused."""
    matches, whole = _identify(ds)
    others = sorted({known for known in matches.values() if known != name})
    if others:
        files = [_IDX_FILES[key] for key, known in matches.items() if known != name]
        which = "all four arrays" if len(files) == 4 else ", ".join(files)
        titles = " and ".join(TITLES[o] for o in others)
        raise _Refused(
            f"{ds.source} holds {titles}, not {TITLES[name]}: the checksums of "
            f"{which} are those of the published {titles}"
        )
    if not named and whole != name:
        raise _Refused(
            f"{ds.source} is not a folder named after {name} and its files are not "
            f"the published {TITLES[name]} (their checksums differ); put your own "
            f"copy in a folder named {name}/ or pass npz:PATH"
        )
    return dataclasses.replace(ds, identified_as=whole)


def _named_after(path: str, name: str) -> bool:
    return os.path.basename(os.path.normpath(path)).lower() in _DIR_ALIASES[name]


# --------------------------------------------------------------------------------------------
# Resolution


def _try_directory(root: str, name: str) -> tuple[ImageDataset | None, list[str]]:
    """Looks in root/<name>/ (any alias) first, then root itself.

    Returns:
      (the dataset or None, why files found on the way were refused).
    """
    refused = []
    for directory in [os.path.join(root, sub) for sub in _DIR_ALIASES[name]] + [root]:
        try:
            found = _try_directory_flat(directory, name)
        except _Refused as e:
            refused.append(str(e))
            continue
        if found is not None:
            return found, refused
    return None, refused


def _try_directory_flat(directory: str, name: str) -> ImageDataset | None:
    if not os.path.isdir(directory):
        return None
    found = _load_idx_dir(directory)
    if found is not None:
        return _accepted(found, name, named=_named_after(directory, name))
    for alias in _DIR_ALIASES[name]:
        npz = os.path.join(directory, alias + ".npz")
        if os.path.isfile(npz):
            return _accepted(_load_npz(npz), name, named=True)
    return None


def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "datasets")


def _download(name: str) -> ImageDataset:
    import keras  # Deferred: only the last-resort path needs it.

    if name == "mnist":
        path = keras.utils.get_file("mnist.npz", _KERAS_MNIST_URL)
        return _accepted(_load_npz(path), name, named=True)
    paths = [
        keras.utils.get_file(
            stem + ".gz",
            _KERAS_FASHION_URL + "fashion-mnist/" + stem + ".gz",
            cache_subdir="datasets/fashion-mnist",
        )
        for stem in _IDX_FILES.values()
    ]
    # Read from where get_file put the files: Keras fixes its cache directory when it is
    # imported (and falls back to /tmp/.keras when ~/.keras is not writable), so it need not be
    # _keras_cache_dir().
    directory = os.path.dirname(paths[0])
    found = _load_idx_dir(directory)
    if found is None:
        raise DataError(f"Downloaded files not found in {directory}.")
    return _accepted(found, name, named=True)


def candidate_dirs(name: str, data_dir: str | None = None) -> list[tuple[str, str]]:
    """The (description, directory) pairs searched, in order."""
    out = []
    if data_dir:
        out.append(("--data_dir", data_dir))
    if os.environ.get(ENV_VAR):
        out.append((f"${ENV_VAR}", os.environ[ENV_VAR]))
    for alias in _DIR_ALIASES[name]:
        out.append(("Debian dataset package", os.path.join(DEBIAN_DATASETS, alias)))
    out.append(("Keras cache", _keras_cache_dir()))
    if name in _SHIPPED_NAMES:
        out.append((_SHIPPED_PLACE, os.path.join(SHIPPED_DATASETS, name)))
    return out


def _load_shipped(directory: str, name: str) -> ImageDataset | None:
    """The copy shipped in the package, which must be the published `name` (all four arrays'
    checksums); None if the folder holds no files (a package installed without its data)."""
    if not os.path.isdir(directory):
        return None
    found = _load_idx_dir(directory)
    if found is None:
        return None
    if _identify(found)[1] != name:
        raise DataError(
            f"The {TITLES[name]} copy shipped with tfp_vae in {directory} is damaged: its "
            f"checksums are not the published {TITLES[name]}'s. Reinstall tfp_vae, or pass "
            f"--data_dir or set {ENV_VAR}."
        )
    return dataclasses.replace(found, identified_as=name)


def load(name: str = "mnist", data_dir: str | None = None, download: bool = True) -> ImageDataset:
    """Loads MNIST, Fashion-MNIST or a user's .npz (see the module docstring).

    Args:
      name: "mnist", "fashion_mnist", or "npz:PATH" (`load_npz(PATH)`).
      data_dir: a directory to look in before anything else. If given and it does not hold the
        dataset, that is an error rather than a silent fall-through to other places. Not used
        with npz:PATH (giving both is an error).
      download: whether to fetch the files as a last resort.

    Raises:
      DataError (a ValueError): unknown name; nothing found (the message names every place
        looked, and why files found there were refused); a corrupted file.
    """
    if isinstance(name, str) and name.startswith(NPZ_PREFIX):
        path = name[len(NPZ_PREFIX) :]
        if not path:
            raise DataError("npz: needs a file name: npz:PATH.")
        if data_dir:
            raise DataError(
                f"data_dir={data_dir} does not apply to {name}; give the file's own path."
            )
        return load_npz(path)
    if name not in DATASETS:
        raise DataError(
            f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or {NPZ_PREFIX}PATH."
        )
    looked = []
    for what, directory in candidate_dirs(name, data_dir):
        if what == _SHIPPED_PLACE:
            found, refused = _load_shipped(directory, name), []
        else:
            found, refused = _try_directory(directory, name)
        if found is not None:
            return found
        if what == "--data_dir":
            if refused:
                raise DataError(
                    f"--data_dir={data_dir} does not hold {name}: " + "; ".join(refused) + "."
                )
            raise DataError(
                f"--data_dir={data_dir} does not hold {name}: expected the four IDX "
                f"files ({', '.join(s + '.gz' for s in _IDX_FILES.values())}) or "
                f"{name}.npz there or in {data_dir}/{name}/."
            )
        looked.append(
            f"  {what}: {directory}"
            + ("" if os.path.isdir(directory) else " (no such directory)")
            + "".join(f" (refused: {r})" for r in refused)
        )
    download_error = "download disabled"
    if download:
        try:
            return _download(name)
        except _Refused as e:
            download_error = f"refused: {e}"
        # Network errors come in many types; all mean the same here.
        except Exception as e:  # noqa: BLE001
            download_error = f"download failed: {e}"
    raise DataError(
        f"Could not find the {name} dataset. Looked in:\n"
        + "\n".join(looked)
        + f"\n  download: {download_error}\n"
        f"Supply the four IDX files ({', '.join(s + '.gz' for s in _IDX_FILES.values())}) or "
        f"{name}.npz in a directory named {name} and pass --data_dir=DIR or set {ENV_VAR}=DIR."
    )


# --------------------------------------------------------------------------------------------
# Binarisation and pipelines


def flatten(images: np.ndarray) -> np.ndarray:
    """uint8 [N, ...] -> float32 [N, prod(...)] in [0, 1] (uint8 [N, 28, 28] -> [N, 784]);
    floats (real-valued data, as `load_npz` keeps them) are flattened as they are."""
    scale = 255.0 if np.asarray(images).dtype == np.uint8 else 1.0
    images = np.asarray(images, np.float32)
    # An explicit pixel count (not -1) so an empty array flattens to [0, 784] too.
    return (images / scale).reshape(len(images), int(np.prod(images.shape[1:])))


def binarize_static(images: np.ndarray, seed: int = STATIC_BINARIZATION_SEED) -> np.ndarray:
    """One fixed Bernoulli draw per pixel: uint8 [N, 28, 28] -> float32 [N, 784] in {0, 1}.

    The same seed gives the same binary images on every machine, so evaluation numbers are
    comparable across runs.
    """
    _check_binarisable(images, "static")
    probs = flatten(images)
    rng = np.random.default_rng(seed)
    return (rng.random(probs.shape, dtype=np.float32) < probs).astype(np.float32)


def _check_binarisable(images: np.ndarray, binarization: str):
    """Real-valued data (float32, see `load_npz`) have no intensities to binarise."""
    if binarization != "none" and np.asarray(images).dtype == np.float32:
        raise DataError(
            f"binarization={binarization}: these are real-valued data (floats outside [0, 1]), "
            "not images; use binarization=none and a likelihood for real values (gaussian)."
        )


def _check_nonempty(images: np.ndarray, what: str):
    if len(images) == 0:
        raise DataError(f"The {what} set is empty: there is nothing to train or evaluate on.")


PIPELINES = ("tf.data", "numpy")


def uses_numpy_pipeline(pipeline: str | None = None) -> bool:
    """Whether `train_dataset` and `eval_dataset` (and the semi-supervised ones) give the NumPy
    pipeline (`tfp_vae.data_numpy`) for their argument `pipeline`: "numpy" does, "tf.data" does
    not, and None (the default) picks the backend's: tf.data on Keras' TensorFlow backend, NumPy
    on the others (JAX), where TensorFlow need not be installed."""
    if pipeline is None:
        import keras

        return keras.config.backend() != "tensorflow"
    if pipeline not in PIPELINES:
        raise ValueError(
            f"pipeline must be tf.data, numpy or None (the backend's); got {pipeline!r}."
        )
    return pipeline == "numpy"


def check_train_args(images: np.ndarray, batch_size: int, binarization: str, start_step: int):
    """The checks of `train_dataset`'s arguments, shared by both pipelines (DataError or
    ValueError, one line)."""
    _check_nonempty(images, "training")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if int(start_step) < 0:
        raise ValueError(f"start_step must be >= 0; got {start_step}.")
    if binarization not in ("dynamic", "static", "none"):
        raise ValueError(f"binarization must be dynamic, static or none; got {binarization!r}.")
    _check_binarisable(images, binarization)


def train_table(images: np.ndarray, binarization: str) -> tuple[np.ndarray, bool]:
    """(the rows a training batch is gathered from, whether the data are real-valued): float32
    [N, D] binarised once ("static") or real-valued data as they are, else uint8 [N, D]
    intensities (binarised or scaled per batch)."""
    real = np.asarray(images).dtype == np.float32  # Real-valued data go through as they are.
    if binarization == "static":
        return binarize_static(images), real
    if real:
        return flatten(images), real
    return np.asarray(images, np.uint8).reshape(len(images), -1), real


def train_dataset(
    images: np.ndarray,
    batch_size: int,
    binarization: str = "dynamic",
    seed: int | None = None,
    start_step: int = 0,
    *,
    pipeline: str | None = None,
) -> tf.data.Dataset:
    """An endless stream of shuffled epochs in batches of float32 [batch_size, 784] images.

    Each epoch is a fresh permutation of the images cut into whole batches (the last
    `N % batch_size` of each permutation are left out, a different few every epoch; a set
    smaller than one batch is repeated within the epoch). Indices are shuffled, not images, and
    each batch is gathered and binarised in one vectorised map; every draw comes from a stateless
    RNG keyed by (`seed`, epoch or batch number), so a seed gives the same stream every time.

    A tf.data.Dataset on Keras' TensorFlow backend; on the others (JAX) the same stream drawn by
    NumPy, `tfp_vae.data_numpy.train_dataset` (a `keras.utils.PyDataset`; the same seed gives
    other draws than tf.data's, of the same distribution): `pipeline` "tf.data" or "numpy" picks
    one whatever the backend (`uses_numpy_pipeline`).

    Args:
      images: uint8 [N, 28, 28].
      binarization: "dynamic" draws fresh Bernoulli pixels for every batch (the recipe);
        "static" binarises once with the static seed; "none" keeps grayscale in [0, 1].
      seed: None draws one from the OS.
      start_step: the stream from its batch number `start_step` on (what a run resumed at that
        global step reads next): the same batches as the whole stream's, at no cost per batch
        skipped.
    """
    if uses_numpy_pipeline(pipeline):
        from tfp_vae import data_numpy

        return data_numpy.train_dataset(images, batch_size, binarization, seed, start_step)
    import tensorflow as tf

    check_train_args(images, batch_size, binarization, start_step)
    array, real = train_table(images, binarization)
    table = tf.constant(array)
    n = len(images)
    repeats = -(-batch_size // n)  # Whole copies of the set needed to fill one batch.
    per_epoch = n * repeats // batch_size
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = tf.constant(seed, tf.int64)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.tile(tf.range(n, dtype=tf.int32), [repeats]), seed=tf.stack([seed, e])
        )
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: per_epoch * batch_size], [per_epoch, batch_size])
        )

    def batch(step, indices):
        x = tf.gather(table, indices)
        if binarization == "dynamic":
            # Another key than the shuffles' (seed, epoch): seed + 1 as the second word.
            return dynamic_binarize(x, tf.stack([step, seed + 1]))
        return x if binarization == "static" or real else tf.cast(x, tf.float32) / 255.0

    first_epoch = int(start_step) // per_epoch
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.enumerate(start=first_epoch * per_epoch).skip(int(start_step) - first_epoch * per_epoch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def dynamic_binarize(batch: tf.Tensor, seed=None) -> tf.Tensor:
    """uint8 [B, 784] -> float32 [B, 784] with pixel ~ Bernoulli(intensity / 255) (TensorFlow;
    `tfp_vae.data_numpy.dynamic_binarize` is the NumPy one).

    `seed`: an op seed (int or None) for the stateful RNG, or a shape-[2] tensor for the
    stateless one.
    """
    import tensorflow as tf

    probs = tf.cast(batch, tf.float32) / 255.0
    if seed is not None and not isinstance(seed, int):
        uniform = tf.random.stateless_uniform(tf.shape(probs), seed=seed)
    else:
        uniform = tf.random.uniform(tf.shape(probs), seed=seed)
    return tf.cast(uniform < probs, tf.float32)


def eval_array(images: np.ndarray, binarization: str = "static") -> np.ndarray:
    """float32 [N, D]: `images` as `eval_dataset` gives them ("static": binarised with the
    static seed; "none": grayscale in [0, 1]), checked as it checks them."""
    _check_nonempty(images, "evaluation")
    if binarization not in ("static", "none"):
        raise ValueError(
            f"binarization must be static or none for evaluation; got {binarization!r}."
        )
    return binarize_static(images) if binarization == "static" else flatten(images)


def eval_dataset(
    images: np.ndarray,
    batch_size: int = 1000,
    binarization: str = "static",
    labels: np.ndarray | None = None,
    *,
    pipeline: str | None = None,
) -> tf.data.Dataset:
    """A finite dataset of float32 [B, 784] batches (and labels, if given), in order.

    `binarization` is "static" (binarised with the static seed) or "none" (grayscale in [0, 1]).
    A tf.data.Dataset on Keras' TensorFlow backend, else a NumPy `keras.utils.PyDataset`
    (`tfp_vae.data_numpy.eval_dataset`, the same batches); `pipeline` as `train_dataset`'s.
    """
    if uses_numpy_pipeline(pipeline):
        from tfp_vae import data_numpy

        return data_numpy.eval_dataset(images, batch_size, binarization, labels)
    import tensorflow as tf

    x = eval_array(images, binarization)
    tensors = x if labels is None else (x, np.asarray(labels, np.int64))
    return tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def labelled_subset(
    labels: np.ndarray, per_class: int, seed: int, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (labelled, unlabelled): `per_class` examples of each class, by seed.

    Raises:
      DataError: a class has fewer than `per_class` examples.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise DataError(f"Class {c} has {len(idx)} examples; cannot draw {per_class}.")
        chosen.append(rng.choice(idx, per_class, replace=False))
    labelled = np.sort(np.concatenate(chosen))
    unlabelled = np.setdiff1d(np.arange(len(labels)), labelled)
    return labelled, unlabelled


def validation_count(n_train: int, validation) -> int:
    """How many of `n_train` training examples `validation` holds out: a count (a whole number,
    0 to n_train - 1) or a fraction in (0, 1) of n_train (rounded, at least one example).

    Raises:
      DataError (one line): a negative, fractional above 1 or non-numeric `validation`, or one
        that leaves no training example.
    """
    if isinstance(validation, (bool, np.bool_)) or not isinstance(
        validation, (int, float, np.integer, np.floating)
    ):
        raise DataError(
            f"The validation split must be a count of examples or a fraction in (0, 1); "
            f"got {validation!r}."
        )
    if not np.isfinite(validation) or validation < 0:
        raise DataError(
            f"The validation split must be a count >= 0 or a fraction in (0, 1); got {validation}."
        )
    if validation < 1:
        n = max(1, round(float(validation) * n_train)) if validation > 0 else 0
    elif float(validation).is_integer():
        n = int(validation)
    else:
        raise DataError(
            f"The validation split {validation} is neither a whole count of examples nor a "
            "fraction in (0, 1)."
        )
    if n and n >= n_train:
        raise DataError(
            f"The validation split holds out {n} of the {n_train} training examples; "
            "at least one must remain to train on."
        )
    return n


def split_validation(ds: ImageDataset, validation, seed: int = 0) -> ImageDataset:
    """Holds out training examples for validation: a copy of `ds` whose x_train (and y_train)
    keep the other rows, in their order, and whose x_validation (and y_validation) hold the
    held-out ones, in theirs.

    Use x_validation for `fit`'s validation_data, early stopping or picking a checkpoint, and
    keep the test set for the final numbers only. The rows are drawn by `seed` alone (a NumPy
    permutation of the training set's indices), so the same seed and size always hold out the
    same examples, whatever the model. The semi-supervised models draw their labelled examples
    from the returned x_train/y_train, never from the held-out rows; `train_positions` maps
    indices of the loaded training set (a `labelled_indices` file) to rows of x_train.

    Args:
      validation: a count of examples (0 to N - 1; 0 holds out none) or a fraction in (0, 1)
        of the training set (see `validation_count`).

    Raises:
      DataError (one line): a `validation` out of range, or `ds` already split.
    """
    if ds.train_indices is not None:
        raise DataError("The dataset already holds a validation split; split the loaded one.")
    n_train = len(ds.x_train)
    n = validation_count(n_train, validation)
    held_out = np.zeros(n_train, bool)
    held_out[np.random.default_rng(seed).permutation(n_train)[:n]] = True
    train_idx, val_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    y = ds.y_train
    return dataclasses.replace(
        ds,
        x_train=ds.x_train[train_idx],
        y_train=None if y is None else y[train_idx],
        x_validation=ds.x_train[val_idx],
        y_validation=None if y is None else y[val_idx],
        train_indices=train_idx,
        validation_indices=val_idx,
    )


def train_positions(ds: ImageDataset, indices) -> np.ndarray:
    """The rows of `ds.x_train` that hold the loaded training set's examples `indices` (int64):
    the indices themselves when the training set is whole (their consumer checks them), else
    their places in the part that `split_validation` kept for training.

    Raises:
      DataError (one line): after a split, an index that names an example held out for
        validation, or none of the training set's.
    """
    indices = np.asarray(indices)
    if ds.train_indices is None or not np.issubdtype(indices.dtype, np.integer):
        return indices
    held = np.intersect1d(indices, ds.validation_indices)
    if held.size:
        raise DataError(
            f"Training-set indices {held[:5].tolist()} are held out for validation "
            f"({len(ds.validation_indices)} examples); labelled examples must come from the "
            "examples trained on: choose others, or another validation split or seed."
        )
    outside = np.setdiff1d(indices, ds.train_indices)
    if outside.size:
        n = len(ds.train_indices) + len(ds.validation_indices)
        raise DataError(f"Training-set indices must lie in 0..{n - 1}; got {outside[:5].tolist()}.")
    return np.searchsorted(ds.train_indices, indices).astype(np.int64)


def take_first(
    ds: ImageDataset, n_train: int | None = None, n_test: int | None = None
) -> ImageDataset:
    """A smaller copy (for quick runs and tests)."""
    return dataclasses.replace(
        ds,
        x_train=ds.x_train[:n_train],
        x_test=ds.x_test[:n_test],
        y_train=None if ds.y_train is None else ds.y_train[:n_train],
        y_test=None if ds.y_test is None else ds.y_test[:n_test],
        train_indices=None if ds.train_indices is None else ds.train_indices[:n_train],
    )


__all__: Sequence[str] = (
    "DataError",
    "ImageDataset",
    "load",
    "load_npz",
    "read_idx",
    "KNOWN_DATASETS",
    "binarize_static",
    "dynamic_binarize",
    "train_dataset",
    "eval_dataset",
    "eval_array",
    "uses_numpy_pipeline",
    "labelled_subset",
    "flatten",
    "take_first",
    "split_validation",
    "validation_count",
    "train_positions",
    "ENV_VAR",
    "SHIPPED_DATASETS",
)
