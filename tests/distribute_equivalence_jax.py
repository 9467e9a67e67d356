"""Run by tests/test_distribute_jax.py in a subprocess (JAX's CPU devices are counted once, when
it starts, from XLA_FLAGS=--xla_force_host_platform_device_count=2): three SGD steps under
`training.DataParallel` (keras.distribution.DataParallel over the two CPU devices) against the
same steps on one device, from the same weights on the same batches (tfp_vae.data_numpy's
streams). Prints one JSON line.

No noise is patched out (unlike TF's tests/distribute_equivalence.py): JAX's threefry draws are
partitionable (`jax_threefry_partitionable`, on by default), so a sharded draw is the unsharded
one, and the steps' noise is keyed by (seed, step) alone.
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"

import jax
import keras
import numpy as np

from tfp_vae import data_numpy, training
from tfp_vae.models import SSVAE, VAE

STEPS, LEARNING_RATE = 3, 0.05


def _images(seed, n):
    return np.random.default_rng(seed).integers(0, 256, (n, 784)).astype(np.uint8)


def run(make_model, stream, weights=None):
    """Weights before and after STEPS SGD steps on `stream`, the logs, and the step's shardings
    of the first batch's leaves (what the devices got)."""
    keras.utils.set_random_seed(7)
    model = make_model()
    model.compile(keras.optimizers.SGD(LEARNING_RATE))
    if weights is not None:
        model.set_weights(weights)
    before = [np.array(w) for w in model.get_weights()]
    seen = []
    from tfp_vae.models import steps_jax

    original = steps_jax.check_train_batch

    def spy(m, data):
        seen.append([str(getattr(leaf, "sharding", None)) for leaf in keras.tree.flatten(data)])
        return original(m, data)

    steps_jax.check_train_batch = spy
    try:
        history = model.fit(stream, epochs=1, steps_per_epoch=STEPS, verbose=0)
    finally:
        steps_jax.check_train_batch = original
    after = [np.array(w) for w in model.get_weights()]
    return before, after, {k: float(v[-1]) for k, v in history.history.items()}, seen[0], model


class _Once(keras.utils.PyDataset):
    """One batch, as the stream gives it."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.batch


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.array(u) - np.array(v)))) for u, v in zip(a, b, strict=True))


def _saved_and_restored(model, make_model):
    """Under the distribution: a checkpoint (`training.save_checkpoint`) restored into a fresh
    model and a `.keras` file loaded back give the trained weights, optimizer step and all."""
    with tempfile.TemporaryDirectory() as tmp:
        training.save_checkpoint(model, os.path.join(tmp, "checkpoints"))
        fresh = make_model()
        fresh.compile(keras.optimizers.SGD(LEARNING_RATE))
        step = training.restore(fresh, os.path.join(tmp, "checkpoints"))["step"]
        model.save(os.path.join(tmp, "model.keras"))
        loaded = keras.models.load_model(os.path.join(tmp, "model.keras"))
    weights = model.get_weights()
    return {
        "step": step,
        "restored_diff": _max_diff(weights, fresh.get_weights()),
        "optimizer_diff": _max_diff(model.optimizer.variables, fresh.optimizer.variables),
        "loaded_diff": _max_diff(weights, loaded.get_weights()),
        "replicated": all(
            len(v.value.sharding.device_set) == 2 for v in fresh.weights + loaded.weights
        ),
    }


def compare(make_model, make_stream, other_stream=None):
    before, single, logs, _, _ = run(make_model, make_stream())
    strategy = training.make_strategy("mirrored")
    try:
        before_d, parallel, logs_d, layout, model = run(make_model, make_stream(), before)
        # A bad batch on the devices: the host check's one line, the weights untouched.
        bad = [np.array(w) for w in model.get_weights()]
        x = np.zeros((10, 784), np.float32)
        x[0, 0] = 2.0
        data = x if isinstance(model, VAE) else (x, (x[:4], np.zeros(4, np.int32)))
        try:
            model.fit(_Once(data), epochs=1, verbose=0)
            message = None
        except ValueError as e:
            message = str(e)
        untouched = _max_diff(bad, [np.array(w) for w in model.get_weights()]) == 0.0
        saved = _saved_and_restored(model, make_model) if isinstance(model, VAE) else None
    finally:
        keras.distribution.set_distribution(None)
    scale = _max_diff(single, before)
    out = {
        "replicas": strategy.num_replicas_in_sync,
        "same_init": _max_diff(before, before_d),
        "update_scale": scale,
        # How far the two-device update is from the one-device one, relative to its size.
        "max_rel_diff": _max_diff(single, parallel) / scale,
        "logs": logs,
        "logs_parallel": logs_d,
        "layout": layout,
        "bad_batch_message": message,
        "bad_batch_untouched": untouched,
        "saved_and_restored": saved,
    }
    if other_stream is not None:
        # What the comparison must be able to see: one pixel of every image changed (a shard
        # lost or doubled would change the batch far more).
        _, other, _, _, _ = run(make_model, other_stream, before)
        out["other_batch_rel_diff"] = _max_diff(single, other) / scale
    return out


def main():
    assert len(jax.devices()) == 2, jax.devices()
    x = _images(0, 200)
    changed = x.copy()
    changed[:, 400] = 255 - changed[:, 400]  # One pixel of every image: another batch.

    def vae_stream(images=x):
        return data_numpy.train_dataset(images, 10, seed=3)

    def ssvae_stream(labelled=5):
        # 5 labelled examples: a size the two devices do not share (replicated on both).
        return data_numpy.LabelledStream(
            data_numpy.train_dataset(x, 10, seed=3),
            x[:labelled],
            np.arange(labelled, dtype=np.int32),
            "dynamic",
        )

    results = {
        "vae": compare(lambda: VAE(z_dim=3, hidden=(16,)), vae_stream, vae_stream(changed)),
        "ssvae": compare(
            lambda: SSVAE(z_dim=3, hidden=(16,), classifier_hidden=(8,), class_weight=10.0),
            ssvae_stream,
        ),
    }
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
