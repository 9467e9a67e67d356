"""Training with model.fit: checkpoints that resume exactly, a NaN stop that keeps the last good
checkpoint, TensorBoard scalars and sample images; tf.distribute strategies and mixed precision.

On Keras' JAX backend the same `fit` trains (the checkpoints and the NaN stop are Keras'; the
input pipeline is `tfp_vae.data_numpy`'s); TensorBoard needs TensorFlow's tf.summary, so without
TensorFlow installed no logs are written (fit says so in one line). Several devices there are
Keras' `keras.distribution.DataParallel` (`make_strategy("mirrored")` gives `DataParallel`);
several hosts (multi_worker) are refused.

Distributed training (see `make_strategy`): build *and compile* the model inside
`strategy.scope()`, then `fit` as usual. The models' train/test steps divide each replica's sum
of per-example losses by the global batch size (the optimizer sums the replicas' gradients), so a
replicated step is the single-device step on the whole batch; see
`tfp_vae.models.core.Model.train_step`.
"""

import contextlib
import importlib.util
import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np

from tfp_vae import files, images, rundir

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

    On JAX the same names give stand-ins with the strategy's `num_replicas_in_sync` and
    `scope()`: "default" one device (`OneDevice`), "mirrored" every local device through
    `keras.distribution.DataParallel` (`DataParallel`, which sets it for the process: create it
    before any model); "multi_worker" is refused (several hosts there are `jax.distributed`'s).

    Raises:
      ValueError: an unknown name, multi_worker without a usable TF_CONFIG, or multi_worker on
        JAX (one line naming the alternative).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {name!r}.")
    if keras.config.backend() != "tensorflow":
        if name == "default":
            return OneDevice()
        if name == "mirrored":
            return DataParallel()
        raise ValueError(
            f"--strategy={name} is tf.distribute's MultiWorkerMirroredStrategy, and Keras runs "
            f"on {keras.config.backend()}: several hosts there take jax.distributed "
            "(keras.distribution.initialize) with keras.distribution.DataParallel, which "
            "bin/train does not run; use --strategy=mirrored for this host's devices, or "
            "--backend=tensorflow."
        )
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable "
                "(the cluster's worker addresses and this worker's task), e.g. "
                'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}\'.'
            )
        try:
            parsed = json.loads(config)
            parsed["cluster"], parsed["task"]["type"], parsed["task"]["index"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"TF_CONFIG must be JSON with 'cluster' and 'task' (with 'type' and "
                f"'index'); got {config!r} ({e!r})."
            ) from None
        return tf.distribute.MultiWorkerMirroredStrategy()


class OneDevice:
    """The default strategy's stand-in off TensorFlow: one replica, nothing to enter."""

    num_replicas_in_sync = 1
    cluster_resolver = None

    def scope(self):
        return contextlib.nullcontext()

    def __str__(self):
        return "one device"


class _EvenBatches(keras.distribution.DataParallel):
    """Keras' DataParallel, laying out an array whose first dimension the devices do not divide
    (a labelled set of 25 over 2 devices) whole on every device instead of failing: JAX shards
    only in equal parts. Keras lays out every batch of an iteration as its first."""

    def get_data_layout(self, data_shape):
        devices = self.device_mesh.devices.size
        if data_shape and data_shape[0] is not None and data_shape[0] % devices == 0:
            return super().get_data_layout(data_shape)
        return keras.distribution.TensorLayout([None] * len(data_shape), self.device_mesh)


class DataParallel:
    """`--strategy=mirrored` on JAX: synchronous data parallelism over every local device (the
    GPUs, else the CPU's devices), MirroredStrategy's meaning, through Keras' own
    `keras.distribution.DataParallel`, which this sets for the whole process
    (`keras.distribution.set_distribution`): every variable made from then on is replicated on
    the devices, and `fit`/`evaluate` shard each batch [B, ...] in B / devices rows per device.
    The compiled step is the one-device step on the global batch (jax.jit partitions it; the
    loss is the mean over the whole batch), so an update equals the one-device update up to the
    order of the sums.

    The global batch must divide evenly over the devices (`check_global_batch`); an array of
    another size in a batch (the SSVAE's labelled set when the devices do not divide it) goes
    whole to every device. Create it before any model, as a tf.distribute strategy.
    """

    cluster_resolver = None

    def __init__(self, devices=None):
        """`devices`: Keras device names ("cpu:0", "gpu:1", ...); default: every local one
        (`keras.distribution.list_devices()`)."""
        self.devices = list(devices or keras.distribution.list_devices())
        self.distribution = _EvenBatches(devices=self.devices)
        keras.distribution.set_distribution(self.distribution)

    @property
    def num_replicas_in_sync(self):
        return len(self.devices)

    def scope(self):
        return self.distribution.scope()

    def __str__(self):
        return f"keras.distribution.DataParallel over {', '.join(self.devices)}"


