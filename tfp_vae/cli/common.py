"""Pieces the binaries share: one-line errors, loading a saved model, the test metrics.

The launchers in bin/ (and the console scripts, see tfp_vae/__init__.py) default
TF_CPP_MIN_LOG_LEVEL to 3 before `import tfp_vae` starts TensorFlow, so that its C++ start-up
lines (INFO, and errors such as cuInit's on a machine without a GPU) stay off the console.
"""

import math
import os
import re

# ANSI escape sequences (CSI: colours, cursor moves), which Keras' progress bar writes whatever
# its output is.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class PlainStream:
    """A text stream that writes to `stream` without ANSI escape sequences (for a log file or
    a pipe, where they are noise); everything else is the stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        self._stream.write(_ANSI_ESCAPE.sub("", text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def is_terminal(stream):
    """Whether `stream` is a terminal (not a file or pipe)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # Closed.
        return False


MODEL_FILE = "model.keras"

# The Keras backends the package runs on (`--backend`, every binary's).
BACKENDS = ("tensorflow", "jax")


class UserError(Exception):
    """A mistake of the user's that the binaries report in one line (no traceback)."""


def run_main(main):
    """absl's app.run for our binaries: a user's mistake (a bad or unknown flag, missing or
    corrupted data, a missing model, an existing or unwritable output, a run directory in use)
    is one line on stderr and exit status 1, not a traceback or a page of --help.

    The binary's flags and docstring live in its tfp_vae.cli module, not in the launcher that is
    `__main__` (bin/ script or console script), so they are declared the main module's here for
    `--help` to list them.
    """
    import functools
    import sys

    from absl import app, flags

    module = sys.modules[main.__module__]
    sys.modules["__main__"].__doc__ = module.__doc__
    if "backend" not in flags.FLAGS:
        define_backend_flag()
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["backend"])
    for flag in flags.FLAGS.get_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    if "import" in flags.FLAGS:  # Defined by `define_import_flag`, in this module.
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["import"])
    refuse_non_finite_floats()

    # Written to a file or a pipe, the binaries' output holds no colour codes.
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not is_terminal(stream) and not isinstance(stream, PlainStream):
            setattr(sys, name, PlainStream(stream))

    @functools.wraps(main)
    def wrapped(argv):
        from absl import logging

        if not flags.FLAGS["verbosity"].present:
            # TF's SavedModel writer logs every function at INFO; keep the console readable.
            logging.set_verbosity(logging.WARNING)
        try:
            set_backend(getattr(module, "BACKENDS", BACKENDS))
            return main(argv)
        except app.UsageError as e:
            return _fail(e, " (see --help)")
        except Exception as e:  # Re-raised unless it is a user's mistake.
            if isinstance(e, _user_errors()):
                return _fail(e)
            raise

    def parse_flags(args):
        try:
            return flags.FLAGS(args)
        except flags.Error as e:
            sys.exit(_fail(e, " (see --help)"))

    app.run(wrapped, flags_parser=parse_flags)


def refuse_non_finite_floats():
    """Registers, for every float flag of the binaries (those the tfp_vae.cli modules define), a
    validator that refuses nan and inf in one line: absl parses them as floats, and a bound
    (lower_bound=0) lets nan through. The one place for all of them, so a new flag is covered."""
    from absl import flags

    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if not module.startswith("tfp_vae.cli"):
            continue
        for flag in defined:
            if isinstance(flag.parser, flags.FloatParser) and not getattr(
                flag, "_finite_checked", False
            ):
                flag._finite_checked = True  # Once, whoever calls run_main again.
                flags.register_validator(
                    flag.name,
                    lambda value: value is None or math.isfinite(value),
                    message=f"--{flag.name} must be a finite number (not nan or inf).",
                )


