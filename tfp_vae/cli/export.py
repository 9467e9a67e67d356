"""Exports a trained model as a SavedModel that `tf.saved_model.load` serves without tfp_vae.

Example:
  export --model_path=runs/vae --export_dir=savedmodels/vae

Signatures: encode (x -> mean, variance), decode (z -> probs, logits), sample (n -> images, z),
elbo (x, seed -> elbo, kl, rec), log_likelihood (x, m, seed -> per-example IWAE-m bound).
"""

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", None, "A .keras file or the --out_dir of a `train` run.",
                    required=True)
flags.DEFINE_string("export_dir", None, "Directory to write the SavedModel to.", required=True)
flags.DEFINE_bool("overwrite", False, "Replace --export_dir if it already exists.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import os
    from tfp_vae import export

    if os.path.exists(FLAGS.export_dir) and not FLAGS.overwrite:
        raise app.UsageError(f"{FLAGS.export_dir} already exists; pass --overwrite to replace it.")
    model = common.load_model(FLAGS.model_path)
    export.export(model, FLAGS.export_dir, overwrite=FLAGS.overwrite)
    names = sorted(model.serving_functions())
    print(f"Wrote SavedModel {FLAGS.export_dir} with signatures: {', '.join(names)}")


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
