"""bin/train's running: the run's settings and their check on `--resume`, then the data, the
model, `training.fit` and what a finished run writes (`train_run`). The flags live in
`tfp_vae.cli.train`, the model's building in `tfp_vae.cli.building`."""

import contextlib
import dataclasses
import os
import sys
import time

from absl import app, flags

from tfp_vae import files, rundir
from tfp_vae.cli import building, common
from tfp_vae.cli.building import RECIPE_STEPS

FLAGS = flags.FLAGS

# The flags that define a run: a resumed run must have the values it was started with (the
# others, e.g. --steps, --learning_rate, --steps_per_epoch, --xla, take effect on resume): the
# model's, from the models' tables (`building.run_defining_model_flags`), and these, of the data
# and the training.
RUN_ONLY_FLAGS = (
    "labels_per_class",
    "label_seed",
    "labelled_indices",
    "labelled_batch_size",
    "labelled_binarization",
    "batch_size",
    "binarization",
    "dataset",
    "mixed_precision",
    # A schedule leaves no learning-rate variable in the optimizer, so the checkpoint of a run
    # with the other setting would not load into it.
    "lr_schedule",
    # The examples trained on (recorded as the count held out, however it was given).
    "validation_split",
    "validation_seed",
)


def run_flags():
    """RUN_FLAGS (also this module's attribute): the model's run-defining flags, then
    RUN_ONLY_FLAGS. Read once the flags are parsed (the models' tables import TensorFlow)."""
    return building.run_defining_model_flags() + RUN_ONLY_FLAGS


