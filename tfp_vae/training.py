"""Training with model.fit: checkpoints that resume exactly, a NaN stop that keeps the last good
checkpoint, TensorBoard scalars and sample images; tf.distribute strategies and mixed precision.

Distributed training (see `make_strategy`): build *and compile* the model inside
`strategy.scope()`, then `fit` as usual. The models' train/test steps divide each replica's sum
of per-example losses by the global batch size (the optimizer sums the replicas' gradients), so a
replicated step is the single-device step on the whole batch; see
`tfp_vae.models.base.LatentVariableModel.train_step`.
"""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from tfp_vae import images

_WEIGHTS = "last.weights.h5"
_STATE = "state.json"

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name="default"):
    """The tf.distribute strategy called `name`:

      default       no distribution: one device, the plain Keras path (`tf.distribute`'s default
                    strategy; nothing is replicated and no collective runs).
      mirrored      `tf.distribute.MirroredStrategy` over every local GPU (the CPU when there is
                    none): synchronous data parallelism on one host, each replica taking a slice
                    of every batch.
      multi_worker  `tf.distribute.MultiWorkerMirroredStrategy`, the same across hosts: the
                    cluster and this process's place in it come from the `TF_CONFIG` environment
                    variable (e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]},
                    "task": {"type": "worker", "index": 0}}). Every worker runs the same program;
                    create the strategy before any other TensorFlow work.

    Raises:
      ValueError: an unknown name, or multi_worker without a usable TF_CONFIG.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(the cluster's worker addresses and this worker's task), e.g. "
                             'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}}\'.')
        try:
            parsed = json.loads(config)
            parsed["cluster"], parsed["task"]["type"], parsed["task"]["index"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"TF_CONFIG must be JSON with 'cluster' and 'task' (with 'type' and "
                             f"'index'); got {config!r} ({e!r}).") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}; got {name!r}.")


def task_of(strategy):
    """(task_type, task_id) of this process in a multi-worker cluster, or (None, None)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run's outputs: always, except in a multi-worker cluster,
    where the chief is the "chief" task or, without one, worker 0."""
    task_type, task_id = task_of(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_out_dir(out_dir, strategy):
    """Where this process writes: `out_dir` on the chief, `out_dir/<task_type>-<task_id>` on the
    other workers of a multi-worker cluster (every worker saves, since saving and evaluating
    run collectives that need all of them, but only the chief's outputs are the run's)."""
    if is_chief(strategy):
        return out_dir
    task_type, task_id = task_of(strategy)
    return os.path.join(out_dir, f"{task_type}-{task_id}")


def mixed_precision_policy():
    """The Keras mixed-precision policy for this machine: "mixed_bfloat16" on CPUs and on GPUs
    with bfloat16 tensor cores (compute capability 8.0 and up), "mixed_float16" on older GPUs
    (Keras' compile then wraps the optimizer in a LossScaleOptimizer, which the models' train
    steps honour)."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability is not None and tuple(capability) < (8, 0):
            return "mixed_float16"
    return "mixed_bfloat16"


def _shard_by_data(dataset):
    """In-memory datasets have no files to shard across workers: each worker runs the whole
    (seeded, so identical) pipeline and keeps its part of every global batch."""
    if dataset is None or not isinstance(dataset, tf.data.Dataset):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


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

    A model built and compiled in a tf.distribute strategy's scope trains replicated: each batch
    of `train_data` is the global batch, split across the replicas. Under
    MultiWorkerMirroredStrategy every worker calls `fit` with the same (seeded) datasets and
    keeps its share of each batch (tf.data DATA sharding), and should have its own `out_dir`
    (see `worker_out_dir`).

    Returns:
      the keras History.

    Raises:
      NonFiniteLossError: a NaN/Inf loss; the last good checkpoint is left in place.
    """
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        train_data, validation_data = _shard_by_data(train_data), _shard_by_data(validation_data)
    with model.distribute_strategy.scope():  # The optimizer's variables, when resuming.
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
