"""Tests of M1+M2 (M2 on a fixed VAE's latent features) and of the Gaussian-likelihood M2."""

import math
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import export, semisupervised
from tfp_vae.models import M1M2, SSVAE, VAE

from test_ssvae import _point_mass_posterior, binary_images, synthetic_uint8

pytestmark = pytest.mark.unit

tfd = tfp.distributions

K = 10
TINY_M2 = dict(z_dim=3, hidden=(16,), classifier_hidden=(16,))


def tiny_m1m2(**overrides):
    keras.utils.set_random_seed(0)
    return M1M2(VAE(z_dim=6, hidden=(32,)), **{**TINY_M2, **overrides})


# ---- the Gaussian-likelihood M2 ----------------------------------------------------------------


def test_gaussian_m2_enumerated_bound_equals_class_by_class_loop():
    keras.utils.set_random_seed(0)
    model = SSVAE(x_dim=5, likelihood="heteroscedastic_gaussian", min_variance=0.0, **TINY_M2)
    _point_mass_posterior(model)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    probs = model.classify(x).numpy()
    prior = tfd.MultivariateNormalDiag(tf.zeros(model.z_dim), tf.ones(model.z_dim))
    expected = np.sum(probs * np.log(probs * K), 1)
    for k in range(K):
        onehot = tf.one_hot(tf.fill([4], k), K)
        q = model.posterior(model.encoder(tf.concat([x, onehot], -1)))
        h = model.decoder(tf.concat([q.mean(), onehot], -1)).numpy()
        mean, variance = h[:, :5], np.log1p(np.exp(h[:, 5:]))
        # -log N(x; mean, variance), written out.
        rec = 0.5 * np.sum(np.log(2 * np.pi * variance) + (x - mean) ** 2 / variance, 1)
        expected += probs[:, k] * (rec + tfd.kl_divergence(q, prior).numpy())
    np.testing.assert_allclose(-model.elbo(x).numpy(), expected, rtol=1e-4)


