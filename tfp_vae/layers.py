"""Keras 3 layers whose `call` returns a `tfp.distributions.Distribution` (of the active
backend's TFP substrate, `tfd` of `tfp_vae.backend`; the maths in `keras.ops`, the same on TF
and JAX).

`tfp.layers` is Keras-2-only, so these are our own. Every distribution is built inside `call`
from the current variable values (Keras 3 variables are not `tf.Variable`s: a distribution
built once in `__init__` would freeze them), so gradients reach every parameter.

Shapes follow TFP: batch shape is everything but the last axis of the input; the event is the
last axis (z for Gaussians, pixels (or features) for the likelihoods).

Every layer here computes in float32 whatever the global dtype policy: under mixed precision
(`keras.mixed_precision.set_global_policy("mixed_bfloat16")`) the networks may compute in bfloat16
or float16, but their outputs are cast to float32 on the way in, so every distribution
parameter, log-probability, log-sum-exp and loss is float32.
"""

import math

import keras

from tfp_vae import likelihoods
from tfp_vae.backend import tfd

ops = keras.ops

_PACKAGE = "tfp_vae"


class Float32Layer(keras.layers.Layer):
    """A layer whose dtype policy is always float32 (inputs cast to float32, float32 variables
    used as they are), so a mixed-precision global policy stops at it."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})


@keras.saving.register_keras_serializable(_PACKAGE)
class GaussianPosterior(Float32Layer):
    """Network output h [..., 2z] -> MultivariateNormalDiag, batch [...], event [z].

    The first half of h is the mean; variance = softplus(second half) + min_variance (the floor
    keeps log q finite when the network pushes a variance to zero): `likelihoods.diagonal_gaussian`,
    also the form of the "heteroscedastic_gaussian" likelihood.
    """

    def __init__(self, min_variance=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.min_variance = float(min_variance)

    def call(self, h):
        return likelihoods.diagonal_gaussian(h, self.min_variance)

    def get_config(self):
        return {**super().get_config(), "min_variance": self.min_variance}


@keras.saving.register_keras_serializable(_PACKAGE)
class StandardNormalPrior(Float32Layer):
    """p(z) = N(0, I): called with no input, returns MultivariateNormalDiag, event [z_dim]."""

    def __init__(self, z_dim, **kwargs):
        super().__init__(**kwargs)
        self.z_dim = int(z_dim)

    def call(self, inputs=None):
        zeros = ops.zeros([self.z_dim], self.compute_dtype)
        return tfd.MultivariateNormalDiag(loc=zeros, scale_diag=ops.ones_like(zeros))

    def get_config(self):
        return {**super().get_config(), "z_dim": self.z_dim}


# The likelihoods live in `tfp_vae.likelihoods` (with what depends on them); their names here
# are kept for code written against earlier releases.
LogitBernoulli = likelihoods.LogitBernoulli
BernoulliLikelihood = likelihoods.BernoulliLikelihood
ContinuousBernoulliLikelihood = likelihoods.ContinuousBernoulliLikelihood
GaussianLikelihood = likelihoods.GaussianLikelihood
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")


def check_likelihood(name):
    """`name` if it is a registered likelihood family (`tfp_vae.likelihoods.names`), else a
    ValueError listing them."""
    return likelihoods.check_name(name)


def likelihood_layer(name, x_dim):
    """The likelihood layer of family `name` over x_dim dimensions (`tfp_vae.likelihoods.get`)."""
    return likelihoods.get(name, x_dim)


class DiagonalGaussianMixture(tfd.MixtureSameFamily):
    """`tfd.MixtureSameFamily` of `MultivariateNormalDiag` components with a fast `log_prob`.

    The parent evaluates every component at every point by broadcasting an [N, k, z] tensor.
    For diagonal Gaussians the quadratic form expands as
      sum_d (z_d - mu_jd)^2 / v_jd = [z^2, z] . [1/v_j, -2 mu_j/v_j] + sum_d mu_jd^2 / v_jd,
    so all N x k component log-densities come from one [N, 2z] x [2z, k] matmul and nothing of
    size N*k*z is materialised. Otherwise it is the parent class (sampling, mean, ...).
    The mixture must have batch shape [] (components batch [k], event [z]).
    """

    def _log_prob(self, x):
        components = self.components_distribution
        loc = components.loc  # [k, z]
        variance = ops.square(components.scale.diag)  # [k, z]
        precision = ops.reciprocal(variance)
        z_dim = ops.cast(ops.shape(loc)[-1], x.dtype)
        constant = ops.sum(
            ops.square(loc) * precision + ops.log(variance), axis=-1
        ) + z_dim * ops.log(2.0 * ops.convert_to_tensor(math.pi, x.dtype))  # [k]
        coefficients = ops.concatenate([precision, -2.0 * loc * precision], axis=-1)  # [k, 2z]
        flat = ops.reshape(x, [-1, ops.shape(x)[-1]])
        quadratic = ops.matmul(
            ops.concatenate([ops.square(flat), flat], axis=-1), ops.transpose(coefficients)
        )  # [N, k]
        log_components = -0.5 * (quadratic + constant)
        log_mix = ops.log_softmax(self.mixture_distribution.logits_parameter(), axis=-1)
        log_prob = ops.logsumexp(log_components + log_mix, axis=-1)
        return ops.reshape(log_prob, ops.shape(x)[:-1])


@keras.saving.register_keras_serializable(_PACKAGE)
class MixturePrior(Float32Layer):
    """p(z) = sum_j w_j N(z; mu_j, diag(v_j)), a learned mixture of k Gaussians.

    Called with no input, returns a `DiagonalGaussianMixture` (a `tfd.MixtureSameFamily` of
    `MultivariateNormalDiag`), batch [], event [z_dim], built from the current variables so
    gradients reach the means, variances and (if trainable) weights.

    Means and pre-softplus variances start as N(0, 1) / sqrt(k * z_dim) (the recipe); variance =
    softplus(pre) + min_variance; weights start uniform and are fixed unless
    `learn_weights` is set.
    """

    def __init__(self, z_dim, k, learn_weights=False, min_variance=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.z_dim, self.k = int(z_dim), int(k)
        self.learn_weights, self.min_variance = bool(learn_weights), float(min_variance)
        init = keras.initializers.RandomNormal(stddev=1.0 / (self.k * self.z_dim) ** 0.5)
        self.loc = self.add_weight(shape=(self.k, self.z_dim), initializer=init, name="loc")
        self.pre_variance = self.add_weight(
            shape=(self.k, self.z_dim), initializer=init, name="pre_variance"
        )
        self.mixture_logits = self.add_weight(
            shape=(self.k,),
            initializer="zeros",
            trainable=self.learn_weights,
            name="mixture_logits",
        )

    def call(self, inputs=None):
        variance = ops.softplus(self.pre_variance) + self.min_variance
        return DiagonalGaussianMixture(
            mixture_distribution=tfd.Categorical(logits=ops.convert_to_tensor(self.mixture_logits)),
            components_distribution=tfd.MultivariateNormalDiag(
                loc=ops.convert_to_tensor(self.loc), scale_diag=ops.sqrt(variance)
            ),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "z_dim": self.z_dim,
            "k": self.k,
            "learn_weights": self.learn_weights,
            "min_variance": self.min_variance,
        }
