"""tfp_vae: latent-variable generative models (VAE, GMVAE, IWAE, SSVAE) in Keras 3 + TFP.

`import tfp_vae` registers every model and layer class with Keras, so that
`keras.models.load_model("model.keras")` needs no other import. The models are also here:
`tfp_vae.VAE`, `tfp_vae.GMVAE`, `tfp_vae.SSVAE`, `tfp_vae.M1M2`, and the base class
`tfp_vae.LatentVariableModel` for a model of one's own.
"""

import os as _os
import re as _re
import sys as _sys
import tempfile as _tempfile

__version__ = "0.2.0"

# The lines TensorFlow's C++ start-up writes at INFO level before its logging honours
# TF_CPP_MIN_LOG_LEVEL: "I0000 00:00:... port.cc:153] oneDNN custom operations are on...", the
# CPU-feature notice and its continuation, and absl's note that precedes them.
_START_UP_INFO = _re.compile(
    r"I\d{4} |WARNING: All log messages before absl::InitializeLog|"
    r"To enable the following instructions"
)


def _import_tensorflow():
    """Imports TensorFlow. When TF_CPP_MIN_LOG_LEVEL asks for warnings and errors only (>= 2;
    the binaries default to 3, errors dropped too), the INFO lines of its start-up are dropped;
    everything else it writes to stderr then (warnings, errors) still reaches stderr."""
    if "tensorflow" in _sys.modules or not _quiet():
        import tensorflow

        return
    _sys.stderr.flush()
    saved = _os.dup(2)
    with _tempfile.TemporaryFile() as captured:
        _os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            _os.dup2(saved, 2)
            _os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(True)
                if not _START_UP_INFO.match(line)
            ]
            _sys.stderr.write("".join(kept))


def _quiet():
    """Whether TF_CPP_MIN_LOG_LEVEL asks for warnings and errors only (>= 2; the binaries' 3)."""
    try:
        return int(_os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) >= 2
    except ValueError:
        return False


def _keras_backend():
    """The Keras backend this process runs (or will run) on: Keras' own word once imported,
    else KERAS_BACKEND's (Keras' default, TensorFlow, without it)."""
    if "keras" in _sys.modules:
        return _sys.modules["keras"].config.backend()
    return _os.environ.get("KERAS_BACKEND") or "tensorflow"


def _import_all():
    """TensorFlow on its Keras backend (quietly, see `_import_tensorflow`), then the library's
    numeric core and models as attributes of the package (`tfp_vae.checks`, `tfp_vae.VAE`,
    ...); importing the models registers every class with Keras. On another backend (JAX)
    TensorFlow is not needed, and what needs it (`_LAZY_MODULES`) is imported when first used."""
    import importlib

    if _keras_backend() == "tensorflow":
        _import_tensorflow()
    elif _quiet():
        # On JAX TensorFlow is not needed, but Keras imports it where it is installed (e.g.
        # keras.utils.set_random_seed seeds tf.data): import it now, when its start-up lines can
        # still be dropped, so that a binary's error stays one line.
        try:
            _import_tensorflow()
        except ImportError:
            pass  # Not installed (or not importable): nothing to quiet.
    for name in _MODULES:
        importlib.import_module(f"tfp_vae.{name}")  # Each becomes an attribute of the package.
    models = importlib.import_module("tfp_vae.models")
    globals().update({name: getattr(models, name) for name in _MODELS})


# The numeric core, imported with the package on every backend (it registers the classes).
_MODULES = (
    "backend",
    "checks",
    "evaluation",
    "layers",
    "likelihoods",
    "networks",
    "objectives",
    "pretrained",
    "semisupervised",
)
# Imported when first used (`tfp_vae.export`, ...): the input pipelines, and what only TF has
# (the SavedModel export and its signatures), so that the package imports on JAX without
# TensorFlow installed.
_LAZY_MODULES = (
    "data",
    "data_numpy",
    "export",
    "files",
    "signatures",
    "images",
    "plots",
    "rundir",
    "training",
)


def __getattr__(name):
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"tfp_vae.{name}")
    raise AttributeError(f"module 'tfp_vae' has no attribute {name!r}")


_MODELS = ("GMVAE", "M1M2", "SSVAE", "VAE", "LatentVariableModel")

# The binaries' names: bin/<name>, and the console scripts tfp_vae_<name> of setup.cfg.
_BINARIES = ("train", "evaluate", "export", "sample", "plot")


def _as_binary():
    """A console script `tfp_vae_<binary>` (setup.cfg) imports this package before its
    tfp_vae.cli module: make it behave as the launchers in bin/ do before they import it
    (TensorFlow's C++ logging at TF_CPP_MIN_LOG_LEVEL=3 unless the user set it; TensorFlow
    imported once the flags are parsed)."""
    name = _os.path.basename((getattr(_sys, "argv", None) or [""])[0])
    if name.startswith("tfp_vae_") and name[len("tfp_vae_") :] in _BINARIES:
        _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        _os.environ["TFP_VAE_DEFER_IMPORT"] = "1"


_as_binary()

# The binaries in bin/ set TFP_VAE_DEFER_IMPORT=1, so that their flags are parsed (and a mistake
# reported) before TensorFlow's seconds of start-up; they import the rest after
# (`tfp_vae.cli.common.import_library`, which calls `_import_all`).
if _os.environ.get("TFP_VAE_DEFER_IMPORT") != "1":
    _import_all()

__all__ = [
    # The models.
    "GMVAE",
    "M1M2",
    "SSVAE",
    "VAE",
    "LatentVariableModel",
    # The library's modules (also what the API reference, `make docs`, documents; the binaries'
    # modules, tfp_vae.cli, are not a library API).
    "backend",
    "checks",
    "data",
    "data_numpy",
    "evaluation",
    "export",
    "files",
    "images",
    "layers",
    "likelihoods",
    "models",
    "networks",
    "objectives",
    "plots",
    "pretrained",
    "rundir",
    "semisupervised",
    "signatures",
    "training",
]
