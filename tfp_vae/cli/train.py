"""Trains a model with model.fit and writes checkpoints, TensorBoard logs, the final model,
metrics.json (full test set, static binarisation), samples.png and reconstructions.png.

Example (the VAE recipe):
  train --model=vae --steps=20000 --out_dir=runs/vae

On several GPUs or hosts (--batch_size is the global batch, split across the replicas):
  train --strategy=mirrored --out_dir=runs/vae
  TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker",
  "index": 0}}' train --strategy=multi_worker --out_dir=runs/vae   # on h1; index 1 on h2
"""

import contextlib
import dataclasses
import math
import os
import sys
import time

from absl import app, flags

from tfp_vae import rundir
from tfp_vae.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "model",
    "vae",
    ["vae", "gmvae", "ssvae", "m1m2"],
    "Which model: vae (N(0, I) prior), gmvae (learned mixture-of-Gaussians prior), "
    "ssvae (semi-supervised M2: classifier + conditional VAE) or m1m2 (M2 on the "
    "latent features of the VAE at --m1_path, which stays fixed).",
)
flags.DEFINE_string(
    "m1_path",
    None,
    "m1m2: the trained VAE (M1) whose latent features M2 "
    "models: a .keras file or a `train` --out_dir, e.g. from "
    "`train --model=vae --z_dim=50 --hidden=600,600 --steps=50000`.",
)
flags.DEFINE_integer("k", 500, "gmvae: number of mixture components of the prior.", lower_bound=1)
flags.DEFINE_bool(
    "learn_mixture_weights",
    False,
    "gmvae: train the mixture weights too (default: uniform, fixed).",
)
flags.DEFINE_float(
    "active_threshold",
    0.1,
    "m1m2: M2 models only the units of M1's z whose "
    "posterior mean has a std above this over 1000 training images (0.1, as the "
    "paper's code); the others keep the prior N(0, 1). 0 models every unit.",
    lower_bound=0.0,
)
flags.DEFINE_integer(
    "labels_per_class",
    10,
    "ssvae/m1m2: labelled training examples per "
    "class; the rest of the training set is used unlabelled.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "label_seed",
    0,
    "ssvae/m1m2: seed that picks the labelled examples.",
    lower_bound=0,
    upper_bound=2**31 - 1,
)
flags.DEFINE_string(
    "labelled_indices",
    None,
    "ssvae/m1m2: text file of training-set indices "
    "to use as the labelled set (whitespace or comma separated, '#' comments) "
    "instead of drawing --labels_per_class by --label_seed.",
)
flags.DEFINE_integer(
    "labelled_batch_size",
    None,
    "ssvae/m1m2: draw this many labelled examples "
    "with replacement at every step instead of taking the whole labelled set "
    "(the recipe); for large --batch_size runs.",
    lower_bound=1,
)
flags.DEFINE_float(
    "gen_weight",
    1.0,
    "ssvae/m1m2: weight on the labelled and unlabelled bounds (0 trains the classifier alone).",
    lower_bound=0.0,
)
flags.DEFINE_float(
    "class_weight", 100.0, "ssvae/m1m2: weight on the labelled cross-entropy.", lower_bound=0.0
)
flags.DEFINE_bool(
    "labelled_bound",
    True,
    "ssvae/m1m2: include the labelled bound in the loss; "
    "--nolabelled_bound gives the course reference's loss (unlabelled bound + "
    "weighted cross-entropy).",
)
flags.DEFINE_enum(
    "labelled_binarization",
    None,
    ["dynamic", "static", "none"],
    "ssvae/m1m2: binarisation of the labelled set (default: --binarization); 'none' "
    "(grayscale) needs --nolabelled_bound.",
)
flags.DEFINE_integer(
    "z_dim",
    None,
    "Latent dimension (default: the recipe's, 10 for vae and gmvae, 64 for ssvae and m1m2).",
    lower_bound=1,
)
flags.DEFINE_list(
    "hidden",
    None,
    "vae/gmvae: hidden layer sizes of the encoder and decoder "
    "MLPs, comma separated (default: the recipe's 300,300). An M1 feature extractor "
    "for --model=m1m2 uses 600,600 with --z_dim=50.",
)
flags.DEFINE_enum(
    "arch",
    "mlp",
    ["mlp", "conv"],
    "vae/gmvae: the encoder and decoder networks: "
    "mlp (the recipe's MLPs, sized by --hidden) or conv (networks.conv_encoder/"
    "conv_decoder on the dataset's image shape, (28, 28, 1) for MNIST and "
    "Fashion-MNIST: two stride-2 convolutions each way). Without a GPU conv trains "
    "without XLA unless --xla is given: XLA's CPU convolutions are ~20x slower than "
    "TensorFlow's (benchmarks/conv_throughput.py).",
)
flags.DEFINE_float(
    "beta", 1.0, "Weight on KL in the ELBO (beta-VAE); 1 is the true bound.", lower_bound=0.0
)
flags.DEFINE_enum(
    "objective",
    "elbo",
    ["elbo", "iwae"],
    "Training objective: the ELBO, or the importance-weighted bound with --iw samples.",
)
flags.DEFINE_integer("iw", 1, "Importance samples for --objective=iwae.", lower_bound=1)
flags.DEFINE_integer(
    "steps",
    None,
    "Gradient steps, rounded up to whole --steps_per_epoch "
    "(default: the recipe's, 20000 for vae and gmvae, 30000 for ssvae and m1m2).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "steps_per_epoch",
    1000,
    "Steps between checkpoints, validation and TensorBoard points.",
    lower_bound=1,
)
flags.DEFINE_integer("batch_size", 97, "Training batch size.", lower_bound=1)
flags.DEFINE_bool(
    "xla",
    True,
    "Compile each update with XLA (the pixel and label checks stay "
    "outside it); the fastest setting on CPU (see benchmarks/). Unless given, off "
    "for --arch=conv on a machine without a GPU (XLA's CPU convolutions are ~20x "
    "slower). Not used with --strategy other than default.",
)
flags.DEFINE_integer(
    "steps_per_execution",
    None,
    "Training steps per call into the TF graph "
    "(Keras steps_per_execution); must divide --steps_per_epoch. Progress, "
    "the NaN check and callbacks see every this many steps. Default: the "
    "largest divisor of --steps_per_epoch up to 25 (1 with a --strategy).",
    lower_bound=1,
)
flags.DEFINE_float(
    "learning_rate",
    1e-3,
    "Adam learning rate (at the recipe's batch of 97; see --lr_scaling).",
    lower_bound=0.0,
)
flags.DEFINE_enum(
    "lr_scaling",
    "none",
    ["none", "sqrt"],
    "How the learning rate follows "
    "--batch_size: none (--learning_rate as given) or sqrt (--learning_rate * "
    "sqrt(batch_size / 97), the square-root rule for Adam, for large batches).",
)
flags.DEFINE_enum(
    "lr_schedule",
    "constant",
    ["constant", "cosine"],
    "Learning rate over the run: constant (the recipe) or cosine (from --learning_rate "
    "down to 0 at --steps, keras.optimizers.schedules.CosineDecay; it follows the "
    "optimizer's step count, so a resumed run goes on where it was, and a larger --steps "
    "on resume stretches it). A run resumes with the setting it was started with.",
)
flags.DEFINE_float(
    "clip_norm",
    None,
    "Clip each step's gradient to this global norm (the whole "
    "batch's gradient, also under --strategy); default: no clipping. Takes effect "
    "on --resume.",
)
flags.register_validator(
    "clip_norm",
    lambda v: v is None or 0 < v < float("inf"),
    message="--clip_norm must be > 0 and finite (leave it out for no clipping).",
)
flags.DEFINE_float(
    "ema_momentum",
    0.0,
    "If > 0, keep an exponential moving average of the "
    "weights with this momentum (Polyak averaging, e.g. 0.999) and end training "
    "with the averaged weights. 0 (the recipe) turns it off.",
    lower_bound=0.0,
    upper_bound=0.999999,
)
flags.DEFINE_string(
    "dataset",
    "mnist",
    "Training data: mnist or fashion_mnist (found as "
    "--data_dir says, and never one for the other: their files' checksums are "
    "checked), or npz:PATH, your own .npz with arrays x_train and x_test (uint8 "
    "[N, 28, 28] or [N, 784], or floats in [0, 1]) and optional y_train and "
    "y_test (labels 0..9, needed by ssvae and m1m2). metrics.json records the "
    "files read and their SHA-256.",
)

