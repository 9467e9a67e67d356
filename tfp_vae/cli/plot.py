"""Draws figures of a trained model with matplotlib (an optional dependency:
pip install "tfp_vae[plots]"), from the statically binarised test images.

  interpolations   decoded points on the straight line between the posterior means of pairs
                   of test images
  traversals       one latent unit varied at a time around a test image's posterior mean (the
                   ten most active units when z_dim > 10)
  latent_map       the posterior means of --examples test images in 2-D (PCA when z_dim > 2),
                   coloured by label
  class_grid       ssvae and m1m2 only: a row per class, a column per z ~ p(z)
  reconstructions  test images beside their reconstructions
  manifold         z_dim = 2, VAE and GMVAE only: images decoded on a 20 x 20 grid of z over
                   the prior's quantiles
  all              every kind that applies to the model, as OUTPUT/<kind>.<--format>

A figure is written as PNG, PDF or SVG, by the extension of --output (with --kind=all, by
--format).

Example:
  plot --model_path=runs/vae --kind=latent_map --output=map.pdf
  plot --model_path=runs/ssvae_s0 --kind=all --output=figures --format=svg --dpi=200
"""

import os

from absl import app, flags

from tfp_vae import plots  # NumPy only; matplotlib and TensorFlow come later.
from tfp_vae.cli import common

FLAGS = flags.FLAGS
common.define_import_flag()
flags.DEFINE_string(
    "model_path", None, "A .keras file or the --out_dir of a `train` run.", required=True
)
flags.DEFINE_enum("kind", "all", plots.KINDS + ("all",), "The figure to draw (see above).")
flags.DEFINE_string(
    "output",
    None,
    "The file to write, .png, .pdf or .svg; with --kind=all a directory "
    "(created if its parent exists) that receives <kind>.<--format> for each kind.",
    required=True,
)
flags.DEFINE_enum(
    "format",
    None,
    list(plots.FORMATS),
    "--kind=all: the figures' format (default png); one figure's is its --output's extension.",
)
flags.DEFINE_integer(
    "dpi",
    100,
    "Dots per inch of raster output (PNG, and the images within a PDF or SVG).",
    lower_bound=10,
    upper_bound=1200,
)
flags.DEFINE_string(
    "dataset",
    "mnist",
    "Test images: mnist, fashion_mnist (its class names "
    "label the figures), or npz:PATH, your own .npz with arrays x_train and "
    "x_test (and y_train, y_test to colour the latent map); see `train --help`.",
)

flags.register_validator("dataset", common.check_dataset_flag)


flags.DEFINE_string(
    "data_dir",
    None,
    "Directory holding the dataset files; default: "
    "$TFP_VAE_DATA_DIR, /usr/share/datasets, the Keras cache, download.",
)
flags.DEFINE_integer(
    "examples",
    2000,
    "Test images used (the first N): the latent map shows "
    "them all, the other figures draw theirs from them.",
    lower_bound=2,
)
flags.DEFINE_integer(
    "seed",
    0,
    "Seed of the choice of test images and of the latent draws.",
    lower_bound=0,
    upper_bound=2**31 - 1,
)

PAIRS = 8  # Interpolation rows.
RECONSTRUCTED = 32  # Images in the reconstruction figure.
MANIFOLD_SIDE = 20  # The manifold's grid: 20 x 20 points.


