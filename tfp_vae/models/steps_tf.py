"""The training step's machinery on the TensorFlow backend (`tfp_vae.backend.steps()` there).

One device: an XLA-compiled fused update that checks the inputs inside and applies nothing
unless they pass (`guarded_update`), asserted on outside XLA. tf.distribute: each replica checks
its slice and minimises its share of the global-batch mean (`batch_means`), with the metrics
pooled over all examples. The trainable SavedModel: `signature_train_step`. Seeds: stateless,
keyed by the model's seed and the optimizer's step count (`step_seed`) or the batch's content
(`evaluation_seed`). `gradient_step` is the one place that computes and applies gradients.

The models' maths (`batch_losses`, the bounds) are backend-neutral; `tfp_vae.models.core.Model`
calls the functions here by name (`train_step`, `test_step`, ...), and
`models/steps_jax.py` has the same names for JAX.
"""

from collections.abc import Callable

import keras
import tensorflow as tf

from tfp_vae.checks import raise_on_problem


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


def symbolic_build(model, iterator=None, data_batch=None):
    """`Model._maybe_symbolic_build` on TF: `symbolic_build_under_strategy`."""
    symbolic_build_under_strategy(model, iterator, data_batch)


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
        model._xla_update_fn = tf.function(update, jit_compile=True, autograph=False)
    return model._xla_update_fn


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


def step_losses(model, batch):
    """`batch_losses` at this step's stateless seed, with the networks in training mode, and
    a `loss` value for the metric when the model gives none (a replica's share times the
    number of replicas: pooled over the replicas, the global loss). Every training path (the
    fused update, XLA or not; the replicated step; `signature_train_step`) comes here."""
    from tfp_vae.models.core import with_training

    loss, values = with_training(model.batch_losses, batch, seed=step_seed(model), training=True)
    if "loss" not in values:
        ctx = replica_context()
        replicas = 1 if ctx is None else ctx.num_replicas_in_sync
        values = {**values, "loss": loss * tf.cast(replicas, loss.dtype)}
    return loss, values


def fused_update(model, batch):
    """One gradient step and the metric updates, unless the batch fails a check: returns
    (problem, metric results), and nothing changes (weights, optimizer state, metrics) when
    `problem` is not 0. Compiled with XLA when `xla_update` (see `Model.compile`)."""
    problem, batch = model.batch_problem(batch)
    names = model.train_metric_names()
    guarded_update(
        model,
        problem,
        lambda: model._step_losses(batch),
        lambda values: model._record(values, names),
    )
    return problem, {name: model._trackers[name].result() for name in names}


# Keras wraps the steps in a tf.function with AutoGraph on; what they call is written in keras.ops
# without tensor-dependent Python control flow (it runs under jax.jit too), so converting it
# bought nothing and cost ~3 s of tracing per process.
@tf.autograph.experimental.do_not_convert
def train_step(model, data) -> dict[str, tf.Tensor]:
    """One gradient step on `batch_losses` of the element `data` (`Model.train_step`).

    On one device the shapes are checked here, the values inside the (XLA-compiled) fused
    update, which applies nothing unless they pass, and asserted on outside it. Replicated
    (tf.distribute, N > 1 replicas), each replica checks its slice and minimises its share
    of the global-batch mean (`batch_means`); metrics are pooled over all examples.
    """
    ctx = replica_context()
    if ctx is None:
        batch = model.parse_batch(data, check_values=False)
        if not model.optimizer.built:  # Not inside the update's tf.cond or XLA function.
            with tf.init_scope():
                model.optimizer.build(model.trainable_variables)
        problem, results = compiled_update(model, model._fused_update)(batch)
        return raise_on_problem(results, problem, model.input_problems)
    batch = model.parse_batch(data, check_values=True)
    values = gradient_step(model, lambda: model._step_losses(batch))
    return model._record(values, model.train_metric_names(), ctx)


def signature_train_step(model, data) -> dict[str, tf.Tensor]:
    """The trainable SavedModel's `train_step`: one optimizer step on `data` (checked)."""
    batch = model.parse_batch(data, check_values=True)
    return training_outputs(model, gradient_step(model, lambda: model._step_losses(batch)))