flags.register_validator("dataset", common.check_dataset_flag)


flags.DEFINE_string(
    "data_dir",
    None,
    "Directory holding the dataset files (IDX .gz or .npz); "
    "default: $TFP_VAE_DATA_DIR, then /usr/share/datasets, the Keras cache, "
    "download.",
)
flags.DEFINE_enum(
    "binarization",
    None,
    ["dynamic", "static", "none"],
    "How the training images are prepared; default: the likelihood's (dynamic, a fresh "
    "Bernoulli draw per batch, for bernoulli: the recipe; none, grayscale as it is, for the "
    "others). static binarises once; a non-binary likelihood is never fed binarised images.",
)
flags.DEFINE_string(
    "likelihood",
    "bernoulli",
    "p(x|z) by name: bernoulli (binary pixels, the recipe), continuous_bernoulli (grayscale "
    "pixels in [0, 1]), gaussian (real values, a learned per-dimension scale), "
    "heteroscedastic_gaussian (a variance per dimension and example), or one your --import "
    "registered (tfp_vae.likelihoods.register). m1m2 takes M1's.",
)
common.define_import_flag()
flags.DEFINE_string(
    "out_dir", None, "Where to write checkpoints, logs, the model and images.", required=True
)
flags.DEFINE_integer(
    "seed",
    0,
    "Random seed for initialisation, shuffling and sampling.",
    lower_bound=0,
    upper_bound=2**31 - 1,
)
flags.DEFINE_bool(
    "resume",
    False,
    "Continue from the checkpoint in --out_dir (weights, optimizer "
    "state and step) instead of refusing to touch an existing run.",
)
flags.DEFINE_float(
    "validation_split",
    0,
    "Training examples held out for validation at each epoch end (the val_* metrics in the "
    "progress bar, TensorBoard and metrics.json's validation_metrics): a count (e.g. 5000) or, "
    "below 1, a fraction of the training set (e.g. 0.1), drawn by --validation_seed. They are "
    "not trained on (nor, for ssvae and m1m2, drawn as labelled examples); the test set is "
    "only evaluated at the end (metrics.json). 0 (the recipes): train on every training "
    "example, no validation. A run resumes with the split it was started with.",
    lower_bound=0,
)
flags.DEFINE_integer(
    "validation_seed",
    0,
    "The seed that draws --validation_split's examples (the same for every model and --seed).",
    lower_bound=0,
    upper_bound=2**31 - 1,
)
flags.DEFINE_integer(
    "validation_examples",
    None,
    "Removed: it validated on test images. Use --validation_split (held-out training examples).",
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker"],
    "tf.distribute strategy: default (one device), mirrored (every local GPU, "
    "synchronous data parallelism) or multi_worker (MultiWorkerMirroredStrategy "
    "across hosts, configured by the TF_CONFIG environment variable; run the same "
    "command on every worker, and the non-chief workers write to "
    "OUT_DIR/worker-<index>). --batch_size is the global batch, split across the "
    "replicas; the update is the single-device one on the whole batch.",
)
flags.DEFINE_bool(
    "mixed_precision",
    False,
    "Mixed precision: the networks compute in bfloat16 (CPUs, GPUs from compute "
    "capability 8.0) or float16 with loss scaling (older GPUs) with float32 "
    "weights; every log-probability, log-sum-exp and loss stays float32.",
)
flags.DEFINE_integer(
    "verbose",
    1,
    "Keras verbosity: 0 silent, 1 progress bar (on a terminal; 2 when stdout is a file or "
    "pipe), 2 one line/epoch.",
    lower_bound=0,
    upper_bound=2,
)


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
    import inspect
    import types

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
        shape = tuple(int(d) for d in dataset.x_train.shape[1:])
        if shape not in ((28, 28), (784,)):
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.strategy == "multi_worker" and (FLAGS.steps_per_execution or 1) > 1:
        raise app.UsageError(
            "--strategy=multi_worker runs one step per execution; leave "
            "--steps_per_execution unset or 1."
        )
    if (FLAGS.model == "m1m2") != (FLAGS.m1_path is not None):
        raise app.UsageError(
            "--m1_path (the trained VAE whose features M2 models) goes with "
            "--model=m1m2, and --model=m1m2 needs it."
        )
    if FLAGS["hidden"].present and not FLAGS.hidden:
        raise app.UsageError(
            "--hidden is empty; give layer sizes (e.g. --hidden=300,300) or "
            "leave it out for the recipe's."
        )
    if not math.isfinite(FLAGS.learning_rate):
        raise app.UsageError(f"--learning_rate must be a finite number; got {FLAGS.learning_rate}.")
    if FLAGS.hidden and not all(h.isdigit() and int(h) > 0 for h in FLAGS.hidden):
        raise app.UsageError(
            f"--hidden must be positive integers, comma separated; got {','.join(FLAGS.hidden)}."
        )
    if FLAGS.hidden and FLAGS.model not in ("vae", "gmvae"):
        raise app.UsageError(
            "--hidden sets the VAE and GMVAE networks; the ssvae and m1m2 keep the recipe's."
        )
    if FLAGS.arch == "conv" and FLAGS.model not in ("vae", "gmvae"):
        raise app.UsageError(
            "--arch=conv sets the VAE and GMVAE networks; the ssvae and m1m2 "
            "keep the recipe's MLPs."
        )
    if FLAGS.arch == "conv" and FLAGS.hidden:
        raise app.UsageError(
            "--hidden sizes the MLPs of --arch=mlp; the --arch=conv networks have fixed sizes."
        )
    if FLAGS["likelihood"].present and FLAGS.model == "m1m2":
        raise app.UsageError("--likelihood: m1m2 models M1's images with M1's likelihood.")
    if FLAGS.labelled_batch_size and FLAGS.model not in SEMI_SUPERVISED:
        raise app.UsageError("--labelled_batch_size goes with --model=ssvae or m1m2.")
    if FLAGS["validation_examples"].present:
        raise app.UsageError(
            "--validation_examples (validation on test images) is gone: --validation_split=N "
            "holds out N training examples for validation instead."
        )
    if FLAGS["validation_seed"].present and not FLAGS.validation_split:
        raise app.UsageError("--validation_seed goes with --validation_split.")
    if FLAGS.steps_per_execution and FLAGS.steps_per_epoch % FLAGS.steps_per_execution:
        raise app.UsageError(
            f"--steps_per_execution={FLAGS.steps_per_execution} must divide "
            f"--steps_per_epoch={FLAGS.steps_per_epoch}."
        )
    common.import_library()
    from tfp_vae import likelihoods, training

    try:
        likelihoods.check_name(FLAGS.likelihood)
    except ValueError as e:
        raise app.UsageError(f"--likelihood={FLAGS.likelihood}: {e}") from e

    # Before any other TensorFlow work (MultiWorkerMirroredStrategy starts its server here).
    try:
        strategy = training.make_strategy(FLAGS.strategy)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    distributed = FLAGS.strategy != "default"
    if distributed:
        print(f"Strategy: {FLAGS.strategy}, {strategy.num_replicas_in_sync} replica(s) in sync")
    if FLAGS.mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy(training.mixed_precision_policy())
        print(f"Mixed precision: {keras.mixed_precision.global_policy().name}")
    out_dir = training.worker_out_dir(FLAGS.out_dir, strategy)
    # One process per run directory; a run that fails before training leaves none behind.
    with rundir.RunDirectory(out_dir) as run:
        return _train(run, out_dir, strategy, distributed)


