"""Tests for the distribution layers in tfp_vae.layers, against NumPy (float64) formulas."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import layers

pytestmark = pytest.mark.unit

tfd = tfp.distributions


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def np_gaussian_log_prob(z, mean, variance):
    return -0.5 * np.sum(np.log(2 * np.pi * variance) + (z - mean) ** 2 / variance, axis=-1)


def np_bernoulli_log_prob(x, logits):
    """sum_d x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)); log sigmoid(l) = -softplus(-l)."""
    return np.sum(-x * np_softplus(-logits) - (1 - x) * np_softplus(logits), axis=-1)


def as64(t):
    return np.asarray(t, np.float64)


# --------------------------------------------------------------------------------------------
# GaussianPosterior


@pytest.mark.parametrize("batch", [(4,), (2, 3)], ids=["rank2", "rank3"])
def test_gaussian_posterior_parameters_and_shapes(batch):
    rng = np.random.default_rng(0)
    h = rng.normal(0, 3, batch + (6,)).astype(np.float32)
    q = layers.GaussianPosterior()(tf.constant(h))
    assert isinstance(q, tfd.MultivariateNormalDiag)
    assert tuple(q.batch_shape) == batch and tuple(q.event_shape) == (3,)
    h64 = as64(h)
    mean, variance = h64[..., :3], np_softplus(h64[..., 3:]) + 1e-8
    np.testing.assert_allclose(as64(q.mean()), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(as64(q.variance()), variance, rtol=1e-5)
    np.testing.assert_allclose(as64(q.stddev()), np.sqrt(variance), rtol=1e-5)
    z = rng.normal(size=batch + (3,)).astype(np.float32)
    np.testing.assert_allclose(
        as64(q.log_prob(z)), np_gaussian_log_prob(as64(z), mean, variance), rtol=1e-5, atol=1e-5
    )
    sample = q.sample(5, seed=tf.constant([1, 2]))
    assert tuple(sample.shape) == (5,) + batch + (3,) and sample.dtype == tf.float32


def test_gaussian_posterior_min_variance():
    layer = layers.GaussianPosterior(min_variance=0.25)
    h = np.array([[0.5, -0.5, 30.0, -30.0]], np.float32)
    q = layer(tf.constant(h))
    np.testing.assert_allclose(as64(q.variance()), np_softplus(as64(h[:, 2:])) + 0.25, rtol=1e-6)


def test_gaussian_posterior_floor_keeps_log_prob_finite():
    h = np.concatenate([np.zeros([3, 4]), np.full([3, 4], -100.0)], axis=-1).astype(np.float32)
    q = layers.GaussianPosterior()(tf.constant(h))
    variance = as64(q.variance())
    assert np.all(variance >= 1e-8 * (1 - 1e-6))
    z = np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32)
    log_prob = as64(q.log_prob(z))
    assert np.all(np.isfinite(log_prob))
    np.testing.assert_allclose(log_prob, np_gaussian_log_prob(as64(z), 0.0, 1e-8), rtol=1e-4)
    # At the mean the density is huge but finite too.
    assert np.all(np.isfinite(as64(q.log_prob(np.zeros([3, 4], np.float32)))))


def test_gaussian_posterior_gradients_match_numpy():
    """d log q(z) / d h, for the mean half and the pre-softplus variance half."""
    rng = np.random.default_rng(1)
    h = tf.Variable(rng.normal(size=(3, 4)).astype(np.float32))
    z = rng.normal(size=(3, 2)).astype(np.float32)
    with tf.GradientTape() as tape:
        log_prob = tf.reduce_sum(layers.GaussianPosterior()(h).log_prob(z))
    grad = as64(tape.gradient(log_prob, h))
    h64, z64 = as64(h.numpy()), as64(z)
    mean, pre = h64[:, :2], h64[:, 2:]
    variance = np_softplus(pre) + 1e-8
    d_mean = (z64 - mean) / variance
    d_pre = (-0.5 / variance + 0.5 * (z64 - mean) ** 2 / variance**2) * np_sigmoid(pre)
    np.testing.assert_allclose(grad, np.concatenate([d_mean, d_pre], -1), rtol=1e-4, atol=1e-5)


def test_gradients_reach_dense_layer_before_posterior(keras_seed):
    dense = keras.layers.Dense(6)
    posterior = layers.GaussianPosterior()
    x = tf.constant(np.random.default_rng(2).normal(size=(5, 7)), tf.float32)
    z = tf.constant(np.random.default_rng(3).normal(size=(5, 3)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        q = posterior(dense(x))
        log_prob = tf.reduce_mean(q.log_prob(z))
        # Reparameterised sample: gradients also pass through q.sample.
        sample_loss = tf.reduce_mean(tf.square(q.sample(seed=tf.constant([4, 5]))))
    for loss in (log_prob, sample_loss):
        grads = tape.gradient(loss, dense.trainable_variables)
        assert len(grads) == 2
        for g in grads:
            assert g is not None and np.all(np.isfinite(g.numpy()))
            assert np.any(g.numpy() != 0)


def test_posterior_sees_updated_variables(keras_seed):
    """Distributions are built in `call`, so a changed weight changes the next distribution."""
    dense = keras.layers.Dense(4)
    posterior = layers.GaussianPosterior()
    x = tf.ones([1, 3])
    before = posterior(dense(x)).mean().numpy()
    dense.bias.assign(dense.bias + 1.0)
    after = posterior(dense(x)).mean().numpy()
    np.testing.assert_allclose(after, before + 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# StandardNormalPrior


def test_standard_normal_prior():
    p = layers.StandardNormalPrior(5)()
    assert isinstance(p, tfd.MultivariateNormalDiag)
    assert tuple(p.batch_shape) == () and tuple(p.event_shape) == (5,)
    np.testing.assert_array_equal(p.mean().numpy(), np.zeros(5))
    np.testing.assert_array_equal(p.stddev().numpy(), np.ones(5))
    z = np.random.default_rng(0).normal(size=(4, 2, 5)).astype(np.float32)
    log_prob = p.log_prob(z)
    assert tuple(log_prob.shape) == (4, 2)
    np.testing.assert_allclose(as64(log_prob), np_gaussian_log_prob(as64(z), 0.0, 1.0), rtol=1e-6)
    samples = p.sample([3, 7], seed=tf.constant([0, 1]))
    assert tuple(samples.shape) == (3, 7, 5) and samples.dtype == tf.float32


# --------------------------------------------------------------------------------------------
# BernoulliLikelihood


def test_bernoulli_likelihood_log_prob_and_shapes():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (2, 3, 10)).astype(np.float32)
    logits[0, 0, :4] = (60.0, -60.0, 60.0, -60.0)  # Saturated: naive log(sigmoid) would be -inf.
    x = rng.integers(0, 2, (2, 3, 10)).astype(np.float32)
    x[0, 0, :4] = (1.0, 0.0, 0.0, 1.0)
    p = layers.BernoulliLikelihood()(tf.constant(logits))
    assert tuple(p.batch_shape) == (2, 3) and tuple(p.event_shape) == (10,)
    log_prob = as64(p.log_prob(x))
    assert log_prob.shape == (2, 3)
    np.testing.assert_allclose(
        log_prob, np_bernoulli_log_prob(as64(x), as64(logits)), rtol=1e-5, atol=1e-4
    )
    # The saturated entries: 0 + 0 + (-60) + (-60) plus the rest.
    assert np.isfinite(log_prob).all()
    np.testing.assert_allclose(as64(p.mean()), np_sigmoid(as64(logits)), rtol=1e-5, atol=1e-7)


def test_bernoulli_likelihood_broadcasts_over_sample_axis():
    """[m, B, D] logits against [B, D] images give [m, B] log-probs (the IWAE layout)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, 6)).astype(np.float32)
    x = rng.integers(0, 2, (3, 6)).astype(np.float32)
    log_prob = as64(layers.BernoulliLikelihood()(tf.constant(logits)).log_prob(x))
    assert log_prob.shape == (4, 3)
    np.testing.assert_allclose(
        log_prob, np_bernoulli_log_prob(as64(x)[None], as64(logits)), rtol=1e-5, atol=1e-5
    )


