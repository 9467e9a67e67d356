"""The input pipeline in NumPy: the training and evaluation streams of `tfp_vae.data` and
`tfp_vae.semisupervised` without TensorFlow, as `keras.utils.PyDataset`s that `model.fit` and
`model.evaluate` take on every backend. It is the pipeline on Keras' JAX backend (where
`data.train_dataset` and the others hand over to it); the tf.data pipelines stay the
TensorFlow backend's.

The streams are built as the tf.data ones are (`data.train_dataset`): each epoch a fresh
permutation of the images (indices, not images) cut into whole batches, the batch gathered and,
with "dynamic" binarisation, given fresh Bernoulli pixels; for the semi-supervised models the
labelled set (or a batch drawn from it with replacement) beside every unlabelled batch. Every
draw is a function of (seed, what is drawn, epoch or step) alone, so batch `s` is the same
whether the stream starts at 0 or at `s` (`start_step`, a resumed run), in any process, and with
several `workers` fetching batches in threads. The draws are NumPy's, not TensorFlow's: the same
seed gives another stream than the tf.data pipeline's, of the same distribution.

Each draw takes the raw 64-bit words of a `PCG64` seeded by `SeedSequence([seed, stream,
index])` (both fixed by NumPy's stability policy, unlike `Generator` methods): a uniform is the
top 24 bits of a word (a float32 in [0, 1)), a permutation the argsort of the words, a draw
from L items a word modulo L.
"""

import itertools
from collections.abc import Sequence

import keras
import numpy as np

from tfp_vae import data

# The streams of draws, apart as the tf.data pipeline keys them apart: the shuffle of each epoch,
# the binarisation of each unlabelled batch, the labelled examples drawn at each step and their
# binarisation.
_SHUFFLE, _BINARIZE, _LABELLED_DRAW, _LABELLED_BINARIZE = range(4)


def _seed_word(seed) -> int:
    """The seed as SeedSequence takes it (a non-negative integer): an int64's bits."""
    return int(seed) % 2**64


def random_words(seed: int, stream: int, index: int, n: int) -> np.ndarray:
    """uint64 [n]: the words of draw `index` of `stream` under `seed` (the same on every machine
    and NumPy version: PCG64 and SeedSequence are stable)."""
    sequence = np.random.SeedSequence([_seed_word(seed), stream, int(index)])
    return np.random.PCG64(sequence).random_raw(n)


def uniform(seed: int, stream: int, index: int, shape) -> np.ndarray:
    """float32 `shape` uniform in [0, 1) (multiples of 2**-24, exact in float32)."""
    words = random_words(seed, stream, index, int(np.prod(shape)))
    return ((words >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).reshape(shape)


def dynamic_binarize(batch: np.ndarray, seed: int, step: int, stream: int = _BINARIZE):
    """uint8 [B, D] -> float32 [B, D] with pixel ~ Bernoulli(intensity / 255), drawn by
    (seed, stream, step): `data.dynamic_binarize` in NumPy."""
    probs = np.asarray(batch, np.float32) / np.float32(255.0)
    return (uniform(seed, stream, step, probs.shape) < probs).astype(np.float32)


def _new_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])


