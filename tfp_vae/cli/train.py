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
import sys

from absl import app, flags

from tfp_vae import rundir
from tfp_vae.cli import building, common, running

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
    # The step count keys the training noise as an int32 (models.core.step_seed).
    upper_bound=2**31 - 1,
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
    "checked), or npz:PATH, your own .npz with arrays x_train and x_test of one shape "
    "(images [N, H, W(, C)] or vectors [N, D]: uint8, floats in [0, 1], or real values for "
    "--likelihood=gaussian; the model takes their shape) and optional y_train and "
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
    "replicas; the update is the single-device one on the whole batch. With "
    "--backend=jax, mirrored is keras.distribution.DataParallel over every local "
    "device (--batch_size a multiple of their number); multi_worker is TensorFlow's.",
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
    if FLAGS.steps_per_execution and FLAGS.steps and FLAGS.steps < FLAGS.steps_per_epoch:
        # The epoch is then --steps long, and Keras runs whole executions.
        if FLAGS.steps % FLAGS.steps_per_execution:
            raise app.UsageError(
                f"--steps_per_execution={FLAGS.steps_per_execution} must divide "
                f"--steps={FLAGS.steps} (shorter than an epoch, it is the epoch)."
            )
    if FLAGS.validation_split:
        from tfp_vae import data  # NumPy only: said before TensorFlow starts.

        try:  # Its form: a count or a fraction (against the data's size once they are loaded).
            data.validation_count(sys.maxsize, FLAGS.validation_split)
        except data.DataError as e:
            raise app.UsageError(f"--validation_split={FLAGS.validation_split:g}: {e}") from e
    with contextlib.ExitStack() as stack:
        run = None
        if FLAGS.strategy != "multi_worker":
            # One process writes to --out_dir: the directory is made, checked and locked before
            # TensorFlow starts, so its mistakes (a file in the way, a run there without --resume,
            # another process on it) are said at once. A cluster's workers know theirs later.
            run = stack.enter_context(rundir.RunDirectory(FLAGS.out_dir))
            running.refuse_unasked_resume(FLAGS.out_dir)
        return _start(stack, run)


def _start(stack, run):
    """The rest of `main`: the library, the strategy, the run directory (if not yet taken)."""
    strategy = None
    if FLAGS.backend != "tensorflow":
        # Keras and JAX only, before the library (TFP's JAX substrate imports TensorFlow where
        # it is installed): a refusal is quick, and the distribution precedes every variable.
        from tfp_vae import training

        strategy = _strategy(training)
    common.import_library()
    from tfp_vae import likelihoods, training

    try:
        likelihoods.check_name(FLAGS.likelihood)
    except ValueError as e:
        raise app.UsageError(f"--likelihood={FLAGS.likelihood}: {e}") from e
    _refuse_foreign_parameters()

    # Before any other TensorFlow work (MultiWorkerMirroredStrategy starts its server here).
    if strategy is None:
        strategy = _strategy(training)
    distributed = FLAGS.strategy != "default"
    if FLAGS.mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy(training.mixed_precision_policy())
        print(f"Mixed precision: {keras.mixed_precision.global_policy().name}")
    out_dir = training.worker_out_dir(FLAGS.out_dir, strategy)
    # One process per run directory; a run that fails before training leaves none behind.
    if run is None:
        run = stack.enter_context(rundir.RunDirectory(out_dir))
    return running.train_run(run, out_dir, strategy, distributed)


def _strategy(training):
    """`training.make_strategy(--strategy)`, its Strategy line, and the check that its devices
    share --batch_size (JAX's DataParallel shards a batch in equal parts only); UsageError."""
    try:
        strategy = training.make_strategy(FLAGS.strategy)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if FLAGS.strategy != "default":
        where = f" ({strategy})" if isinstance(strategy, training.DataParallel) else ""
        print(
            f"Strategy: {FLAGS.strategy}, {strategy.num_replicas_in_sync} replica(s) in sync{where}"
        )
    try:
        training.check_global_batch(FLAGS.batch_size, "--batch_size: the global batch")
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    return strategy


# The flags of the models' training-data options (`train_options`: the labelled set).
TRAIN_OPTION_FLAGS = (
    "labels_per_class",
    "label_seed",
    "labelled_binarization",
    "labelled_indices",
    "labelled_batch_size",
)


def _refuse_foreign_parameters():
    """A parameter or training-data flag that --model does not take (its table has no such
    flag, its `train_options` no such option: --k or --labels_per_class for a vae, --beta for
    an ssvae) would be silently ignored: refused in one line instead."""
    from tfp_vae import models
    from tfp_vae.models import params

    model = models.MODELS[FLAGS.model]
    own = params.table(model)
    takes = set(model.train_options) | {name for name, p in own.items() if p.flag}
    foreign = [
        f"--{name}"
        for name in building.parameter_flags() + TRAIN_OPTION_FLAGS
        if FLAGS[name].present and name not in takes
    ]
    if foreign:
        raise app.UsageError(
            f"{', '.join(foreign)}: --model={FLAGS.model} has no such parameter, so the flag "
            "could not take effect; leave it out."
        )


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
