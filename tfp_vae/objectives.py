"""The bounds, as pure functions of per-sample log-densities.

Tests check each against a brute-force NumPy computation; the models only gather the
log-densities and call these. Written in `keras.ops`: the same code on TensorFlow and JAX.
"""

import math

import keras

from tfp_vae.backend import Tensor
from tfp_vae.checks import NUM_CLASSES

ops = keras.ops


def negative_elbo(log_likelihood: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """-ELBO per example = Rec + beta * KL.

    Args:
      log_likelihood: log p(x|z) for one z ~ q(z|x), shape [B].
      kl: KL(q(z|x) || p(z)) (analytic) or its one-sample estimate log q(z|x) - log p(z), [B].
      beta: weight on KL (beta-VAE); 1 is the true bound.

    Returns:
      [B] tensor; its mean is the training loss.
    """
    return -log_likelihood + beta * kl


def monte_carlo_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """One-sample unbiased estimate of KL(q || p) at z ~ q: log q(z) - log p(z). Shapes [...]."""
    return log_q - log_p


def iwae_bound(
    log_likelihood: Tensor, log_prior: Tensor, log_posterior: Tensor, axis: int = 0
) -> Tensor:
    """Importance-weighted bound log (1/m) sum_i p(x, z_i) / q(z_i | x).

    Args:
      log_likelihood, log_prior, log_posterior: log p(x|z_i), log p(z_i), log q(z_i|x), all of
        shape [m, B] (samples along `axis`).

    Returns:
      [B] tensor. Computed with log-sum-exp, so it is finite in float32 for any m whenever the
      log-weights are; m = 1 equals the ELBO with a sampled KL.
    """
    return log_mean_exp(log_weights(log_likelihood, log_prior, log_posterior), axis=axis)


def log_weights(log_likelihood: Tensor, log_prior: Tensor, log_posterior: Tensor) -> Tensor:
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x), elementwise ([m, B] in,
    [m, B] out)."""
    return log_likelihood + log_prior - log_posterior


def log_mean_exp(values: Tensor, axis: int = 0) -> Tensor:
    """log mean exp(values) along `axis`, stably: `values` with that axis removed."""
    n = ops.cast(ops.shape(values)[axis], values.dtype)
    return ops.logsumexp(values, axis=axis) - ops.log(n)


# ----------------------------------------------------------------------------------------------
# The semi-supervised bounds (M2), as pure functions of per-class terms.


def categorical_kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(Categorical(logits) || Uniform(K)) = sum_k q_k log q_k + log K, per row of [..., K].

    Computed from log-softmax, so it stays finite (with finite gradients) when some q_k
    underflow to 0.
    """
    log_q = ops.log_softmax(logits, axis=-1)
    num_classes = ops.cast(ops.shape(logits)[-1], logits.dtype)
    return ops.sum(ops.exp(log_q) * log_q, axis=-1) + ops.log(num_classes)


def unlabelled_bound_terms(class_logits: Tensor, rec: Tensor, kl_z: Tensor) -> dict[str, Tensor]:
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
    probs = ops.softmax(class_logits, axis=-1)
    expected_rec = ops.sum(probs * rec, axis=-1)
    expected_kl_z = ops.sum(probs * kl_z, axis=-1)
    kl_y = categorical_kl_to_uniform(class_logits)
    return {
        "nelbo": expected_rec + expected_kl_z + kl_y,
        "rec": expected_rec,
        "kl_z": expected_kl_z,
        "kl_y": kl_y,
    }


def labelled_negative_elbo(rec: Tensor, kl_z: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """The labelled bound -L(x, y) = rec_y + kl_z_y - log p(y), with p(y) = 1/K: [B].

    Args:
      rec: -log p(x|y, z) at one z ~ q(z|x, y) for the observed y, [B].
      kl_z: KL(q(z|x, y) || p(z)) for the observed y, [B].
    """
    return negative_elbo(-rec, kl_z) + math.log(num_classes)


def classification_loss(class_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy -log q(y|x) of integer labels [B] under logits [B, K]: [B]."""
    return ops.sparse_categorical_crossentropy(labels, class_logits, from_logits=True)
