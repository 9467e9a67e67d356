"""Draws images from a trained model and writes them as a grid (PNG, PDF or SVG).

VAE/GMVAE: a rows x 10 grid of samples x ~ p(x|z), z ~ p(z) (pixel probabilities).
SSVAE: a style/content grid (row r: one fixed z ~ p(z); column y: class y = 0..9), or with --y a
rows x 10 grid of digits of that one class.

The format is --output's extension. A .png is by default the plain pixel grid (TensorFlow only,
one pixel per image pixel); .pdf, .svg and --labels draw with matplotlib (pip install
"tfp_vae[plots]"), labelled: the classes over the columns of a class-conditional model's grid,
the model path and seed in the title (--nolabels: the bare grid).

Example:
  sample --model_path=runs/ssvae_s0 --output=style.png
  sample --model_path=runs/ssvae_s0 --output=style.pdf --dpi=300
"""

from absl import app, flags

from tfp_vae import plots  # NumPy only; matplotlib and TensorFlow come later.
from tfp_vae.cli import common

FLAGS = flags.FLAGS
common.define_import_flag()
flags.DEFINE_string(
    "model_path", None, "A .keras file or the --out_dir of a `train` run.", required=True
)
flags.DEFINE_string("output", None, "The file to write: .png, .pdf or .svg.", required=True)
flags.DEFINE_bool(
    "labels",
    None,
    "Label the grid (column classes, title with the model path and seed), drawn with "
    "matplotlib; default: yes for .pdf and .svg, no for .png (the plain pixel grid).",
)
flags.DEFINE_integer(
    "dpi",
    100,
    "Dots per inch of a grid drawn with matplotlib (--labels, .pdf, .svg); a plain PNG has "
    "one pixel per image pixel.",
    lower_bound=10,
    upper_bound=1200,
)
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
    common.check_figure_output(FLAGS.output, "output", "the grid")
    fmt = plots.format_of(FLAGS.output)
    labels = fmt != "png" if FLAGS.labels is None else FLAGS.labels
    plain = fmt == "png" and not labels  # Written by TensorFlow alone.
    if plain and FLAGS["dpi"].present:
        raise app.UsageError(
            "--dpi: a plain PNG grid has one pixel per image pixel; --dpi applies with "
            "--labels or a .pdf or .svg --output."
        )
    if not plain:
        try:
            plots.require_matplotlib()
        except ImportError as e:
            raise common.UserError(str(e)) from e
    common.model_file(FLAGS.model_path)  # A missing or broken model: said before TF starts.
    common.import_library()
    import numpy as np
    import tensorflow as tf

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
    columns = len(pixels) // FLAGS.rows  # The model's grid: 10, or a column per class.
    try:
        _write(pixels, plain, labels, columns, side, model)
    except tf.errors.OpError as e:  # TensorFlow's writer (a full or read-only disk since).
        raise common.UserError(f"--output={FLAGS.output}: could not write it ({e.message}).") from e
    print(f"Wrote {FLAGS.output}")


def _write(pixels, plain, labels, columns, side, model):
    from tfp_vae import images

    if plain:
        images.write_grid(FLAGS.output, pixels, FLAGS.rows, columns, side)
    else:
        names, xlabel, what = None, None, "samples x ~ p(x|z), z ~ p(z)"
        if model.class_conditional and FLAGS.y is None:
            names = plots.class_names("mnist", model.num_classes)
            xlabel, what = "class y (a row per z ~ p(z))", "samples x ~ p(x|y, z)"
        elif FLAGS.y is not None:
            what = f"samples x ~ p(x|y={FLAGS.y}, z), z ~ p(z)"
        figure = plots.image_grid(
            pixels,
            FLAGS.rows,
            columns,
            col_labels=names,
            xlabel=xlabel,
            title=f"{what}\n{FLAGS.model_path}, seed {FLAGS.seed}",
            labels=labels,
            dpi=FLAGS.dpi,
        )
        plots.save(figure, FLAGS.output, dpi=FLAGS.dpi)


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
