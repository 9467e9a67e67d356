"""Tests of the semi-supervised VAE (M2): bound math, loss, training, inputs, saving, serving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import data, export, objectives, semisupervised
from tfp_vae.models import ssvae

pytestmark = pytest.mark.unit

tfd = tfp.distributions

K = 10
TINY = dict(z_dim=4, hidden=(16,), classifier_hidden=(16,))


def tiny_model(**overrides):
    keras.utils.set_random_seed(0)
    return ssvae.SSVAE(**{**TINY, **overrides})


def binary_images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


def synthetic_uint8(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % K


# ---- the bounds -------------------------------------------------------------------------------


def test_unlabelled_bound_terms_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, K)).astype(np.float32) * 3
    rec = rng.uniform(50, 150, (6, K)).astype(np.float32)
    kl_z = rng.uniform(0, 20, (6, K)).astype(np.float32)
    terms = {k: v.numpy() for k, v in objectives.unlabelled_bound_terms(logits, rec, kl_z).items()}
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    kl_y = np.sum(q * np.log(q / (1.0 / K)), axis=1)
    np.testing.assert_allclose(terms["kl_y"], kl_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["nelbo"], np.sum(q * (rec + kl_z), 1) + kl_y, rtol=1e-5)
    np.testing.assert_allclose(
        terms["nelbo"], terms["rec"] + terms["kl_z"] + terms["kl_y"], rtol=1e-6
    )
    # A certain classifier pays log K; a uniform one pays nothing.
    confident = objectives.categorical_kl_to_uniform(tf.constant([[200.0] + [0.0] * (K - 1)]))
    np.testing.assert_allclose(confident.numpy(), [math.log(K)], rtol=1e-5)
    np.testing.assert_allclose(
        objectives.categorical_kl_to_uniform(tf.zeros([1, K])).numpy(), [0.0], atol=1e-6
    )
    np.testing.assert_allclose(
        objectives.labelled_negative_elbo(tf.constant([3.0]), tf.constant([2.0])).numpy(),
        [5.0 + math.log(K)],
        rtol=1e-6,
    )


def test_categorical_kl_gradient_is_finite_for_extreme_logits():
    logits = tf.Variable([[1000.0, -1000.0] + [0.0] * (K - 2)])
    with tf.GradientTape() as tape:
        kl = objectives.categorical_kl_to_uniform(logits)
    grad = tape.gradient(kl, logits)
    assert np.all(np.isfinite(kl.numpy())) and np.all(np.isfinite(grad.numpy()))


def _point_mass_posterior(model):
    """Makes q(z|x,y) a point mass in effect (variance softplus(-60) ~ 1e-26, no floor), so the
    one-sample bound is deterministic and can be compared with a class-by-class computation."""
    out = model.encoder.layers[-1]
    kernel, bias = out.kernel.numpy(), out.bias.numpy()
    kernel[:, model.z_dim :] = 0.0
    bias[model.z_dim :] = -60.0
    out.kernel.assign(kernel)
    out.bias.assign(bias)


def test_enumerated_bound_equals_sum_over_labels_class_by_class():
    model = tiny_model(min_variance=0.0)
    _point_mass_posterior(model)
    x = binary_images(7)
    batched = {k: v.numpy() for k, v in model.unlabelled_terms(tf.constant(x)).items()}

    # The reference: a Python loop over labels, each a separate pass through the networks.
    probs = model.classify(x).numpy()
    prior = tfd.MultivariateNormalDiag(tf.zeros(model.z_dim), tf.ones(model.z_dim))
    rec, kl_z = np.zeros((7, K)), np.zeros((7, K))
    for k in range(K):
        onehot = tf.one_hot(tf.fill([7], k), K)
        q = model.posterior(model.encoder(tf.concat([x, onehot], -1)))
        z = q.mean()
        p = model.likelihood(model.decoder(tf.concat([z, onehot], -1)))
        rec[:, k] = -p.log_prob(x).numpy()
        kl_z[:, k] = tfd.kl_divergence(q, prior).numpy()
    expected = np.sum(probs * (rec + kl_z), 1) + np.sum(probs * np.log(probs * K), 1)

    enumerated_rec, enumerated_kl = (t.numpy() for t in model.enumerated_terms(tf.constant(x)))
    np.testing.assert_allclose(enumerated_kl, kl_z, rtol=1e-5)
    np.testing.assert_allclose(enumerated_rec, rec, rtol=1e-4)
    np.testing.assert_allclose(batched["nelbo"], expected, rtol=1e-4)
    np.testing.assert_allclose(-model.elbo(x).numpy(), expected, rtol=1e-4)
    # Labelled: the same class-k terms plus log K.
    y = np.arange(7) % K
    labelled = model.labelled_terms(tf.constant(x), tf.constant(y, tf.int32))["nelbo"].numpy()
    np.testing.assert_allclose(
        labelled, rec[np.arange(7), y] + kl_z[np.arange(7), y] + math.log(K), rtol=1e-4
    )


def test_unlabelled_bound_is_stochastic_but_seeded():
    model = tiny_model()
    x = binary_images(4)
    a, b = model.elbo(x, seed=[1, 2]).numpy(), model.elbo(x, seed=[1, 2]).numpy()
    c = model.elbo(x, seed=[3, 4]).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (4,) and np.all(a < 0)


# ---- the loss ---------------------------------------------------------------------------------


def test_gen_weight_zero_is_a_classifier_trained_on_the_labels():
    model = tiny_model(gen_weight=0.0, class_weight=100.0)
    x_u, x_l = binary_images(9, seed=1), binary_images(20, seed=2)
    y_l = np.arange(20) % K
    with tf.GradientTape() as tape:
        loss, values = model.compute_losses((x_u, (x_l, y_l)))
    cross_entropy = tf.reduce_mean(objectives.classification_loss(model.classifier(x_l), y_l))
    assert float(loss) == float(100.0 * cross_entropy)
    assert "nelbo" not in values  # The bounds are skipped: they would not change anything.
    grads = tape.gradient(loss, model.trainable_variables)
    for var, grad in zip(model.trainable_variables, grads, strict=True):
        if var.path.startswith("classifier/"):
            assert float(tf.norm(grad)) > 0, var.path
        else:
            assert grad is None, var.path

    # ... and with the generative term on, every network learns.
    model_on = tiny_model(gen_weight=1.0)
    with tf.GradientTape() as tape:
        loss, _ = model_on.compute_losses((x_u, (x_l, y_l)))
    grads = tape.gradient(loss, model_on.trainable_variables)
    assert all(float(tf.norm(g)) > 0 for g in grads)


def test_fit_with_gen_weight_zero_moves_only_the_classifier():
    model = tiny_model(gen_weight=0.0)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    x_u, x_l = binary_images(9, seed=1), binary_images(20, seed=2)
    ds = tf.data.Dataset.from_tensors((x_u, (x_l, np.arange(20) % K))).repeat()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    for v in model.trainable_variables:
        moved = not np.array_equal(before[v.path], v.numpy())
        assert moved == v.path.startswith("classifier/"), v.path


# ---- data -------------------------------------------------------------------------------------


def test_make_train_dataset_structure():
    images, labels = synthetic_uint8(400)
    ds = semisupervised.make_train_dataset(
        images, labels, labels_per_class=3, batch_size=16, seed=0
    )
    (x_u, (x_l, y_l)), (_, (x_l2, y_l2)) = list(ds.take(2))
    assert x_u.shape == (16, 784) and x_l.shape == (30, 784) and y_l.shape == (30,)
    assert x_u.dtype == tf.float32 and y_l.dtype == tf.int32
    assert set(np.unique(np.concatenate([x_u.numpy().ravel(), x_l.numpy().ravel()]))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.bincount(y_l.numpy(), minlength=K), [3] * K)
    np.testing.assert_array_equal(y_l.numpy(), y_l2.numpy())  # The same labelled set ...
    assert not np.array_equal(x_l.numpy(), x_l2.numpy())  # ... binarised afresh.
    labelled, unlabelled = semisupervised.split_labelled(labels, 3, 0)
    assert len(np.intersect1d(labelled, unlabelled)) == 0 and len(unlabelled) == 370


def test_labelled_batches_drawn_with_replacement():
    """For large batches: `labelled_batch_size` examples of the labelled set at every step,
    drawn with replacement from a stateless RNG (the same stream for the same seed)."""
    images, labels = synthetic_uint8(400)
    labelled, _ = semisupervised.split_labelled(labels, 2, 0)
    gray = images[labelled].reshape(-1, 784) / 255.0

    def steps(seed):
        ds = semisupervised.make_train_dataset(
            images,
            labels,
            labels_per_class=2,
            batch_size=64,
            seed=seed,
            binarization="none",
            labelled_batch_size=50,
        )
        return [(x_l.numpy(), y_l.numpy()) for _, (x_l, y_l) in ds.take(3)]

    first, again, other = steps(0), steps(0), steps(1)
    for x_l, y_l in first:
        assert x_l.shape == (50, 784) and y_l.shape == (50,) and y_l.dtype == np.int32
        # Every row is one of the 20 labelled images, with its own label.
        match = np.argmin(np.abs(x_l[:, None, :] - gray[None]).sum(-1), axis=1)
        np.testing.assert_allclose(x_l, gray[match], atol=1e-6)
        np.testing.assert_array_equal(y_l, labels[labelled][match])
        assert len(np.unique(match)) < 50  # With replacement: 50 draws from 20 repeat.
    assert not np.array_equal(first[0][1], first[1][1])  # A fresh draw every step ...
    for (a, ya), (b, yb) in zip(first, again, strict=True):  # ... replayed by the seed.
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][1], other[0][1])
    with pytest.raises(ValueError, match="labelled_batch_size must be >= 1"):
        semisupervised.make_train_dataset(images, labels, labelled_batch_size=0)


def test_chosen_labelled_indices(tmp_path):
    images, labels = synthetic_uint8(400)
    chosen = np.array([5, 0, 11, 2, 3, 4, 17, 6, 7, 8, 9])  # Every class; 0 and 1 twice.
    path = tmp_path / "idx.txt"
    path.write_text("# hand-picked\n5, 0 11\n2 3 4 17 6 7 8 9  # the rest\n")
    np.testing.assert_array_equal(semisupervised.read_indices(path), chosen)
    ds = semisupervised.make_train_dataset(
        images, labels, batch_size=8, labelled_indices=chosen, binarization="none"
    )
    _, (x_l, y_l) = next(iter(ds))
    order = np.sort(chosen)
    np.testing.assert_array_equal(y_l.numpy(), labels[order])
    np.testing.assert_allclose(x_l.numpy(), images[order].reshape(-1, 784) / 255.0, atol=1e-6)
    labelled, unlabelled = semisupervised.split_by_indices(labels, chosen)
    assert len(unlabelled) == 400 - 11 and not np.intersect1d(labelled, unlabelled).size
    for bad, match in [
        ([1, 2, 2], "repeat"),
        ([0, 400], r"0\.\.399"),
        ([0.5], "integers"),
        (list(range(9)), r"class\(es\) \[9\]"),
        ([], "non-empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            semisupervised.split_by_indices(labels, np.array(bad))
    path.write_text("1 2 x\n")
    with pytest.raises(ValueError, match="integer training-set indices"):
        semisupervised.read_indices(path)


def test_make_eval_dataset_pairs_binary_and_grayscale():
    images, labels = synthetic_uint8(25)
    (((x_bin, x_gray), y),) = list(semisupervised.make_eval_dataset(images, labels, batch_size=100))
    assert set(np.unique(x_bin.numpy())) <= {0.0, 1.0}
    np.testing.assert_allclose(x_gray.numpy(), data.flatten(images))
    np.testing.assert_array_equal(y.numpy(), labels)


# ---- bad inputs -------------------------------------------------------------------------------


def test_labels_out_of_range_raise():
    model = tiny_model()
    x = binary_images(3)
    for y in ([0, 1, 10], [-1, 0, 1]):
        with pytest.raises(ValueError, match=r"class indices in 0\.\.9"):
            model.encode(x, y)
    with pytest.raises(ValueError, match=r"class indices in 0\.\.9"):
        model.compute_losses((x, (x, [0, 1, 12])))
    with pytest.raises(ValueError, match=r"class indices in 0\.\.9"):
        model.sample(2, 10)
    images, labels = synthetic_uint8(200)
    labels[5] = 11
    with pytest.raises(ValueError, match=r"class indices in 0\.\.9"):
        semisupervised.make_train_dataset(images, labels)


def test_labels_out_of_range_fail_inside_a_graph_too():
    model = tiny_model()
    x = binary_images(3)
    step = tf.function(model.compute_losses)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class indices in 0\.\.9"):
        step((x, (x, tf.constant([0, 1, 12]))))


def test_one_hot_of_wrong_width_raises():
    model = tiny_model()
    x = binary_images(3)
    with pytest.raises(ValueError, match="must have 10 columns"):
        model.encode(x, np.eye(11, dtype=np.float32)[:3])
    with pytest.raises(ValueError, match="must have 10 columns"):
        model.decode(np.zeros((3, 4), np.float32), np.eye(9, dtype=np.float32)[:3])
    with pytest.raises(ValueError, match="exactly one 1"):
        model.encode(x, np.full((3, K), 0.1, np.float32))
    # A proper one-hot is the same as the class index.
    np.testing.assert_allclose(
        model.encode(x, np.eye(K, dtype=np.float32)[[2, 5, 7]]).mean(),
        model.encode(x, [2, 5, 7]).mean(),
    )


def test_labelled_set_missing_a_class_raises():
    images, labels = synthetic_uint8(300)
    labels[labels == 3] = 4
    with pytest.raises(ValueError, match=r"no examples of class\(es\) \[3\]"):
        semisupervised.make_train_dataset(images, labels)
    labels = np.arange(300) % K
    few = np.where(labels == 7)[0][3:]
    labels[few] = 8  # Only 3 sevens left.
    with pytest.raises(ValueError, match=r"fewer than labels_per_class=10"):
        semisupervised.make_train_dataset(images, labels)


def test_bad_shapes_and_pixels_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="Expected images of shape"):
        model.classify(np.zeros((2, 783), np.float32))
    with pytest.raises(ValueError, match="binary"):
        model.elbo(np.full((2, 784), 0.5, np.float32))
    with pytest.raises(ValueError, match="Got 2 labels for a batch of 3"):
        model.encode(binary_images(3), [1, 2])
    with pytest.raises(ValueError, match="latents of shape"):
        model.decode(np.zeros((3, 5), np.float32), 1)
    images, labels = synthetic_uint8(100)
    with pytest.raises(ValueError, match="uint8"):
        semisupervised.make_train_dataset(images.astype(np.float64), labels)
    with pytest.raises(ValueError, match="labels"):
        semisupervised.make_train_dataset(images, labels[:50])
    with pytest.raises(ValueError, match="make_eval_dataset"):
        model.test_step(tf.constant(binary_images(2)))


def test_classifier_takes_grayscale():
    model = tiny_model()
    gray = np.random.default_rng(0).random((4, 784)).astype(np.float32)
    probs = model.classify(gray).numpy()
    assert probs.shape == (4, K)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


# ---- uses, saving, serving ---------------------------------------------------------------------


def test_sample_shapes_and_labels():
    model = tiny_model()
    assert model.sample(3, 4, seed=[0, 1]).shape == (3, 784)
    assert model.sample(3, [1, 2, 3]).shape == (3, 784)
    assert model.sample(12).shape == (12, 784)
    np.testing.assert_array_equal(model.sample(3, 4, seed=[0, 1]), model.sample(3, 4, seed=[0, 1]))
    # The label matters: the same z with another class gives other digits.
    assert not np.allclose(model.sample(3, 4, seed=[0, 1]), model.sample(3, 5, seed=[0, 1]))
    x = binary_images(3)
    predicted = np.argmax(model.classify(x), 1)
    np.testing.assert_allclose(model.reconstruct(x), model.reconstruct(x, predicted), rtol=1e-6)
    assert model.reconstruct(x, 2).shape == (3, 784)


def test_keras_round_trip(tmp_path):
    model = tiny_model(class_weight=7.0, activation="relu")
    x = binary_images(5)
    path = str(tmp_path / "ssvae.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ssvae.SSVAE)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded.classify(x), model.classify(x), rtol=1e-6)
    np.testing.assert_allclose(loaded.elbo(x, seed=[3, 4]), model.elbo(x, seed=[3, 4]), rtol=1e-6)


def test_serving_functions_trace_and_run():
    model = tiny_model()
    fns = export.serving_functions(model)
    assert list(fns) == ["classify", "encode", "decode", "sample", "elbo"]
    x = tf.constant(binary_images(3))
    y = tf.constant([1, 2, 3], tf.int32)
    args = {
        "classify": (x,),
        "encode": (x, y),
        "decode": (tf.zeros([3, 4]), y),
        "sample": (tf.constant(3), tf.constant([7], tf.int32)),
        "elbo": (x, tf.constant([1, 2], tf.int32)),
    }
    # `sample` has two input signatures (with and without a seed): the first is the signature's.
    out = {
        name: tf.function(
            fn, input_signature=sig[0] if isinstance(sig[0], list) else sig
        ).get_concrete_function()(*args[name])
        for name, (fn, sig) in fns.items()
    }
    assert out["classify"]["probs"].shape == (3, K)
    assert out["encode"]["mean"].shape == (3, 4) and out["encode"]["variance"].shape == (3, 4)
    assert out["decode"]["probs"].shape == (3, 784) and out["decode"]["logits"].shape == (3, 784)
    assert out["sample"]["images"].shape == (3, 784)
    np.testing.assert_allclose(out["elbo"]["elbo"], model.elbo(x, seed=[1, 2]), rtol=1e-5)


# ---- training on MNIST ------------------------------------------------------------------------


@pytest.mark.slow  # A convergence run on real MNIST.
def test_short_fit_on_mnist_beats_chance(mnist):
    keras.utils.set_random_seed(0)
    model = ssvae.SSVAE(z_dim=8, hidden=(64,), classifier_hidden=(128,))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    train = semisupervised.make_train_dataset(mnist.x_train, mnist.y_train, batch_size=97, seed=0)
    history = model.fit(train, steps_per_epoch=300, epochs=1, verbose=0, shuffle=False)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert set(ssvae.SSVAE.TRAIN_METRICS) <= set(logs)
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["accuracy"] > 0.9  # The 100 labelled examples are fitted.
    test = semisupervised.make_eval_dataset(mnist.x_test[:1000], mnist.y_test[:1000])
    results = model.evaluate(test, verbose=0, return_dict=True)
    assert set(results) == set(ssvae.SSVAE.TEST_METRICS)
    # Chance is 10%; a classifier from 100 labels reaches ~70%.
    print("SSVAE short fit:", logs, results)
    assert results["accuracy"] > 0.5, results
    accuracy = np.mean(
        np.argmax(model.classify(data.flatten(mnist.x_test[:1000])), 1) == mnist.y_test[:1000]
    )
    np.testing.assert_allclose(accuracy, results["accuracy"], atol=1e-6)
    assert 0 < results["nelbo"] < 400, results


def test_course_reference_loss_without_labelled_bound():
    """labelled_bound=False: loss = gen_weight * -U + class_weight * cross-entropy, and the
    labelled images may be grayscale (they only feed the classifier)."""
    model = tiny_model(labelled_bound=False, gen_weight=1.0, class_weight=100.0)
    x_u = binary_images(9, seed=1)
    x_l = np.random.default_rng(2).random((20, 784)).astype(np.float32)  # Grayscale.
    y_l = np.arange(20) % K
    tf.random.set_seed(3)
    loss, values = model.compute_losses((x_u, (x_l, y_l)))
    assert "labelled_nelbo" not in values
    np.testing.assert_allclose(
        loss, np.mean(values["nelbo"]) + 100.0 * np.mean(values["class_loss"]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="binary"):
        tiny_model().compute_losses((x_u, (x_l, y_l)))  # The labelled bound needs binary pixels.
    ds = semisupervised.make_train_dataset(
        *synthetic_uint8(300), labels_per_class=2, batch_size=8, labelled_binarization="none"
    )
    _, (xl, _) = next(iter(ds))
    assert not np.all(np.isin(xl.numpy(), [0.0, 1.0]))
    assert model.get_config()["labelled_bound"] is False


def _batch(n_u=8, n_l=20):
    return binary_images(n_u, seed=1), binary_images(n_l, seed=2), np.arange(n_l) % K


# The XLA twin compiles for 7 CPU-seconds: the slow tier (the graph one stays fast).
@pytest.mark.parametrize(
    "jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["graph", "xla"]
)
def test_bad_batch_in_fit_fails_clearly_and_changes_nothing(jit_compile):
    """XLA drops assertion ops: the fused update must still refuse a bad batch (pixels of either
    set, labels), with the same messages, and leave every weight and optimizer slot as it was."""
    model = tiny_model()
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    assert model.xla_update is jit_compile
    x_u, x_l, y_l = _batch()
    one = lambda *element: tf.data.Dataset.from_tensors(element)  # noqa: E731
    model.fit(one(x_u, (x_l, y_l)), verbose=0)
    before = [np.array(v) for v in model.weights + model.optimizer.variables]
    gray = np.full_like(x_u, 0.5)
    bad_onehot = np.full((len(y_l), K), 0.1, np.float32)
    for element, message in [
        ((gray, (x_l, y_l)), "binary"),
        ((np.full_like(x_u, np.nan), (x_l, y_l)), "NaN"),
        ((x_u, (np.full_like(x_l, 3.0), y_l)), r"\[0, 1\]"),
        ((x_u, (np.full_like(x_l, 0.5), y_l)), "binary"),
        ((x_u, (x_l, np.full_like(y_l, 12))), r"class indices in 0\.\.9"),
        ((x_u, (x_l, bad_onehot)), "exactly one 1"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            model.fit(one(*element), verbose=0)
    after = [np.array(v) for v in model.weights + model.optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match=r"Expected images of shape \[batch, 784\]"):
        model.fit(one(x_u[:, :10], (x_l, y_l)), verbose=0)
    fresh = tiny_model()  # Traced with this element's static shapes.
    fresh.compile(keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    with pytest.raises(ValueError, match="Got 19 labels for a batch of 20"):
        fresh.fit(one(x_u, (x_l, y_l[:19])), verbose=0)


@pytest.mark.slow
def test_xla_update_matches_graph_update():
    """The XLA-compiled fused update computes the same step as the plain graph one (with
    point-mass posteriors, so the two RNG streams do not matter).

    SGD with momentum, not Adam, as in test_vae.py's twin (Adam turns a float32 difference in a
    near-zero gradient into up to 1e5 times as much, depending on the CPU's kernels). The two
    gradients differ by at most n 2^-24 (n <= 800 summands: 5e-5) of the sum of their terms'
    magnitudes (<= 20 here, class_weight 100), times 5.6 for momentum 0.9 over 3 steps, times lr:
    <= 6e-5, under atol even in that worst case."""
    x_u, x_l, y_l = _batch()
    ds = tf.data.Dataset.from_tensors((x_u, (x_l, y_l))).repeat()
    runs = []
    for jit in (False, True):
        model = tiny_model(min_variance=0.0)
        _point_mass_posterior(model)
        model.compile(
            keras.optimizers.SGD(1e-2, momentum=0.9), jit_compile=jit, steps_per_execution=3
        )
        history = model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
        runs.append((model, {k: v[-1] for k, v in history.history.items()}))
    (graph, graph_logs), (xla, xla_logs) = runs
    assert xla.xla_update and not graph.xla_update
    for a, b in zip(graph.weights, xla.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)
    assert set(graph_logs) == set(xla_logs)
    for name in graph_logs:
        np.testing.assert_allclose(graph_logs[name], xla_logs[name], rtol=1e-4)
    assert int(xla.optimizer.iterations) == 3


# "auto" (XLA) compiles for 7 CPU-seconds: the slow tier (False stays fast).
@pytest.mark.parametrize("jit_compile", [pytest.param("auto", marks=pytest.mark.slow), False])
def test_compile_survives_a_reload(tmp_path, jit_compile):
    """A reloaded model comes back compiled the same way (XLA update or not), optimizer state
    included."""
    model = tiny_model()
    with pytest.raises(ValueError, match="jit_compile must be"):
        model.compile(keras.optimizers.Adam(1e-3), jit_compile="yes")
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=True)
    assert model.xla_update
    eager = tiny_model()
    eager.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
    assert not eager.xla_update  # Eager steps never use XLA.
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    assert model.jit_compile is False  # Keras' own XLA would drop the checks.
    images, labels = synthetic_uint8(200)
    model.fit(
        semisupervised.make_train_dataset(images, labels, labels_per_class=2, batch_size=8),
        steps_per_epoch=2,
        epochs=1,
        verbose=0,
    )
    path = str(tmp_path / "ssvae.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer is not None and loaded.jit_compile is False
    assert loaded.xla_update is bool(jit_compile)
    assert int(loaded.optimizer.iterations.numpy()) == 2


# ---- the factorised enumeration ---------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_factorised_enumeration_equals_the_tiled_pass_gradients_included(likelihood):
    """Splitting the first Dense layer ([x, onehot(k)] W = x W_x + W_y[k]) gives the tiled
    pass's bound and gradients, with the same noise, to float32 rounding."""
    if likelihood == "gaussian":
        model = tiny_model(likelihood="gaussian", x_dim=12)
        rng = np.random.default_rng(3)
        x_u, x_l = (rng.normal(size=(n, 12)).astype(np.float32) for n in (7, 20))
    else:
        model = tiny_model()
        x_u, x_l = binary_images(7, seed=1), binary_images(20, seed=2)
    y_l = tf.constant(np.arange(20) % K, tf.int32)
    from tfp_vae import networks

    assert networks.split_first_dense(model.encoder, K) is not None
    assert networks.split_first_dense(model.decoder, K) is not None

    def bound_and_grads(factorise):
        model.factorise_labels = factorise
        with tf.GradientTape() as tape:
            u = model.unlabelled_terms(x_u, seed=[4, 5])
            lab = model.labelled_terms(tf.constant(x_l), y_l, seed=[6, 7])
            loss = tf.reduce_mean(u["nelbo"]) + tf.reduce_mean(lab["nelbo"])
        grads = tape.gradient(loss, model.trainable_variables)
        return u, lab, [g.numpy() for g in grads]

    u_f, lab_f, grads_f = bound_and_grads(True)
    u_t, lab_t, grads_t = bound_and_grads(False)
    for name in ("nelbo", "rec", "kl_z", "kl_y"):
        np.testing.assert_allclose(u_f[name], u_t[name], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lab_f["nelbo"], lab_t["nelbo"], rtol=1e-5, atol=1e-4)
    for g_f, g_t in zip(grads_f, grads_t, strict=True):
        # float32 sums in another order: each differs by at most n * 2^-24 of its terms' total,
        # n <= K * 7 + 20 = 90 rows here (4e-6 relative); the bound leaves 25x for cancellation.
        np.testing.assert_allclose(g_f, g_t, rtol=1e-4, atol=1e-4 * np.abs(g_t).max())