# The flags that define a run: a resumed run must have the values it was started with (the
# others, e.g. --steps, --learning_rate, --steps_per_epoch, --xla, take effect on resume).
RUN_FLAGS = (
    "model",
    "likelihood",
    "m1_path",
    "k",
    "learn_mixture_weights",
    "active_threshold",
    "labels_per_class",
    "label_seed",
    "labelled_indices",
    "labelled_batch_size",
    "gen_weight",
    "class_weight",
    "labelled_bound",
    "labelled_binarization",
    "z_dim",
    "hidden",
    "arch",
    "beta",
    "objective",
    "iw",
    "batch_size",
    "binarization",
    "dataset",
    "seed",
    "mixed_precision",
    "ema_momentum",
    # A schedule leaves no learning-rate variable in the optimizer, so the checkpoint of a run
    # with the other setting would not load into it.
    "lr_schedule",
    # The examples trained on (recorded as the count held out, however it was given).
    "validation_split",
    "validation_seed",
)
# The values of RUN_FLAGS added since checkpoints first recorded their settings, as the runs
# before them had them: an older run resumes with these, and is refused other values.
SETTINGS_BEFORE_FLAG = {
    "arch": "mlp",
    "lr_schedule": "constant",
    "likelihood": "bernoulli",
    "validation_split": 0,  # Runs validated on test images and trained on every example.
    "validation_seed": 0,
}


