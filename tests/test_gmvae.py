"""GMVAE: the mixture prior (fast log_prob, gradients) and its Monte Carlo KL."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from numpy_reference import np_mixture_log_prob

from tfp_vae import layers
from tfp_vae.models import GMVAE

pytestmark = pytest.mark.unit

tfd = tfp.distributions


def _prior(z_dim=3, k=7, seed=0):
    keras.utils.set_random_seed(seed)
    prior = layers.MixturePrior(z_dim, k, learn_weights=True)
    rng = np.random.default_rng(seed)
    prior.loc.assign(rng.normal(size=(k, z_dim)).astype(np.float32) * 2)
    prior.pre_variance.assign(rng.normal(size=(k, z_dim)).astype(np.float32))
    prior.mixture_logits.assign(rng.normal(size=(k,)).astype(np.float32))
    return prior


def test_mixture_prior_is_a_mixture_same_family_with_uniform_fixed_weights_by_default():
    prior = layers.MixturePrior(10, 500)
    dist = prior()
    assert isinstance(dist, tfd.MixtureSameFamily)
    assert dist.event_shape == [10] and dist.batch_shape == []
    np.testing.assert_allclose(dist.mixture_distribution.probs_parameter(), np.full(500, 1 / 500))
    assert len(prior.trainable_weights) == 2 and len(prior.non_trainable_weights) == 1
    # Initial scale N(0, 1) / sqrt(k * z_dim).
    assert abs(np.std(np.array(prior.loc)) - 1 / np.sqrt(5000)) < 0.002


@pytest.mark.parametrize("shape", [(11, 3), (4, 5, 3), (3,)])
def test_matmul_log_prob_equals_parent_class(shape):
    dist = _prior()()
    z = tf.random.stateless_normal(shape, seed=[1, 2]) * 3.0
    parent = tfd.MixtureSameFamily(dist.mixture_distribution, dist.components_distribution)
    np.testing.assert_allclose(dist.log_prob(z), parent.log_prob(z), rtol=1e-5, atol=1e-4)
    assert dist.log_prob(z).shape == shape[:-1]


def test_matmul_log_prob_matches_numpy_brute_force():
    prior = _prior()
    dist = prior()
    z = np.random.default_rng(3).normal(size=(6, 3)).astype(np.float64)
    expected = np_mixture_log_prob(prior, z)
    np.testing.assert_allclose(dist.log_prob(z.astype(np.float32)), expected, rtol=1e-5)


def test_prior_receives_nonzero_gradients_through_the_bound():
    keras.utils.set_random_seed(0)
    model = GMVAE(z_dim=3, hidden=(16,), k=5, learn_mixture_weights=True)
    x = (np.random.default_rng(0).random((8, 784)) < 0.3).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.compute_terms(x)["loss"])
    prior_vars = model.prior_layer.trainable_variables
    grads = tape.gradient(loss, prior_vars)
    assert len(prior_vars) == 3
    for var, grad in zip(prior_vars, grads, strict=True):
        assert grad is not None and float(tf.norm(grad)) > 0, var.name
    # And model.fit moves them.
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    before = np.array(model.prior_layer.loc)
    model.fit(x, batch_size=8, epochs=2, verbose=0)
    assert not np.allclose(before, np.array(model.prior_layer.loc))


def test_monte_carlo_kl_is_unbiased():
    """The mean of the one-sample estimate log q(z) - log p(z) over many z ~ q equals KL(q || p)
    computed by brute-force quadrature on a 2-D grid."""
    keras.utils.set_random_seed(0)
    model = GMVAE(z_dim=2, hidden=(4,), k=3)
    model.prior_layer.loc.assign([[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]])
    model.prior_layer.pre_variance.assign([[0.0, -1.0], [0.5, 0.0], [-0.5, 0.5]])
    q = tfd.MultivariateNormalDiag(loc=[[0.3, -0.2]], scale_diag=[[0.6, 0.9]])
    z = q.sample(400_000, seed=[5, 6])
    estimate = float(tf.reduce_mean(model.kl(q, z)))
    # Quadrature: KL = sum over the grid of q(z) (log q(z) - log p(z)) dz.
    grid = np.linspace(-7, 7, 701).astype(np.float32)
    zz = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    log_q = np.array(q.log_prob(zz[:, None, :]))[:, 0].astype(np.float64)
    log_p = np.array(model.prior().log_prob(zz)).astype(np.float64)
    exact = np.sum(np.exp(log_q) * (log_q - log_p)) * (grid[1] - grid[0]) ** 2
    assert exact > 0.3
    assert abs(estimate - exact) < 0.01, (estimate, exact)


def test_gmvae_config_roundtrip(tmp_path):
    model = GMVAE(z_dim=3, hidden=(8,), k=4, learn_mixture_weights=True)
    model.compile(keras.optimizers.Adam(), jit_compile=False)
    path = str(tmp_path / "g.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.k == 4 and loaded.learn_mixture_weights
    np.testing.assert_array_equal(np.array(loaded.prior_layer.loc), np.array(model.prior_layer.loc))
