"""Run by tests/test_distribute.py in a subprocess (two logical CPUs can only be configured before
TensorFlow starts, once per process): one SGD step under MirroredStrategy over two logical CPUs
against one step on one device, same global batch, same initial weights. Prints one JSON line.

Posterior sampling draws different noise on each replica (and for a different batch layout), so
the posterior's `sample` is patched to a fixed reparameterised draw z = loc + scale * eps with
eps = sin(3 loc + 1) (a per-example function of the posterior, no gradient through eps): the
step is then deterministic and the gradients still flow through the sampled z into the mean,
the scale, the decoder and (for the SSVAE) every enumerated class.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from tfp_vae.models import GMVAE, SSVAE, VAE  # noqa: E402

tfd = tfp.distributions
LEARNING_RATE = 0.05


def _fixed_sample(self, sample_shape=(), seed=None, name="sample", **kwargs):
    loc = tf.convert_to_tensor(self.loc)
    eps = tf.stop_gradient(tf.sin(3.0 * loc + 1.0))
    z = loc + self.stddev() * eps
    shape = tf.concat([tf.reshape(tf.cast(sample_shape, tf.int32), [-1]), tf.shape(z)], 0)
    return tf.broadcast_to(z, shape)


tfd.MultivariateNormalDiag.sample = _fixed_sample


def _binary(rng, n):
    return (rng.uniform(size=(n, 784)) < 0.3).astype(np.float32)


def one_step(make_model, element, strategy):
    """Weights before and after one SGD step on `element` (repeated), and the step's logs."""
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = make_model()
        model.compile(keras.optimizers.SGD(LEARNING_RATE), jit_compile=False)
    before = [np.array(w) for w in model.get_weights()]
    history = model.fit(
        tf.data.Dataset.from_tensors(element).repeat(), epochs=1, steps_per_epoch=1, verbose=0
    )
    after = [np.array(w) for w in model.get_weights()]
    return before, after, {k: float(v[-1]) for k, v in history.history.items()}


def _max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True))


def compare(make_model, element, mirrored, smaller_element=None):
    """The single-device and the replicated step from the same weights on the same batch."""
    before, single, logs = one_step(make_model, element, tf.distribute.get_strategy())
    before_m, replicated, logs_m = one_step(make_model, element, mirrored)
    scale = max(float(np.max(np.abs(a - b))) for a, b in zip(single, before, strict=True))
    out = {
        "same_init": _max_diff(before, before_m),
        "update_scale": scale,
        # How far the replicated update is from the single-device one, relative to its size.
        "max_rel_diff": _max_diff(single, replicated) / scale,
        "logs": logs,
        "logs_mirrored": logs_m,
    }
    if smaller_element is not None:
        # The same for one example fewer in the batch: what the comparison must be able to see
        # (weighting the replicas' examples 1/98 and 1/96 instead of 1/97 is a change of this
        # size).
        _, other_batch, _ = one_step(make_model, smaller_element, tf.distribute.get_strategy())
        out["other_batch_rel_diff"] = _max_diff(single, other_batch) / scale
    return out


def main():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    x = _binary(rng, 97)  # 97 = 49 + 48 over the two replicas: an uneven split.
    x_l, y_l = _binary(rng, 25), (np.arange(25) % 10).astype(np.int32)  # 13 + 12.
    split = [
        t.shape[0]
        for t in mirrored.experimental_local_results(
            next(
                iter(
                    mirrored.experimental_distribute_dataset(
                        tf.data.Dataset.from_tensors((x, (x_l, y_l))).repeat()
                    )
                )
            )[1][0]
        )
    ]
    small = dict(hidden=(32, 32), z_dim=4)
    results = {"labelled_split": split}
    results["vae"] = compare(lambda: VAE(**small), x, mirrored, x[:-1])
    results["vae_iwae"] = compare(lambda: VAE(objective="iwae", iw=3, **small), x, mirrored)
    results["gmvae"] = compare(lambda: GMVAE(k=3, **small), x, mirrored)
    # Clipping bounds the norm of the whole batch's gradient, not of each replica's share.
    results["vae_clipped"] = compare(lambda: VAE(clip_norm=0.5, **small), x, mirrored)
    results["ssvae_clipped"] = compare(
        lambda: SSVAE(
            z_dim=4, hidden=(32,), classifier_hidden=(32,), class_weight=10.0, clip_norm=0.5
        ),
        (x, (x_l, y_l)),
        mirrored,
    )
    results["ssvae"] = compare(
        lambda: SSVAE(z_dim=4, hidden=(32,), classifier_hidden=(32,), class_weight=10.0),
        (x, (x_l, y_l)),
        mirrored,
        (x[:-1], (x_l, y_l)),
    )
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