@tf.autograph.experimental.do_not_convert
def test_step(model, data) -> dict[str, tf.Tensor]:
    """Keras' test step: adds the `test_terms` of `data` to the test metrics and returns their
    means so far (pooled over all replicas under tf.distribute)."""
    return model._record(model.test_terms(data), model.test_metric_names(), replica_context())


def record(model, values, names, ctx=None):
    """Adds values (per-example vectors or scalars) to the named metrics; returns their
    means so far, pooled over all replicas when `ctx` (a replica context) is given."""
    for name in names:
        model._trackers[name].update_state(values[name])
    if ctx is not None:
        return global_results(ctx, [model._trackers[name] for name in names])
    return {name: model._trackers[name].result() for name in names}


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def compile_model(model, optimizer, jit_compile, **kwargs):
    """`Model.compile` on TF: Keras compiles no XLA; the fused update is compiled with XLA when
    `jit_compile` resolves to it (`resolve_jit_compile`)."""
    from tfp_vae.models.core import resolve_jit_compile

    keras.Model.compile(model, optimizer=optimizer, jit_compile=False, **kwargs)
    model.xla_update = resolve_jit_compile(model, jit_compile)
    model._xla_update_fn = None


def iwae_while_loop(model, x, m, rows, chunk, seed):
    """`LatentVariableModel.iwae` on TF (an int m or a SavedModel signature's tensor m, checked
    by `checks.check_importance_samples`): `chunk` samples (default 1000), or fewer so that
    chunk x B rows stay within `rows`, drawn in a `tf.while_loop` and folded into a running
    log-sum-exp; [B]."""
    import numpy as np
    import tensorflow_probability as tfp

    from tfp_vae import objectives

    chunk_arg = chunk
    chunk = tf.maximum(1, rows // tf.maximum(1, tf.shape(x)[0]))
    chunk = tf.minimum(chunk, int(chunk_arg or 1000))
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    seed = tfp.random.sanitize_seed(seed)

    def body(done, acc, seed):
        size = tf.minimum(chunk, m - done)
        seed, this_seed = tfp.random.split_seed(seed)
        lse = tf.reduce_logsumexp(
            objectives.log_weights(*model.iwae_log_weights(x, size, seed=this_seed)), axis=0
        )
        return done + size, tf.reduce_logsumexp(tf.stack([acc, lse]), axis=0), seed

    acc = tf.fill([tf.shape(x)[0]], tf.constant(-np.inf, tf.float32))
    _, acc, _ = tf.while_loop(lambda done, acc, seed: done < m, body, (tf.constant(0), acc, seed))
    return acc - tf.math.log(tf.cast(m, tf.float32))


def in_chunks_graph(fn, n, rows, seed, static):
    """`tfp_vae.checks.in_chunks` on TF for an n above `rows` or known only when the graph runs
    (`static` None: a SavedModel signature's): chunk i drawn with the stateless seed
    `stateless_fold_in(seed, i)` (None: stateful draws) in a `tf.while_loop`, its rows kept in
    `tf.TensorArray`s and concatenated."""
    import tensorflow_probability as tfp

    def chunked():
        base = None if seed is None else tfp.random.sanitize_seed(seed)

        def part(i):
            seed = None if base is None else tf.random.experimental.stateless_fold_in(base, i)
            return fn(i * rows, tf.minimum(rows, n - i * rows), seed)

        count = (n + rows - 1) // rows
        first = part(0)  # Its dtypes type the arrays.
        arrays = {
            key: tf.TensorArray(value.dtype, size=count, infer_shape=False).write(0, value)
            for key, value in first.items()
        }

        def body(i, arrays):
            out = part(i)
            return i + 1, {key: arrays[key].write(i, out[key]) for key in arrays}

        _, arrays = tf.while_loop(lambda i, _: i < count, body, (tf.constant(1), arrays))
        return {key: array.concat() for key, array in arrays.items()}

    if static is not None:
        return chunked()
    return tf.cond(n <= rows, lambda: fn(0, n, seed), chunked)
