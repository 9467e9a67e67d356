"""What every tfp_vae model shares: the Keras hooks and the one training step.

`Model` is a `keras.Model` whose training step is written once for every model: a model
supplies its losses and metrics (`batch_losses`) and how to read and check a batch
(`parse_batch`, `batch_problem`), in `keras.ops` and the active backend's TFP. The step's
machinery, which differs between the frameworks, lives in one module per backend
(`tfp_vae.backend.steps()`):
  - `models/steps_tf.py`: one device (an XLA-compiled update that checks the inputs
    inside), tf.distribute (exact global-batch scaling) and the trainable SavedModel
    (`signature_train_step`); `gradient_step` computes and applies the gradients;
  - `models/steps_jax.py`: Keras' stateless JAX trainer, with the batches checked on the
    host before they reach the compiled step.
"""

import inspect
import math
import sys
from collections.abc import Callable

import keras
import numpy as np

from tfp_vae import backend
from tfp_vae.backend import Tensor
from tfp_vae.checks import call_arguments, check_count, check_size
from tfp_vae.models import params
from tfp_vae.models.params import Param

# The training step's machinery of the active backend, and the two functions the models call.
_steps = backend.steps()
batch_means = _steps.batch_means
evaluation_seed = _steps.evaluation_seed
step_seed = _steps.step_seed
if backend.is_tensorflow():  # Kept importable from here, where they lived before.
    from tfp_vae.models.steps_tf import (  # noqa: F401
        apply_gradients,
        clip_gradients,
        compiled_update,
        global_counts,
        global_results,
        gradient_step,
        guarded_update,
        replica_context,
        symbolic_build_under_strategy,
        training_outputs,
    )


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
        jit_compile = _steps.has_gpu()
    return bool(jit_compile) and not model.run_eagerly


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

    def parse_batch(self, data, check_values: bool = True) -> dict[str, Tensor]:
        """An element of training data (as `fit` gives it to `train_step`) as a dict of tensors,
        shapes checked (a ValueError, or a graph assertion, naming the expected shape); values
        too when `check_values`."""
        raise NotImplementedError

    def batch_problem(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """(problem, batch) for a batch parsed without value checks: `problem` is an int32
        scalar, 0 when the values are fine, else 1 + an index into `input_problems`. Plain ops
        (it runs inside XLA, which drops assertions; the step asserts on it outside)."""
        raise NotImplementedError

    def batch_losses(
        self, batch: dict[str, Tensor], seed: Tensor | None = None, training: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, values): the scalar loss to minimise, made with `batch_means` (this replica's
        share under tf.distribute), and the train metrics' per-example [B] (or scalar) values,
        by name. `seed`: a stateless seed (int32 [2]) for the random draws, or None.
        `training`: the mode of the networks (True in the training steps)."""
        raise NotImplementedError

    def test_terms(self, data) -> dict[str, Tensor]:
        """The test metrics' per-example [B] values, by name, for an element of test data."""
        raise NotImplementedError

    def train_metric_names(self) -> list[str]:
        """The metrics `train_step` reports (by default every metric the model made)."""
        return list(self._trackers)

    def test_metric_names(self) -> list[str]:
        """The metrics `test_step` reports (by default every metric the model made)."""
        return list(self._trackers)

    def sample_grid(self, rows: int, seed: Tensor | None = None) -> Tensor:
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

    def check_sample_count(self, n, name: str = "n") -> Tensor:
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
        self, data, seed: Tensor | None = None, training: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, values) for an element of training data, as `fit` gives it to `train_step`
        (checked first): the scalar loss the step minimises and the train metrics' per-example
        values. `seed`: a stateless seed [2] for the random draws, or None (fresh ones; on JAX
        a fresh key, `backend.sampling_seed`). `training`: the networks' mode; the step's is
        True (Dropout drops, BatchNormalization updates its moving statistics), the default
        False gives the same numbers for the same seed."""
        batch = self.parse_batch(data, check_values=True)
        seed = backend.sampling_seed(seed)
        return with_training(self.batch_losses, batch, seed, training=training)

    def _step_losses(self, batch):
        """`batch_losses` at this step's stateless seed (`step_seed`), with the networks in
        training mode, and a `loss` value for the metric when the model gives none. Every
        training path comes here (`steps_tf.step_losses`, `steps_jax.step_losses`)."""
        return _steps.step_losses(self, batch)

    def _fused_update(self, batch):
        """TF: one gradient step and the metric updates, unless the batch fails a check
        (`steps_tf.fused_update`)."""
        return _steps.fused_update(self, batch)

    def train_step(self, *args):
        """One gradient step on `batch_losses` of an element of training data: Keras'
        `train_step(data)` on TF (`steps_tf.train_step`: the values checked inside the
        XLA-compiled update, which applies nothing unless they pass; tf.distribute), its
        stateless `train_step(state, data)` on JAX (`steps_jax.train_step`: the values checked on
        the host before the step)."""
        return _steps.train_step(self, *args)

    def signature_train_step(self, data) -> dict[str, Tensor]:
        """The trainable SavedModel's `train_step` (see `training_functions`): one optimizer
        step on `data` (checked); returns the batch means of the train metrics, computed before
        the update, `optimizer_iterations` (after it) and `learning_rate`. Nothing goes into
        Keras' running metrics: each call reports its own batch. TensorFlow only."""
        backend.refuse_on_jax(
            "The trainable SavedModel", "save the model as .keras and export it where TF runs"
        )
        return _steps.signature_train_step(self, data)

    def test_step(self, *args):
        """Keras' test step: adds the `test_terms` of the data to the test metrics and returns
        their means so far (pooled over all replicas under tf.distribute); on JAX the stateless
        `test_step(state, data)` (`steps_jax.test_step`)."""
        return _steps.test_step(self, *args)

    def _record(self, values, names, ctx=None):
        """Adds values (per-example vectors or scalars) to the named metrics; returns their
        means so far (pooled over all replicas when `ctx`, a TF replica context, is given)."""
        return _steps.record(self, values, names, ctx)

    # ---- Keras plumbing -----------------------------------------------------------------------

    build = build_at_construction

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        _steps.symbolic_build(self, iterator, data_batch)

    if backend.is_jax():
        # Keras' JAX trainer: the optimizer built without a symbolic pass, and the batches
        # checked on the host before the compiled steps (`steps_jax`).
        _symbolic_build = _maybe_symbolic_build
        make_train_function = _steps.make_train_function
        make_test_function = _steps.make_test_function

    def check_test_data(self, data) -> None:
        """Raises ValueError (one line) when an element of test data is bad: what `test_terms`
        checks when it runs eagerly (the JAX steps call this on the host before each compiled
        test step). By default nothing."""

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
        tf = sys.modules.get("tensorflow")  # A tf.data.Dataset only where TF is imported.
        if tf is not None and isinstance(x, tf.data.Dataset):
            empty = int(x.cardinality()) == 0
        elif isinstance(x, keras.utils.PyDataset):
            empty = x.num_batches == 0  # None: endless or unknown.
        else:
            leaves = [v for v in keras.tree.flatten(x) if hasattr(v, "shape")]
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
        On JAX the whole step is compiled (`jax.jit`) unless `jit_compile` is False or
        `run_eagerly`; the batches are checked on the host before it (`steps_jax`).
        """
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto'; got {jit_compile!r}.")
        _steps.compile_model(self, optimizer, jit_compile, **kwargs)
        self.jit_compile_setting = jit_compile

    def get_config(self):
        """Keras' config, and every parameter of the model's table (`params.config`)."""
        return {**super().get_config(), **params.config(self)}
