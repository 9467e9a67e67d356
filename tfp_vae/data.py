"""MNIST-family data: finding the files, parsing them safely, binarising, tf.data pipelines.

Where the files are looked for, in order (the first that holds a complete set wins):

1. an explicit ``data_dir`` (the ``--data_dir`` flag of the binaries);
2. the environment variable ``TFP_VAE_DATA_DIR``;
3. Debian's location ``/usr/share/datasets/<name>/`` (package ``dataset-fashion-mnist``);
4. the Keras cache ``~/.keras/datasets/`` (``mnist.npz`` or ``<name>/`` with IDX files);
5. a download through ``keras.utils.get_file`` into the Keras cache (only if ``download``).

A directory "holds" a dataset when it, or its subfolder named after the dataset, has the four
IDX files (``train-images-idx3-ubyte[.gz]`` ...) or a Keras-style ``<name>.npz``.

Images are kept as ``uint8`` arrays of shape ``[N, 28, 28]``; models see ``float32`` arrays of
shape ``[N, 784]`` in {0, 1} after binarisation.
"""

import dataclasses
import gzip
import os
import struct
import zlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

ENV_VAR = "TFP_VAE_DATA_DIR"
DATASETS = ("mnist", "fashion_mnist")
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28
NUM_CLASSES = 10
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


class DataError(ValueError):
    """A data file is missing, unreadable or corrupted; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train/test split of a 10-class 28x28 grayscale image dataset.

    Attributes:
      x_train: uint8, shape [60000, 28, 28].
      y_train: int64, shape [60000].
      x_test: uint8, shape [10000, 28, 28].
      y_test: int64, shape [10000].
      source: where the arrays were read from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


# --------------------------------------------------------------------------------------------
# Parsing


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
        raise DataError(f"Cannot read {path}: {e}. The file is truncated or not gzip; "
                        "replace it with a fresh copy.") from e


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (images: magic 2051, labels: magic 2049), optionally gzipped.

    Returns:
      uint8 array of shape [N, rows, cols] for images or [N] for labels.

    Raises:
      DataError: unreadable file, bad magic number, or fewer bytes than the header promises.
    """
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path}: only {len(raw)} bytes; an IDX file has at least an 8-byte header.")
    magic, n = struct.unpack(">II", raw[:8])
    if magic == _IMAGES_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path}: truncated IDX image header.")
        rows, cols = struct.unpack(">II", raw[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == _LABELS_MAGIC:
        shape, offset = (n,), 8
    else:
        raise DataError(f"{path}: bad magic number {magic}; expected {_IMAGES_MAGIC} (images) or "
                        f"{_LABELS_MAGIC} (labels). The file is not an MNIST IDX file.")
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes of data) but the "
                        f"file holds {len(raw) - offset}; the file is truncated or corrupted.")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(directory: str, stem: str) -> Optional[str]:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz",
                      stem.replace("-idx", ".idx")):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _load_idx_dir(directory: str) -> Optional[ImageDataset]:
    paths = {key: _find_file(directory, stem) for key, stem in _IDX_FILES.items()}
    if not any(paths.values()):
        return None
    missing = [_IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{directory} holds only part of the dataset; missing: {missing}.")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    return _validated(arrays, directory)


def _load_npz(path: str) -> ImageDataset:
    try:
        with np.load(path) as f:
            arrays = {key: f[key] for key in _IDX_FILES}
    except KeyError as e:
        raise DataError(f"{path}: missing array {e}; expected keys {list(_IDX_FILES)}.") from e
    except Exception as e:  # zipfile/pickle errors from a damaged file.
        raise DataError(f"Cannot read {path}: {e}. Delete it and supply a fresh copy.") from e
    return _validated(arrays, path)


def _validated(arrays, source: str) -> ImageDataset:
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{source}: {split} images have shape {x.shape}; expected [N, 28, 28].")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{source}: {x.shape[0]} {split} images but {y.shape[0]} labels; "
                            "the files do not belong together.")
        if x.shape[0] == 0:
            raise DataError(f"{source}: the {split} split is empty.")
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"{source}: {split} labels outside 0..9.")
    return ImageDataset(
        x_train=np.asarray(arrays["x_train"], np.uint8),
        y_train=np.asarray(arrays["y_train"], np.int64),
        x_test=np.asarray(arrays["x_test"], np.uint8),
        y_test=np.asarray(arrays["y_test"], np.int64),
        source=source)


# --------------------------------------------------------------------------------------------
# Resolution


