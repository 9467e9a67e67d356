"""The NumPy input pipeline (tfp_vae.data_numpy), the pipeline on Keras' JAX backend: the same
streams as the tf.data ones (shapes, dtypes, epochs, binarisation, the labelled set), seeded by
(seed, step) alone so that a resumed run reads what an uninterrupted one would, with the same
errors. Pure NumPy: these run under both backends (the JAX tier, `make test-jax`)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfp_vae import data, data_numpy, semisupervised

pytestmark = [pytest.mark.unit, pytest.mark.backend_neutral]

K = 10


def numbered_images(n):
    """Image i has every pixel i (so a row tells which image it is)."""
    return np.arange(n, dtype=np.uint8).repeat(784).reshape(n, 28, 28)


def constant_images(n, seed=0):
    """n copies of one image whose pixels take many intensities (incl. 0 and 255)."""
    image = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    image.flat[:2] = (0, 255)
    return np.repeat(image[None], n, axis=0), image.reshape(-1) / 255.0


def synthetic(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(
        n
    ) % K


def test_the_backend_picks_the_pipeline():
    images = numbered_images(20)
    numpy = keras.config.backend() != "tensorflow"
    assert data.uses_numpy_pipeline() == numpy
    assert isinstance(data.train_dataset(images, 4, seed=0), data_numpy.TrainStream) == numpy
    assert isinstance(data.eval_dataset(images, 4), data_numpy.EvalBatches) == numpy
    labels = np.arange(20) % K
    assert (
        isinstance(
            semisupervised.make_train_dataset(images, labels, 1, batch_size=4, seed=0),
            data_numpy.LabelledStream,
        )
        == numpy
    )
    assert (
        isinstance(semisupervised.make_eval_dataset(images, labels, 4), data_numpy.EvalBatches)
        == numpy
    )


@pytest.mark.parametrize("n", [50, 5], ids=["several-batches", "fewer-than-a-batch"])
def test_batches_are_binary_and_have_the_images_intensities(n):
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = 0, 255
    batches = data_numpy.train_dataset(images, 16, seed=1).take(12)  # Several passes.
    for b in batches:
        assert b.dtype == np.float32 and b.shape == (16, 784)
        assert set(np.unique(b)) <= {0.0, 1.0}
        assert np.all(b[:, 0] == 0) and np.all(b[:, 1] == 1)
    assert abs(np.concatenate(batches).mean() - images.mean() / 255) < 0.01


def test_dynamic_binarisation_frequencies():
    images, probs = constant_images(200)
    stream = data_numpy.train_dataset(images, 100, seed=3)
    out = np.concatenate(stream.take(20))  # 2000 draws of every pixel.
    freq = out.mean(axis=0)
    assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / 2000) + 1e-6)
    # Fresh pixels every batch, not the same draw repeated.
    assert not np.array_equal(out[:100], out[100:200])
    u = data_numpy.uniform(0, 1, 0, (100000,))
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


def test_epochs_are_permutations_and_seeded():
    images = numbered_images(48)
    stream = data_numpy.train_dataset(images, 8, "none", seed=3)
    first = [b[:, 0] * 255 for b in stream.take(12)]  # Two epochs of 6 batches.
    for epoch in (first[:6], first[6:]):
        np.testing.assert_allclose(np.sort(np.concatenate(epoch)), np.arange(48), atol=1e-4)
    assert not np.array_equal(np.concatenate(first[:6]), np.concatenate(first[6:]))
    again = [b[:, 0] * 255 for b in data_numpy.train_dataset(images, 8, "none", seed=3).take(12)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    other = data_numpy.train_dataset(images, 8, "none", seed=4)
    assert not np.array_equal(other[0], stream[0])
    dyn = [np.stack(data_numpy.train_dataset(images, 8, seed=5).take(3)) for _ in range(2)]
    np.testing.assert_array_equal(dyn[0], dyn[1])  # The binarisation is seeded too.
    # A seed drawn from the OS (None) differs from run to run.
    a, b = (data_numpy.train_dataset(images, 8, seed=None) for _ in range(2))
    assert a.seed != b.seed


def test_a_set_smaller_than_a_batch_is_repeated_within_the_epoch():
    stream = data_numpy.train_dataset(numbered_images(5), 12, "none", seed=0)
    assert stream.per_epoch == 1 and stream.repeats == 3
    ids = np.rint(stream[0][:, 0] * 255).astype(int)
    assert np.bincount(ids, minlength=5).min() >= 2  # 12 of 15 = three copies, 3 left out.


@pytest.mark.parametrize("start", [1, 6, 7, 13])
def test_a_resumed_stream_reads_what_the_whole_stream_reads(start):
    """Batches start.. of a stream started at `start` (a resumed run) are those of the whole
    stream, inside an epoch and across epoch boundaries (6 batches an epoch here), and so is
    `skip`; likewise the labelled stream."""
    images, labels = synthetic(50)
    whole = data_numpy.train_dataset(images, 8, seed=7).take(start + 4)
    resumed = data_numpy.train_dataset(images, 8, seed=7, start_step=start).take(4)
    skipped = data_numpy.train_dataset(images, 8, seed=7).skip(start).take(4)
    for a, b, c in zip(whole[start:], resumed, skipped, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)

    def labelled(start_step):
        return semisupervised_stream(images, labels, start_step).take(start + 3 - start_step)

    for (u, (x, y)), (u2, (x2, y2)) in zip(labelled(0)[start:], labelled(start), strict=True):
        for p, q in ((u, u2), (x, x2), (y, y2)):
            np.testing.assert_array_equal(p, q)


def semisupervised_stream(images, labels, start_step=0, **kwargs):
    """`semisupervised.make_train_dataset`'s NumPy stream, whatever the backend."""
    kwargs = {"labels_per_class": 2, "batch_size": 8, "seed": 1, **kwargs}
    return semisupervised.make_train_dataset(
        images, labels, start_step=start_step, pipeline="numpy", **kwargs
    )


