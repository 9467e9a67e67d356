"""What every tfp_vae model shares: the Keras hooks and the one training step.

`Model` is a `keras.Model` whose `train_step` is written once for every model and every path:
one device (an XLA-compiled update that checks the inputs inside), tf.distribute (exact
global-batch scaling) and the trainable SavedModel (`signature_train_step`). A model supplies
its losses and metrics (`batch_losses`) and how to read and check a batch (`parse_batch`,
`batch_problem`); `gradient_step` is the one place that computes and applies gradients.
"""

import inspect
import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfp_vae.checks import call_arguments, check_count, check_size, raise_on_problem
from tfp_vae.models import params
from tfp_vae.models.params import Param


def with_training(method: Callable, *args, training: bool = False, **kwargs):
    """`method(*args, training=training, **kwargs)`, or without `training` when `method` takes
    none: a subclass's `encode(x)` or `batch_losses(batch, seed)` written before the argument
    existed (or a replaced method) keeps working, and its networks run as before (inference
    mode).

    The training steps call a model's overridable methods through this with `training=True`,
    so that the user's Dropout and BatchNormalization layers run in training mode there."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # No signature to read (a builtin): call it as before.
        parameters = ()
    if any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters):
        kwargs["training"] = training
    return method(*args, **kwargs)


def replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context when a step runs under a tf.distribute strategy (any, also one with a
    single replica: its optimizer synchronises through `merge_call`, which the single-device
    update's tf.cond and XLA function cannot hold), else None.

    Decided when the step is traced, so the single-device graph has no distribution ops at all.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or not tf.distribute.has_strategy():
        return None
    return ctx


def global_counts(ctx, *sizes):
    """The sizes (scalars) summed over all replicas: float32 scalars, one per argument.

    Used to divide each replica's *sum* of per-example losses by the *global* number of examples.
    Keras' optimizer sums the replicas' gradients (`optimizer.apply` all-reduces with
    ReduceOp.SUM), so the summed gradient is exactly that of the mean over the global batch, also
    when the batch does not split evenly (97 over 2 replicas is 49 + 48). (Keras' own losses
    divide a replica's mean by the number of replicas instead, which is exact only for even
    splits.)
    """
    sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.stack(list(sizes)), tf.float32))
    return tf.unstack(sums, num=len(sizes))


def global_results(ctx, trackers):
    """name -> pooled mean over all replicas of each `keras.metrics.Mean` in `trackers`.

    A replica's tracker holds its own total and count (metric variables are sync-on-read), so
    `result()` inside a replicated step is that replica's mean, and Keras would average those
    means across replicas, which is not the mean over all examples when the replicas saw
    different numbers. One all-reduce of the totals and counts gives the exact pooled mean, the
    same on every replica.
    """
    local = tf.stack(
        [
            tf.cast(tf.convert_to_tensor(v), tf.float32)
            for t in trackers
            for v in (t.total.value, t.count.value)
        ]
    )
    sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
    results = {
        t.name: tf.math.divide_no_nan(sums[2 * i], sums[2 * i + 1]) for i, t in enumerate(trackers)
    }
    strategy = ctx.strategy
    resolver = getattr(strategy, "cluster_resolver", None)
    if (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and resolver is not None
        and resolver.cluster_spec().as_dict()
    ):
        # Keras 3 reduces a multi-worker step's outputs with strategy.reduce(MEAN, v, axis=0),
        # which fails on scalars (tensorflow/tensorflow#72388); as shape [1] they reduce to the
        # scalar value itself (it is the same on every replica).
        results = {name: tf.reshape(value, [1]) for name, value in results.items()}
    return results


def symbolic_build_under_strategy(model, iterator=None, data_batch=None):
    """Replaces Keras' `Trainer._maybe_symbolic_build` (TF backend) for our models.

    Under a tf.distribute strategy Keras builds the model from the first batch after reducing it
    with an elementwise MEAN across replicas, which fails when the global batch does not split
    evenly (97 examples over 2 replicas are slices of 49 and 48). Our models create every
    variable at construction and compile no Keras loss or metrics, so only the optimizer's
    variables are missing: they are created here, in the strategy's scope (not lazily inside the
    replicated step, where tf.distribute cannot create them).
    """
    if model.optimizer is not None and not model.optimizer.built:
        # Also without a strategy: inside the traced step the optimizer would be built in the
        # fused update's tf.cond branch (or its XLA function, where it cannot be).
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def build_at_construction(model, input_shape=None):
    """`Layer.build` for our models, whose sub-networks are all built in `__init__` (their input
    sizes are known), which then calls this.

    A model constructed with trainable=False (as `from_config` rebuilds one saved frozen) also
    freezes its sub-layers here. Keras' `trainable` setter would not: in the TF backend, setting
    an attribute to the value it already holds returns before the setter runs.
    """
    if not model.trainable:
        for layer in model.layers:
            layer.trainable = False
    model.built = True


def saved_compile_config(model):
    """`Model.get_compile_config` for our models: Keras' own, with the `jit_compile` the model
    was compiled with (Keras' compile itself gets False, see `compile`), so that a reloaded model
    compiles the same way."""
    config = keras.Model.get_compile_config(model)
    if config:
        config["jit_compile"] = model.jit_compile_setting
    return config


def compile_from_saved_config(model, config):
    """`Model.compile_from_config` for our models, which override `compile`: Keras' own skips
    any model that does, so a reloaded model would come back uncompiled."""
    model.compile(**keras.saving.deserialize_keras_object(config))
    if model.built:
        model.optimizer.build(model.trainable_variables)


def training_seed(seed: int | None = None) -> int:
    """A model's `seed` argument as the int it keeps: `seed`, or one drawn from NumPy's global
    RNG (so `keras.utils.set_random_seed` fixes it too)."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))  # noqa: NPY002  The global RNG, on purpose.
    try:
        if int(seed) == seed:
            return int(seed)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"seed must be an integer; got {seed!r}.")


