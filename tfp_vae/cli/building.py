"""bin/train's building: the compiled model its settings describe (`build_model`), the
learning rate, and the step and XLA settings. The flags live in `tfp_vae.cli.train`."""

import functools

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS

RECIPE_STEPS = {"vae": 20000, "gmvae": 20000, "ssvae": 30000, "m1m2": 30000}
SEMI_SUPERVISED = ("ssvae", "m1m2")


def steps_per_execution(steps_per_epoch):
    """--steps_per_execution, or its default: 1 under a tf.distribute strategy (Keras' multi-step
    loop fails under MultiWorkerMirroredStrategy), else the largest divisor up to 25 of the
    epoch's steps (`steps_per_epoch`: --steps_per_epoch, or --steps when smaller; Keras runs
    whole executions, so one that does not divide the epoch trains past its end)."""
    if FLAGS.steps_per_execution:
        return FLAGS.steps_per_execution
    if FLAGS.strategy != "default":
        return 1
    return max(d for d in range(1, 26) if steps_per_epoch % d == 0)


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


# The flags `build_model` reads besides the models' parameters: the model, M1 and its active
# units (m1m2), the kind of networks (vae and gmvae) and the optimizer's weight averaging.
BUILD_FLAGS = ("model", "m1_path", "active_threshold", "arch", "ema_momentum")


# The flag tuples below come from the models' tables, read once the flags are parsed: the models
# import TensorFlow, which the binaries defer (see tfp_vae/__init__.py). `MODEL_FLAGS` & co. are
# also this module's attributes (`__getattr__`).


@functools.cache
def parameter_flags():
    """The flags of the models' parameters (`tfp_vae.models.params.Param.flag`), over every
    model of `models.MODELS`, in table order."""
    from tfp_vae import models
    from tfp_vae.models import params

    return tuple(
        dict.fromkeys(
            name
            for cls in models.MODELS.values()
            for name, param in params.table(cls).items()
            if param.flag
        )
    )


def model_flags():
    """The flags `build_model` reads (its `settings`): BUILD_FLAGS and `parameter_flags`."""
    return BUILD_FLAGS + parameter_flags()


@functools.cache
def run_defining_model_flags():
    """Those of `model_flags` that define a run (`cli.running.RUN_FLAGS`): all but the
    parameters that take effect on --resume (`Param.run_defining`: --clip_norm)."""
    from tfp_vae import models
    from tfp_vae.models import params

    tables = [params.table(cls) for cls in models.MODELS.values()]
    return BUILD_FLAGS + tuple(
        name
        for name in parameter_flags()
        if any(table[name].run_defining for table in tables if name in table)
    )


_CONSTANTS = {
    "PARAMETER_FLAGS": parameter_flags,
    "MODEL_FLAGS": model_flags,
    "RUN_DEFINING_MODEL_FLAGS": run_defining_model_flags,
}


def __getattr__(name):
    if name in _CONSTANTS:
        return _CONSTANTS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_settings():
    """name -> value of the MODEL_FLAGS, for `build_model`."""
    return {name: FLAGS[name].value for name in model_flags()}


def model_arguments(cls, settings):
    """The constructor arguments of model class `cls` that `settings` (flag name -> value) set:
    the value of each flag of its parameters (`params.table(cls)`) but None (the model's
    default)."""
    from tfp_vae.models import params

    return {
        name: settings[name]
        for name, param in params.table(cls).items()
        if param.flag and settings[name] is not None
    }


def build_model(dataset, settings, learning_rate, jit_compile="auto", steps_per_execution=1):
    """The compiled model that `settings` (flag name -> value, every one of MODEL_FLAGS; see
    `model_settings`) describe, for `dataset` (whose image shape the conv networks take, and
    whose training images pick M1M2's active units). UsageError for settings that cannot make
    a model. The optimizer is Adam at `learning_rate` (with EMA when ema_momentum is set);
    `jit_compile` and `steps_per_execution` go to `compile`."""
    import keras

    from tfp_vae import models, networks
    from tfp_vae.models import params

    name = settings["model"]
    cls = models.MODELS[name]
    keras.utils.set_random_seed(settings["seed"])
    # The flags of the model's parameters (the seed keys the training noise: core.step_seed).
    kwargs = model_arguments(cls, settings)
    if "input_shape" in params.table(cls):  # M1+M2 takes its input shape from M1.
        shape = () if dataset is None else tuple(int(d) for d in dataset.x_train.shape[1:])
        if shape not in ((), (28, 28), (784,)):
            # The data's own shape (MNIST's keeps the recipe's flat (784,)): any image or vector.
            kwargs["input_shape"] = shape
    if settings["arch"] == "conv" and name not in SEMI_SUPERVISED:
        shape = image_shape(dataset)
        z_dim = kwargs.get("z_dim", params.defaults(cls)["z_dim"])
        kwargs.update(
            input_shape=shape,
            encoder=networks.conv_encoder(shape, 2 * z_dim),
            decoder=networks.conv_decoder(z_dim, shape),
        )
    if name == "m1m2":
        model = _build_m1m2(dataset, settings, kwargs)
    else:
        try:
            model = cls(**kwargs)
        except ValueError as e:  # Settings the model cannot take: one line.
            raise app.UsageError(str(e)) from e
    ema = settings["ema_momentum"]
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate, **({"use_ema": True, "ema_momentum": ema} if ema else {})
        ),
        # XLA for the fused update only; replicated steps never use it (see the
        # models' compile).
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def _build_m1m2(dataset, settings, kwargs):
    """M1M2 on the VAE at --m1_path, modelling the units of its z above --active_threshold."""
    from tfp_vae.models import M1M2

    m1_path, threshold = settings["m1_path"], settings["active_threshold"]
    try:
        m1 = common.load_model(m1_path, compile=False)
        if threshold > 0:
            units = M1M2.active_units(m1, m1.eval_inputs(dataset.x_train[:1000]), threshold)
            if not units:
                raise app.UsageError(
                    f"No unit of M1's z has a posterior-mean std above "
                    f"--active_threshold={threshold}; lower "
                    "it (0 models every unit)."
                )
            print(f"M2 models {len(units)} of M1's {m1.z_dim} latent units: {units}")
            kwargs["feature_indices"] = units
        return M1M2(m1, **kwargs)
    except ValueError as e:  # Not a VAE, or no active unit: say so in one line.
        raise app.UsageError(f"--m1_path={m1_path}: {e}") from e


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
