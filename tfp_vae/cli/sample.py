"""Draws images from a trained model and writes them as a PNG grid.

VAE/GMVAE: a rows x 10 grid of samples x ~ p(x|z), z ~ p(z) (pixel probabilities).
SSVAE: a style/content grid (row r: one fixed z ~ p(z); column y: class y = 0..9), or with --y a
rows x 10 grid of digits of that one class.

Example:
  sample --model_path=runs/ssvae_s0 --output=style.png
"""

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS
common.define_import_flag()
flags.DEFINE_string(
    "model_path", None, "A .keras file or the --out_dir of a `train` run.", required=True
)
flags.DEFINE_string("output", None, "PNG file to write.", required=True)
flags.DEFINE_integer("rows", 10, "Grid rows (each of 10 images).", lower_bound=1, upper_bound=100)
flags.DEFINE_integer(
    "y",
    None,
    "ssvae only: draw every image from this class (0-9) instead of the style/content grid.",
    lower_bound=0,
)
flags.DEFINE_integer("seed", 0, "Seed of the latent draws.", lower_bound=0, upper_bound=2**31 - 1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.check_png_output(FLAGS.output, "output", "the grid")
    common.import_library()
    import numpy as np

    from tfp_vae import images

    model = common.load_model(FLAGS.model_path)
    if FLAGS.y is None:
        pixels = common.grid_images(model, FLAGS.rows, FLAGS.seed)
    elif not model.class_conditional:
        raise app.UsageError(
            f"--y: a {type(model).__name__} does not generate from a class; only a "
            "class-conditional model (ssvae, m1m2) does."
        )
    elif FLAGS.y >= model.num_classes:
        raise app.UsageError(f"--y must be a class in 0..{model.num_classes - 1}; got {FLAGS.y}.")
    else:
        pixels = np.asarray(
            model.sample(FLAGS.rows * 10, FLAGS.y, seed=np.array([FLAGS.seed, 3], np.int32))
        )
    side = common.model_side(model)
    if side is None:
        raise common.UserError(
            f"{FLAGS.model_path} models data of shape {model.data_shape}, not square "
            "one-channel images: there is no grid to draw (use model.sample from Python)."
        )
    images.write_grid(FLAGS.output, pixels, FLAGS.rows, len(pixels) // FLAGS.rows, side)
    print(f"Wrote {FLAGS.output}")


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