def _data_parallel_devices():
    """How many devices a `keras.distribution.DataParallel` set for the process shards batches
    over (1 without one)."""
    if keras.config.backend() != "jax":
        return 1
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.DataParallel):
        return 1
    return int(distribution.device_mesh.devices.size)


def check_global_batch(batch_size, what="the global batch"):
    """Raises ValueError (one line) when a `keras.distribution.DataParallel` is set (JAX's
    `--strategy=mirrored`) and `batch_size` does not divide evenly over its devices."""
    devices = _data_parallel_devices()
    if batch_size % devices:
        lower = batch_size - batch_size % devices
        raise ValueError(
            f"{what} of {batch_size} examples does not divide evenly over the {devices} devices "
            "of keras.distribution.DataParallel (JAX shards each batch in equal parts): use a "
            f"multiple of {devices}, e.g. {lower or devices} or {lower + devices}."
        )


def check_eval_batches(n, batch_size, what="the evaluation set"):
    """Raises ValueError (one line) when a `keras.distribution.DataParallel` is set and
    evaluating `n` examples in batches of `batch_size` cannot be laid out: Keras lays out every
    batch as the first, so a first batch the devices divide (sharded) followed by a last one they
    do not fails. (A first batch they do not divide goes whole to every device, and so do the
    rest.)"""
    devices = _data_parallel_devices()
    first, last = min(n, batch_size), n % batch_size
    if first % devices == 0 and last % devices:
        raise ValueError(
            f"{what} of {n} examples ends with a batch of {last}, which the {devices} devices of "
            "keras.distribution.DataParallel cannot share in equal parts after a first batch "
            f"of {first} that they do: use a set size that is a multiple of {devices}."
        )


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
    steps honour). On JAX, JAX's GPUs' compute capabilities decide."""
    if keras.config.backend() == "jax":
        import jax

        capabilities = [
            getattr(d, "compute_capability", None) for d in jax.devices() if d.platform == "gpu"
        ]
        capabilities = [tuple(int(p) for p in str(c).split(".")) for c in capabilities if c]
    else:
        import tensorflow as tf

        capabilities = [
            tf.config.experimental.get_device_details(gpu).get("compute_capability")
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    if any(c is not None and tuple(c) < (8, 0) for c in capabilities):
        return "mixed_float16"
    return "mixed_bfloat16"


def _shard_by_data(dataset):
    """In-memory datasets have no files to shard across workers: each worker runs the whole
    (seeded, so identical) pipeline and keeps its part of every global batch."""
    import tensorflow as tf

    if dataset is None or not isinstance(dataset, tf.data.Dataset):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the last good checkpoint was kept."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from (unreadable, or it does not fit the run)."""


def _weights_finite(model, with_optimizer=False):
    variables = list(model.weights)
    if with_optimizer and model.optimizer is not None:
        variables += [v for v in model.optimizer.variables if "float" in str(v.dtype)]
    return all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in variables)


def global_step(model):
    """The optimizer's step count (int): how many updates the model has had."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and records where (checked every batch)."""

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = global_step(self.model)
            self.model.stop_training = True


