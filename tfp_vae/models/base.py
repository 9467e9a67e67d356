"""The shared machinery of the latent-variable models: bounds, train/test steps, input checks.

A subclass supplies `encode(x) -> q(z|x)`, `decode(z) -> p(x|z)` and `prior() -> p(z)` (all TFP
distributions) and says whether KL(q || p) has a closed form; everything else (ELBO and IWAE
objectives, `train_step`/`test_step`, sampling, serving functions) lives here.
"""

import math

import numpy as np
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import layers, objectives
from tfp_vae.checks import (FEATURE_PROBLEM, IMAGE_PROBLEMS, call_arguments, check_array,
                            check_count, check_features, check_images, check_seed, image_problem,
                            resolve_input_shape,
                            padded_batch, raise_on_problem, validation_inputs)

tfd = tfp.distributions

OBJECTIVES = ("elbo", "iwae")


def replica_context():
    """The replica context when a step runs replicated (under a tf.distribute strategy with more
    than one replica in sync), else None.

    Decided when the step is traced, so the single-device graph has no distribution ops at all.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
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
    sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                          tf.cast(tf.stack(list(sizes)), tf.float32))
    return tf.unstack(sums, num=len(sizes))


def global_results(ctx, trackers):
    """name -> pooled mean over all replicas of each `keras.metrics.Mean` in `trackers`.

    A replica's tracker holds its own total and count (metric variables are sync-on-read), so
    `result()` inside a replicated step is that replica's mean, and Keras would average those
    means across replicas, which is not the mean over all examples when the replicas saw
    different numbers. One all-reduce of the totals and counts gives the exact pooled mean, the
    same on every replica.
    """
    local = tf.stack([tf.cast(tf.convert_to_tensor(v), tf.float32)
                      for t in trackers for v in (t.total.value, t.count.value)])
    sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
    results = {t.name: tf.math.divide_no_nan(sums[2 * i], sums[2 * i + 1])
               for i, t in enumerate(trackers)}
    strategy = ctx.strategy
    resolver = getattr(strategy, "cluster_resolver", None)
    if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None
            and resolver.cluster_spec().as_dict()):
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


def training_seed(seed=None):
    """A model's `seed` argument as the int it keeps: `seed`, or one drawn from NumPy's global
    RNG (so `keras.utils.set_random_seed` fixes it too)."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    try:
        if int(seed) == seed:
            return int(seed)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"seed must be an integer; got {seed!r}.")


def step_seed(model):
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
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])


def gradient_step(model, losses):
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


def clip_gradients(grads, clip_norm, optimizer):
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
    for i, v in zip(present, values):
        out[i] = v
    return out


def check_clip_norm(clip_norm):
    """A model's `clip_norm` argument: None (no clipping) or a positive float."""
    if clip_norm is None:
        return None
    # Infinity too is refused: tf.clip_by_global_norm(g, inf) gives NaN, not g.
    if not 0 < float(clip_norm) < float("inf"):
        raise ValueError(f"clip_norm must be > 0 and finite (or None: no clipping); got "
                         f"{clip_norm}.")
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


def resolve_jit_compile(model, jit_compile):
    """Validates `compile`'s jit_compile and returns whether the fused update uses XLA:
    True/"auto" -> XLA unless run_eagerly (replicated steps never use it, see train_step)."""
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto'; got {jit_compile!r}.")
    return bool(jit_compile) and not model.run_eagerly


