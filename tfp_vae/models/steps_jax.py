"""The training step's machinery on the JAX backend (`tfp_vae.backend.steps()` there).

Keras' stock JAX trainer runs the loop (`fit`, `evaluate`, `steps_per_execution`, callbacks)
and compiles the steps with `jax.jit`; the steps are stateless functions of (state, data)
written here around the models' backend-neutral `batch_losses` and `test_terms`:
  - the batches are checked on the host before they reach the compiled step
    (`make_train_function`, `make_test_function`), with the messages of the TF path's in-graph
    checks: a bad batch raises ValueError and changes nothing (weights, optimizer state, metrics);
  - the random draws are keyed by the model's `seed` and the optimizer's step count
    (`step_seed`: a resumed run draws what the uninterrupted one would have), and an evaluation's
    by the batch's content (`evaluation_seed`), as on TF (the generators differ: TF's Philox and
    JAX's threefry give other draws from the same seed; the bounds agree within Monte Carlo
    error).

What only TensorFlow has is refused in one line (`tfp_vae.backend.refuse_on_jax`): the trainable
SavedModel (`signature_train_step`) and tf.distribute (on JAX, Keras' own
`keras.distribution.DataParallel` shards the batch over devices).
"""

import itertools

import jax
import jax.numpy as jnp
import keras
from keras.src.backend.common.stateless_scope import StatelessScope

ops = keras.ops


def batch_means(values):
    """name -> the mean over the batch of each per-example tensor [n] in `values`."""
    return {name: ops.mean(value) for name, value in values.items()}


def _key(model):
    """The model's `seed` as a JAX PRNG key, uint32 [2]."""
    return jax.random.PRNGKey(model.seed % (2**31 - 1))


def step_seed(model):
    """uint32 [2]: the stateless seed of the current training step's random draws, keyed by
    the model's `seed` and the optimizer's step count (read from the step's state)."""
    step = ops.convert_to_tensor(model.optimizer.iterations) % (2**31 - 1)
    return jax.random.fold_in(_key(model), ops.cast(step, "uint32"))


def evaluation_seed(model, x):
    """uint32 [2]: the stateless seed of a test step's random draws, keyed by the model's `seed`
    and the batch's content (a hash of its values, the same whatever the order of its rows), so
    that evaluating the same weights on the same data gives the same numbers every time."""
    rows = ops.reshape(ops.cast(x, "float32"), [x.shape[0], -1])
    bits = jax.lax.bitcast_convert_type(rows, jnp.uint32)  # [B, D]
    # A multiplicative hash per column, summed with uint32 wrap-around.
    weights = jnp.arange(rows.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
    content = jnp.sum(bits * weights, dtype=jnp.uint32)
    return jax.random.fold_in(_key(model), content)


def step_losses(model, batch):
    """`batch_losses` at this step's seed, with the networks in training mode, and a `loss`
    value for the metric when the model gives none."""
    from tfp_vae.models.core import with_training

    loss, values = with_training(model.batch_losses, batch, seed=step_seed(model), training=True)
    if "loss" not in values:
        values = {**values, "loss": loss}
    return loss, values


def clip_gradients(grads, clip_norm):
    """`grads` scaled so that their global norm is at most `clip_norm` (as
    `tf.clip_by_global_norm`)."""
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads))
    scale = clip_norm / ops.maximum(norm, clip_norm)
    return [g * scale for g in grads]


def _values(scope, variables, fallback):
    """The values of `variables` after a StatelessScope (`fallback` where it assigned none)."""
    out = []
    for variable, old in zip(variables, fallback, strict=True):
        new = scope.get_current_value(variable)
        out.append(old if new is None else new)
    return out


def record(model, values, names, ctx=None):
    """Adds values (per-example vectors or scalars) to the named metrics; returns their means so
    far."""
    del ctx  # Replica contexts are TF's.
    for name in names:
        model._trackers[name].update_state(values[name])
    return {name: model._trackers[name].result() for name in names}


def _recorded(model, metrics_values, values, names):
    """(logs, new metrics state): `record` of `values` on the metrics' state `metrics_values`."""
    mapping = list(zip(model.metrics_variables, metrics_values, strict=True))
    with StatelessScope(state_mapping=mapping) as scope:
        logs = record(model, values, names)
    return logs, _values(scope, model.metrics_variables, metrics_values)


