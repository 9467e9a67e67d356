"""The bounds, as pure functions of per-sample log-densities.

Tests check each against a brute-force NumPy computation; the models only gather the
log-densities and call these.
"""

import tensorflow as tf


def negative_elbo(log_likelihood, kl, beta=1.0):
    """-ELBO per example = Rec + beta * KL.

    Args:
      log_likelihood: log p(x|z) for one z ~ q(z|x), shape [B].
      kl: KL(q(z|x) || p(z)) (analytic) or its one-sample estimate log q(z|x) - log p(z), [B].
      beta: weight on KL (beta-VAE); 1 is the true bound.

    Returns:
      [B] tensor; its mean is the training loss.
    """
    return -log_likelihood + beta * kl


def monte_carlo_kl(log_q, log_p):
    """One-sample unbiased estimate of KL(q || p) at z ~ q: log q(z) - log p(z). Shapes [...]."""
    return log_q - log_p


def iwae_bound(log_likelihood, log_prior, log_posterior, axis=0):
    """Importance-weighted bound log (1/m) sum_i p(x, z_i) / q(z_i | x).

    Args:
      log_likelihood, log_prior, log_posterior: log p(x|z_i), log p(z_i), log q(z_i|x), all of
        shape [m, B] (samples along `axis`).

    Returns:
      [B] tensor. Computed with log-sum-exp, so it is finite in float32 for any m whenever the
      log-weights are; m = 1 equals the ELBO with a sampled KL.
    """
    return log_mean_exp(log_weights(log_likelihood, log_prior, log_posterior), axis=axis)


def log_weights(log_likelihood, log_prior, log_posterior):
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x), elementwise."""
    return log_likelihood + log_prior - log_posterior


def log_mean_exp(values, axis=0):
    """log mean exp(values) along `axis`, stably."""
    n = tf.cast(tf.shape(values)[axis], values.dtype)
    return tf.reduce_logsumexp(values, axis=axis) - tf.math.log(n)