def __getattr__(name):
    if name == "RUN_FLAGS":
        return run_flags()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    settings = {name: FLAGS[name].value for name in run_flags()}
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
    # Recorded, not a run-defining flag: a run may resume on the other backend (`check_resume`).
    settings["backend"] = FLAGS.backend
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
            for name in run_flags()
            if settings.get(name) != saved.get(name)
        ]
        if differ:
            raise app.UsageError(
                f"--resume with other settings than the run in "
                f"{os.path.dirname(ckpt_dir)} was started with: "
                f"{'; '.join(differ)}. Resume with the run's values, or start "
                "a new run in another --out_dir."
            )
    started_on = (saved or {}).get("backend", "tensorflow")  # Runs before --backend: TF's.
    if saved is not None and started_on != settings.get("backend"):
        # The checkpoint (Keras weights and optimizer state) loads on either backend.
        print(
            f"Note: the run was trained on {started_on} and resumes on {settings.get('backend')}: "
            "its weights and optimizer state carry over, its batches and noise from here on are "
            "this backend's draws (the same distribution, not the same stream)."
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


def refuse_unasked_resume(out_dir):
    """Whether `out_dir` holds a training run's checkpoint; a UsageError when it does and
    --resume was not passed. Without TensorFlow (bin/train asks before TF starts)."""
    resuming = rundir.has_checkpoint(os.path.join(out_dir, "checkpoints"))
    if resuming and not FLAGS.resume:
        raise app.UsageError(
            f"{out_dir} already holds a training run; pass --resume to continue "
            "it or choose another --out_dir."
        )
    return resuming


def train_run(run, out_dir, strategy, distributed):
    from tfp_vae import data, training

    ckpt_dir = os.path.join(out_dir, "checkpoints")
    resuming = refuse_unasked_resume(out_dir)
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
    try:  # JAX's DataParallel: the evaluations' batches, laid out as their first.
        training.check_eval_batches(len(dataset.x_test), common.EVAL_BATCH, "the test set")
        if dataset.x_validation is not None:
            training.check_eval_batches(
                len(dataset.x_validation), common.EVAL_BATCH, "--validation_split's set"
            )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    steps = FLAGS.steps or RECIPE_STEPS[FLAGS.model]
    spe = min(FLAGS.steps_per_epoch, steps)
    total = -(-steps // spe) * spe  # training.fit trains whole epochs.
    # The model and its optimizer are created in the strategy's scope (mirrored variables).
    with strategy.scope() if distributed else contextlib.nullcontext():
        model = building.build_model(
            dataset,
            building.model_settings(),
            building.learning_rate(total),
            building.use_xla(),
            building.steps_per_execution(spe),
        )
    common.check_dataset(model, dataset)  # Labels for a semi-supervised model, say.
    settings = run_settings(model)
    n_validation = 0 if dataset.x_validation is None else len(dataset.x_validation)
    settings["validation_split"] = n_validation
    start_step = 0
    if resuming:
        start_step = check_resume(ckpt_dir, settings, spe, total)
        if start_step >= total:
            unfinished = rundir.unfinished(out_dir, start_step)
            if unfinished is None:
                print(
                    f"{out_dir} is complete: it has trained {start_step} steps. Nothing to do "
                    "(a larger --steps trains it on)."
                )
                return 0
            # Trained to the end but killed (or its disk full) before its results were all
            # written, or one was lost since: made again from the checkpoint, not trained.
            print(
                f"{out_dir} has trained {start_step} steps, but {unfinished}: re-making its "
                f"model, metrics and pictures from its checkpoint at step {start_step}."
            )
    # The model says how its data are prepared (its likelihood's transform) and which options
    # its training data take (`train_options`: the labelled set of a semi-supervised model), each
    # from the flag of its name; a flag of an option it does not take was refused in `main`.
    options = {name: FLAGS[name].value for name in model.train_options}
    if options.get("labelled_indices") is not None:
        from tfp_vae import semisupervised

        try:
            # Indices of the loaded training set: rows of the part trained on, if split.
            options["labelled_indices"] = data.train_positions(
                dataset, semisupervised.read_indices(options["labelled_indices"])
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
    rundir.clear_leftovers(out_dir)  # Of a process killed mid-write (the lock says none writes).
    try:
        return _train_and_finish(
            model, dataset, out_dir, train_ds, val_ds, steps, start_step, settings, strategy
        )
    except Exception as e:
        if not files.disk_full(e):
            raise
        # The failed write's h5py objects cannot be closed on a full disk: their finalizers print
        # tracebacks and crash the interpreter's exit (rc 139). Say it in one line and leave at
        # once (the kernel releases the run's lock; every checkpoint in place is whole).
        common._fail(_disk_full_sentence(out_dir, e))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _train_and_finish(
    model, dataset, out_dir, train_ds, val_ds, steps, start_step, settings, strategy
):
    import keras

    from tfp_vae import training

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
    # The results, each written whole or not at all (`tfp_vae.files`), and last the record that
    # says they are complete and of which step (`rundir.record_finished`).
    written = [common.MODEL_FILE]
    with files.replacing(os.path.join(out_dir, common.MODEL_FILE)) as partial:
        model.save(partial)
    n_validation = settings["validation_split"]
    metrics = common.test_metrics(model, dataset)
    metrics.update(
        train_seconds=round(train_seconds, 1),
        steps=int(model.optimizer.iterations.numpy()),
        # The step this invocation started from: train_seconds covers the steps since.
        start_step=start_step,
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
        backend=FLAGS.backend,
        strategy=FLAGS.strategy,
        replicas=int(strategy.num_replicas_in_sync),
        dtype_policy=model.dtype_policy.name,
        # The optimizer's own value: a resumed run keeps its checkpoint's.
        # A schedule's value is a tensor or, on JAX, an array (no .numpy()): read it as NumPy.
        learning_rate=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        command=" ".join(["train"] + sys.argv[1:]),
        likelihood=model.data_likelihood.family,
        data_transforms=model.data_transforms,
    )
    common.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    written.append("metrics.json")
    written += common.write_images(model, dataset, out_dir, FLAGS.seed)
    rundir.record_finished(out_dir, metrics["steps"], written)
    print(
        common.format_table(
            [[k, v] for k, v in sorted(metrics.items()) if isinstance(v, float)],
            ["test metric", "value"],
        )
    )
    print(f"Wrote {out_dir}/{{{','.join(written)}}}")
    return 0


def _disk_full_sentence(out_dir, error):
    """One line for a run stopped by a full disk: what was being written, the last good
    checkpoint, and how to go on."""
    from tfp_vae import training

    where = getattr(error, "filename", None)
    where = f" writing {os.path.basename(where)}" if isinstance(where, str) else ""
    found = training.checkpoints(os.path.join(out_dir, "checkpoints"))
    if found:
        step, path = found[0]
        last = (
            f"the last good checkpoint is {path} (step {step}); free some space and run the "
            "same command with --resume to go on from it"
        )
    else:
        last = "no checkpoint was written yet; free some space and run the same command again"
    return f"No space left on device{where} in {out_dir}: {last}."
