"""Semi-supervised data: the labelled split (by seed or by an index file) and the pipelines the
semi-supervised models train and evaluate on (an unlabelled batch zipped with the labelled set).

Beside `tfp_vae.data`, which loads the datasets and makes the unsupervised pipelines. As there,
the pipelines are tf.data on Keras' TensorFlow backend and NumPy `keras.utils.PyDataset`s on the
others (`tfp_vae.data_numpy`); the labelled split needs no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tfp_vae import data
from tfp_vae.data import NUM_CLASSES

if TYPE_CHECKING:  # Imported where a tf.data pipeline is built.
    import tensorflow as tf


def check_label_array(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """A NumPy array of class indices [N], checked (ValueError naming the problem)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"Labels must be a 1-D array of class indices; got shape {labels.shape}.")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Labels must be integers; got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must be class indices in 0..{num_classes - 1}; got values "
            f"from {labels.min()} to {labels.max()}."
        )
    return labels


def split_labelled(
    labels: np.ndarray,
    labels_per_class: int = 10,
    label_seed: int = 0,
    num_classes: int = NUM_CLASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) index arrays: `labels_per_class` of each class, chosen by seed.

    A checked front end to `data.labelled_subset`: raises ValueError naming the problem when
    labels are not a 1-D integer array in 0..num_classes-1, when a class is missing altogether or
    has fewer than `labels_per_class` examples.
    """
    labels = check_label_array(labels, num_classes)
    if int(labels_per_class) < 1:
        raise ValueError(f"labels_per_class must be >= 1; got {labels_per_class}.")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise ValueError(
            f"The labels contain no examples of class(es) {missing}; the "
            f"semi-supervised split needs {labels_per_class} labelled examples of "
            f"each of the {num_classes} classes."
        )
    short = [c for c in range(num_classes) if counts[c] < labels_per_class]
    if short:
        raise ValueError(
            f"Class(es) {short} have fewer than labels_per_class="
            f"{labels_per_class} examples ({[int(counts[c]) for c in short]})."
        )
    return data.labelled_subset(labels, int(labels_per_class), label_seed, num_classes)


def split_by_indices(
    labels: np.ndarray, indices: Sequence[int] | np.ndarray, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) index arrays from a chosen labelled set (training-set indices).

    For a labelled set picked by hand (or by another codebase) rather than drawn by seed.
    Raises ValueError naming the problem when an index is not an integer, out of range or
    repeated, or when the chosen examples miss a class.
    """
    labels = check_label_array(labels, num_classes)
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(
            f"Labelled indices must be a non-empty 1-D list; got shape {indices.shape}."
        )
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"Labelled indices must be integers; got dtype {indices.dtype}.")
    bad = indices[(indices < 0) | (indices >= len(labels))]
    if bad.size:
        raise ValueError(
            f"Labelled indices must lie in 0..{len(labels) - 1} (the training "
            f"set); got {bad[:5].tolist()}."
        )
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"Labelled indices repeat: {values[counts > 1][:5].tolist()}; list each example once."
        )
    missing = np.setdiff1d(np.arange(num_classes), labels[values])
    if missing.size:
        raise ValueError(
            f"The labelled indices contain no examples of class(es) "
            f"{missing.tolist()}; every class needs at least one."
        )
    return values, np.setdiff1d(np.arange(len(labels)), values)


