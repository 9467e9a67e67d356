"""Brute-force NumPy (float64) references for the bounds: an MLP forward pass written out from
a model's Dense kernels and biases, Gaussian/Bernoulli log-densities from their formulas, and
log-mean-exp by direct exponentiation (or np.logaddexp.reduce where exp would overflow)."""

import keras
import numpy as np


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def np_mlp(network, x):
    """Dense layers with ELU after every layer but the last (the model's architecture)."""
    dense = [layer for layer in network.layers if isinstance(layer, keras.layers.Dense)]
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(dense):
        h = h @ np.asarray(layer.kernel, np.float64) + np.asarray(layer.bias, np.float64)
        if i < len(dense) - 1:
            h = np_elu(h)
    return h


def np_posterior(model, x, min_variance=1e-8):
    out = np_mlp(model.encoder, x)
    mean, pre = np.split(out, 2, axis=-1)
    return mean, np_softplus(pre) + min_variance


def np_gaussian_log_prob(z, mean, variance):
    return -0.5 * np.sum(np.log(2 * np.pi * variance) + (z - mean) ** 2 / variance, axis=-1)


def np_bernoulli_log_prob(x, logits):
    return np.sum(-x * np_softplus(-logits) - (1 - x) * np_softplus(logits), axis=-1)


def np_decoder_log_prob(model, z, x):
    """log p(x|z) for z [..., B, z_dim] and x [B, x_dim]."""
    return np_bernoulli_log_prob(np.asarray(x, np.float64), np_mlp(model.decoder, z))


def np_log_mean_exp(values, axis=0):
    """Direct: only for values whose exp is representable in float64."""
    return np.log(np.mean(np.exp(np.asarray(values, np.float64)), axis=axis))


def as64(t):
    return np.asarray(t, np.float64)


def np_mixture_log_prob(prior, z):
    """log sum_j w_j N(z; mu_j, diag(v_j)) of a `layers.MixturePrior` for z [..., z_dim], written
    out directly (the layer computes it in matmul form)."""
    mean = as64(prior.loc)
    variance = np_softplus(as64(prior.pre_variance)) + prior.min_variance
    logits = as64(prior.mixture_logits)
    log_w = logits - np.logaddexp.reduce(logits)
    components = np_gaussian_log_prob(np.asarray(z, np.float64)[..., None, :], mean, variance)
    return np.logaddexp.reduce(components + log_w, axis=-1)


def np_iwae(model, x, m, seed):
    """Float64 NumPy IWAE-m of each row of x for a VAE or GMVAE with the MLP networks, from its
    weights and with its own random draws (the formulas above)."""
    from tfp_vae import layers

    mean, variance = np_posterior(model, x, model.min_variance)
    z = mean + np.sqrt(variance) * np.random.default_rng(seed).standard_normal((m, *mean.shape))
    if isinstance(model.prior_layer, layers.MixturePrior):
        log_prior = np_mixture_log_prob(model.prior_layer, z)
    else:
        log_prior = np_gaussian_log_prob(z, 0.0, 1.0)
    log_weights = (
        np_decoder_log_prob(model, z, x) + log_prior - np_gaussian_log_prob(z, mean, variance)
    )
    return np.logaddexp.reduce(log_weights, axis=0) - np.log(m)