def _try_directory(root: str, name: str) -> Optional[ImageDataset]:
    """Looks in root/<name>/ (any alias) first, then root itself."""
    for sub in _DIR_ALIASES[name]:
        directory = os.path.join(root, sub)
        if os.path.isdir(directory):
            found = _try_directory_flat(directory, name)
            if found is not None:
                return found
    return _try_directory_flat(root, name)


def _try_directory_flat(directory: str, name: str) -> Optional[ImageDataset]:
    if not os.path.isdir(directory):
        return None
    found = _load_idx_dir(directory)
    if found is not None:
        return found
    for alias in _DIR_ALIASES[name]:
        npz = os.path.join(directory, alias + ".npz")
        if os.path.isfile(npz):
            return _load_npz(npz)
    return None


def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "datasets")


def _download(name: str) -> ImageDataset:
    import keras  # Deferred: only the last-resort path needs it.

    if name == "mnist":
        path = keras.utils.get_file("mnist.npz", _KERAS_MNIST_URL)
        return _load_npz(path)
    paths = [keras.utils.get_file(stem + ".gz",
                                  _KERAS_FASHION_URL + "fashion-mnist/" + stem + ".gz",
                                  cache_subdir="datasets/fashion-mnist")
             for stem in _IDX_FILES.values()]
    # Read from where get_file put the files: Keras fixes its cache directory when it is
    # imported (and falls back to /tmp/.keras when ~/.keras is not writable), so it need not be
    # _keras_cache_dir().
    directory = os.path.dirname(paths[0])
    found = _load_idx_dir(directory)
    if found is None:
        raise DataError(f"Downloaded files not found in {directory}.")
    return found


def candidate_dirs(name: str, data_dir: Optional[str] = None) -> List[Tuple[str, str]]:
    """The (description, directory) pairs searched, in order."""
    out = []
    if data_dir:
        out.append(("--data_dir", data_dir))
    if os.environ.get(ENV_VAR):
        out.append((f"${ENV_VAR}", os.environ[ENV_VAR]))
    for alias in _DIR_ALIASES[name]:
        out.append(("Debian dataset package", f"/usr/share/datasets/{alias}"))
    out.append(("Keras cache", _keras_cache_dir()))
    return out


def load(name: str = "mnist", data_dir: Optional[str] = None,
         download: bool = True) -> ImageDataset:
    """Loads MNIST or Fashion-MNIST from the first place that has it (see module docstring).

    Args:
      name: "mnist" or "fashion_mnist".
      data_dir: a directory to look in before anything else. If given and it does not hold the
        dataset, that is an error rather than a silent fall-through to other places.
      download: whether to fetch the files as a last resort.

    Raises:
      ValueError: unknown name.
      DataError: nothing found (the message names every place looked), or a corrupted file.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
    looked = []
    for what, directory in candidate_dirs(name, data_dir):
        found = _try_directory(directory, name)
        if found is not None:
            return found
        looked.append(f"  {what}: {directory}" + ("" if os.path.isdir(directory) else " (no such directory)"))
        if what == "--data_dir":
            raise DataError(f"--data_dir={data_dir} does not hold {name}: expected the four IDX "
                            f"files ({', '.join(s + '.gz' for s in _IDX_FILES.values())}) or "
                            f"{name}.npz there or in {data_dir}/{name}/.")
    download_error = "download disabled"
    if download:
        try:
            return _download(name)
        except Exception as e:  # Network errors come in many types; all mean the same here.
            download_error = f"download failed: {e}"
    raise DataError(
        f"Could not find the {name} dataset. Looked in:\n" + "\n".join(looked) +
        f"\n  download: {download_error}\n"
        f"Supply the four IDX files ({', '.join(s + '.gz' for s in _IDX_FILES.values())}) or "
        f"{name}.npz in a directory and pass --data_dir=DIR or set {ENV_VAR}=DIR.")


# --------------------------------------------------------------------------------------------
# Binarisation and pipelines


def flatten(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 784] in [0, 1]."""
    images = np.asarray(images, np.float32)
    # An explicit pixel count (not -1) so an empty array flattens to [0, 784] too.
    return (images / 255.0).reshape(len(images), int(np.prod(images.shape[1:])))


def binarize_static(images: np.ndarray, seed: int = STATIC_BINARIZATION_SEED) -> np.ndarray:
    """One fixed Bernoulli draw per pixel: uint8 [N, 28, 28] -> float32 [N, 784] in {0, 1}.

    The same seed gives the same binary images on every machine, so evaluation numbers are
    comparable across runs.
    """
    probs = flatten(images)
    rng = np.random.default_rng(seed)
    return (rng.random(probs.shape, dtype=np.float32) < probs).astype(np.float32)


