"""Keras 3 layers whose `call` returns a `tfp.distributions.Distribution`.

`tfp.layers` is Keras-2-only, so these are our own. Every distribution is built inside `call`
from the current variable values (Keras 3 variables are not `tf.Variable`s: a distribution
built once in `__init__` would freeze them), so gradients reach every parameter.

Shapes follow TFP: batch shape is everything but the last axis of the input; the event is the
last axis (z for Gaussians, pixels for the Bernoulli).
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

_PACKAGE = "tfp_vae"


@keras.saving.register_keras_serializable(_PACKAGE)
class GaussianPosterior(keras.layers.Layer):
    """Network output h [..., 2z] -> MultivariateNormalDiag, batch [...], event [z].

    The first half of h is the mean; variance = softplus(second half) + min_variance (the floor
    keeps log q finite when the network pushes a variance to zero).
    """

    def __init__(self, min_variance=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.min_variance = float(min_variance)

    def call(self, h):
        loc, pre_variance = tf.split(h, 2, axis=-1)
        variance = tf.nn.softplus(pre_variance) + self.min_variance
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.sqrt(variance))

    def get_config(self):
        return {**super().get_config(), "min_variance": self.min_variance}


@keras.saving.register_keras_serializable(_PACKAGE)
class StandardNormalPrior(keras.layers.Layer):
    """p(z) = N(0, I): called with no input, returns MultivariateNormalDiag, event [z_dim]."""

    def __init__(self, z_dim, **kwargs):
        super().__init__(**kwargs)
        self.z_dim = int(z_dim)

    def call(self, inputs=None):
        zeros = tf.zeros([self.z_dim], self.compute_dtype)
        return tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))

    def get_config(self):
        return {**super().get_config(), "z_dim": self.z_dim}


@keras.saving.register_keras_serializable(_PACKAGE)
class BernoulliLikelihood(keras.layers.Layer):
    """Logits [..., D] -> Independent(Bernoulli(logits), 1): batch [...], event [D].

    Samples are float32 so they can be fed straight back into the encoder.
    """

    def call(self, logits):
        return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32),
                               reinterpreted_batch_ndims=1)