def run_settings(model):
    """flag -> value of the RUN_FLAGS, as this run resolves them (z_dim and hidden: the model's
    own; paths: absolute)."""
    settings = {name: FLAGS[name].value for name in RUN_FLAGS}
    settings["z_dim"] = int(model.z_dim)
    # As the model resolves them: the likelihood of its inputs, and its training transform.
    settings["likelihood"] = model.data_likelihood.family
    settings["binarization"] = FLAGS.binarization or model.data_transforms["train"]
    settings["hidden"] = [int(h) for h in getattr(model, "hidden", ())] or None
    for name in ("m1_path", "labelled_indices"):
        if settings[name] is not None:
            settings[name] = os.path.abspath(settings[name])
    if settings["dataset"].startswith("npz:"):
        settings["dataset"] = "npz:" + os.path.abspath(settings["dataset"][4:])
    return settings


def check_resume(ckpt_dir, settings, steps_per_epoch, total_steps):
    """Refuses (one line) to resume a run with other RUN_FLAGS than it was started with, or at a
    --steps_per_epoch that does not divide its checkpoint's step. Returns that step."""
    from tfp_vae import training

    ((step, path),) = training.checkpoints(ckpt_dir)[:1]
    try:
        saved = training.read_state(path).get("settings")
    except (OSError, ValueError):
        return step  # Unreadable: restoring it says so, and names the previous checkpoint.
    if saved is None:
        print(f"Note: {path} predates recorded settings; resuming without checking the flags.")
    else:
        saved = {**SETTINGS_BEFORE_FLAG, **saved}
        differ = [
            f"--{name}={_flag_text(settings.get(name))} (the run has {_flag_text(saved.get(name))})"
            for name in RUN_FLAGS
            if settings.get(name) != saved.get(name)
        ]
        if differ:
            raise app.UsageError(
                f"--resume with other settings than the run in "
                f"{os.path.dirname(ckpt_dir)} was started with: "
                f"{'; '.join(differ)}. Resume with the run's values, or start "
                "a new run in another --out_dir."
            )
    if step % steps_per_epoch:
        raise app.UsageError(
            f"The run's checkpoint is at step {step}: --steps_per_epoch must "
            f"divide it (it is {steps_per_epoch})."
        )
    if step > total_steps:
        raise app.UsageError(
            f"The run is already at step {step}, past --steps={total_steps}; "
            f"pass --steps={step} (or more) to finish or extend it."
        )
    return step