class TrainStream(keras.utils.PyDataset):
    """The endless stream of `data.train_dataset` in NumPy: item `i` is the batch of global
    step `start_step + i`, float32 [batch_size, D]. Endless (`num_batches` is None), so
    `fit` needs `steps_per_epoch`; `skip(n)` is the stream `n` batches on."""

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        binarization: str = "dynamic",
        seed: int | None = None,
        start_step: int = 0,
        workers: int = 1,
    ):
        super().__init__(workers=workers)
        data.check_train_args(images, batch_size, binarization, start_step)
        self.images, self.batch_size = images, int(batch_size)
        self.binarization = binarization
        self.seed = _new_seed() if seed is None else int(seed)
        self.start_step = int(start_step)
        self.table, self.real = data.train_table(images, binarization)
        n = len(self.table)
        self.repeats = -(-self.batch_size // n)  # Whole copies of the set filling one batch.
        self.per_epoch = n * self.repeats // self.batch_size
        self._orders = {}  # epoch -> its order; the last two kept (threads may straddle one).

    @property
    def num_batches(self):
        return None  # Endless.

    def skip(self, n: int) -> "TrainStream":
        """The stream from `n` batches on (as `tf.data.Dataset.skip`)."""
        return self._replace(self.start_step + int(n))

    def _replace(self, start_step):
        return type(self)(
            self.images, self.batch_size, self.binarization, self.seed, start_step, self.workers
        )

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64 [per_epoch * batch_size]: the indices of epoch `epoch`'s batches, in order."""
        order = self._orders.get(epoch)
        if order is None:
            n = len(self.table)
            tiled = np.tile(np.arange(n), self.repeats)
            words = random_words(self.seed, _SHUFFLE, epoch, len(tiled))
            order = tiled[np.argsort(words, kind="stable")][: self.per_epoch * self.batch_size]
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return order

    def indices(self, step: int) -> np.ndarray:
        """int64 [batch_size]: the images of global step `step`'s batch."""
        epoch, place = divmod(int(step), self.per_epoch)
        start = place * self.batch_size
        return self.epoch_order(epoch)[start : start + self.batch_size]

    def batch(self, step: int) -> np.ndarray:
        """float32 [batch_size, D]: the batch of global step `step`."""
        x = self.table[self.indices(step)]
        if self.binarization == "dynamic":
            return dynamic_binarize(x, self.seed, step)
        if self.binarization == "static" or self.real:
            return x
        return x.astype(np.float32) / np.float32(255.0)

    def __getitem__(self, index):
        return self.batch(self.start_step + int(index))

    def take(self, n: int) -> list:
        """The first `n` batches (a list), for a look at the stream."""
        return list(itertools.islice(iter(self), int(n)))


def train_dataset(
    images: np.ndarray,
    batch_size: int,
    binarization: str = "dynamic",
    seed: int | None = None,
    start_step: int = 0,
    workers: int = 1,
) -> TrainStream:
    """`data.train_dataset` in NumPy (see `TrainStream`): the same arguments, checks and
    errors; batches float32 [batch_size, D]. `workers` > 1 fetches batches ahead in threads
    (the same batches: each is a function of its step)."""
    return TrainStream(images, batch_size, binarization, seed, start_step, workers)


class LabelledStream(keras.utils.PyDataset):
    """`semisupervised.make_train_dataset` in NumPy: item `i` is the step `start_step + i`'s
    (unlabelled float32 [B, D], (labelled float32 [L, D], labels int32 [L])). The labelled set is
    whole at every step, or `labelled_batch_size` examples drawn from it with replacement by
    (seed, step); with "dynamic" binarisation it is binarised afresh at every step."""

    def __init__(
        self,
        unlabelled: TrainStream,
        x_labelled: np.ndarray,
        y_labelled: np.ndarray,
        binarization: str,
        labelled_batch_size: int | None = None,
    ):
        super().__init__(workers=unlabelled.workers)
        self.unlabelled, self.x, self.y = unlabelled, x_labelled, y_labelled
        self.binarization, self.labelled_batch_size = binarization, labelled_batch_size

    @property
    def num_batches(self):
        return None

    @property
    def start_step(self):
        return self.unlabelled.start_step

    def skip(self, n: int) -> "LabelledStream":
        return type(self)(
            self.unlabelled.skip(n), self.x, self.y, self.binarization, self.labelled_batch_size
        )

    def labelled(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [L, D], int32 [L]): the labelled examples of global step `step`."""
        seed = self.unlabelled.seed
        if self.labelled_batch_size is None:
            x, y = self.x, self.y
        else:
            words = random_words(seed, _LABELLED_DRAW, step, int(self.labelled_batch_size))
            idx = (words % np.uint64(len(self.y))).astype(np.int64)
            x, y = self.x[idx], self.y[idx]
        if self.binarization == "dynamic":
            x = dynamic_binarize(x, seed, step, _LABELLED_BINARIZE)
        return x, y

    def __getitem__(self, index):
        step = self.start_step + int(index)
        return self.unlabelled.batch(step), self.labelled(step)

    def take(self, n: int) -> list:
        return list(itertools.islice(iter(self), int(n)))


class EvalBatches(keras.utils.PyDataset):
    """A finite sequence of batches of `arrays` (a structure of arrays of the same length N),
    in order: what `data.eval_dataset`'s tf.data gives, for `evaluate` and `validation_data`.
    `batch_size` rows a batch, fewer in the last."""

    def __init__(self, arrays, batch_size: int):
        super().__init__()
        self.arrays, self.batch_size = arrays, int(batch_size)
        self.n = len(keras.tree.flatten(arrays)[0])

    @property
    def num_batches(self):
        return -(-self.n // self.batch_size)

    def __len__(self):
        return self.num_batches

    def __getitem__(self, index):
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} of {self.num_batches}")
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return keras.tree.map_structure(lambda a: a[part], self.arrays)


def eval_dataset(
    images: np.ndarray,
    batch_size: int = 1000,
    binarization: str = "static",
    labels: np.ndarray | None = None,
) -> EvalBatches:
    """`data.eval_dataset` in NumPy: batches of float32 [B, D] (and int64 labels [B])."""
    x = data.eval_array(images, binarization)
    return EvalBatches(x if labels is None else (x, np.asarray(labels, np.int64)), batch_size)


__all__: Sequence[str] = (
    "train_dataset",
    "eval_dataset",
    "dynamic_binarize",
    "TrainStream",
    "LabelledStream",
    "EvalBatches",
    "random_words",
    "uniform",
)
