"""Pieces the binaries share: quiet TF logging, loading a saved model, the test metrics."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep C++ start-up chatter off the console.

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfp_vae import data  # noqa: E402
from tfp_vae import models  # noqa: E402,F401  (registers the model classes for load_model)

MODEL_FILE = "model.keras"


def run_main(main):
    """absl's app.run for our binaries: an expected failure (missing or corrupted data, a
    missing model, an existing output) is one line on stderr and exit status 1, not a traceback.

    The binary's flags and docstring live in its tfp_vae.cli module, not in the launcher that is
    `__main__` (bin/ script or console script), so they are declared the main module's here for
    `--help` to list them.
    """
    import functools
    import sys

    from absl import app, flags

    module = sys.modules[main.__module__]
    sys.modules["__main__"].__doc__ = module.__doc__
    for flag in flags.FLAGS.get_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except (data.DataError, FileNotFoundError, FileExistsError) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1

    app.run(wrapped)


def load_model(path):
    """Loads a model from a .keras file or a training run's out_dir."""
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No saved model at {path}: pass a .keras file or the --out_dir "
                                "of a finished `train` run.")
    return keras.models.load_model(path)


def test_metrics(model, dataset, batch_size=1000):
    """The model's test metrics on the full, statically binarised test split (dict of floats)."""
    results = model.evaluate(data.eval_dataset(dataset.x_test, batch_size), verbose=0,
                             return_dict=True)
    return {k: float(v) for k, v in results.items()}


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def format_table(rows, headers):
    """Plain-text table: rows of values under headers."""
    cells = [[str(h) for h in headers]] + [[f"{v:.2f}" if isinstance(v, float) else str(v)
                                             for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def seeded_images(model, n, seed):
    return np.asarray(model.sample(n, seed=np.array([seed, 1], np.int32)))
