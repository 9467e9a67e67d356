"""Training with model.fit: checkpoints that resume exactly, a NaN stop that keeps the last good
checkpoint, TensorBoard scalars and sample images."""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from tfp_vae import images

_WEIGHTS = "last.weights.h5"
_STATE = "state.json"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the last good checkpoint was kept."""


def _weights_finite(model):
    return all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in model.weights)


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and records where (checked every batch)."""

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state at each epoch end, atomically, unless they are bad.

    `directory/last.weights.h5` holds model + optimizer variables (Keras 3 `save_weights`
    includes the optimizer), `directory/state.json` the epoch to resume from.
    """

    def __init__(self, directory, guard=None):
        super().__init__()
        self.directory, self.guard = directory, guard

    def on_epoch_end(self, epoch, logs=None):
        if (self.guard is not None and self.guard.bad_step is not None) or not _weights_finite(self.model):
            return  # Keep the last good checkpoint.
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, "tmp." + _WEIGHTS)
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, os.path.join(self.directory, _WEIGHTS))
        state = {"epoch": epoch + 1,
                 "step": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))}
        with open(os.path.join(self.directory, _STATE + ".tmp"), "w") as f:
            json.dump(state, f)
        os.replace(os.path.join(self.directory, _STATE + ".tmp"), os.path.join(self.directory, _STATE))


def has_checkpoint(directory):
    return os.path.isfile(os.path.join(directory, _STATE))


def restore(model, directory):
    """Loads the checkpoint in `directory` into a compiled model; returns the epoch to resume at."""
    with open(os.path.join(directory, _STATE)) as f:
        state = json.load(f)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(directory, _WEIGHTS))
    return int(state["epoch"])


class SampleImages(keras.callbacks.Callback):
    """Writes a grid of model samples to TensorBoard at each epoch end."""

    def __init__(self, log_dir, n=64, seed=0):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "samples"))
        self.n, self.seed = n, seed

    def on_epoch_end(self, epoch, logs=None):
        side = int(math.sqrt(self.n))
        x = keras.ops.convert_to_numpy(self.model.sample(self.n, seed=tf.constant([self.seed, 0])))
        with self.writer.as_default():
            tf.summary.image("samples", images.grid(x, side, side)[None], step=epoch + 1)


def fit(model, train_data, steps, out_dir, steps_per_epoch=1000, validation_data=None,
        resume=False, verbose=1, extra_callbacks=()):
    """Trains `model` (compiled) for `steps` gradient steps with model.fit.

    Checkpoints go to out_dir/checkpoints, TensorBoard logs to out_dir/logs. With `resume`, a
    checkpoint there is restored first (weights, optimizer state, epoch) and training goes on to
    the same total number of steps.

    Returns:
      the keras History.

    Raises:
      NonFiniteLossError: a NaN/Inf loss; the last good checkpoint is left in place.
    """
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    initial_epoch = restore(model, ckpt_dir) if resume and has_checkpoint(ckpt_dir) else 0
    steps_per_epoch = min(steps_per_epoch, steps)
    epochs = int(math.ceil(steps / steps_per_epoch))
    guard = NaNGuard()
    log_dir = os.path.join(out_dir, "logs")
    callbacks = [guard, Checkpoint(ckpt_dir, guard),
                 keras.callbacks.TensorBoard(log_dir, write_graph=False),
                 SampleImages(log_dir), *extra_callbacks]
    history = model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        initial_epoch=initial_epoch, validation_data=validation_data,
                        callbacks=callbacks, verbose=verbose, shuffle=False)
    if guard.bad_step is not None:
        raise NonFiniteLossError(
            f"The loss became NaN/Inf at step {guard.bad_step}; training stopped. The last good "
            f"checkpoint is in {ckpt_dir} (resume with --resume after lowering --learning_rate).")
    return history
