"""Tests for tfp_vae.objectives and the bounds a VAE computes with them.

The reference numbers are brute-force NumPy (float64) computations (tests/numpy_reference.py):
an MLP forward pass written out from the model's Dense kernels and biases, Gaussian/Bernoulli
log-densities from their formulas, and log-mean-exp by direct exponentiation (or
np.logaddexp.reduce where exp would overflow).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from numpy_reference import (
    as64,
    np_decoder_log_prob,
    np_gaussian_log_prob,
    np_log_mean_exp,
    np_posterior,
)

from tfp_vae import evaluation, objectives
from tfp_vae.models import VAE

pytestmark = pytest.mark.unit

SEED = tf.constant([1, 2], tf.int32)


def binary(shape, seed=0, p=0.4):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float32)


@pytest.fixture
def tiny_vae(keras_seed):
    return VAE(z_dim=3, hidden=(5,), x_dim=16)


# --------------------------------------------------------------------------------------------
# Pure functions


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
def test_negative_elbo_with_beta(beta):
    rng = np.random.default_rng(0)
    log_lik, kl = rng.normal(-50, 10, 6), rng.gamma(2.0, 3.0, 6)
    out = objectives.negative_elbo(tf.constant(log_lik), tf.constant(kl), beta)
    np.testing.assert_allclose(as64(out), -log_lik + beta * kl, rtol=1e-12)
    if beta == 1.0:  # The default is the true bound.
        np.testing.assert_allclose(as64(objectives.negative_elbo(log_lik, kl)), -log_lik + kl)


def test_monte_carlo_kl_and_log_weights():
    rng = np.random.default_rng(1)
    ll, lp, lq = (rng.normal(size=(4, 3)) for _ in range(3))
    np.testing.assert_allclose(as64(objectives.monte_carlo_kl(lq, lp)), lq - lp)
    np.testing.assert_allclose(as64(objectives.log_weights(ll, lp, lq)), ll + lp - lq)


def test_iwae_bound_matches_numpy():
    rng = np.random.default_rng(2)
    ll = rng.normal(-80, 5, (7, 5))
    lp = rng.normal(-4, 1, (7, 5))
    lq = rng.normal(-2, 1, (7, 5))
    expected = np_log_mean_exp(ll + lp - lq, axis=0)
    out = objectives.iwae_bound(tf.constant(ll), tf.constant(lp), tf.constant(lq))
    assert tuple(out.shape) == (5,)
    np.testing.assert_allclose(as64(out), expected, rtol=1e-10)
    out_t = objectives.iwae_bound(tf.constant(ll.T), tf.constant(lp.T), tf.constant(lq.T), axis=1)
    np.testing.assert_allclose(as64(out_t), expected, rtol=1e-10)
    # float32 in, float32 out, same numbers.
    out32 = objectives.iwae_bound(*(tf.constant(a, tf.float32) for a in (ll, lp, lq)))
    assert out32.dtype == tf.float32
    np.testing.assert_allclose(as64(out32), expected, rtol=1e-5)


def test_iwae_bound_with_one_sample_is_the_elbo_with_sampled_kl():
    rng = np.random.default_rng(3)
    ll, lp, lq = rng.normal(-60, 5, 8), rng.normal(-4, 1, 8), rng.normal(-2, 1, 8)
    iwae = objectives.iwae_bound(ll[None], lp[None], lq[None])
    nelbo = objectives.negative_elbo(ll, objectives.monte_carlo_kl(lq, lp))
    np.testing.assert_allclose(as64(iwae), -as64(nelbo), rtol=1e-12)
    np.testing.assert_allclose(as64(iwae), ll + lp - lq, rtol=1e-12)


def test_iwae_bound_is_stable_in_float32_for_many_samples_and_extreme_weights():
    m = 5000
    rng = np.random.default_rng(4)
    columns = [
        rng.uniform(-1e4, 0.0, m),  # One weight dominates, most underflow.
        np.full(m, -1e4),  # All tiny: exp() is 0 in float32.
        1e4 + rng.uniform(-50.0, 0.0, m),  # All huge: exp() is inf in float32.
        rng.uniform(-1e6, 1e6, m),  # Enormous spread.
        rng.normal(-90.0, 3.0, m),  # Realistic MNIST scale.
    ]
    columns[0][17] = 0.0
    lw = np.stack(columns, axis=1)  # [m, B]
    lw32 = lw.astype(np.float32)
    out = as64(objectives.iwae_bound(tf.constant(lw32), tf.zeros_like(lw32), tf.zeros_like(lw32)))
    assert np.all(np.isfinite(out))
    expected = np.logaddexp.reduce(as64(lw32), axis=0) - np.log(m)
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-3)
    np.testing.assert_allclose(out[1], -1e4, atol=1e-3)
    # Bounds that hold for any log-mean-exp: max - log m <= lme <= max.
    assert np.all(out <= lw32.max(axis=0) + 1e-3)
    assert np.all(out >= lw32.max(axis=0) - np.log(m) - 1e-3)


# --------------------------------------------------------------------------------------------
# A tiny VAE against a NumPy recomputation from its weights


def test_elbo_terms_match_numpy(tiny_vae):
    model = tiny_vae
    x = binary((8, 16))
    terms = {k: as64(v) for k, v in model.elbo_terms(tf.constant(x), seed=SEED).items()}
    again = model.elbo_terms(tf.constant(x), seed=SEED)
    np.testing.assert_array_equal(terms["nelbo"], as64(again["nelbo"]))  # Stateless seed.

    z = as64(model.encode(tf.constant(x)).sample(seed=SEED))
    assert z.shape == (8, 3)
    mean, variance = np_posterior(model, x)
    # z is a draw from q: its standardised noise is modest (not, e.g., a draw from the prior).
    assert np.all(np.abs((z - mean) / np.sqrt(variance)) < 6)
    rec = -np_decoder_log_prob(model, z, x)
    kl = 0.5 * np.sum(variance + mean**2 - 1.0 - np.log(variance), axis=-1)
    np.testing.assert_allclose(terms["rec"], rec, rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(terms["nelbo"], rec + kl, rtol=1e-4)
    np.testing.assert_allclose(as64(model.elbo(x, seed=SEED)), -(rec + kl), rtol=1e-4)


def test_analytic_kl_agrees_with_its_monte_carlo_estimate(tiny_vae):
    model = tiny_vae
    x = tf.constant(binary((4, 16), seed=1))
    q = model.encode(x)
    z = q.sample(20000, seed=SEED)  # [n, B, z]
    estimates = as64(objectives.monte_carlo_kl(q.log_prob(z), model.prior().log_prob(z)))
    analytic = as64(model.kl(q, z[0]))
    stderr = estimates.std(axis=0) / np.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(axis=0) - analytic) < 4 * stderr + 1e-6)


def test_iwae_log_weights_match_numpy(tiny_vae):
    model = tiny_vae
    x = binary((6, 16), seed=2)
    ll, lp, lq = (as64(t) for t in model.iwae_log_weights(tf.constant(x), 4, seed=SEED))
    assert ll.shape == lp.shape == lq.shape == (4, 6)
    z = as64(model.encode(tf.constant(x)).sample(4, seed=SEED))  # [4, 6, 3]
    mean, variance = np_posterior(model, x)
    np.testing.assert_allclose(ll, np_decoder_log_prob(model, z, x), rtol=1e-4)
    np.testing.assert_allclose(lp, np_gaussian_log_prob(z, 0.0, 1.0), rtol=1e-5)
    np.testing.assert_allclose(lq, np_gaussian_log_prob(z, mean, variance), rtol=1e-4, atol=1e-4)


def np_chunked_iwae(model, x, m, seed, chunk):
    """Replays the chunking's seed schedule (split once per chunk), then takes ONE NumPy
    log-mean-exp over all m log-weights: checks the running log-sum-exp combination exactly."""
    seed = tfp.random.sanitize_seed(seed)
    weights, done = [], 0
    while done < m:
        size = min(chunk, m - done)
        seed, this_seed = tfp.random.split_seed(seed)
        ll, lp, lq = model.iwae_log_weights(tf.constant(x), size, seed=this_seed)
        weights.append(as64(ll) + as64(lp) - as64(lq))
        done += size
    lw = np.concatenate(weights, axis=0)
    assert lw.shape == (m, len(x))
    top = lw.max(axis=0)
    return top + np.log(np.mean(np.exp(lw - top), axis=0))


@pytest.mark.parametrize("m,chunk", [(1, None), (1, 1), (7, 3), (10, 10), (9, 1), (12, None)])
def test_iwae_chunked_combination_is_exact(tiny_vae, m, chunk):
    x = binary((5, 16), seed=3)
    out = as64(tiny_vae.iwae(x, m, seed=SEED, chunk=chunk))
    assert out.shape == (5,)
    expected = np_chunked_iwae(tiny_vae, x, m, SEED, chunk or 1000)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_iwae_chunk_size_does_not_change_the_distribution(tiny_vae):
    x = binary((8, 16), seed=4)
    reps = 150
    x_rep = np.tile(x, (reps, 1))  # [reps * 8, 16]
    whole = as64(tiny_vae.iwae(x_rep, 20, seed=SEED, chunk=20)).reshape(reps, 8)
    chunked = as64(tiny_vae.iwae(x_rep, 20, seed=tf.constant([7, 8]), chunk=6)).reshape(reps, 8)
    assert not np.allclose(whole, chunked)  # Different draws ...
    stderr = np.sqrt(whole.var(axis=0) / reps + chunked.var(axis=0) / reps)
    # ... with the same mean per example.
    assert np.all(np.abs(whole.mean(axis=0) - chunked.mean(axis=0)) < 4.5 * stderr)


def test_iwae_with_one_sample_is_the_elbo_in_expectation(tiny_vae):
    x = binary((8, 16), seed=5)
    reps = 300
    x_rep = np.tile(x, (reps, 1))
    iwae1 = as64(tiny_vae.iwae(x_rep, 1, seed=SEED)).reshape(reps, 8)
    elbo = as64(tiny_vae.elbo(x_rep, seed=tf.constant([3, 4]))).reshape(reps, 8)
    stderr = np.sqrt(iwae1.var(axis=0) / reps + elbo.var(axis=0) / reps)
    assert np.all(np.abs(iwae1.mean(axis=0) - elbo.mean(axis=0)) < 4.5 * stderr)


def prototype_data(n, x_dim, seed):
    """Noisy copies (5% of bits flipped) of 4 fixed random binary prototypes."""
    prototypes = np.random.default_rng(0).random((4, x_dim)) < 0.5
    rng = np.random.default_rng(seed)
    flips = rng.random((n, x_dim)) < 0.05
    return (prototypes[rng.integers(0, 4, n)] ^ flips).astype(np.float32)


def test_iwae_increases_with_m_on_a_briefly_trained_model(keras_seed):
    model = VAE(z_dim=2, hidden=(32,), x_dim=64)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x_train = prototype_data(512, 64, seed=0)
    history = model.fit(x_train, batch_size=64, epochs=3, verbose=0, shuffle=True)
    assert history.history["loss"][-1] < history.history["loss"][0]
    x_test = np.tile(prototype_data(200, 64, seed=1), (5, 1))  # 5 draws per example.
    per_example = {m: as64(model.iwae(x_test, m, seed=SEED)) for m in (1, 10, 100)}
    bounds = {m: v.mean() for m, v in per_example.items()}
    assert np.all(np.isfinite(list(bounds.values())))
    assert bounds[1] < bounds[10] < bounds[100], bounds
    # And clearly so: the paired per-example gains exceed 3 standard errors.
    for small, large in ((1, 10), (10, 100)):
        gain = per_example[large] - per_example[small]
        assert gain.mean() > 3 * gain.std() / np.sqrt(len(gain)), (small, large, bounds)
    # log p(x) <= 0 for binary data, so every bound is negative.
    assert bounds[100] < 0


# --------------------------------------------------------------------------------------------
# What the model minimises


def test_loss_weights_kl_by_beta(keras_seed):
    model = VAE(z_dim=3, hidden=(5,), x_dim=16, beta=2.5)
    terms = {k: as64(v) for k, v in model.compute_terms(tf.constant(binary((6, 16)))).items()}
    np.testing.assert_allclose(terms["loss"], terms["rec"] + 2.5 * terms["kl"], rtol=1e-6)
    np.testing.assert_allclose(terms["nelbo"], terms["rec"] + terms["kl"], rtol=1e-6)
    assert np.all(terms["kl"] > 0) and np.all(terms["rec"] > 0)


def test_iwae_objective_terms(keras_seed):
    model = VAE(z_dim=3, hidden=(5,), x_dim=16, objective="iwae", iw=5)
    terms = {k: as64(v) for k, v in model.compute_terms(tf.constant(binary((6, 16)))).items()}
    np.testing.assert_allclose(terms["loss"], terms["niwae"])
    np.testing.assert_allclose(terms["nelbo"], terms["rec"] + terms["kl"], rtol=1e-6)
    assert terms["niwae"].shape == (6,) and np.all(np.isfinite(terms["niwae"]))


# ---- whole-test-set evaluation (tfp_vae.evaluation) ------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("m, max_rows", [(12, 1000), (12, 5), (7, 3), (1, 4)])
def test_negative_iwae_chunks_and_folds_exactly(tiny_vae, jit_compile, m, max_rows):
    """With known log weights (sample i, example b of a call: -(i mod 5) - b / 10), the chunked,
    batched, running log-sum-exp must equal the closed form whatever the chunking."""

    def known_log_weights(x, size, seed=None):
        b = tf.range(tf.shape(x)[0], dtype=tf.float32)
        i = tf.range(size, dtype=tf.float32)[:, None]
        return -tf.math.floormod(i, 5.0) - b / 10.0, tf.zeros([size, 1]), tf.zeros([size, 1])

    x = np.zeros((9, 16), np.float32)
    tiny_vae.iwae_log_weights = known_log_weights
    got = evaluation.negative_iwae(tiny_vae, x, m, max_rows, seed=0, jit_compile=jit_compile)
    chunk = min(m, max_rows)
    b = np.arange(9) % max(1, max_rows // chunk)  # Each call numbers its examples from 0 ...
    i = np.arange(m) % chunk  # ... and its samples.
    log_w = -(i % 5)[:, None] - b[None, :] / 10.0
    expected = -np.mean(np.log(np.mean(np.exp(log_w), axis=0)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_negative_iwae_agrees_with_model_iwae_and_checks_pixels(tiny_vae):
    x = binary((40, 16))
    reference = -float(tf.reduce_mean(tiny_vae.iwae(x, 400, seed=SEED)))
    for jit in (False, True):  # Other random streams: agreement within Monte Carlo error.
        got = evaluation.negative_iwae(tiny_vae, x, 400, max_rows=1000, seed=1, jit_compile=jit)
        assert abs(got - reference) < 0.05 * abs(reference), (jit, got, reference)
    with pytest.raises(ValueError, match="binary"):
        evaluation.negative_iwae(tiny_vae, np.full((2, 16), 0.5, np.float32), 10)
    with pytest.raises(ValueError, match="m must be >= 1"):
        evaluation.negative_iwae(tiny_vae, x, 0)
