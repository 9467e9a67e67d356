"""Likelihoods by name: each density against a hand-written formula, and VAEs/GMVAEs that train,
check their inputs, save and export with the likelihood they were built with."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import export, layers, likelihoods
from tfp_vae.models import GMVAE, VAE

pytestmark = pytest.mark.unit

TINY = dict(z_dim=3, hidden=(8,), x_dim=784)
PIXELS = (
    "Pixel values must lie in [0, 1]; divide uint8 images by 255 (and binarise them for a "
    "Bernoulli likelihood: tfp_vae.data.binarize_static)."
)
BINARY = "Pixels must be binary (0 or 1)"
NAN_FEATURES = "Features contain NaN or Inf values; clean the input."


def _softplus(logits):
    return np.logaddexp(0.0, logits)


def _log_c(lam, one_minus_lam):
    """log C(lambda), C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), 2 at lambda = 1/2.

    2 artanh(u) = log((1 + u) / (1 - u)) = log((1 - lambda) / lambda), with 1 - lambda given
    separately (exact for large logits too); close to 1/2 the series
    2 (1 + u^2 / 3 + u^4 / 5 + u^6 / 7) of artanh(u) / u, u = 1 - 2 lambda."""
    u = one_minus_lam - lam
    near = np.abs(u) < 1e-3
    safe = np.where(near, 0.5, u)
    exact = (np.log(one_minus_lam) - np.log(lam)) / safe
    series = 2.0 * (1.0 + u**2 / 3.0 + u**4 / 5.0 + u**6 / 7.0)
    return np.log(np.where(near, series, exact))


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * 3.0, rng.random(shape)


def test_bernoulli_log_prob_is_the_formula():
    logits, _ = _data((4, 6))
    x = (np.random.default_rng(1).random((4, 6)) < 0.5).astype(np.float64)
    expected = np.sum(x * logits - _softplus(logits), axis=-1)
    p = layers.likelihood_layer("bernoulli", 6)(tf.constant(logits, tf.float32))
    assert p.batch_shape == [4] and p.event_shape == [6]
    np.testing.assert_allclose(p.log_prob(x.astype(np.float32)), expected, rtol=1e-5, atol=1e-4)


def test_continuous_bernoulli_log_prob_is_the_formula():
    logits, x = _data((4, 6))
    # Logits at and near 0 (lambda = 1/2, where TFP switches to its stable form), and large ones.
    logits[0] = [0.0, 1e-6, -1e-4, 1e-3, 2e-2, -0.3]
    logits[1] = [15.0, -15.0, 40.0, -40.0, 5.0, -5.0]
    lam, one_minus_lam = 1.0 / (1.0 + np.exp(-logits)), 1.0 / (1.0 + np.exp(logits))
    expected = np.sum(x * logits - _softplus(logits) + _log_c(lam, one_minus_lam), axis=-1)
    p = layers.likelihood_layer("continuous_bernoulli", 6)(tf.constant(logits, tf.float32))
    assert p.batch_shape == [4] and p.event_shape == [6]
    np.testing.assert_allclose(p.log_prob(x.astype(np.float32)), expected, rtol=1e-5, atol=1e-3)
    # At lambda = 1/2 (the removable singularity, C = 2) it is the uniform density on [0, 1]:
    # -softplus(0) + log 2 = 0.
    at_half = layers.ContinuousBernoulliLikelihood()(tf.zeros([1, 1]))
    np.testing.assert_allclose(at_half.log_prob([[0.3]]), [0.0], atol=1e-7)
    # Its mean is not lambda: 1 / (1 - exp(-u)) - 1 / u for the logit u, within (0, 1).
    u = np.array([[2.0, -3.0]])
    np.testing.assert_allclose(
        layers.ContinuousBernoulliLikelihood()(tf.constant(u, tf.float32)).mean(),
        1.0 / (1.0 - np.exp(-u)) - 1.0 / u,
        rtol=1e-5,
    )


def test_gaussian_log_prob_is_the_formula():
    mu, _ = _data((4, 6))
    x, _ = _data((4, 6), seed=1)
    layer = layers.likelihood_layer("gaussian", 6)
    assert isinstance(layer, layers.GaussianLikelihood)
    np.testing.assert_allclose(layer.scale(), np.ones(6), rtol=1e-6)  # It starts at 1.
    pre = np.linspace(-3.0, 2.0, 6)
    layer.pre_scale.assign(pre)
    sigma = _softplus(pre) + layer.min_scale
    expected = np.sum(
        -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi), axis=-1
    )
    p = layer(tf.constant(mu, tf.float32))
    assert p.batch_shape == [4] and p.event_shape == [6]
    np.testing.assert_allclose(p.log_prob(x.astype(np.float32)), expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(p.mean(), mu, rtol=1e-6)
    # The scale is trained: the gradient reaches it.
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(layer(tf.constant(mu, tf.float32)).log_prob(x.astype(np.float32)))
    assert tape.gradient(loss, layer.pre_scale.value) is not None


def test_unknown_likelihood_is_refused():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "likelihood must be one of ('bernoulli', 'continuous_bernoulli', 'gaussian', "
            "'heteroscedastic_gaussian'); got 'poisson'."
        ),
    ):
        layers.likelihood_layer("poisson", 4)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(likelihood="poisson", **TINY)


def _model(cls=VAE, x_dim=784, **kwargs):
    keras.utils.set_random_seed(0)
    model = cls(**{**TINY, "x_dim": x_dim}, **kwargs)
    model.compile(keras.optimizers.Adam(1e-2))  # jit_compile "auto": the XLA fused update.
    return model


def _grayscale(n, seed=0):
    return np.random.default_rng(seed).random((n, 784)).astype(np.float32)


@pytest.mark.slow
def test_continuous_bernoulli_trains_on_grayscale():
    model = _model(likelihood="continuous_bernoulli")
    assert isinstance(model.likelihood, layers.ContinuousBernoulliLikelihood)
    x = _grayscale(64)
    before = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)["nelbo"]
    model.fit(x, batch_size=32, epochs=3, verbose=0)
    after = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)["nelbo"]
    assert np.isfinite(after) and after < before
    for out in (model.sample(2), model.reconstruct(x[:2])):
        out = np.asarray(out)
        assert out.shape == (2, 784) and out.min() >= 0 and out.max() <= 1
    assert np.all(np.isfinite(model.iwae(x[:4], 3, seed=[1, 2])))
    for bad in (x * 255.0, x - 0.5):
        with pytest.raises(ValueError, match=re.escape(PIXELS)):
            model.fit(bad, batch_size=32, epochs=1, verbose=0)
        with pytest.raises(ValueError, match=re.escape(PIXELS)):
            model.elbo(bad)
    # A dataset is checked in the (XLA-fused) step, with the same sentence.
    weights = [w.numpy() for w in model.weights]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(PIXELS)):
        model.fit(tf.data.Dataset.from_tensor_slices(x * 2.0).batch(32), verbose=0)
    for w, v in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(w, v.numpy())


@pytest.mark.slow
def test_gaussian_trains_on_real_values_and_refuses_nan():
    model = _model(x_dim=5, likelihood="gaussian")
    assert isinstance(model.likelihood, layers.GaussianLikelihood)
    assert any("pre_scale" in v.path for v in model.trainable_variables)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 5)) * [1.0, 10.0, 0.1, 3.0, 1.0] + 50.0).astype(np.float32)
    before = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)["nelbo"]
    model.fit(x, batch_size=32, epochs=5, verbose=0)
    after = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)["nelbo"]
    assert np.isfinite(after) and after < before
    assert not np.allclose(model.likelihood.scale(), 1.0)  # The scale learned.
    assert np.asarray(model.reconstruct(x[:3])).shape == (3, 5)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=re.escape(NAN_FEATURES)):
        model.fit(bad, batch_size=32, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=re.escape(NAN_FEATURES)):
        model.elbo(bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(NAN_FEATURES)):
        model.fit(tf.data.Dataset.from_tensor_slices(bad).batch(32), verbose=0)


def test_bernoulli_still_refuses_grayscale():
    model = _model()
    assert model.likelihood_name == "bernoulli"
    assert type(model.likelihood) is layers.BernoulliLikelihood
    x = _grayscale(8)
    with pytest.raises(ValueError, match=re.escape(BINARY)):
        model.fit(x, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=re.escape(BINARY)):
        model.elbo(x)
    assert np.asarray(model.reconstruct(x)).shape == (8, 784)  # Encoding grayscale is fine.


@pytest.mark.parametrize(
    "cls, likelihood",
    [(VAE, "continuous_bernoulli"), (VAE, "gaussian"), (GMVAE, "continuous_bernoulli")],
)
def test_config_and_keras_file_round_trip(tmp_path, cls, likelihood):
    model = _model(cls, likelihood=likelihood, **({"k": 3} if cls is GMVAE else {}))
    if likelihood == "gaussian":
        model.likelihood.pre_scale.assign(np.linspace(-1.0, 1.0, 784))
    config = model.get_config()
    assert config["likelihood"] == likelihood
    rebuilt = cls.from_config(config)
    assert rebuilt.likelihood_name == likelihood
    assert type(rebuilt.likelihood) is type(model.likelihood)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.likelihood_name == likelihood
    x = _grayscale(4)
    np.testing.assert_allclose(loaded.elbo(x, seed=[1, 2]), model.elbo(x, seed=[1, 2]), rtol=1e-5)
    # A config saved before there were likelihoods is a Bernoulli model.
    del config["likelihood"]
    assert cls.from_config(config).likelihood_name == "bernoulli"


@pytest.mark.integration
def test_savedmodel_of_a_continuous_bernoulli_vae_takes_grayscale(tmp_path):
    model = _model(likelihood="continuous_bernoulli")
    path = str(tmp_path / "cb")
    export.export(model, path)
    sig = tf.saved_model.load(path).signatures
    x = tf.constant(_grayscale(3))
    seed = tf.constant([1, 2])
    out = sig["elbo"](x=x, seed=seed)
    np.testing.assert_allclose(out["elbo"], model.elbo(x, seed=seed), rtol=1e-5, atol=1e-3)
    assert np.all(
        np.isfinite(sig["log_likelihood"](x=x, m=tf.constant(2), seed=seed)["log_likelihood"])
    )
    decoded = sig["decode"](z=tf.zeros([2, 3]))
    assert set(decoded) == {"mean", "logits"}
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(PIXELS)):
        sig["elbo"](x=x * 2.0, seed=seed)


def test_likelihoods_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for name in likelihoods.names():
            layer = likelihoods.get(name, 4)
            width = 4 * layer.outputs_per_dimension
            p = layer(tf.zeros([2, width], tf.bfloat16))
            assert p.dtype == tf.float32 and p.log_prob(tf.zeros([2, 4])).dtype == tf.float32
            assert all(v.dtype == "float32" for v in layer.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")