# A checkpoint is one directory, `checkpoints/step-<global step>/`, holding the weights file
# (the model's and the optimizer's variables: Keras 3 `save_weights` includes the optimizer) and
# `state.json` (the step, the weights file's SHA-256, and the run's settings when given). It is
# written under a temporary name and renamed into place, so a checkpoint either exists whole or
# not at all, whenever the process dies. The global step is the whole of the training state
# beyond the variables: the input pipelines and the models' training noise are keyed by it
# (stateless RNGs).
# The names and the listing live in `rundir` (no TensorFlow there: bin/train refuses a run
# directory's mistakes before TF starts).
_PREFIX, _STATE, _LEGACY_WEIGHTS = rundir.CHECKPOINT_PREFIX, rundir.STATE, rundir.LEGACY_WEIGHTS
_WEIGHTS = "weights.weights.h5"
KEEP = 2  # Checkpoints kept: the newest, and one to fall back on if it is damaged.
checkpoints = rundir.checkpoints
has_checkpoint = rundir.has_checkpoint


def _files_of(path):
    """(weights file, state file) of the checkpoint at `path` (a legacy one: the directory)."""
    if os.path.isfile(os.path.join(path, _LEGACY_WEIGHTS)):
        return os.path.join(path, _LEGACY_WEIGHTS), os.path.join(path, _STATE)
    return os.path.join(path, _WEIGHTS), os.path.join(path, _STATE)


def read_state(path):
    """The state.json of the checkpoint at `path` (a dict with at least "step")."""
    with open(_files_of(path)[1]) as f:
        state = json.load(f)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{_files_of(path)[1]} has no step")
    return state


def save_checkpoint(model, directory, settings=None):
    """Writes the model's and optimizer's variables and the global step as one new checkpoint
    `directory/step-<step>` (atomically, see above), then keeps only the newest `KEEP`.

    Returns the checkpoint's path.
    """
    step = global_step(model)
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"{_PREFIX}{step:09d}")
    if not os.path.isdir(final):
        staging = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
        try:
            weights, state = _files_of(staging)
            model.save_weights(weights)
            with open(state, "w") as f:
                json.dump(
                    {"step": step, "weights_sha256": files.sha256(weights), "settings": settings},
                    f,
                    indent=1,
                    sort_keys=True,
                )
            for path in (weights, state, staging):
                files.fsync(path)
            os.rename(staging, final)
            files.fsync(directory)
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging)
    _prune(directory)
    return final


def _prune(directory):
    """Removes all but the newest KEEP checkpoints, a legacy one and leftover staging dirs
    (of a process killed while writing; the run's lock says no other is writing)."""
    for _, path in checkpoints(directory)[KEEP:]:
        if path == directory:  # Legacy files live in the directory itself.
            for name in (_LEGACY_WEIGHTS, _STATE):
                os.remove(os.path.join(directory, name))
        else:
            shutil.rmtree(path)
    for name in os.listdir(directory):
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def restore(model, directory):
    """Loads the newest checkpoint in `directory` into a compiled model; returns its state
    (a dict: "step", and "settings" as saved, or None).

    Raises:
      CheckpointError: there is none, or it cannot be read or loaded into this model; the
        message names the previous checkpoint when there is one.
    """
    found = checkpoints(directory)
    if not found:
        raise CheckpointError(f"No checkpoint in {directory}.")
    (_, path), older = found[0], found[1:]
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        state = read_state(path)
        weights = _files_of(path)[0]
        if "weights_sha256" in state and files.sha256(weights) != state["weights_sha256"]:
            raise ValueError(
                f"{weights} is damaged: its SHA-256 is not the one recorded when it was written"
            )
        model.load_weights(weights)
        if not _weights_finite(model, with_optimizer=True):
            raise ValueError("it holds NaN or Inf values")
    except Exception as e:  # noqa: BLE001  h5py, Keras and JSON raise many kinds.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if older:
            advice = (
                f"the previous checkpoint, {older[0][1]} (step {older[0][0]}), is intact: "
                f"move {path} out of {directory} and resume again to continue from it."
            )
        else:
            advice = "there is no earlier checkpoint; start a new run in another directory."
        raise CheckpointError(
            f"The checkpoint {path} cannot be restored ({reason}); {advice}"
        ) from None
    state.setdefault("settings", None)
    return state