def _user_errors():
    """The exception types that report a user's mistake (those of the modules loaded so far:
    an error of a module not imported cannot have happened)."""
    import sys

    types = [UserError, OSError]
    for module, name in (
        ("tfp_vae.data", "DataError"),
        ("tfp_vae.rundir", "RunDirectoryError"),
        ("tfp_vae.training", "CheckpointError"),
    ):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def _fail(error, hint=""):
    """Prints `error` as one line on stderr; returns the exit status 1."""
    import sys

    message = " ".join(str(error).split()) or type(error).__name__
    print(f"ERROR: {message}{hint}", file=sys.stderr)
    return 1


def define_backend_flag():
    """Defines --backend (every binary has it, see `run_main`): the Keras backend, set before
    Keras is imported (`set_backend`)."""
    from absl import flags

    env = os.environ.get("KERAS_BACKEND")
    flags.DEFINE_enum(
        "backend",
        env if env in BACKENDS else "tensorflow",
        list(BACKENDS),
        "The Keras backend to run on: tensorflow or jax (pip install 'tfp_vae[jax]'; on JAX "
        "the input pipeline is NumPy's and TensorFlow need not be installed). Default: "
        "$KERAS_BACKEND, else tensorflow.",
    )


def set_backend(allowed=BACKENDS, flag=None):
    """Sets KERAS_BACKEND to --backend before anything imports Keras. Refuses (UserError, one
    line) a backend this binary does not run on (`allowed`), one that is not installed, an
    unsupported $KERAS_BACKEND left to stand, and another backend than the one Keras already
    runs on in this process. `flag`: the --backend flag (absl's; anything with `value` and
    `present`)."""
    import importlib.util
    import sys

    from absl import flags

    flag = flags.FLAGS["backend"] if flag is None else flag
    name = flag.value
    env = os.environ.get("KERAS_BACKEND")
    if not flag.present and len(allowed) == 1:
        name = allowed[0]  # The binary's only backend, whatever $KERAS_BACKEND says.
    elif not flag.present and env and env not in BACKENDS:
        raise UserError(
            f"KERAS_BACKEND={env}: tfp_vae runs on Keras' {' or '.join(BACKENDS)} backend; "
            "set KERAS_BACKEND to one of them or pass --backend."
        )
    if name not in allowed:
        raise UserError(
            f"--backend={name}: this binary runs on {' or '.join(allowed)} only; pass "
            f"--backend={allowed[0]} (a model trained on another backend loads there)."
        )
    if "keras" in sys.modules:
        running = sys.modules["keras"].config.backend()
        if running != name:
            raise UserError(
                f"--backend={name}: Keras already runs on {running} in this process; the "
                "backend is chosen before Keras is imported."
            )
    if importlib.util.find_spec(name) is None:  # The backends' modules have their names.
        how = "pip install 'tfp_vae[jax]'" if name == "jax" else "pip install tensorflow"
        other = [b for b in allowed if b != name and importlib.util.find_spec(b)]
        raise UserError(
            f"--backend={name}: {name} is not installed; {how}"
            + (f", or pass --backend={other[0]}." if other else ".")
        )
    os.environ["KERAS_BACKEND"] = name


def check_dataset_flag(value):
    """The --dataset validator: mnist, fashion_mnist or npz:PATH of an existing file (its
    content is checked when it is loaded, `data.load_npz`)."""
    from absl import flags

    if value in ("mnist", "fashion_mnist"):
        return True
    if not (value or "").startswith("npz:") or not value[4:]:
        raise flags.ValidationError("choose mnist, fashion_mnist or npz:PATH (your own .npz).")
    if not os.path.isfile(value[4:]):
        raise flags.ValidationError(f"{value[4:]}: no such file.")
    return True


def define_import_flag():
    """Defines --import in the calling binary: the user's modules to import before a model is
    built or loaded, so that the classes they register with Keras (a model subclass, a
    network, a likelihood) can be saved, loaded, evaluated, plotted and exported."""
    from absl import flags

    flags.DEFINE_list(
        "import",
        [],
        "Python modules to import first, comma separated (e.g. my_models): they register your "
        "own Keras classes (keras.saving.register_keras_serializable) and likelihoods "
        "(tfp_vae.likelihoods.register). The current directory is searched too.",
    )


