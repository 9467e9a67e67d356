"""SavedModel export: named serving signatures that need only TensorFlow to load.

The graph holds plain TF ops (the TFP distributions are traced away), so
`tf.saved_model.load(path).signatures["elbo"](x=..., seed=...)` works in a process that never
imports tfp_vae or tensorflow_probability.
"""

import os
import shutil
import tempfile

import keras


def export(model, path, overwrite=False, verbose=False):
    """Writes `model.serving_functions()` as SavedModel signatures at `path`.

    The first signature is also `serving_default`. The directory is written next to `path`
    and moved into place only when complete, so a failed export never leaves a half-written
    model or destroys the one that was there.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass "
                              "overwrite=True (--overwrite) to replace it.")
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in model.serving_functions().items():
        archive.add_endpoint(name, fn, input_signature=signature)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(staging, verbose=verbose)
        if os.path.exists(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return path
