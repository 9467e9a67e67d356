"""The bounds, as pure functions of per-sample log-densities.

Tests check each against a brute-force NumPy computation; the models only gather the
log-densities and call these.
"""

import math

import tensorflow as tf

from tfp_vae.checks import NUM_CLASSES


def negative_elbo(log_likelihood: tf.Tensor, kl: tf.Tensor, beta: float = 1.0) -> tf.Tensor:
    """-ELBO per example = Rec + beta * KL.

    Args:
      log_likelihood: log p(x|z) for one z ~ q(z|x), shape [B].
      kl: KL(q(z|x) || p(z)) (analytic) or its one-sample estimate log q(z|x) - log p(z), [B].
      beta: weight on KL (beta-VAE); 1 is the true bound.

    Returns:
      [B] tensor; its mean is the training loss.
    """
    return -log_likelihood + beta * kl


def monte_carlo_kl(log_q: tf.Tensor, log_p: tf.Tensor) -> tf.Tensor:
    """One-sample unbiased estimate of KL(q || p) at z ~ q: log q(z) - log p(z). Shapes [...]."""
    return log_q - log_p


def iwae_bound(
    log_likelihood: tf.Tensor, log_prior: tf.Tensor, log_posterior: tf.Tensor, axis: int = 0
) -> tf.Tensor:
    """Importance-weighted bound log (1/m) sum_i p(x, z_i) / q(z_i | x).

    Args:
      log_likelihood, log_prior, log_posterior: log p(x|z_i), log p(z_i), log q(z_i|x), all of
        shape [m, B] (samples along `axis`).

    Returns:
      [B] tensor. Computed with log-sum-exp, so it is finite in float32 for any m whenever the
      log-weights are; m = 1 equals the ELBO with a sampled KL.
    """
    return log_mean_exp(log_weights(log_likelihood, log_prior, log_posterior), axis=axis)


def log_weights(
    log_likelihood: tf.Tensor, log_prior: tf.Tensor, log_posterior: tf.Tensor
) -> tf.Tensor:
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x), elementwise ([m, B] in,
    [m, B] out)."""
    return log_likelihood + log_prior - log_posterior


def log_mean_exp(values: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """log mean exp(values) along `axis`, stably: `values` with that axis removed."""
    n = tf.cast(tf.shape(values)[axis], values.dtype)
    return tf.reduce_logsumexp(values, axis=axis) - tf.math.log(n)


# ----------------------------------------------------------------------------------------------
# The semi-supervised bounds (M2), as pure functions of per-class terms.


def categorical_kl_to_uniform(logits: tf.Tensor) -> tf.Tensor:
    """KL(Categorical(logits) || Uniform(K)) = sum_k q_k log q_k + log K, per row of [..., K].

    Computed from log-softmax, so it stays finite (with finite gradients) when some q_k
    underflow to 0.
    """
    log_q = tf.nn.log_softmax(logits, axis=-1)
    num_classes = tf.cast(tf.shape(logits)[-1], logits.dtype)
    return tf.reduce_sum(tf.exp(log_q) * log_q, axis=-1) + tf.math.log(num_classes)


def unlabelled_bound_terms(
    class_logits: tf.Tensor, rec: tf.Tensor, kl_z: tf.Tensor
) -> dict[str, tf.Tensor]:
    """The unlabelled bound -U(x) from the per-class terms of every label.

    Args:
      class_logits: logits of q(y|x), [B, K].
      rec: -log p(x|y=k, z_k) for one z_k ~ q(z|x, k), [B, K].
      kl_z: KL(q(z|x, k) || p(z)) (or its one-sample estimate), [B, K].

    Returns:
      dict of [B] tensors: `nelbo` = sum_k q(k|x) (rec_k + kl_z_k) + KL(q(y|x) || p(y)), and its
      parts `rec` = sum_k q(k|x) rec_k, `kl_z` = sum_k q(k|x) kl_z_k and `kl_y` =
      KL(q(y|x) || p(y)) with p(y) uniform; nelbo = rec + kl_z + kl_y.
    """
    probs = tf.nn.softmax(class_logits, axis=-1)
    expected_rec = tf.reduce_sum(probs * rec, axis=-1)
    expected_kl_z = tf.reduce_sum(probs * kl_z, axis=-1)
    kl_y = categorical_kl_to_uniform(class_logits)
    return {
        "nelbo": expected_rec + expected_kl_z + kl_y,
        "rec": expected_rec,
        "kl_z": expected_kl_z,
        "kl_y": kl_y,
    }


def labelled_negative_elbo(
    rec: tf.Tensor, kl_z: tf.Tensor, num_classes: int = NUM_CLASSES
) -> tf.Tensor:
    """The labelled bound -L(x, y) = rec_y + kl_z_y - log p(y), with p(y) = 1/K: [B].

    Args:
      rec: -log p(x|y, z) at one z ~ q(z|x, y) for the observed y, [B].
      kl_z: KL(q(z|x, y) || p(z)) for the observed y, [B].
    """
    return negative_elbo(-rec, kl_z) + math.log(num_classes)


def classification_loss(class_logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Cross-entropy -log q(y|x) of integer labels [B] under logits [B, K]: [B]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=class_logits)
