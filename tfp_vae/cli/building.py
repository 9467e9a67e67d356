"""bin/train's building: the compiled model its settings describe (`build_model`), the
learning rate, and the step and XLA settings. The flags live in `tfp_vae.cli.train`."""

import inspect
import types

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS

RECIPE_STEPS = {"vae": 20000, "gmvae": 20000, "ssvae": 30000, "m1m2": 30000}
SEMI_SUPERVISED = ("ssvae", "m1m2")


def steps_per_execution():
    """--steps_per_execution, or its default: 1 under a tf.distribute strategy (Keras' multi-step
    loop fails under MultiWorkerMirroredStrategy), else the largest divisor of --steps_per_epoch
    up to 25."""
    if FLAGS.steps_per_execution:
        return FLAGS.steps_per_execution
    if FLAGS.strategy != "default":
        return 1
    return max(d for d in range(1, 26) if FLAGS.steps_per_epoch % d == 0)


def use_xla():
    """--xla when given, else the models' "auto" (XLA, except for convolutions on a machine
    without a GPU: XLA's CPU convolutions are ~20x slower than TensorFlow's graph mode)."""
    return FLAGS.xla if FLAGS["xla"].present else "auto"


def image_shape(dataset):
    """(H, W, C) of one training image for --arch=conv: grayscale [N, H, W] images are
    (H, W, 1), flat [N, 784] ones (28, 28, 1); UsageError for anything the conv networks cannot
    take (they need H and W divisible by 4)."""
    shape = tuple(int(d) for d in dataset.x_train.shape[1:])
    if len(shape) == 2:
        shape += (1,)
    elif shape == (784,):
        shape = (28, 28, 1)
    if len(shape) != 3 or shape[0] % 4 or shape[1] % 4:
        raise app.UsageError(
            f"--arch=conv needs images of shape (H, W) or (H, W, C) with H "
            f"and W divisible by 4; {dataset.source} has training images of "
            f"shape {list(shape)}."
        )
    return shape


# The flags `build_model` reads (its `settings`).
MODEL_FLAGS = (
    "model",
    "likelihood",
    "seed",
    "clip_norm",
    "z_dim",
    "hidden",
    "arch",
    "beta",
    "objective",
    "iw",
    "k",
    "learn_mixture_weights",
    "gen_weight",
    "class_weight",
    "labelled_bound",
    "m1_path",
    "active_threshold",
    "ema_momentum",
)


def model_settings():
    """name -> value of the MODEL_FLAGS, for `build_model`."""
    return {name: FLAGS[name].value for name in MODEL_FLAGS}


def build_model(dataset, settings, learning_rate, jit_compile="auto", steps_per_execution=1):
    """The compiled model that `settings` (flag name -> value, every one of MODEL_FLAGS; see
    `model_settings`) describe, for `dataset` (whose image shape the conv networks take, and
    whose training images pick M1M2's active units). UsageError for settings that cannot make
    a model. The optimizer is Adam at `learning_rate` (with EMA when ema_momentum is set);
    `jit_compile` and `steps_per_execution` go to `compile`."""
    import keras

    from tfp_vae import models, networks

    s = types.SimpleNamespace(**settings)
    keras.utils.set_random_seed(s.seed)
    # The seed keys the training noise (see models.core.step_seed).
    kwargs = {"seed": s.seed, "clip_norm": s.clip_norm}
    if s.z_dim is not None:
        kwargs["z_dim"] = s.z_dim
    if s.model in SEMI_SUPERVISED:
        kwargs.update(
            gen_weight=s.gen_weight, class_weight=s.class_weight, labelled_bound=s.labelled_bound
        )
    if s.model != "m1m2":  # M1+M2 takes its likelihood and input shape from M1.
        kwargs["likelihood"] = s.likelihood
        shape = () if dataset is None else tuple(int(d) for d in dataset.x_train.shape[1:])
        if shape not in ((), (28, 28), (784,)):
            # The data's own shape (MNIST's keeps the recipe's flat (784,)): any image or vector.
            kwargs["input_shape"] = shape
    if s.model not in SEMI_SUPERVISED:
        kwargs.update(beta=s.beta, objective=s.objective, iw=s.iw)
        if s.hidden:
            kwargs.update(hidden=[int(h) for h in s.hidden])
        if s.arch == "conv":
            shape = image_shape(dataset)
            z_dim = kwargs.get("z_dim", inspect.signature(models.VAE).parameters["z_dim"].default)
            kwargs.update(
                input_shape=shape,
                encoder=networks.conv_encoder(shape, 2 * z_dim),
                decoder=networks.conv_decoder(z_dim, shape),
            )
    if s.model == "gmvae":
        kwargs.update(k=s.k, learn_mixture_weights=s.learn_mixture_weights)
    if s.model == "m1m2":
        try:
            m1 = common.load_model(s.m1_path, compile=False)
            if s.active_threshold > 0:
                units = models.M1M2.active_units(
                    m1, m1.eval_inputs(dataset.x_train[:1000]), s.active_threshold
                )
                if not units:
                    raise app.UsageError(
                        f"No unit of M1's z has a posterior-mean std above "
                        f"--active_threshold={s.active_threshold}; lower "
                        "it (0 models every unit)."
                    )
                print(f"M2 models {len(units)} of M1's {m1.z_dim} latent units: {units}")
                kwargs["feature_indices"] = units
            model = models.M1M2(m1, **kwargs)
        except ValueError as e:  # Not a VAE, or no active unit: say so in one line.
            raise app.UsageError(f"--m1_path={s.m1_path}: {e}") from e
    else:
        try:
            model = models.MODELS[s.model](**kwargs)
        except ValueError as e:  # Settings the model cannot take: one line.
            raise app.UsageError(str(e)) from e
    ema = {"use_ema": True, "ema_momentum": s.ema_momentum} if s.ema_momentum else {}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, **ema),
        # XLA for the fused update only; replicated steps never use it (see the
        # models' compile).
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


RECIPE_BATCH = 97


def learning_rate(total_steps):
    """--learning_rate, scaled for --batch_size by --lr_scaling; with --lr_schedule=cosine, a
    schedule from it down to 0 at `total_steps`."""
    lr = FLAGS.learning_rate
    if FLAGS.lr_scaling == "sqrt":
        lr *= (FLAGS.batch_size / RECIPE_BATCH) ** 0.5
    if FLAGS.lr_schedule == "cosine":
        import keras

        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    return lr