def train_step(model, state, data):
    """Keras' stateless JAX `train_step`: one gradient step on `batch_losses` of `data` (whose
    values `make_train_function` checked on the host). Returns (logs, new state)."""
    trainable, non_trainable, optimizer_values, metrics_values = state
    batch = model.parse_batch(data, check_values=False)
    _, batch = model.batch_problem(batch)
    optimizer_mapping = list(zip(model.optimizer.variables, optimizer_values, strict=True))

    def loss_fn(trainable_values):
        mapping = (
            list(zip(model.trainable_variables, trainable_values, strict=True))
            + list(zip(model.non_trainable_variables, non_trainable, strict=True))
            + optimizer_mapping
        )
        with StatelessScope(state_mapping=mapping) as scope:
            loss, values = model._step_losses(batch)
            scaled = model.optimizer.scale_loss(loss)
        return scaled, (values, _values(scope, model.non_trainable_variables, non_trainable))

    (_, (values, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    if getattr(model, "clip_norm", None):
        grads = clip_gradients(grads, model.clip_norm)
    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, grads, trainable
    )
    logs, metrics_values = _recorded(model, metrics_values, values, model.train_metric_names())
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


def test_step(model, state, data):
    """Keras' stateless JAX `test_step`: adds the `test_terms` of `data` to the test metrics.
    Returns (logs, new state)."""
    trainable, non_trainable, metrics_values = state
    mapping = list(zip(model.trainable_variables, trainable, strict=True)) + list(
        zip(model.non_trainable_variables, non_trainable, strict=True)
    )
    with StatelessScope(state_mapping=mapping):
        values = model.test_terms(data)
    logs, metrics_values = _recorded(model, metrics_values, values, model.test_metric_names())
    return logs, (trainable, non_trainable, metrics_values)


def check_train_batch(model, data):
    """Raises ValueError (the in-graph checks' messages) when a batch of training data is bad."""
    model.parse_batch(data, check_values=True)


def check_test_batch(model, data):
    """Raises ValueError when a batch of test data is bad (`Model.check_test_data`: what
    `test_terms` checks eagerly; the compiled step cannot)."""
    model.check_test_data(data)


def _checked(model, inner, check, variable_groups):
    """A Keras train/test function (state, iterator) -> (logs, state) that first reads this
    execution's batches and checks each on the host; on a bad one the model's variables get back
    the state they had (Keras purged them for the step) and the ValueError is raised."""

    def function(state, iterator):
        batches = list(itertools.islice(iterator, model.steps_per_execution))
        if not batches:
            raise StopIteration
        try:
            for data in batches:
                check(model, data)
        except ValueError:
            for variables, values in zip(variable_groups(), state, strict=True):
                for variable, value in zip(variables, values, strict=True):
                    variable.assign(value)
            model._jax_state = None
            model._jax_state_synced = True
            raise
        return inner(state, iter(batches))

    return function


def make_train_function(model, force=False):
    """Keras' JAX `make_train_function`, with the batches checked on the host first."""
    if model.train_function is not None and not force:
        return model.train_function
    keras.Model.make_train_function(model, force=True)
    model.train_function = _checked(
        model,
        model.train_function,
        check_train_batch,
        lambda: (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        ),
    )
    return model.train_function


def make_test_function(model, force=False):
    """Keras' JAX `make_test_function`, with the batches checked on the host first."""
    if model.test_function is not None and not force:
        return model.test_function
    keras.Model.make_test_function(model, force=True)
    model.test_function = _checked(
        model,
        model.test_function,
        check_test_batch,
        lambda: (model.trainable_variables, model.non_trainable_variables, model.metrics_variables),
    )
    return model.test_function


def symbolic_build(model, iterator=None, data_batch=None):
    """Keras' `_symbolic_build` for our models, whose variables all exist at construction and
    which compile no Keras loss or metrics: only the optimizer's variables are made."""
    del iterator, data_batch
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def has_gpu() -> bool:
    """Whether JAX runs on a GPU."""
    return any(device.platform == "gpu" for device in jax.devices())


def compile_model(model, optimizer, jit_compile, **kwargs):
    """`Model.compile` on JAX: Keras' own, whose steps `jax.jit` compiles whole unless
    `jit_compile` is False (the host checks the batches first, so nothing is lost to XLA)."""
    keras.Model.compile(model, optimizer=optimizer, jit_compile=bool(jit_compile), **kwargs)
    model.xla_update = bool(jit_compile) and not model.run_eagerly
    model._xla_update_fn = None


def fused_update(model, batch):
    """TF's XLA-guarded update has no JAX counterpart: the JAX steps check batches on the host."""
    raise NotImplementedError(
        "The fused update is TF's; on JAX `train_step(state, data)` is the step (steps_jax)."
    )


def signature_train_step(model, data):
    raise NotImplementedError  # Refused in core.Model.signature_train_step before it comes here.