def read_indices(path: str) -> np.ndarray:
    """Integers (int64 [N]) from a text file (whitespace or comma separated; '#' starts a
    comment)."""
    with open(path) as f:
        text = " ".join(line.split("#", 1)[0] for line in f).replace(",", " ")
    try:
        return np.array([int(t) for t in text.split()], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{path}: expected integer training-set indices ({e}).") from None


def _check_uint8_images(images, labels):
    """Images (uint8 [N, ...]; or real-valued float32 data) flattened to [N, D], one per label."""
    images = np.asarray(images)
    if images.dtype not in (np.uint8, np.float32):
        raise ValueError(
            f"Images must be uint8 (as tfp_vae.data.load returns them); got {images.dtype}."
        )
    if images.ndim < 2:
        raise ValueError(
            f"Expected images of shape [N, ...] (e.g. [N, 28, 28]); got {images.shape}."
        )
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    return images.reshape(len(images), -1)


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    labels_per_class: int = 10,
    label_seed: int = 0,
    batch_size: int = 97,
    seed: int = 0,
    binarization: str = "dynamic",
    labelled_binarization: str | None = None,
    labelled_indices: Sequence[int] | np.ndarray | None = None,
    labelled_batch_size: int | None = None,
    start_step: int = 0,
    *,
    pipeline: str | None = None,
) -> tf.data.Dataset:
    """The endless training stream: (unlabelled_batch, (labelled_x, labelled_y)) per step.

    `labels_per_class` examples of each class (chosen by `label_seed`, see `split_labelled`)
    form the labelled set, which comes whole at every step (the recipe) or as a batch of
    `labelled_batch_size` examples drawn from it with replacement (as the paper's labelled
    minibatches; for large batches); the remaining images come as shuffled unlabelled batches
    of `batch_size` (`data.train_dataset`; their labels are never used). With "dynamic"
    binarisation both get a fresh Bernoulli draw at every step. Every draw comes from a
    stateless RNG keyed by `seed` and the step, so `start_step` gives the stream from that step
    on (a resumed run's), the same as the whole stream's.

    Args:
      images: uint8 [N, 28, 28] (or [N, 784]).
      labels: int [N].
      binarization: "dynamic" (the recipe), "static" or "none" (grayscale).
      labelled_binarization: the same for the labelled set (default: `binarization`); "none"
        (grayscale) goes with SSVAE(labelled_bound=False), as in the course reference.
      labelled_indices: training-set indices of a chosen labelled set (`split_by_indices`);
        when given, `labels_per_class` and `label_seed` are not used.
      labelled_batch_size: None (the whole labelled set every step) or the size of a batch
        drawn from it with replacement at every step (stateless RNG keyed by seed and step).
      pipeline: "tf.data", "numpy" or None (the backend's; see `data.uses_numpy_pipeline`).

    Returns:
      tf.data.Dataset of (float32 [batch_size, 784], (float32 [L, 784], int32 [L])), where
      L = labelled_batch_size, or the labelled set's size: 10 * labels_per_class (or
      len(labelled_indices)); on a Keras backend other than TensorFlow's the same stream drawn
      by NumPy, a `tfp_vae.data_numpy.LabelledStream`.
    """
    if labelled_batch_size is not None and (
        int(labelled_batch_size) != labelled_batch_size or labelled_batch_size < 1
    ):
        raise ValueError(
            f"labelled_batch_size must be >= 1, a whole number (or None for the "
            f"whole labelled set); got {labelled_batch_size}."
        )
    labels = np.asarray(labels)
    if labelled_indices is None:
        labelled, unlabelled = split_labelled(labels, labels_per_class, label_seed)
    else:
        labelled, unlabelled = split_by_indices(labels, labelled_indices)
    images = _check_uint8_images(images, labels)
    if binarization not in ("dynamic", "static", "none"):
        raise ValueError(f"binarization must be dynamic, static or none; got {binarization!r}.")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    numpy = data.uses_numpy_pipeline(pipeline)
    unlabelled_ds = data.train_dataset(
        images[unlabelled],
        batch_size,
        binarization,
        seed=seed,
        start_step=start_step,
        pipeline="numpy" if numpy else "tf.data",
    )
    x_l, y_l = images[labelled], labels[labelled].astype(np.int32)
    binarization = labelled_binarization or binarization
    if binarization not in ("dynamic", "static", "none"):
        raise ValueError(
            f"labelled_binarization must be dynamic, static or none; got {binarization!r}."
        )
    if binarization != "dynamic":
        x_l = data.binarize_static(x_l) if binarization == "static" else data.flatten(x_l)
    if numpy:
        from tfp_vae import data_numpy

        return data_numpy.LabelledStream(unlabelled_ds, x_l, y_l, binarization, labelled_batch_size)
    import tensorflow as tf

    table_x, table_y = tf.constant(x_l), tf.constant(y_l)
    seed = np.int64(seed)

    def labelled(step):
        if labelled_batch_size is None:
            x, y = table_x, table_y
        else:
            idx = tf.random.stateless_uniform(
                [int(labelled_batch_size)], tf.stack([seed + 2, step]), 0, len(y_l), dtype=tf.int64
            )
            x, y = tf.gather(table_x, idx), tf.gather(table_y, idx)
        if binarization == "dynamic":
            # Keys apart from the unlabelled stream's (step, seed + 1) and the draw's.
            x = data.dynamic_binarize(x, tf.stack([seed + 3, step]))
        return x, y

    labelled_ds = tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max).map(labelled)
    return tf.data.Dataset.zip((unlabelled_ds, labelled_ds)).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 1000,
    binarization: str = "static",
    *,
    pipeline: str | None = None,
) -> tf.data.Dataset:
    """A finite labelled dataset for `evaluate` / `validation_data`: ((x_bound, x_gray), y).

    The bound is computed on the statically binarised images (`data.binarize_static`; with
    `binarization="none"`, for a likelihood of grayscale pixels, on the grayscale ones), the
    accuracy on the grayscale ones, as the reference evaluates it. On a Keras backend other
    than TensorFlow's (or with `pipeline="numpy"`), the same batches as a
    `tfp_vae.data_numpy.EvalBatches`.
    """
    if binarization not in ("static", "none"):
        raise ValueError(
            f"binarization must be static or none for evaluation; got {binarization!r}."
        )
    labels = check_label_array(labels).astype(np.int32)
    images = _check_uint8_images(images, labels)
    if len(images) == 0:
        raise ValueError("The evaluation set is empty.")
    x_bound = data.binarize_static(images) if binarization == "static" else data.flatten(images)
    arrays = ((x_bound, data.flatten(images)), labels)
    if data.uses_numpy_pipeline(pipeline):
        from tfp_vae import data_numpy

        return data_numpy.EvalBatches(arrays, batch_size)
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size).prefetch(tf.data.AUTOTUNE)