def _flag_text(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "unset" if value is None else str(value)


def _train(run, out_dir, strategy, distributed):
    from tfp_vae import data, training

    ckpt_dir = os.path.join(out_dir, "checkpoints")
    resuming = training.has_checkpoint(ckpt_dir)
    if resuming and not FLAGS.resume:
        raise app.UsageError(
            f"{out_dir} already holds a training run; pass --resume to continue "
            "it or choose another --out_dir."
        )
    dataset = data.load(FLAGS.dataset, FLAGS.data_dir)
    print(f"Data: {dataset.source}")
    if FLAGS.validation_split:
        try:
            dataset = data.split_validation(dataset, FLAGS.validation_split, FLAGS.validation_seed)
        except data.DataError as e:
            raise app.UsageError(f"--validation_split={FLAGS.validation_split:g}: {e}") from e
        print(
            f"Validation: {len(dataset.x_validation)} training examples held out "
            f"(--validation_seed={FLAGS.validation_seed}), {len(dataset.x_train)} trained on"
        )
    steps = FLAGS.steps or RECIPE_STEPS[FLAGS.model]
    spe = min(FLAGS.steps_per_epoch, steps)
    total = -(-steps // spe) * spe  # training.fit trains whole epochs.
    # The model and its optimizer are created in the strategy's scope (mirrored variables).
    with strategy.scope() if distributed else contextlib.nullcontext():
        model = build_model(
            dataset, model_settings(), learning_rate(total), use_xla(), steps_per_execution()
        )
    common.check_dataset(model, dataset)  # Labels for a semi-supervised model, say.
    settings = run_settings(model)
    n_validation = 0 if dataset.x_validation is None else len(dataset.x_validation)
    settings["validation_split"] = n_validation
    start_step = 0
    if resuming:
        start_step = check_resume(ckpt_dir, settings, spe, total)
        if start_step >= total and os.path.isfile(os.path.join(out_dir, "metrics.json")):
            # A finished run: its model, metrics and pictures stay as they are.
            print(
                f"{out_dir} is complete: it has trained {start_step} steps. Nothing to do "
                "(a larger --steps trains it on)."
            )
            return 0
    # The model says how its data are prepared (its likelihood's transform; the labelled set
    # of a semi-supervised model); the options it does not take are refused before this.
    options = {}
    if model.class_conditional:
        from tfp_vae import semisupervised

        try:
            options = dict(
                labels_per_class=FLAGS.labels_per_class,
                label_seed=FLAGS.label_seed,
                labelled_binarization=FLAGS.labelled_binarization,
                labelled_batch_size=FLAGS.labelled_batch_size,
                labelled_indices=(
                    None
                    if FLAGS.labelled_indices is None
                    # Indices of the loaded training set: rows of the part trained on, if split.
                    else data.train_positions(
                        dataset, semisupervised.read_indices(FLAGS.labelled_indices)
                    )
                ),
            )
        except ValueError as e:  # A bad labelled set: say so in one line, train nothing.
            raise app.UsageError(str(e)) from e

    def build(start):
        return model.train_dataset(
            dataset, FLAGS.batch_size, FLAGS.seed, start, FLAGS.binarization, **options
        )

    try:
        first = build(start_step)
    except ValueError as e:  # A bad labelled set or transform: one line, nothing trained.
        raise app.UsageError(str(e)) from e

    def train_ds(start):
        # Built (and checked) once above at the step the checkpoint says; fit asks for that one.
        return first if start == start_step else build(start)

    # The held-out training examples, evaluated as the test set is (the test set waits for the end).
    val_ds = None
    if n_validation:
        held_out = dataclasses.replace(
            dataset, x_test=dataset.x_validation, y_test=dataset.y_validation
        )
        val_ds = common.eval_dataset(model, held_out)
    run.started()
    start = time.time()
    try:
        history = training.fit(
            model,
            train_ds,
            steps,
            out_dir,
            FLAGS.steps_per_epoch,
            val_ds,
            resume=FLAGS.resume,
            # Not a terminal (a log file, a pipe): one line an epoch, not a redrawn bar.
            verbose=(
                2 if FLAGS.verbose == 1 and not common.is_terminal(sys.stdout) else FLAGS.verbose
            ),
            settings=settings,
        )
    except training.NonFiniteLossError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    train_seconds = time.time() - start
    model.save(os.path.join(out_dir, common.MODEL_FILE))
    metrics = common.test_metrics(model, dataset)
    metrics.update(
        train_seconds=round(train_seconds, 1),
        steps=int(model.optimizer.iterations.numpy()),
        model=FLAGS.model,
        dataset=FLAGS.dataset,
        test_examples=len(dataset.x_test),
        train_examples=len(dataset.x_train),
        validation_examples=n_validation,
        validation_seed=FLAGS.validation_seed if n_validation else None,
        # The last epoch's val_* metrics, on the held-out training examples.
        validation_metrics={
            k[len("val_") :]: float(v[-1])
            for k, v in history.history.items()
            if k.startswith("val_") and v
        }
        or None,
        data_source=dataset.source,
        data_files=dataset.files,
        data_identified_as=dataset.identified_as,
        strategy=FLAGS.strategy,
        replicas=int(strategy.num_replicas_in_sync),
        dtype_policy=model.dtype_policy.name,
        # The optimizer's own value: a resumed run keeps its checkpoint's.
        learning_rate=float(model.optimizer.learning_rate.numpy()),
        command=" ".join(["train"] + sys.argv[1:]),
        likelihood=model.data_likelihood.family,
        data_transforms=model.data_transforms,
    )
    common.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    pictures = common.write_images(model, dataset, out_dir, FLAGS.seed)
    print(
        common.format_table(
            [[k, v] for k, v in sorted(metrics.items()) if isinstance(v, float)],
            ["test metric", "value"],
        )
    )
    print(f"Wrote {out_dir}/{{{','.join(['model.keras', 'metrics.json', *pictures])}}}")
    return 0


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