def evaluation_seed(model: keras.Model, x: tf.Tensor) -> tf.Tensor:
    """int32 [2]: the stateless seed of a test step's random draws (the posterior samples of the
    bounds), keyed by the model's `seed` and the batch's content (a fingerprint of each example),
    so that evaluating the same weights on the same data gives the same numbers every time."""
    rows = tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1])
    prints = tf.bitcast(tf.fingerprint(rows)[:, :4], tf.int32)  # [B]: 4 bytes of each row's.
    content = tf.math.floormod(tf.reduce_sum(tf.cast(prints, tf.int64)), 2**31 - 1)
    return tf.stack([tf.constant(model.seed % (2**31 - 1), tf.int32), tf.cast(content, tf.int32)])


def step_seed(model: keras.Model) -> tf.Tensor:
    """int32 [2]: the stateless seed of the current training step's random draws (the
    posterior samples), keyed by the model's `seed` and the optimizer's step count, so that a
    run resumed from a checkpoint draws exactly what the uninterrupted run would have. Under
    tf.distribute each replica folds in its id (its examples differ from the others')."""
    step = tf.cast(tf.convert_to_tensor(model.optimizer.iterations) % (2**31 - 1), tf.int32)
    seed = tf.stack([tf.constant(model.seed % (2**31 - 1), tf.int32), step])
    ctx = replica_context()
    if ctx is not None:
        seed = tf.random.experimental.stateless_fold_in(seed, ctx.replica_id_in_sync_group)
    return seed


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply` on the variables that have a gradient. A variable the loss does not
    reach (the decoder of an SSVAE with gen_weight 0, say) gets None and is left alone; Keras'
    optimizer would fail on it."""
    pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
    optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])


def gradient_step(
    model: keras.Model, losses: Callable[[], tuple[tf.Tensor, dict[str, tf.Tensor]]]
) -> dict[str, tf.Tensor]:
    """One optimizer step on `losses()` -> (loss scalar, values): returns the values. The one
    place where every model, on every path (single device, the XLA update, tf.distribute, the
    trainable SavedModel), computes and applies its gradients.

    The loss is scaled by the optimizer (a LossScaleOptimizer under mixed_float16 scales here and
    unscales in `apply`; any other optimizer returns the loss itself). With `model.clip_norm`
    the gradient is clipped to that global norm first (`clip_gradients`)."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss, values = losses()
        loss = model.optimizer.scale_loss(loss)
    grads = tape.gradient(loss, variables)
    if getattr(model, "clip_norm", None):
        grads = clip_gradients(grads, model.clip_norm, model.optimizer)
    apply_gradients(model.optimizer, grads, variables)
    return values


def clip_gradients(
    grads: list[tf.Tensor | None], clip_norm: float, optimizer: keras.optimizers.Optimizer
) -> list[tf.Tensor | None]:
    """`grads` (a list; None entries kept) scaled so that the global norm of the *whole batch's*
    gradient is at most `clip_norm`.

    Replicated, each replica holds its share and the optimizer sums them; the global norm is that
    of the sum, so the shares are all-reduced here, clipped, and divided by the number of
    replicas for the optimizer's sum to give the clipped gradient exactly. Under loss scaling the
    gradients are scaled: the bound is scaled with them (non-finite ones stay non-finite, and the
    LossScaleOptimizer skips the step)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        clip_norm = clip_norm * tf.cast(optimizer.dynamic_scale, tf.float32)
    ctx = replica_context()
    present = [i for i, g in enumerate(grads) if g is not None]
    values = [grads[i] for i in present]
    if ctx is not None:
        values = ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)
    values, _ = tf.clip_by_global_norm(values, clip_norm)
    if ctx is not None:
        values = [v / ctx.num_replicas_in_sync for v in values]
    out = list(grads)
    for i, v in zip(present, values, strict=True):
        out[i] = v
    return out


def check_clip_norm(clip_norm: float | None) -> float | None:
    """A model's `clip_norm` argument: None (no clipping) or a positive float."""
    if clip_norm is None:
        return None
    try:
        number = float(clip_norm)
    except (TypeError, ValueError):
        number = float("nan")
    # Infinity too is refused: tf.clip_by_global_norm(g, inf) gives NaN, not g.
    if not 0 < number < float("inf"):
        raise ValueError(
            f"clip_norm must be > 0 and finite (or None: no clipping); got {clip_norm}."
        )
    return float(clip_norm)


def guarded_update(model, problem, losses, record):
    """`gradient_step(model, losses)` and `record(values)` (the metric updates), unless
    `problem` (an int32 code from the input checks) is not 0: then nothing changes at all.

    Plain tensor ops and a `tf.cond`, so it compiles under XLA, which drops assertion ops: the
    caller asserts on `problem` outside (`raise_on_problem`)."""

    def update():
        record(gradient_step(model, losses))
        return tf.constant(True)

    tf.cond(tf.equal(problem, 0), update, lambda: tf.constant(False))


def training_outputs(model, values):
    """A trainable SavedModel's `train_step` outputs: the batch means of `values` (float32
    scalars), `optimizer_iterations` (int64) and `learning_rate` (float32), both read after the
    update (automatic control dependencies order the variable ops)."""
    out = {name: tf.cast(tf.reduce_mean(value), tf.float32) for name, value in values.items()}
    out["optimizer_iterations"] = tf.identity(tf.convert_to_tensor(model.optimizer.iterations))
    out["learning_rate"] = tf.cast(model.optimizer.learning_rate, tf.float32)
    return out


def compiled_update(model, update):
    """`update` itself, or (when the model was compiled with an XLA update and the step is
    being traced, not run eagerly) its XLA compilation, made once per model."""
    if not getattr(model, "xla_update", False) or tf.executing_eagerly():
        return update
    if getattr(model, "_xla_update_fn", None) is None:
        model._xla_update_fn = tf.function(update, jit_compile=True)
    return model._xla_update_fn


CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


def _sublayers(layer):
    """`layer` and the layers inside it (through the `layers` of models and containers)."""
    yield layer
    for sub in getattr(layer, "layers", None) or ():
        yield from _sublayers(sub)


def has_convolution(model):
    """Whether any network of `model` has a convolutional layer."""
    return any(isinstance(layer, CONVOLUTIONS) for layer in _sublayers(model))


def resolve_jit_compile(model, jit_compile):
    """Validates `compile`'s jit_compile and returns whether the fused update uses XLA: True ->
    XLA unless run_eagerly (replicated steps never use it, see train_step); "auto" -> the same,
    except for a model with convolutions on a machine without a GPU, where XLA's CPU
    convolutions are far slower than TensorFlow's (20x for `networks.conv_encoder`/
    `conv_decoder` on MNIST: benchmarks/conv_throughput.py)."""
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto'; got {jit_compile!r}.")
    if jit_compile == "auto" and has_convolution(model):
        jit_compile = bool(tf.config.list_physical_devices("GPU"))
    return bool(jit_compile) and not model.run_eagerly


def batch_means(values: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """name -> the mean over the *global* batch of each per-example tensor [n] in `values`.

    On one device, its mean. Replicated (tf.distribute), this replica's sum divided by the
    number of examples of that tensor on all replicas (one all-reduce for all of them): the
    optimizer sums the replicas' gradients, so the update is exactly the single-device one on
    the whole batch, even when it does not split evenly (97 = 49 + 48).
    """
    ctx = replica_context()
    if ctx is None:
        return {name: tf.reduce_mean(value) for name, value in values.items()}
    names = list(values)
    counts = global_counts(ctx, *[tf.size(values[name]) for name in names])
    return {
        name: tf.reduce_sum(values[name]) / count for name, count in zip(names, counts, strict=True)
    }


class Model(keras.Model):
    """The base of every tfp_vae model: Keras' hooks and one training step for all of them.

    A subclass supplies, besides its distributions and bounds:
      - `parse_batch(data, check_values)`: an element of the training data (as `fit` gives it
        to `train_step`) as a dict of tensors, shapes checked (ValueError or a graph assertion
        naming the expected shape) and values too when `check_values`;
      - `batch_problem(batch)`: (int32 problem code, batch) for a batch parsed without value
        checks, the code 0 or 1 + an index into `input_problems`, in plain ops (it runs inside
        XLA, which drops assertions; the step asserts on the code outside);
      - `batch_losses(batch, seed, training=False)`: (loss, values): the scalar loss to
        minimise, made with `batch_means` (so that it is this replica's share under
        tf.distribute), and the per-example (or scalar) values of the train metrics, by name;
        the training steps pass `training=True`, for its networks (`with_training`: a
        `batch_losses` without the argument is called without it);
      - `test_terms(data)`: the test metrics' per-example values for an element of test data;
      - `train_metric_names()` and `test_metric_names()` (by default every metric made by
        `_make_metrics`), and `sample_grid(rows, seed)`: images for a grid of `rows` rows.

    Args (for subclasses):
      seed: keys the training steps' random draws with the step count (`step_seed`); None draws
        one (from NumPy's global RNG). Kept in the config.
      clip_norm: clip each step's gradient to this global norm (None: no clipping); see
        `clip_gradients`.
    """

    # Whether the model generates from a class (the semi-supervised models): its test data then
    # needs labels, and its sample grids hold a class per column (`sample_grid`).
    class_conditional = False
    # The configurable parameters (see `tfp_vae.models.params`); a subclass lists its own.
    PARAMS = (
        Param("seed", training_seed, flag=True, flag_default=0),
        Param("clip_norm", check_clip_norm, flag=True, run_defining=False),
    )

    def __init__(self, seed: int | None = None, clip_norm: float | None = None, **kwargs):
        super().__init__(**kwargs)
        params.assign(self, Model, locals())

    def _make_metrics(self, names):
        self._trackers = {name: keras.metrics.Mean(name=name) for name in dict.fromkeys(names)}

    # ---- what a subclass provides -------------------------------------------------------------

    def parse_batch(self, data, check_values: bool = True) -> dict[str, tf.Tensor]:
        """An element of training data (as `fit` gives it to `train_step`) as a dict of tensors,
        shapes checked (a ValueError, or a graph assertion, naming the expected shape); values
        too when `check_values`."""
        raise NotImplementedError

    def batch_problem(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """(problem, batch) for a batch parsed without value checks: `problem` is an int32
        scalar, 0 when the values are fine, else 1 + an index into `input_problems`. Plain ops
        (it runs inside XLA, which drops assertions; the step asserts on it outside)."""
        raise NotImplementedError

    def batch_losses(
        self, batch: dict[str, tf.Tensor], seed: tf.Tensor | None = None, training: bool = False
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """(loss, values): the scalar loss to minimise, made with `batch_means` (this replica's
        share under tf.distribute), and the train metrics' per-example [B] (or scalar) values,
        by name. `seed`: a stateless seed (int32 [2]) for the random draws, or None.
        `training`: the mode of the networks (True in the training steps)."""
        raise NotImplementedError

    def test_terms(self, data) -> dict[str, tf.Tensor]:
        """The test metrics' per-example [B] values, by name, for an element of test data."""
        raise NotImplementedError

    def train_metric_names(self) -> list[str]:
        """The metrics `train_step` reports (by default every metric the model made)."""
        return list(self._trackers)

    def test_metric_names(self) -> list[str]:
        """The metrics `test_step` reports (by default every metric the model made)."""
        return list(self._trackers)

    def sample_grid(self, rows: int, seed: tf.Tensor | None = None) -> tf.Tensor:
        """Images [rows * columns, x_dim] for a grid of `rows` rows (the binaries' samples.png
        and `bin/sample`); `seed`: a stateless seed (int32 [2]) or None."""
        raise NotImplementedError

    # ---- what the tools ask the model (binaries, plots, the training loop) ----------------------
    # A caller asks these instead of switching on the model's kind, so a user's subclass gets
    # the binaries and figures by inheritance.

    @property
    def figure_kinds(self) -> tuple[str, ...]:
        """The `tfp_vae.plots` figures the model can draw (`bin/plot --kind`)."""
        return ("interpolations", "traversals", "latent_map", "reconstructions")

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one raw input, without the batch axis ((784,) for MNIST's flat images)."""
        return tuple(self.input_shape)

    @property
    def data_likelihood(self):
        """The `tfp_vae.likelihoods.Likelihood` of the model's raw inputs: it says how data are
        prepared for training and evaluation (`data_transforms`, `eval_inputs`)."""
        return self.likelihood

    @property
    def data_transforms(self) -> dict[str, str]:
        """{"train": ..., "eval": ...}: how the raw data are prepared for training and for
        evaluation ("dynamic"/"static" binarisation only for a Bernoulli; "none"), as the
        binaries record them in `metrics.json`."""
        return self.data_likelihood.transforms

    def eval_inputs(self, images: np.ndarray) -> np.ndarray:
        """Images (uint8 [N, ...] or floats) as the model's bounds and figures take them, float32
        [N, pixels]: statically binarised for a Bernoulli, else scaled to [0, 1] (floats are
        kept)."""
        return self.data_likelihood.prepare(images)

    def check_dataset(self, dataset) -> None:
        """Raises ValueError (one line) when `dataset` (a `tfp_vae.data.ImageDataset`) lacks
        what the model needs (examples of its input shape; labels for a class-conditional
        model)."""
        shape = tuple(int(d) for d in dataset.x_train.shape[1:])
        if math.prod(shape) != math.prod(self.data_shape):
            raise ValueError(
                f"A {type(self).__name__} of inputs of shape {list(self.data_shape)} cannot take "
                f"{dataset.source}, whose examples have shape {list(shape)}."
            )
        if self.class_conditional and not dataset.has_labels:
            raise ValueError(
                f"This {type(self).__name__} needs labels, and {dataset.source} has no y_train "
                "and y_test arrays."
            )

    # ---- sizes (what `tfp_vae.checks.check_size` compares with what a process can hold) ------

    def layer_widths(self) -> list[int]:
        """Values per example of the model's data (x_dim times the likelihood's outputs per
        value) and of each layer output its networks declare (a user's layer that declares none
        is not counted)."""
        per = getattr(getattr(self, "likelihood", None), "outputs_per_dimension", 1)
        widths = [math.prod(self.data_shape), math.prod(self.input_shape) * int(per)]
        for layer in _sublayers(self):
            if layer is self:
                continue
            try:
                shape = tuple(layer.output.shape)[1:]
            except (AttributeError, ValueError):  # Not in a functional network: no output.
                continue
            if shape and all(isinstance(d, int) for d in shape):
                widths.append(math.prod(shape))
        return widths

    def widest_values(self) -> int:
        """Values per example of the widest tensor that decoding (a sample, a bound) makes."""
        return max(self.layer_widths())

    def training_bytes(self) -> int:
        """An estimate of a training step's bytes per example: float32 activations of every
        layer, kept for the gradient with their gradients (x3), and a few tensors of the data's
        size (inputs, logits, log-probabilities: x8); for a model that enumerates its classes
        for an unlabelled example (the SSVAE's bound), times the number of classes."""
        widths = self.layer_widths()
        enumerated = int(getattr(self, "num_classes", 1) or 1) if self.class_conditional else 1
        return 4 * enumerated * (3 * sum(widths[2:]) + 8 * widths[1])

    def check_sample_count(self, n, name: str = "n") -> tf.Tensor:
        """`n` as an int32 scalar if n samples fit in one output (`checks.check_count`, then
        `checks.check_size` of [n, x_dim] float32, twice: the chunks and their
        concatenation), else a ValueError (eagerly) or a graph assertion naming `name`."""
        size = math.prod(self.data_shape)
        return check_size(
            check_count(n, name),
            size,
            name,
            "draw the samples over several calls, each with its own seed.",
            bytes_per_row=8 * size,
        )

    def check_batch_size(self, batch_size, name: str = "batch_size") -> int:
        """`batch_size` if a training step on that many examples fits (`checks.check_size`:
        int32's range of one tensor, the memory available now), else a ValueError in one
        sentence naming `name` (bin/train's flag)."""
        check_size(
            int(batch_size),
            self.widest_values(),
            name,
            f"give a smaller {name} (bin/train: --{name}).",
            bytes_per_row=self.training_bytes(),
        )
        return int(batch_size)

    # The options of `train_dataset` beyond the data, batch, seed and transform (bin/train sets
    # each from the flag of its name, and refuses those flags for a model without them).
    train_options: tuple[str, ...] = ()

    def train_dataset(
        self, dataset, batch_size: int, seed: int | None = None, start_step: int = 0, **options
    ):
        """The endless training stream for `fit` from `dataset`'s training split, prepared as
        the model needs it, from the batch number `start_step` on (a resumed run)."""
        raise NotImplementedError

    def eval_dataset(self, images: np.ndarray, labels: np.ndarray | None = None, batch_size=1000):
        """A finite `tf.data.Dataset` of `images` (and `labels`) as `evaluate` takes it."""
        raise NotImplementedError

    def test_metrics(
        self, images: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 1000
    ) -> dict[str, float]:
        """The test metrics (`evaluate`) on `images` (and `labels`), as floats."""
        results = self.evaluate(
            self.eval_dataset(images, labels, batch_size), verbose=0, return_dict=True
        )
        return {k: float(v) for k, v in results.items()}

    # ---- the training step --------------------------------------------------------------------

    def compute_losses(
        self, data, seed: tf.Tensor | None = None, training: bool = False
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """(loss, values) for an element of training data, as `fit` gives it to `train_step`
        (checked first): the scalar loss the step minimises and the train metrics' per-example
        values. `seed`: a stateless seed (int32 [2]) for the random draws, or None. `training`:
        the networks' mode; the step's is True (Dropout drops, BatchNormalization updates its
        moving statistics), the default False gives the same numbers for the same seed."""
        batch = self.parse_batch(data, check_values=True)
        return with_training(self.batch_losses, batch, seed, training=training)

    def _step_losses(self, batch):
        """`batch_losses` at this step's stateless seed, with the networks in training mode, and
        a `loss` value for the metric when the model gives none (a replica's share times the
        number of replicas: pooled over the replicas, the global loss). Every training path (the
        fused update, XLA or not; the replicated step; `signature_train_step`) comes here."""
        loss, values = with_training(self.batch_losses, batch, seed=step_seed(self), training=True)
        if "loss" not in values:
            ctx = replica_context()
            replicas = 1 if ctx is None else ctx.num_replicas_in_sync
            values = {**values, "loss": loss * tf.cast(replicas, loss.dtype)}
        return loss, values

    def _fused_update(self, batch):
        """One gradient step and the metric updates, unless the batch fails a check: returns
        (problem, metric results), and nothing changes (weights, optimizer state, metrics) when
        `problem` is not 0. Compiled with XLA when `xla_update` (see `compile`)."""
        problem, batch = self.batch_problem(batch)
        names = self.train_metric_names()
        guarded_update(
            self,
            problem,
            lambda: self._step_losses(batch),
            lambda values: self._record(values, names),
        )
        return problem, {name: self._trackers[name].result() for name in names}

    def train_step(self, data) -> dict[str, tf.Tensor]:
        """One gradient step on `batch_losses` of the element `data`.

        On one device the shapes are checked here, the values inside the (XLA-compiled) fused
        update, which applies nothing unless they pass, and asserted on outside it. Replicated
        (tf.distribute, N > 1 replicas), each replica checks its slice and minimises its share
        of the global-batch mean (`batch_means`); metrics are pooled over all examples.
        """
        ctx = replica_context()
        if ctx is None:
            batch = self.parse_batch(data, check_values=False)
            if not self.optimizer.built:  # Not inside the update's tf.cond or XLA function.
                with tf.init_scope():
                    self.optimizer.build(self.trainable_variables)
            problem, results = compiled_update(self, self._fused_update)(batch)
            return raise_on_problem(results, problem, self.input_problems)
        batch = self.parse_batch(data, check_values=True)
        values = gradient_step(self, lambda: self._step_losses(batch))
        return self._record(values, self.train_metric_names(), ctx)

    def signature_train_step(self, data) -> dict[str, tf.Tensor]:
        """The trainable SavedModel's `train_step` (see `training_functions`): one optimizer
        step on `data` (checked); returns the batch means of the train metrics, computed before
        the update, `optimizer_iterations` (after it) and `learning_rate`. Nothing goes into
        Keras' running metrics: each call reports its own batch."""
        batch = self.parse_batch(data, check_values=True)
        return training_outputs(self, gradient_step(self, lambda: self._step_losses(batch)))

    def test_step(self, data) -> dict[str, tf.Tensor]:
        """Keras' test step: adds the `test_terms` of `data` to the test metrics and returns their
        means so far (pooled over all replicas under tf.distribute)."""
        return self._record(self.test_terms(data), self.test_metric_names(), replica_context())

    def _record(self, values, names, ctx=None):
        """Adds values (per-example vectors or scalars) to the named metrics; returns their
        means so far, pooled over all replicas when `ctx` (a replica context) is given."""
        for name in names:
            self._trackers[name].update_state(values[name])
        if ctx is not None:
            return global_results(ctx, [self._trackers[name] for name in names])
        return {name: self._trackers[name].result() for name in names}

    # ---- Keras plumbing -----------------------------------------------------------------------

    build = build_at_construction
    _maybe_symbolic_build = symbolic_build_under_strategy
    get_compile_config = saved_compile_config
    compile_from_config = compile_from_saved_config

    @property
    def metrics(self):
        return list(self._trackers.values())

    def fit(self, *args, **kwargs):
        """Keras' `fit`, refusing (ValueError, one line) training data with no examples: arrays
        of 0 rows, or a dataset that says it is empty (cardinality 0), which Keras would "train"
        for zero steps with only a warning."""
        x = call_arguments(keras.Model.fit, self, args, kwargs).get("x")
        if isinstance(x, tf.data.Dataset):
            empty = int(x.cardinality()) == 0
        else:
            leaves = [v for v in tf.nest.flatten(x) if hasattr(v, "shape")]
            empty = bool(leaves) and len(leaves[0].shape) > 0 and leaves[0].shape[0] == 0
        if empty:
            raise ValueError(
                "fit got no training examples (the training data are empty); pass at least one "
                "example."
            )
        return super().fit(*args, **kwargs)

    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        jit_compile: bool | str = "auto",
        **kwargs,
    ):
        """Keras' `compile`, except that `jit_compile` applies to the fused update only.

        XLA drops assertion ops, so under Keras' own `jit_compile` a bad batch (non-binary
        pixels, labels out of range) would train silently. Here Keras compiles no XLA: the
        update (`_fused_update`), compiled with XLA when `jit_compile` is True or "auto", computes
        a problem code from the inputs and applies nothing unless it is 0, and the step asserts
        on the code outside XLA. "auto" is XLA for a single device (fastest on CPU and GPU, see
        benchmarks/); replicated steps (tf.distribute) and `run_eagerly` never use it.
        """
        super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
        self.xla_update = resolve_jit_compile(self, jit_compile)
        self._xla_update_fn = None
        self.jit_compile_setting = jit_compile

    def get_config(self):
        """Keras' config, and every parameter of the model's table (`params.config`)."""
        return {**super().get_config(), **params.config(self)}