def test_gaussian_m2_checks_features():
    model = SSVAE(x_dim=5, likelihood="gaussian", **TINY_M2)
    with pytest.raises(ValueError, match=r"features of shape \[batch, 5\]"):
        model.classify(np.zeros((2, 784), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.elbo(np.array([[0.0, 1.0, np.nan, 2.0, -3.0]], np.float32))
    # Real values outside [0, 1] are fine here.
    assert model.elbo(np.array([[0.0, 1.0, 5.0, 2.0, -3.0]], np.float32)).shape == (1,)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        SSVAE(likelihood="poisson")


# ---- M1+M2 -----------------------------------------------------------------------------------


def test_m1m2_classifies_m1_posterior_means():
    model = tiny_m1m2()
    x = binary_images(5)
    features = model.m1.encode(x).mean()
    expected = tf.nn.softmax(model.classifier(features)).numpy()
    np.testing.assert_allclose(model.classify(x), expected, rtol=1e-5)
    np.testing.assert_allclose(model.features(x), features, rtol=1e-6)
    assert model.classify(x.reshape(5, 28, 28)).shape == (5, K)
    assert model.input_dim == 784 and model.x_dim == 6


def test_m1m2_bound_is_the_stacked_bound():
    """nelbo = -log p(x|z1) + log q(z1|x) - U(z1) at z1 ~ q(z1|x), from M2's own bound."""
    model = tiny_m1m2(min_variance=0.0)
    x = binary_images(4)
    seed = tf.constant([5, 6])
    terms = {k: v.numpy() for k, v in model.bound_terms(x, seed=seed).items()}
    seed_z1, seed_m2 = tfp.random.split_seed(seed, 2)
    q = model.m1.encode(x)
    z1 = q.sample(seed=seed_z1)
    u = model.unlabelled_terms(z1, seed_m2)["nelbo"].numpy()  # -U(z1), M2 on the features
    rec = -model.m1.decode(z1).log_prob(x).numpy()
    np.testing.assert_allclose(terms["rec"], rec, rtol=1e-5)
    np.testing.assert_allclose(terms["nelbo"], rec + q.log_prob(z1).numpy() + u, rtol=1e-5)
    np.testing.assert_allclose(terms["nelbo"], terms["rec"] + terms["kl_z1"], rtol=1e-6)
    np.testing.assert_allclose(-model.elbo(x, seed=seed).numpy(), terms["nelbo"], rtol=1e-6)
    y = np.arange(4) % K
    labelled = model.bound_terms(x, tf.constant(y, tf.int32), seed=seed)["nelbo"].numpy()
    lab = model.labelled_terms(z1, tf.constant(y, tf.int32), seed_m2)["nelbo"].numpy()
    np.testing.assert_allclose(labelled, rec + q.log_prob(z1).numpy() + lab, rtol=1e-5)
    assert "kl_y" not in model.bound_terms(x, tf.constant(y, tf.int32))


def test_m1m2_bound_is_near_m1_bound_when_m2_is_the_standard_normal():
    """With p(z1|y,z2) = N(0, I) whatever y, z2 and q(z2|z1,y) = p(z2), -U(z1) is -log N(z1; 0,
    I) + KL(q(y|z1) || p(y)), so the stacked bound is M1's own ELBO (with a sampled KL) plus
    KL_y: a check that does not go through M1M2's own formula."""
    model = tiny_m1m2(min_variance=0.0)
    for net, size in ((model.decoder, model.x_dim), (model.encoder, model.z_dim)):
        out = net.layers[-1]
        out.kernel.assign(np.zeros_like(out.kernel.numpy()))
        bias = np.zeros(2 * size, np.float32)
        bias[size:] = math.log(math.e - 1)  # softplus = 1: unit variance
        out.bias.assign(bias)
    x = binary_images(3)
    seed = tf.constant([1, 9])
    terms = model.bound_terms(x, seed=seed)
    seed_z1, _ = tfp.random.split_seed(seed, 2)
    q = model.m1.encode(x)
    z1 = q.sample(seed=seed_z1)
    m1_nelbo = (
        -model.m1.decode(z1).log_prob(x) + q.log_prob(z1) - model.m1.prior().log_prob(z1)
    ).numpy()
    # q(z2|z1,y) = N(0, I) = p(z2) exactly, so kl_z = 0 and the rest is deterministic.
    np.testing.assert_allclose(terms["kl_z"].numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(terms["nelbo"].numpy(), m1_nelbo + terms["kl_y"].numpy(), rtol=1e-5)


def test_m1_stays_fixed_while_m2_trains():
    model = tiny_m1m2()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)  # XLA: test_ssvae.py
    m1_before = [v.numpy().copy() for v in model.m1.weights]
    m2_before = [v.numpy().copy() for v in model.trainable_variables]
    assert {id(v) for v in model.m1.weights}.isdisjoint(id(v) for v in model.trainable_variables)
    images, labels = synthetic_uint8(300)
    ds = semisupervised.make_train_dataset(images, labels, labels_per_class=2, batch_size=16)
    history = model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for before, v in zip(m1_before, model.m1.weights, strict=True):
        np.testing.assert_array_equal(before, v.numpy())
    assert any(
        not np.array_equal(b, v.numpy())
        for b, v in zip(m2_before, model.trainable_variables, strict=True)
    )


def test_m1m2_bad_inputs():
    with pytest.raises(ValueError, match="m1 must be a trained VAE"):
        M1M2(SSVAE(**TINY_M2))
    with pytest.raises(ValueError, match="sets x_dim from m1"):
        M1M2(VAE(z_dim=4, hidden=(8,)), x_dim=4)
    model = tiny_m1m2()
    with pytest.raises(ValueError, match="binary"):
        model.elbo(np.full((2, 784), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"\[batch, 784\]"):
        model.classify(np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match=re.escape("class indices in 0..9")):
        model.sample(2, y=[3, 10])


def test_m1m2_outputs_are_pixels():
    model = tiny_m1m2()
    x = binary_images(3)
    for out in (
        model.sample(4, y=2, seed=[1, 2]),
        model.reconstruct(x),
        model.generate(tf.zeros([3, 3]), [0, 1, 2]),
    ):
        out = np.asarray(out)
        assert out.shape[1] == 784 and out.min() >= 0 and out.max() <= 1


def test_m1m2_keras_round_trip(tmp_path):
    model = tiny_m1m2(class_weight=7.0)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    images, labels = synthetic_uint8(200)
    model.fit(
        semisupervised.make_train_dataset(images, labels, labels_per_class=2, batch_size=8),
        steps_per_epoch=2,
        epochs=1,
        verbose=0,
    )
    x = binary_images(5)
    path = str(tmp_path / "m1m2.keras")
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Keras skipping an optimizer state that differs
        loaded = keras.models.load_model(path)
    assert isinstance(loaded, M1M2) and isinstance(loaded.m1, VAE)
    assert loaded.get_config() == model.get_config()
    assert not loaded.m1.trainable
    # M1 stays frozen after a reload, so the optimizer state (M2's only) comes back whole.
    assert len(loaded.trainable_variables) == len(model.trainable_variables)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.classify(x), model.classify(x), rtol=1e-6)
    np.testing.assert_allclose(loaded.elbo(x, seed=[3, 4]), model.elbo(x, seed=[3, 4]), rtol=1e-6)


@pytest.mark.slow  # An export and a subprocess.
def test_m1m2_savedmodel_needs_only_tensorflow(tmp_path):
    model = tiny_m1m2()
    path = str(tmp_path / "sm")
    export.export(model, path)
    loaded = tf.saved_model.load(path)
    x = tf.constant(binary_images(3))
    y = tf.constant([1, 2, 3], tf.int32)
    np.testing.assert_allclose(loaded.classify(x)["probs"], model.classify(x), rtol=1e-5)
    assert loaded.sample(tf.constant(4), tf.constant([7], tf.int32))["images"].shape == (4, 784)
    decoded = loaded.decode(tf.zeros([3, 3]), y)
    assert decoded["observed"].shape == (3, 784) and decoded["mean"].shape == (3, 6)
    np.testing.assert_allclose(
        loaded.elbo(x, tf.constant([1, 2]))["elbo"], model.elbo(x, seed=[1, 2]), rtol=1e-5
    )


def test_active_units_and_a_partial_m2():
    """M2 on some units of z1: the others keep the prior N(0, 1) in the bound, and outputs are
    still pixels."""
    keras.utils.set_random_seed(0)
    m1 = VAE(z_dim=6, hidden=(32,))
    out = m1.encoder.layers[-1]
    kernel = out.kernel.numpy()
    kernel[:, [1, 4]] = 0.0  # the means of units 1 and 4 ignore x: inactive
    out.kernel.assign(kernel)
    x = binary_images(50)
    units = M1M2.active_units(m1, x, threshold=1e-6)
    assert units == [0, 2, 3, 5]
    model = M1M2(m1, feature_indices=units, **TINY_M2)
    assert model.x_dim == 4
    seed = tf.constant([2, 3])
    terms = model.bound_terms(x[:3], seed=seed)
    seed_z1, seed_m2 = tfp.random.split_seed(seed, 2)
    q = m1.encode(x[:3])
    z1 = q.sample(seed=seed_z1).numpy()
    u = model.unlabelled_terms(tf.constant(z1[:, units]), seed_m2)["nelbo"].numpy()
    rest = tfd.Normal(0.0, 1.0).log_prob(z1[:, [1, 4]]).numpy().sum(1)
    rec = -m1.decode(z1).log_prob(x[:3]).numpy()
    np.testing.assert_allclose(terms["nelbo"], rec + q.log_prob(z1).numpy() + u - rest, rtol=1e-5)
    np.testing.assert_allclose(model.features(x[:3]), q.mean().numpy()[:, units], rtol=1e-6)
    assert model.sample(3, seed=[1, 1]).shape == (3, 784)
    loaded = M1M2.from_config(model.get_config())
    assert loaded.feature_indices == units
    for bad in ([], [2, 0], [0, 0], [6]):
        with pytest.raises(ValueError, match="feature_indices"):
            M1M2(m1, feature_indices=bad)
