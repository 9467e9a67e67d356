"""Evaluation of trained models over whole test sets with bounded memory."""

import numpy as np
import tensorflow as tf


def negative_iwae(model, x, m, max_rows, seed):
    """Mean over x of -IWAE-m, evaluated in chunks of at most max_rows decoder rows."""
    batch = max(1, max_rows // m)
    chunk = min(m, max_rows)
    fn = tf.function(lambda xb, s: model.iwae(xb, m, seed=s, chunk=chunk),
                     input_signature=[tf.TensorSpec([None, x.shape[-1]], tf.float32),
                                      tf.TensorSpec([2], tf.int32)])
    total = 0.0
    for i, start in enumerate(range(0, len(x), batch)):
        total += float(np.sum(fn(x[start:start + batch], tf.constant([seed, i], tf.int32))))
    return -total / len(x)