class LatentVariableModel(keras.Model):
    """Base class: p(z) p(x|z) with an amortised posterior q(z|x), trained by model.fit.

    Args:
      z_dim: latent size.
      input_shape: the shape of one input, without the batch axis: (28, 28, 1) for MNIST as
        images, (32, 32, 3), (64,) for feature vectors; the default (784,) is MNIST's images as
        flat vectors. Inputs may come as [B, *input_shape] or flat, [B, prod(input_shape)]
        (`tfp_vae.checks.accepted_shapes`); the model works on them flat (`x_dim` values) and
        gives a user's encoder [B, *input_shape]. Every method returns flat [B, x_dim] images.
      x_dim: the older way to say input_shape=(x_dim,); give one or the other.
      likelihood: p(x|z), by name (`tfp_vae.layers.LIKELIHOODS`): "bernoulli" (binary pixels,
        the recipe), "continuous_bernoulli" (grayscale pixels in [0, 1]) or "gaussian"
        (real-valued features, a learned per-dimension scale). The inputs are checked for it
        (`check_inputs`): 0/1 pixels for the Bernoulli's bounds (grayscale in [0, 1] may still
        be encoded), pixels in [0, 1] for the continuous Bernoulli, finite values of any range
        for the Gaussian.
      beta: weight on KL in the ELBO objective (beta-VAE); 1 gives the true bound.
      objective: "elbo" (the default) or "iwae" (the importance-weighted bound with `iw`
        samples, the IWAE paper's estimator).
      iw: number of importance samples for the "iwae" objective.

      seed: keys the training steps' random draws with the step count (see `step_seed`);
        None draws one (from NumPy's global RNG). Kept in the config.
      clip_norm: clip each step's gradient to this global norm (None: no clipping); see
        `clip_gradients`.

    Metrics (train and test): `loss` (what is minimised), `nelbo`, `kl`, `rec`, and `niwae`
    under the IWAE objective; all are per-example means in nats.
    """

    analytic_kl = False

    def __init__(self, z_dim=10, input_shape=None, beta=1.0, objective="elbo", iw=1, seed=None,
                 clip_norm=None, likelihood="bernoulli", x_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.likelihood_name = layers.check_likelihood(likelihood)
        self.seed = training_seed(seed)
        self.clip_norm = check_clip_norm(clip_norm)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}.")
        if int(iw) < 1:
            raise ValueError(f"iw must be a positive number of samples; got {iw}.")
        if float(beta) < 0:
            raise ValueError(f"beta weights KL and must be >= 0; got {beta}.")
        self.input_shape = resolve_input_shape(input_shape, x_dim)
        self.z_dim, self.x_dim = int(z_dim), math.prod(self.input_shape)
        self.beta, self.objective, self.iw = float(beta), objective, int(iw)
        names = ["loss", "nelbo", "kl", "rec"] + (["niwae"] if objective == "iwae" else [])
        self._trackers = [keras.metrics.Mean(name=n) for n in names]

    # ---- what a subclass provides -------------------------------------------------------------

    def encode(self, x):
        """q(z|x): batch [B], event [z_dim]."""
        raise NotImplementedError

    def decode(self, z):
        """p(x|z): batch = z's leading dims, event [x_dim]."""
        raise NotImplementedError

    def prior(self):
        """p(z): batch [], event [z_dim]."""
        raise NotImplementedError

    # ---- inputs -------------------------------------------------------------------------------

    @property
    def input_problems(self):
        """The messages of `input_problem`'s codes (1-based): those of `IMAGE_PROBLEMS`, then
        the Gaussian likelihood's NaN/Inf features."""
        return IMAGE_PROBLEMS + (FEATURE_PROBLEM,)

    def check_inputs(self, x, check_values=True, bound=True):
        """Checks inputs x as the likelihood needs them and returns them as float32 [B, x_dim].

        Bernoulli: images (`check_images`, also [B, 28, 28]), binary when `bound` (the pixels
        go into the likelihood; `bound=False`, for what is only encoded, allows grayscale in
        [0, 1]); continuous Bernoulli: images with pixels in [0, 1]; Gaussian: finite features
        of any range (`check_features`). A ValueError eagerly, a graph assertion in a graph.
        `check_values=False` checks only the shape and dtype (the fused update checks the
        values with `input_problem` inside XLA instead).
        """
        if self.likelihood_name == "gaussian":
            return check_features(x, self.input_shape, check_values)
        return check_images(x, self.input_shape, binary=bound and self.likelihood_name == "bernoulli",
                            check_pixels=check_values)

    def input_problem(self, x, bound=True):
        """int32 code (0: fine) of the values of checked-shape inputs x, float32 [B, x_dim], as
        `check_inputs` checks them; the message is `input_problems[code - 1]`. Plain ops
        (XLA-safe)."""
        if self.likelihood_name == "gaussian":
            return tf.where(tf.reduce_all(tf.math.is_finite(x)), 0, len(IMAGE_PROBLEMS) + 1)
        return image_problem(x, binary=bound and self.likelihood_name == "bernoulli")

    # ---- bounds -------------------------------------------------------------------------------

    def kl(self, q, z):
        """KL(q(z|x) || p(z)) per example [B]: analytic if the model has it, else the one-sample
        estimate at z (the sample used for the reconstruction term), which is unbiased."""
        if self.analytic_kl:
            return tfd.kl_divergence(q, self.prior())
        return objectives.monte_carlo_kl(q.log_prob(z), self.prior().log_prob(z))

    def elbo_terms(self, x, seed=None):
        """One-sample ELBO terms for x [B, x_dim] (checked): dict of [B] tensors nelbo, kl, rec."""
        q = self.encode(x)
        z = q.sample(seed=seed)
        rec = -self.decode(z).log_prob(x)
        kl = self.kl(q, z)
        return {"nelbo": objectives.negative_elbo(-rec, kl), "kl": kl, "rec": rec}

    def elbo(self, x, seed=None):
        """Per-example ELBO (a lower bound on log p(x), nats) [B]; x is checked first."""
        x = self.check_inputs(x)
        return -self.elbo_terms(x, seed=seed)["nelbo"]

    def iwae_log_weights(self, x, m, seed=None):
        """log p(x|z_i), log p(z_i), log q(z_i|x) for z_i ~ q(z|x), i < m: each [m, B]."""
        return self._importance_samples(x, m, seed)[2:]

    def _importance_samples(self, x, m, seed=None):
        """q(z|x), z [m, B, z_dim] ~ q, and the three log-densities of `iwae_log_weights`."""
        q = self.encode(x)
        z = q.sample(m, seed=seed)
        return q, z, self.decode(z).log_prob(x), self.prior().log_prob(z), q.log_prob(z)

    def iwae(self, x, m, seed=None, chunk=None):
        """Per-example IWAE bound with m samples [B]; m = 1 is the ELBO with a sampled KL.

        Samples are drawn `chunk` at a time and folded into a running log-sum-exp, so memory is
        O(chunk * B) whatever m is. m may be a tensor (for serving).
        """
        x = self.check_inputs(x)
        chunk = int(chunk or 1000)
        if isinstance(m, int) and m < 1:
            raise ValueError(f"The IWAE bound needs m >= 1 samples; got m={m}.")
        m = tf.convert_to_tensor(m, tf.int32)
        tf.debugging.assert_positive(m, "The IWAE bound needs m >= 1 samples.")
        if seed is None:
            seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
        seed = tfp.random.sanitize_seed(seed)

        def body(done, acc, seed):
            size = tf.minimum(chunk, m - done)
            seed, this_seed = tfp.random.split_seed(seed)
            lse = tf.reduce_logsumexp(
                objectives.log_weights(*self.iwae_log_weights(x, size, seed=this_seed)), axis=0)
            return done + size, tf.reduce_logsumexp(tf.stack([acc, lse]), axis=0), seed

        acc = tf.fill([tf.shape(x)[0]], tf.constant(-np.inf, tf.float32))
        _, acc, _ = tf.while_loop(lambda done, acc, seed: done < m, body,
                                  (tf.constant(0), acc, seed))
        return acc - tf.math.log(tf.cast(m, tf.float32))

    def compute_terms(self, x, training=False, seed=None):
        """Per-example [B] tensors: `loss` (minimised) and every reported metric. `seed`: a
        stateless seed (int32 [2]) for the posterior samples, or None (stateful)."""
        if self.objective == "elbo":
            terms = self.elbo_terms(x, seed=seed)
            terms["loss"] = objectives.negative_elbo(-terms["rec"], terms["kl"], self.beta)
            return terms
        # IWAE: one set of `iw` samples gives the bound; its first sample gives the ELBO terms.
        q, z, log_lik, log_prior, log_post = self._importance_samples(x, self.iw, seed)
        niwae = -objectives.iwae_bound(log_lik, log_prior, log_post)
        kl = (self.kl(q, z[0]) if self.analytic_kl
              else objectives.monte_carlo_kl(log_post[0], log_prior[0]))
        rec = -log_lik[0]
        return {"loss": niwae, "niwae": niwae, "nelbo": rec + kl, "kl": kl, "rec": rec}

    # ---- Keras plumbing -----------------------------------------------------------------------

    build = build_at_construction

    @property
    def metrics(self):
        return list(self._trackers)

    _maybe_symbolic_build = symbolic_build_under_strategy

    def _record(self, terms, ctx=None):
        """Adds the per-example terms to the metrics; returns their means so far (pooled over
        all replicas when `ctx`, a replica context, is given)."""
        for tracker in self._trackers:
            tracker.update_state(terms[tracker.name])
        if ctx is not None:
            return global_results(ctx, self._trackers)
        return {t.name: t.result() for t in self._trackers}

    @staticmethod
    def _images_of(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def compile(self, optimizer="adam", jit_compile="auto", **kwargs):
        """Keras' `compile`, except that `jit_compile` applies to the fused update only.

        XLA drops assertion ops, so under Keras' own `jit_compile` a batch of non-binary pixels
        would train silently. Here Keras compiles no XLA; `train_step` asserts on the pixels in
        the graph and XLA compiles the rest (`_fused_update`), which applies nothing when the
        pixels fail. "auto" is XLA for a single device (fastest on CPU and GPU, see
        benchmarks/); replicated steps (tf.distribute) and `run_eagerly` never use it.
        """
        super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
        self.xla_update = resolve_jit_compile(self, jit_compile)
        self._xla_update_fn = None
        self.jit_compile_setting = jit_compile

    get_compile_config = saved_compile_config
    compile_from_config = compile_from_saved_config

    def _fused_update(self, x):
        """One gradient step and the metric updates, unless the inputs x fail a check.

        Returns (problem, metric results), `problem` from `input_problem`: nothing changes
        (weights, optimizer state, metrics) when it is not 0. Compiled with XLA when
        `xla_update` (see `compile`).
        """
        problem = self.input_problem(x)

        def losses():
            terms = self.compute_terms(x, training=True, seed=step_seed(self))
            return tf.reduce_mean(terms["loss"]), terms

        guarded_update(self, problem, losses, self._record)
        return problem, {t.name: t.result() for t in self._trackers}

    def train_step(self, data):
        """One gradient step on the mean per-example loss of the batch.

        On one device, the pixels are checked inside the (XLA-compiled) fused update and
        asserted on outside it (`_fused_update`).

        Replicated (tf.distribute, N > 1 replicas): each replica gets a slice of the global
        batch, and its loss is the *sum* of its per-example losses divided by the *global* batch
        size (all-reduced); the optimizer sums the replicas' gradients, so the update is exactly
        the single-device one on the whole batch. Metrics are pooled over all examples.
        """
        ctx = replica_context()
        if ctx is None:
            x = self.check_inputs(self._images_of(data), check_values=False)
            if not self.optimizer.built:  # Not inside the update's tf.cond or XLA function.
                with tf.init_scope():
                    self.optimizer.build(self.trainable_variables)
            problem, results = compiled_update(self, self._fused_update)(x)
            return raise_on_problem(results, problem, self.input_problems)
        x = self.check_inputs(self._images_of(data))
        (global_batch,) = global_counts(ctx, tf.shape(x)[0])

        def losses():
            terms = self.compute_terms(x, training=True, seed=step_seed(self))
            return tf.reduce_sum(terms["loss"]) / global_batch, terms

        return self._record(gradient_step(self, losses), ctx)

    def test_step(self, data):
        x = self.check_inputs(self._images_of(data))
        return self._record(self.compute_terms(x, training=False), replica_context())

    def fit(self, *args, **kwargs):
        """Keras' `fit`. Images given as arrays (x, validation_data's x; NumPy or eager tensors)
        are checked up front, as `check_inputs` checks them, so that uint8 or grayscale pixels
        (for the Bernoulli) fail with its ValueError before the first step; datasets are checked
        in the step."""
        arguments = call_arguments(keras.Model.fit, self, args, kwargs)
        self._check_image_arrays(arguments.get("x"))
        self._check_image_arrays(validation_inputs(arguments.get("validation_data")))
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """Keras' `evaluate`, with array images checked up front (see `fit`; not again when
        `fit` evaluates its validation data, which it checked)."""
        if not kwargs.get("_use_cached_eval_dataset"):
            self._check_image_arrays(
                call_arguments(keras.Model.evaluate, self, args, kwargs).get("x"))
        return super().evaluate(*args, **kwargs)

    def _check_image_arrays(self, x):
        check_array(self._images_of(x), lambda rows: self.check_inputs(rows))

    def get_config(self):
        return {**super().get_config(), "z_dim": self.z_dim,
                "input_shape": list(self.input_shape),
                "beta": self.beta, "objective": self.objective, "iw": self.iw, "seed": self.seed,
                "clip_norm": self.clip_norm, "likelihood": self.likelihood_name}

    # ---- uses -----------------------------------------------------------------------------------

    def sample(self, n, seed=None):
        """n images from the model: the means [n, x_dim] of p(x|z), z ~ p(z) (pixel
        probabilities for the Bernoulli; for the continuous Bernoulli the mean, not its
        parameter lambda)."""
        z = self.prior().sample(check_count(n), seed=seed)
        return self.decode(z).mean()

    def reconstruct(self, x):
        """The mean [B, x_dim] of p(x|z) at the posterior mean of q(z|x) (pixel probabilities
        for the Bernoulli); x is checked (`check_inputs(x, bound=False)`: grayscale allowed)."""
        x = self.check_inputs(x, bound=False)
        return self.decode(self.encode(x).mean()).mean()

    def call(self, x, training=False):
        """Reconstructions [B, x_dim] (see `reconstruct`; `predict` calls it)."""
        return self.reconstruct(x)

    def serving_functions(self):
        """name -> (function, input_signature) for the SavedModel (see tfp_vae.export).

        Every input is checked in the graph (a bad one raises tf.errors.InvalidArgumentError
        whose message is the sentence `check_images` & co. raise in Python): `x` float32 inputs
        [B, x_dim] as the likelihood wants them (`check_inputs`): images (or [B, 28, 28]), binary
        for a Bernoulli's `elbo` and `log_likelihood` (grayscale in [0, 1] allowed for `encode`),
        in [0, 1] for the continuous Bernoulli; finite features for the Gaussian. `z` finite
        float32 latents [B, z_dim], `n` an int32 scalar >= 0, `m` one >= 1, `seed` int32 [2].
        The specs leave the shapes open so that a wrong shape reaches the check (and its
        message) rather than TensorFlow's signature matching. An empty batch (B = 0, n = 0)
        gives empty outputs of the usual trailing shapes.

        `decode(z)` returns the parameters of p(x|z): for the Bernoulli `probs` (its mean) and
        `logits`; for the continuous Bernoulli `mean` (not sigmoid(logits)) and `logits`; for
        the Gaussian `mean` and `scale` (the learned per-dimension standard deviation, broadcast
        to [B, x_dim]). `sample(n)`'s `images` are means of p(x|z) for every likelihood.
        """
        x = tf.TensorSpec(None, tf.float32, name="x")
        z = tf.TensorSpec(None, tf.float32, name="z")
        n = tf.TensorSpec(None, tf.int32, name="n")
        m = tf.TensorSpec(None, tf.int32, name="m")
        seed = tf.TensorSpec(None, tf.int32, name="seed")

        def encode(x):
            q = self.encode(self.check_inputs(x, bound=False))
            return {"mean": q.mean(), "variance": q.variance()}

        def decode(z):
            p = self.decode(check_features(z, self.z_dim, name="latents"))
            if self.likelihood_name == "bernoulli":
                return {"probs": p.mean(), "logits": p.distribution.logits}
            if self.likelihood_name == "continuous_bernoulli":
                return {"mean": p.mean(), "logits": p.distribution.logits}
            return {"mean": p.mean(), "scale": p.stddev()}

        def sample(n):
            z = self.prior().sample(check_count(n))
            return {"images": self.decode(z).mean(), "z": z}

        def elbo(x, seed):
            def bound(x, seed):
                terms = self.elbo_terms(x, seed=seed)
                return {"elbo": -terms["nelbo"], "kl": terms["kl"], "rec": terms["rec"]}

            return padded_batch(bound, self.check_inputs(x), check_seed(seed))

        def log_likelihood(x, m, seed):
            m = check_count(m, "m", minimum=1, what="importance samples")
            x = self.check_inputs(x)
            # An empty batch goes through as one row (see padded_batch): one sample will do.
            m = tf.where(tf.shape(x)[0] > 0, m, 1)
            return padded_batch(lambda x, seed: {"log_likelihood": self.iwae(x, m, seed=seed)},
                                x, check_seed(seed))

        return {"encode": (encode, [x]), "decode": (decode, [z]), "sample": (sample, [n]),
                "elbo": (elbo, [x, seed]), "log_likelihood": (log_likelihood, [x, m, seed])}

    def training_functions(self):
        """name -> (function, input_signature) that train the SavedModel (see tfp_vae.export).

        `train_step(x)`: one optimizer step on inputs x, float32 [B, x_dim] (checked as in
        `train_step`: binary images for the Bernoulli, see `check_inputs`): the gradient of the
        mean `loss` of `compute_terms` is applied with `self.optimizer`, which updates the
        model's variables and the optimizer's state (Adam's moments, its iteration count).
        Returns the batch means of `loss`, `nelbo`, `kl`, `rec` (and `niwae` under the IWAE
        objective), computed before the update (float32 scalars), `optimizer_iterations` (int64, counted after the update) and `learning_rate` (float32).

        Unlike `train_step` under model.fit, nothing goes into Keras' running metrics: each call
        reports its own batch. Needs a compiled model whose optimizer is built
        (`tfp_vae.export.export(..., trainable=True)` builds it).
        """
        x = tf.TensorSpec([None, self.x_dim], tf.float32, name="x")

        def train_step(x):
            x = self.check_inputs(x)

            def losses():
                terms = self.compute_terms(x, training=True, seed=step_seed(self))
                return tf.reduce_mean(terms["loss"]), terms

            return training_outputs(self, gradient_step(self, losses))

        return {"train_step": (train_step, [x])}