def _check_output():
    """The output path(s) are usable before anything slow runs (UsageError otherwise)."""
    path = FLAGS.output
    if FLAGS.kind != "all":
        common.check_figure_output(path, "output", "the figure", " (or --kind=all and a directory)")
        if FLAGS.format is not None and FLAGS.format != plots.format_of(path):
            raise app.UsageError(
                f"--format={FLAGS.format} is for --kind=all; one figure's format is its "
                f"--output's extension ({path})."
            )
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise app.UsageError(
            f"--output={path} is a file; --kind=all writes one figure per kind into a directory."
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise app.UsageError(f"--output={path}: the folder {parent} does not exist.")


def _figure(kind, model, x, y, names, rng):
    if kind == "manifold":  # No test images needed.
        return plots.manifold(model, MANIFOLD_SIDE, seed=FLAGS.seed)
    if kind == "class_grid":  # Drawn from p(z) alone: no test images (x is None).
        return plots.class_grid(model, 10, FLAGS.seed, class_names=names)
    n = len(x)
    if kind == "interpolations":
        chosen = rng.choice(n, size=2 * min(PAIRS, n // 2), replace=False)
        half = len(chosen) // 2
        return plots.interpolations(model, x[chosen[:half]], x[chosen[half:]])
    if kind == "traversals":
        first = int(rng.integers(n))  # Traversed; all the images rank the units.
        order = [first] + [i for i in range(n) if i != first]
        return plots.traversals(model, x[order])
    if kind == "latent_map":
        return plots.latent_map(model, x, y, class_names=names)
    chosen = sorted(rng.choice(n, size=min(RECONSTRUCTED, n), replace=False))
    return plots.reconstructions(model, x[chosen])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _check_output()
    try:
        plots.require_matplotlib()
    except ImportError as e:
        raise common.UserError(str(e)) from e
    common.model_file(FLAGS.model_path)  # A missing or broken model: said before TF starts.
    common.import_library()
    import numpy as np

    from tfp_vae import data

    model = common.load_model(FLAGS.model_path, compile=False)
    if common.model_side(model) is None:
        raise common.UserError(
            f"{FLAGS.model_path} models data of shape {model.data_shape}, not square "
            "one-channel images: the figures show images (use the model from Python)."
        )
    applicable = plots.kinds_for(model)
    if FLAGS.kind == "manifold" and FLAGS.kind not in applicable:
        raise common.UserError(
            f"--kind=manifold does not apply to {FLAGS.model_path}: it is drawn for a VAE or "
            f"GMVAE with z_dim = 2, and this is a {type(model).__name__} with "
            f"z_dim={model.z_dim}; choose one of {', '.join(applicable)}, or all."
        )
    if FLAGS.kind != "all" and FLAGS.kind not in applicable:
        raise common.UserError(
            f"--kind={FLAGS.kind} does not apply to {FLAGS.model_path}: a "
            f"{type(model).__name__} draws {', '.join(applicable)} (class_grid needs classes, "
            "manifold a 2-D latent space); choose one of them, or all."
        )
    kinds = applicable if FLAGS.kind == "all" else (FLAGS.kind,)
    x = y = None
    if any(kind not in ("class_grid", "manifold") for kind in kinds):
        dataset = data.load(FLAGS.dataset, FLAGS.data_dir)
        # The default 2000 takes what a smaller test set (a user's npz) has; a number given
        # that the test set cannot meet is refused.
        n = min(FLAGS.examples, len(dataset.x_test))
        if FLAGS["examples"].present and FLAGS.examples > n:
            raise app.UsageError(
                f"--examples={FLAGS.examples}: the test set has only {len(dataset.x_test)} images."
            )
        # Prepared as the model's evaluation prepares them (binarised only for a Bernoulli).
        x = model.eval_inputs(dataset.x_test[:n])
        y = dataset.y_test[:n] if dataset.has_labels else None
    names = plots.class_names(FLAGS.dataset, getattr(model, "num_classes", data.NUM_CLASSES))
    if FLAGS.kind == "all":
        os.makedirs(FLAGS.output, exist_ok=True)
    for kind in kinds:
        figure = _figure(kind, model, x, y, names, np.random.default_rng(FLAGS.seed))
        if FLAGS.kind == "all":
            path = os.path.join(FLAGS.output, f"{kind}.{FLAGS.format or 'png'}")
        else:
            path = FLAGS.output
        plots.save(figure, path, dpi=FLAGS.dpi)
        print(f"Wrote {path}")


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
