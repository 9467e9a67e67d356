"""Multilayer perceptrons used by every model."""

import math
from typing import Sequence

import keras
import tensorflow as tf


def _dense(units, fan_in, activation, init, name):
    if init == "torch":
        # PyTorch's nn.Linear default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for the
        # kernel and the same range for the bias. The reference numbers were measured with it.
        bound = 1.0 / math.sqrt(fan_in)
        kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        bias = keras.initializers.RandomUniform(-bound, bound)
    elif init == "glorot":
        kernel, bias = "glorot_uniform", "zeros"
    else:
        raise ValueError(f"init must be 'torch' or 'glorot'; got {init!r}.")
    return keras.layers.Dense(units, activation=activation, kernel_initializer=kernel,
                              bias_initializer=bias, name=name)


def mlp(input_dim: int, hidden: Sequence[int], output_dim: int, activation: str = "elu",
        init: str = "torch", name: str = "mlp") -> keras.Sequential:
    """[B, input_dim] -> [B, output_dim]; `activation` after each hidden layer, linear output."""
    layers = [keras.Input(shape=(input_dim,))]
    fan_in = input_dim
    for i, units in enumerate(hidden):
        layers.append(_dense(units, fan_in, activation, init, f"{name}_hidden{i}"))
        fan_in = units
    layers.append(_dense(output_dim, fan_in, None, init, f"{name}_out"))
    return keras.Sequential(layers, name=name)


def apply(network, inputs):
    """Applies a [B, d_in] -> [B, d_out] network to inputs of any rank >= 2: [..., d_in] ->
    [..., d_out] (for instance [m, B, z] importance samples), by folding the leading axes."""
    inputs = tf.convert_to_tensor(inputs)
    if inputs.shape.rank == 2:
        return network(inputs)
    flat = network(tf.reshape(inputs, [-1, inputs.shape[-1]]))
    return tf.reshape(flat, tf.concat([tf.shape(inputs)[:-1], tf.shape(flat)[-1:]], axis=0))