def test_bernoulli_likelihood_samples():
    logits = np.array([[-3.0, 0.0, 1.5, 40.0, -40.0]], np.float32)
    p = layers.BernoulliLikelihood()(tf.constant(logits))
    samples = p.sample(4000, seed=tf.constant([3, 4])).numpy()
    assert samples.dtype == np.float32 and samples.shape == (4000, 1, 5)
    assert set(np.unique(samples)) <= {0.0, 1.0}
    probs = np_sigmoid(as64(logits[0]))
    freq = samples[:, 0].mean(axis=0)
    assert np.all(np.abs(freq - probs) <= 4 * np.sqrt(probs * (1 - probs) / 4000) + 1e-9)


# --------------------------------------------------------------------------------------------
# Serialisation


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.GaussianPosterior(min_variance=1e-3, name="post"),
        lambda: layers.StandardNormalPrior(7, name="prior"),
        lambda: layers.BernoulliLikelihood(name="lik"),
    ],
    ids=["posterior", "prior", "likelihood"],
)
def test_get_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # Through Keras' registered-name serialisation too.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
    if isinstance(layer, layers.GaussianPosterior):
        assert restored.min_variance == 1e-3
        h = tf.constant([[0.0, -100.0]])
        np.testing.assert_allclose(restored(h).variance().numpy(), [[1e-3]], rtol=1e-5)
    if isinstance(layer, layers.StandardNormalPrior):
        assert restored.z_dim == 7 and tuple(restored().event_shape) == (7,)