@pytest.mark.parametrize("binarization", ["static", "none"])
def test_static_and_none(binarization):
    images = np.random.default_rng(0).integers(0, 256, (37, 28, 28), dtype=np.uint8)
    expected = data.binarize_static(images) if binarization == "static" else data.flatten(images)
    seen = np.concatenate(data_numpy.train_dataset(images, 8, binarization, seed=0).take(10))
    assert seen.dtype == np.float32 and seen.shape == (80, 784)
    # Every row is one of the expected rows, and 80 rows from 37 images cover all of them.
    assert {r.tobytes() for r in seen} == {r.tobytes() for r in expected}


def test_the_same_errors_as_the_tf_data_pipeline():
    images = numbered_images(4)
    with pytest.raises(ValueError, match="binarization must be dynamic, static or none"):
        data_numpy.train_dataset(images, 2, binarization="otsu")
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        data_numpy.train_dataset(images, 2, start_step=-1)
    with pytest.raises(data.DataError, match="training set is empty"):
        data_numpy.train_dataset(images[:0], 2)
    with pytest.raises(data.DataError, match="evaluation set is empty"):
        data_numpy.eval_dataset(images[:0], 2)
    with pytest.raises(ValueError, match="static or none for evaluation"):
        data_numpy.eval_dataset(images, 2, binarization="dynamic")
    real = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    with pytest.raises(data.DataError, match="real-valued data"):
        data_numpy.train_dataset(real, 2)
    # Real-valued data go through as they are.
    batch = data_numpy.train_dataset(real, 3, "none", seed=0)[0]
    assert {r.tobytes() for r in batch} <= {r.tobytes() for r in real}


def test_eval_batches_cover_everything_once_in_order():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (23, 28, 28), dtype=np.uint8), rng.integers(0, 10, 23)
    batches = list(data_numpy.eval_dataset(images, 5, labels=labels))
    assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in batches]), data.binarize_static(images)
    )
    y = np.concatenate([y for _, y in batches])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    x = np.concatenate(list(data_numpy.eval_dataset(images, 10, "none")))
    np.testing.assert_allclose(x, images.reshape(23, -1) / 255.0, rtol=1e-6)