class Checkpoint(keras.callbacks.Callback):
    """Saves a checkpoint (see `save_checkpoint`) at each epoch end, unless the weights are bad
    (a NaN stop keeps the last good checkpoint)."""

    def __init__(self, directory, guard=None, settings=None):
        super().__init__()
        self.directory, self.guard, self.settings = directory, guard, settings

    def on_epoch_end(self, epoch, logs=None):
        stopped = self.guard is not None and self.guard.bad_step is not None
        if stopped or not _weights_finite(self.model):
            return
        save_checkpoint(self.model, self.directory, self.settings)


def has_tensorflow() -> bool:
    """Whether TensorFlow is installed (TensorBoard's tf.summary needs it, whatever the backend)."""
    return importlib.util.find_spec("tensorflow") is not None


def summaries():
    """TensorFlow, for tf.summary. Off its Keras backend (JAX with TensorFlow installed) it is
    kept off the GPUs, which JAX holds."""
    import tensorflow as tf

    if keras.config.backend() != "tensorflow":
        with contextlib.suppress(RuntimeError):  # Already started: its devices are set.
            tf.config.set_visible_devices([], "GPU")
    return tf


class StepScalars(keras.callbacks.Callback):
    """TensorBoard scalars on the optimizer's step axis (Keras' TensorBoard callback steps its
    epoch scalars by epoch and its batch scalars by its count of batch calls, one per
    steps_per_execution steps, which no other summary shares).

    Writes to log_dir/train the logs of a batch as batch_<name> each time the global step
    reaches a multiple of `every` (a call of steps_per_execution steps may pass several: one
    point), and at each epoch end the epoch's logs as epoch_<name> with epoch_learning_rate;
    to log_dir/validation the validation logs (val_<name>) as epoch_<name>. Every step is the
    optimizer's `iterations` after the batch or epoch (`global_step`), so a resumed run goes
    on along the same axis.
    """

    def __init__(self, log_dir, every=100):
        super().__init__()
        self.log_dir, self.every = log_dir, max(1, int(every))
        self._writers = {}
        self._last = 0

    def _writer(self, name):
        if name not in self._writers:
            tf = summaries()
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    @staticmethod
    def _write(writer, prefix, logs, step):
        tf = summaries()
        # Summaries are written whatever an enclosing record_if says.
        with writer.as_default(), tf.summary.record_if(True):
            for name, value in logs.items():
                tf.summary.scalar(f"{prefix}{name}", float(value), step=step)
        writer.flush()

    def on_train_begin(self, logs=None):
        self._last = global_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step // self.every > self._last // self.every and isinstance(logs, dict):
            self._write(self._writer("train"), "batch_", logs, step)
        self._last = step

    def on_epoch_end(self, epoch, logs=None):
        logs, step = dict(logs or {}), global_step(self.model)
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        train["learning_rate"] = keras.ops.convert_to_numpy(optimizer.learning_rate)
        self._write(self._writer("train"), "epoch_", train, step)
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._write(self._writer("validation"), "epoch_", val, step)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class SampleImages(keras.callbacks.Callback):
    """Writes samples and reconstructions to TensorBoard (images "samples" and
    "reconstructions" under log_dir/samples) at each epoch end, stepped by the optimizer's
    step count (`global_step`), as `StepScalars` steps the scalars.

    Samples: the model's own grid (`sample_grid`) of about n images: for the VAE family rows of
    10 samples x ~ p(x|z), z ~ p(z) (pixel probabilities); for a class-conditional model a row
    per z ~ p(z) and a column per class. The same z every epoch, so the grids show the model
    changing, not the draw.

    Reconstructions: rows of up to `columns` of the fixed `images` (binary [N, pixels]; see
    `first_images`), each followed by a row of their reconstructions; none without images.
    """

    def __init__(self, log_dir, n=64, seed=0, images=None, columns=8):
        super().__init__()
        self.writer = summaries().summary.create_file_writer(os.path.join(log_dir, "samples"))
        self.n, self.seed, self.columns = n, seed, columns
        self.images = None if images is None else np.asarray(images, np.float32)

    @staticmethod
    def first_images(*sources, n=32):
        """Up to n images [n, pixels] from the first source that holds some: an array, a
        tf.data.Dataset (its first element, a batch) or a structure of them, where the images
        are the first leaf ((x, y), ((x_binary, x_gray), y) or (unlabelled_x, (x, y)) all give
        x); None when no source does."""
        tf = summaries() if has_tensorflow() else None
        for source in sources:
            if source is None:
                continue
            if isinstance(source, keras.utils.PyDataset):  # The NumPy pipeline: a first batch.
                source = source[0]
            elif tf is not None and isinstance(source, tf.data.Dataset):
                first_spec = tf.nest.flatten(source.element_spec)[0]
                if getattr(first_spec, "shape", None) is not None and first_spec.shape.rank == 1:
                    source = source.batch(n)  # Unbatched images.
                source = next(iter(source.take(1)), None)
            while isinstance(source, (tuple, list)) and source:
                source = source[0]
            if source is None or isinstance(source, (tuple, list, dict)):
                continue
            x = np.asarray(keras.ops.convert_to_numpy(source[:n]), np.float32)
            if x.ndim >= 2 and len(x):
                return x.reshape(len(x), -1)
        return None

    def on_train_begin(self, logs=None):
        # Only square one-channel images are drawn (not vectors or colour images).
        self.side = images.square_side(getattr(self.model, "data_shape", ()))
        pixels = getattr(self.model, "input_dim", getattr(self.model, "x_dim", None))
        if self.images is not None and (self.images.ndim != 2 or self.images.shape[1] != pixels):
            self.images = None  # Not the model's images (e.g. unbatched): samples only.

    def on_epoch_end(self, epoch, logs=None):
        # Written every epoch whatever an enclosing `record_if` says.
        if self.side is None:
            return  # Data that are not square one-channel images have no picture.
        step = global_step(self.model)
        tf = summaries()
        with self.writer.as_default(), tf.summary.record_if(True):
            tf.summary.image("samples", self._samples()[None], step=step)
            if self.images is not None and len(self.images):
                tf.summary.image("reconstructions", self._reconstructions()[None], step=step)
        self.writer.flush()

    def _samples(self):
        # The model's own grid (`sample_grid`): for a class-conditional one a column per class.
        seed = np.array([self.seed, 0], np.int32)
        x = keras.ops.convert_to_numpy(self.model.sample_grid(1, seed=seed))
        cols = len(x)
        rows = max(1, self.n // cols)
        x = keras.ops.convert_to_numpy(self.model.sample_grid(rows, seed=seed))
        return self._grid(x, rows, cols)

    def _reconstructions(self):
        x = self.images
        recon = np.asarray(keras.ops.convert_to_numpy(self.model.reconstruct(x)), np.float32)
        cols = min(self.columns, len(x))
        blank = np.ones((cols, x.shape[1]), np.float32)
        rows = []
        for start in range(0, len(x), cols):
            for part in (x[start : start + cols], recon[start : start + cols]):
                rows.append(np.concatenate([part, blank[len(part) :]]))
        return self._grid(np.concatenate(rows), len(rows), cols)

    def _grid(self, x, rows, cols):
        return images.grid(np.asarray(x, np.float32), rows, cols, side=self.side)


def fit(
    model,
    train_data,
    steps,
    out_dir,
    steps_per_epoch=1000,
    validation_data=None,
    resume=False,
    verbose=1,
    extra_callbacks=(),
    settings=None,
):
    """Trains `model` (compiled) up to `steps` gradient steps in all with model.fit.

    `steps` is rounded up to whole epochs of `steps_per_epoch` steps. At each epoch end a
    checkpoint goes to out_dir/checkpoints (see `save_checkpoint`; `settings`, a JSON-able dict,
    is stored in it), TensorBoard logs to out_dir/logs.

    With `resume`, the newest checkpoint there is restored first (weights, optimizer state, global
    step) and training goes on from its step to the same total: the same updates, on the same
    batches with the same noise, as a run never interrupted (to float tolerance), when
    `train_data` is a function of the step to start at (`start_step -> tf.data.Dataset`, e.g.
    `lambda s: data.train_dataset(..., start_step=s)`); a `tf.data.Dataset` is skipped forward
    to that step instead. The learning rate the model was compiled with is kept (not the
    checkpoint's), so a run can go on at a lower one.

    A model built and compiled in a tf.distribute strategy's scope trains replicated: each batch
    of `train_data` is the global batch, split across the replicas. On JAX, with a
    `keras.distribution.DataParallel` set (`make_strategy("mirrored")`), Keras shards each batch
    over the devices, which must divide it evenly (ValueError otherwise). Under
    MultiWorkerMirroredStrategy every worker calls `fit` with the same (seeded) datasets and
    keeps its share of each batch (tf.data DATA sharding), and should have its own `out_dir`
    (see `worker_out_dir`).

    Returns:
      the keras History.

    Raises:
      NonFiniteLossError: a NaN/Inf loss; the last good checkpoint is left in place.
      CheckpointError: `resume` and the checkpoint cannot be restored.
      ValueError: the checkpoint's step is not a whole number of epochs of `steps_per_epoch`,
        or a batch that a `keras.distribution.DataParallel`'s devices cannot share.
    """
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    steps_per_epoch = min(steps_per_epoch, steps)
    epochs = math.ceil(steps / steps_per_epoch)
    start = 0
    if resume and has_checkpoint(ckpt_dir):
        # A fixed learning rate is a variable of the optimizer (a schedule is not), so the
        # checkpoint holds one: put the compiled one back after restoring.
        lr = model.optimizer.learning_rate
        compiled_lr = (
            float(keras.ops.convert_to_numpy(lr)) if isinstance(lr, keras.Variable) else None
        )
        strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's only.
        with strategy.scope() if strategy else contextlib.nullcontext():  # The optimizer's.
            start = restore(model, ckpt_dir)["step"]
        if compiled_lr is not None:
            model.optimizer.learning_rate = compiled_lr
        if start % steps_per_epoch:
            raise ValueError(
                f"The checkpoint is at step {start}, not a whole number of epochs "
                f"of {steps_per_epoch} steps: resume with a steps_per_epoch that "
                f"divides {start}."
            )
    if callable(train_data):
        train_data = train_data(start)
    elif start:
        if not callable(getattr(train_data, "skip", None)):
            raise ValueError(
                "Resuming needs the training data as a tf.data.Dataset or a tfp_vae.data_numpy "
                "stream, or as a function start_step -> stream, to go on from the checkpoint's "
                f"step ({start}); got {type(train_data).__name__}."
            )
        train_data = train_data.skip(start)
    if _data_parallel_devices() > 1:
        # The batches' sizes, before Keras lays them out (its failure is JAX's many lines).
        if isinstance(train_data, keras.utils.PyDataset):
            check_global_batch(len(keras.tree.flatten(train_data[0])[0]))
        if hasattr(validation_data, "batch_size") and hasattr(validation_data, "n"):
            check_eval_batches(validation_data.n, validation_data.batch_size, "validation_data")
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            train_data = _shard_by_data(train_data)
            validation_data = _shard_by_data(validation_data)
    guard = NaNGuard()
    log_dir = os.path.join(out_dir, "logs")
    callbacks = [guard, Checkpoint(ckpt_dir, guard, settings)]
    if has_tensorflow():
        callbacks += [
            # Batch-level scalars (batch_loss, ...) every ~100 steps (about 10 points per epoch
            # in short epochs); every scalar and image is stepped by the optimizer's step count.
            StepScalars(log_dir, every=max(1, min(100, steps_per_epoch // 10))),
            SampleImages(log_dir, images=SampleImages.first_images(validation_data, train_data)),
        ]
    else:
        print(
            f"Note: no TensorBoard logs in {log_dir}: they are written with tf.summary, and "
            "TensorFlow is not installed (pip install tensorflow to have them)."
        )
    callbacks += list(extra_callbacks)
    history = model.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        initial_epoch=start // steps_per_epoch,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    if guard.bad_step is not None:
        found = checkpoints(ckpt_dir)
        if found:
            where = (
                f"The last good checkpoint is {found[0][1]} (step {found[0][0]}): resume "
                "from it with a lower learning rate (--resume --learning_rate=...)."
            )
        else:
            where = (
                f"No checkpoint exists yet (the first comes after {steps_per_epoch} "
                "steps): start again with a lower learning rate (--learning_rate=...)."
            )
        raise NonFiniteLossError(
            f"The loss became NaN/Inf at step {guard.bad_step}; training stopped. {where}"
        )
    return history
