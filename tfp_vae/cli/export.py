"""Exports a trained model as a SavedModel that `tf.saved_model.load` serves without tfp_vae.

Example:
  export --model_path=runs/vae --export_dir=savedmodels/vae

Beside the SavedModel it writes the Keras model, EXPORT_DIR.keras, which the binaries and
tfp_vae.pretrained load (they take the SavedModel directory).

Signatures: encode (x -> mean, variance), decode (z -> probs, logits), sample (n -> images, z;
the loaded object's `sample` also takes a seed),
elbo (x, seed -> elbo, kl, rec), log_likelihood (x, m, seed -> per-example IWAE-m bound).

With --trainable the SavedModel also has train_step (x -> loss, nelbo, kl, rec,
optimizer_iterations, learning_rate; for the SSVAE: unlabelled_x, labelled_x, labelled_y), one
step of the model's own optimizer, whose state (e.g. Adam's moments and step count) is saved too,
so TensorFlow alone can continue training it and re-save it with tf.saved_model.save.
"""

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS
common.define_import_flag()
# A SavedModel is TensorFlow's: --backend=jax is refused (a JAX-trained model loads on TF).
BACKENDS = ("tensorflow",)
flags.DEFINE_string(
    "model_path", None, "A .keras file or the --out_dir of a `train` run.", required=True
)
flags.DEFINE_string("export_dir", None, "Directory to write the SavedModel to.", required=True)
flags.register_validator(
    "export_dir",
    lambda value: value is None or bool(value.strip()),
    message="--export_dir is empty; give the folder to write the SavedModel to (savedmodels/vae).",
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace --export_dir if it already holds a SavedModel "
    "(and nothing else; a training run or other files are never replaced).",
)
flags.DEFINE_bool(
    "trainable",
    False,
    "Also export a train_step signature and the optimizer "
    "state, so that the SavedModel can be trained further with TensorFlow alone.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import os

    # export.keras_path, without importing TensorFlow before the flags are checked.
    for target in (FLAGS.export_dir, os.path.normpath(FLAGS.export_dir) + ".keras"):
        if os.path.lexists(target) and not FLAGS.overwrite:
            raise app.UsageError(f"{target} already exists; pass --overwrite to replace it.")
    common.model_file(FLAGS.model_path)  # A missing or broken model: said before TF starts.
    common.import_library()
    from tfp_vae import export

    export.check_target(FLAGS.export_dir, FLAGS.overwrite)  # Before the slow load.
    export.check_keras_target(FLAGS.export_dir, FLAGS.overwrite)
    model = common.load_model(FLAGS.model_path)
    if FLAGS.trainable and getattr(model, "optimizer", None) is None:
        raise app.UsageError(
            f"{FLAGS.model_path} has no optimizer (it was saved uncompiled); --trainable needs one."
        )
    export.export(
        model,
        FLAGS.export_dir,
        overwrite=FLAGS.overwrite,
        trainable=FLAGS.trainable,
        with_keras=True,
    )
    names = list(export.serving_functions(model))
    if FLAGS.trainable:
        names += list(export.training_functions(model))
    names = sorted(names)
    print(
        f"Wrote SavedModel {FLAGS.export_dir} with signatures: {', '.join(names)}, and its "
        f"Keras model {export.keras_path(FLAGS.export_dir)}"
    )


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