def test_labelled_stream_is_balanced_and_binarised_afresh():
    images, labels = synthetic(400)
    (x_u, (x_l, y_l)), (_, (x_l2, y_l2)) = semisupervised_stream(
        images, labels, labels_per_class=3, batch_size=16
    ).take(2)
    assert x_u.shape == (16, 784) and x_l.shape == (30, 784) and y_l.shape == (30,)
    assert x_u.dtype == np.float32 and x_l.dtype == np.float32 and y_l.dtype == np.int32
    assert set(np.unique(np.concatenate([x_u.ravel(), x_l.ravel()]))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.bincount(y_l, minlength=K), [3] * K)
    np.testing.assert_array_equal(y_l, y_l2)  # The same labelled set ...
    assert not np.array_equal(x_l, x_l2)  # ... binarised afresh, ...
    again = semisupervised_stream(images, labels, labels_per_class=3, batch_size=16)[1]
    np.testing.assert_array_equal(again[1][0], x_l2)  # ... by the seed and step.


def test_labelled_batches_drawn_with_replacement():
    images, labels = synthetic(400)
    labelled, _ = semisupervised.split_labelled(labels, 2, 0)

    def steps(seed):
        stream = semisupervised_stream(images, labels, seed=seed, labelled_batch_size=50)
        return [(x, y) for _, (x, y) in stream.take(3)]

    first, again, other = steps(0), steps(0), steps(1)
    for _, y in first:
        assert y.shape == (50,) and set(y) <= set(labels[labelled])
        assert len(np.unique(y)) <= K
    assert not np.array_equal(first[0][1], first[1][1])  # A fresh draw every step ...
    for (a, ya), (b, yb) in zip(first, again, strict=True):  # ... replayed by the seed.
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][1], other[0][1])
    # Every labelled example is as likely: 3000 draws from 20 come ~150 times each.
    stream = semisupervised_stream(images, labels, labelled_batch_size=1000)
    y = np.concatenate([stream.labelled(s)[1] for s in range(3)])
    assert np.all(np.abs(np.bincount(y, minlength=K) - 300) < 5 * np.sqrt(300))


def test_fit_takes_the_stream_in_order_across_epochs():
    """`model.fit` reads the endless stream's batches in order, going on across epochs (not from
    the start again), on the backend this run has (Keras may look at the first batches for
    their shapes first: any batch is the same however often it is asked for)."""
    asked = []
    stream = data_numpy.train_dataset(numbered_images(40), 4, "none", seed=0)

    class Probe(keras.utils.PyDataset):
        """The stream, with the batch numbers asked for recorded."""

        num_batches = None

        def __getitem__(self, i):
            asked.append(i)
            x = stream[i]
            return x, np.zeros((len(x), 1), np.float32)

    inputs = keras.Input((784,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    model.fit(Probe(), epochs=2, steps_per_epoch=15, verbose=0, shuffle=False)
    start = max(i for i, step in enumerate(asked) if step == 0)  # After any first look.
    assert asked[:start] == list(range(start))
    # 30 steps in two epochs (and any batches fetched ahead) from batch 0 on, without a restart.
    assert asked[start:] == list(range(len(asked) - start)) and len(asked) - start >= 30


@pytest.mark.integration  # A subprocess.
def test_needs_no_tensorflow():
    """Loading, the labelled split and the NumPy pipelines run where TensorFlow cannot be
    imported (a process in which `import tensorflow` fails, on the JAX backend's terms)."""
    script = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from tfp_vae import data, data_numpy, semisupervised\n"
        "import numpy as np\n"
        "images = np.arange(40, dtype=np.uint8).repeat(784).reshape(40, 28, 28)\n"
        "labels = np.arange(40) % 10\n"
        "data_numpy.train_dataset(images, 8, seed=0)[3]\n"
        "data_numpy.eval_dataset(images, 8)[0]\n"
        "semisupervised.split_labelled(labels, 2, 0)\n"
        "data.split_validation(data.ImageDataset(images, labels, images, labels, 'x'), 4)\n"
        "assert sys.modules['tensorflow'] is None\n"
        "print('ok')\n"
    )
    env = {**os.environ, "TFP_VAE_DEFER_IMPORT": "1"}
    if keras.config.backend() == "tensorflow":
        # Keras on TensorFlow imports TensorFlow: the pipeline's Keras here is on JAX, if JAX is
        # installed; else the check is the no-TF venv's (make test-jax).
        pytest.importorskip("jax")
        env["KERAS_BACKEND"] = "jax"
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