def _check_nonempty(images: np.ndarray, what: str):
    if len(images) == 0:
        raise DataError(f"The {what} set is empty: there is nothing to train or evaluate on.")


def train_dataset(images: np.ndarray, batch_size: int, binarization: str = "dynamic",
                  seed: Optional[int] = None, start_step: int = 0) -> tf.data.Dataset:
    """An endless stream of shuffled epochs in batches of float32 [batch_size, 784] images.

    Each epoch is a fresh permutation of the images cut into whole batches (the last
    `N % batch_size` of each permutation are left out, a different few every epoch; a set
    smaller than one batch is repeated within the epoch). Indices are shuffled, not images, and
    each batch is gathered and binarised in one vectorised map; every draw comes from a stateless
    RNG keyed by (`seed`, epoch or batch number), so a seed gives the same stream every time.

    Args:
      images: uint8 [N, 28, 28].
      binarization: "dynamic" draws fresh Bernoulli pixels for every batch (the recipe);
        "static" binarises once with the static seed; "none" keeps grayscale in [0, 1].
      seed: None draws one from the OS.
      start_step: the stream from its batch number `start_step` on (what a run resumed at that
        global step reads next): the same batches as the whole stream's, at no cost per batch
        skipped.
    """
    _check_nonempty(images, "training")
    if int(start_step) < 0:
        raise ValueError(f"start_step must be >= 0; got {start_step}.")
    if binarization not in ("dynamic", "static", "none"):
        raise ValueError(f"binarization must be dynamic, static or none; got {binarization!r}.")
    if binarization == "static":
        table = tf.constant(binarize_static(images))
    else:
        table = tf.constant(np.asarray(images, np.uint8).reshape(len(images), -1))
    n = len(images)
    repeats = -(-batch_size // n)  # Whole copies of the set needed to fill one batch.
    per_epoch = n * repeats // batch_size
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = tf.constant(seed, tf.int64)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.tile(tf.range(n, dtype=tf.int32), [repeats]), seed=tf.stack([seed, e]))
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[:per_epoch * batch_size], [per_epoch, batch_size]))

    def batch(step, indices):
        x = tf.gather(table, indices)
        if binarization == "dynamic":
            # Another key than the shuffles' (seed, epoch): seed + 1 as the second word.
            return dynamic_binarize(x, tf.stack([step, seed + 1]))
        return x if binarization == "static" else tf.cast(x, tf.float32) / 255.0

    first_epoch = int(start_step) // per_epoch
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.enumerate(start=first_epoch * per_epoch).skip(int(start_step) - first_epoch * per_epoch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def dynamic_binarize(batch: tf.Tensor, seed=None) -> tf.Tensor:
    """uint8 [B, 784] -> float32 [B, 784] with pixel ~ Bernoulli(intensity / 255).

    `seed`: an op seed (int or None) for the stateful RNG, or a shape-[2] tensor for the
    stateless one.
    """
    probs = tf.cast(batch, tf.float32) / 255.0
    if seed is not None and not isinstance(seed, int):
        uniform = tf.random.stateless_uniform(tf.shape(probs), seed=seed)
    else:
        uniform = tf.random.uniform(tf.shape(probs), seed=seed)
    return tf.cast(uniform < probs, tf.float32)


def eval_dataset(images: np.ndarray, batch_size: int = 1000, binarization: str = "static",
                 labels: Optional[np.ndarray] = None) -> tf.data.Dataset:
    """A finite dataset of float32 [B, 784] batches (and labels, if given), in order.

    `binarization` is "static" (binarised with the static seed) or "none" (grayscale in [0, 1]).
    """
    _check_nonempty(images, "evaluation")
    if binarization not in ("static", "none"):
        raise ValueError(f"binarization must be static or none for evaluation; got "
                         f"{binarization!r}.")
    x = binarize_static(images) if binarization == "static" else flatten(images)
    tensors = x if labels is None else (x, np.asarray(labels, np.int64))
    return tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def labelled_subset(labels: np.ndarray, per_class: int, seed: int,
                    num_classes: int = NUM_CLASSES) -> Tuple[np.ndarray, np.ndarray]:
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


def take_first(ds: ImageDataset, n_train: Optional[int] = None,
               n_test: Optional[int] = None) -> ImageDataset:
    """A smaller copy (for quick runs and tests)."""
    return dataclasses.replace(
        ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test])


__all__: Sequence[str] = (
    "DataError", "ImageDataset", "load", "read_idx", "binarize_static", "dynamic_binarize",
    "train_dataset", "eval_dataset", "labelled_subset", "flatten", "take_first", "ENV_VAR")