def import_library():
    """TensorFlow (its C++ start-up INFO lines dropped, see tfp_vae/__init__.py), the models
    (which registers their classes with Keras) and the modules of --import, where the binary
    has it. The launchers in bin/ defer all of them until the flags are parsed
    (TFP_VAE_DEFER_IMPORT=1)."""
    import importlib
    import importlib.util
    import sys

    from absl import flags

    import tfp_vae

    modules = flags.FLAGS["import"].value if "import" in flags.FLAGS else []
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # A module beside the user, as `python -m` would find it.
    for name in modules:  # One that is nowhere is said before TensorFlow starts.
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # Its package is missing, or the name is empty.
            found = False
        if not found:
            raise UserError(
                f"--import={name}: no module named {name!r}; give a module on PYTHONPATH or in "
                "the current directory."
            )
    tfp_vae._import_all()  # The package whole, as a user's module may use it (tfp_vae.VAE).
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(
                f"--import={name}: {e}; give a module on PYTHONPATH or in the current directory."
            ) from e


def model_file(path):
    """The .keras file that `path` names: itself, a training run's out_dir's model.keras, or the
    Keras model beside a SavedModel directory (DIR.keras, as `bin/export` and savedmodels/ have
    it). FileNotFoundError where there is none, UserError where it is not a .keras archive.
    Without TensorFlow: the binaries call it before TF starts, so such a mistake is said at once."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        beside = os.path.normpath(path) + ".keras"
        if not os.path.isfile(beside):
            raise FileNotFoundError(
                f"{path} is a SavedModel without its Keras model beside it "
                f"({beside}, which bin/export writes); pass a run's "
                "--out_dir or a .keras file."
            )
        path = beside
    elif os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No saved model at {path}: pass a .keras file, the --out_dir "
            "of a finished `train` run or an exported SavedModel."
        )
    from tfp_vae import files

    try:
        return files.check_keras_file(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def load_model(path, compile=True):  # noqa: A002  Keras' own argument name.
    """Loads the model of `path` (`model_file`: a .keras file, a training run's out_dir, or a
    SavedModel directory with its Keras model beside it)."""
    path = model_file(path)
    import_library()
    import keras

    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as e:  # zipfile, h5py, JSON and Keras raise many kinds.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "Could not locate class" in reason:
            name = reason.split("'")[1] if reason.count("'") >= 2 else "a class"
            raise UserError(
                f"{path} holds {name}, a class this process does not know: pass the module that "
                "defines and registers it with --import=MODULE (as "
                "keras.saving.register_keras_serializable does)."
            ) from e
        raise UserError(
            f"{path} is not a model this package can load ({reason}); pass a "
            ".keras file written by `train` or model.save, or a run's --out_dir."
        ) from e


def check_png_output(path, flag, what, hint=""):
    """`check_output_file`, and the name must end in .png (`what` is written as PNG)."""
    from absl import app

    check_output_file(path, flag)
    if not path.lower().endswith(".png"):
        raise app.UsageError(
            f"--{flag}={path}: {what} is written as PNG; give a name ending in .png{hint}."
        )


def check_figure_output(path, flag, what, hint=""):
    """`check_output_file`, and the name must end in .png, .pdf or .svg (`plots.FORMATS`, the
    formats `what` may be written in)."""
    from absl import app

    from tfp_vae import plots

    check_output_file(path, flag)
    if plots.format_of(path) is None:
        raise app.UsageError(
            f"--{flag}={path}: {what} is written as {', '.join(plots.FORMATS)}; give a name "
            f"ending in .png, .pdf or .svg{hint}."
        )


def check_output_file(path, flag):
    """Refuses (UsageError) an output path that is a directory, or whose folder is missing."""
    from absl import app

    if os.path.isdir(path):
        raise app.UsageError(f"--{flag}={path} is a directory; give a file name.")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise app.UsageError(f"--{flag}={path}: {folder} is a file, not a folder.")
    if not os.path.isdir(folder):
        raise app.UsageError(f"--{flag}={path}: the folder {folder} does not exist.")
    check_writable(path, flag)


def check_writable(path, flag):
    """Refuses (UsageError) an output whose folder takes no new file (read-only, no permission:
    found by creating and removing a file there, which also holds for root) or that exists and
    cannot be written; before anything is computed."""
    import tempfile

    from absl import app

    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tfp_vae-probe-")
    except OSError as e:
        raise app.UsageError(
            f"--{flag}={path}: cannot write in {folder} ({e.strerror or e}); give a writable place."
        ) from None
    os.close(fd)
    os.remove(probe)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise app.UsageError(f"--{flag}={path} exists and cannot be written; give another name.")


EVAL_BATCH = 1000  # Examples per batch of the test and validation metrics.


def eval_dataset(model, dataset, batch_size=EVAL_BATCH):
    """The test split as the model's test_step takes it (the model says how:
    `eval_dataset`, transformed as its likelihood needs)."""
    return model.eval_dataset(dataset.x_test, dataset.y_test, batch_size)


def test_metrics(model, dataset, batch_size=EVAL_BATCH):
    """The model's test metrics on the test split (dict of floats; `model.test_metrics`), and
    the data transform they were computed on (`data_transform`, e.g. "static" binarisation for a
    Bernoulli, "none" for grayscale)."""
    results = model.test_metrics(dataset.x_test, dataset.y_test, batch_size)
    return {**results, "data_transform": model.data_transforms["eval"]}


def check_dataset(model, dataset):
    """Refuses (UserError, one line) a dataset the model cannot be evaluated on."""
    try:
        model.check_dataset(dataset)
    except ValueError as e:
        raise UserError(str(e)) from e


def write_images(model, dataset, out_dir, seed):
    """samples.png (10 rows; for the SSVAE a style/content grid: a row per z, a column per
    class) and reconstructions.png (rows alternate up to 10 test images, prepared as the
    model's evaluation prepares them, and their reconstructions). Returns the names written:
    none for data that are not square one-channel images (features)."""
    import numpy as np

    from tfp_vae import images

    side = model_side(model)
    if side is None:
        return []
    samples = grid_images(model, 10, seed)
    images.write_grid(os.path.join(out_dir, "samples.png"), samples, 10, len(samples) // 10, side)
    x = model.eval_inputs(dataset.x_test[:50])
    recon = np.asarray(model.reconstruct(x), np.float32)
    blank = np.ones((10, x.shape[1]), np.float32)  # White cells after a short last row.
    rows = [
        np.concatenate([part[i : i + 10], blank[len(part[i : i + 10]) :]])
        for i in range(0, len(x), 10)
        for part in (x, recon)
    ]
    images.write_grid(
        os.path.join(out_dir, "reconstructions.png"), np.concatenate(rows), len(rows), 10, side
    )
    return ["samples.png", "reconstructions.png"]


def model_side(model):
    """The side of the model's square one-channel images, or None for other data
    (`images.square_side` of its `data_shape`)."""
    from tfp_vae import images

    return images.square_side(model.data_shape)


def grid_images(model, rows, seed):
    """The model's images for a grid of `rows` rows (`sample_grid`: samples; for a
    class-conditional model a row per z ~ p(z), a column per class) as a NumPy array."""
    import numpy as np

    return np.asarray(model.sample_grid(rows, seed=np.array([seed, 1], np.int32)))


def write_json(path, obj):
    """Writes `obj` as JSON to `path`, whole or not at all (`tfp_vae.files.write_json`)."""
    from tfp_vae import files

    files.write_json(path, obj)


def _number(v):
    """Two decimals, or three significant digits for a small value (a learning rate)."""
    return f"{v:.3g}" if v != 0 and abs(v) < 0.1 else f"{v:.2f}"


def format_table(rows, headers):
    """Plain-text table: rows of values under headers."""
    cells = [[str(h) for h in headers]] + [
        [_number(v) if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
