"""The models shipped in `savedmodels/`, one call away.

Each is a SavedModel (`savedmodels/NAME/`, served by TensorFlow alone) with its Keras model beside
it (`savedmodels/NAME.keras`, compiled: `fit` goes on training it). `savedmodels/index.json` lists
them with their measured scores and the commands that trained and measured them.

    import tfp_vae
    tfp_vae.pretrained.list()             # [{"name": "gmvae", "scores": {...}, ...}, ...]
    model = tfp_vae.pretrained.load("gmvae")
    model.iwae(x, m=1000)

The folder is, in order: the one the environment variable TFP_VAE_SAVEDMODELS names; the
package's own `savedmodels/` (`tfp_vae/savedmodels/`, where `pip install .` puts a copy of the
repository's folder: setup.py's build step); the repository's `savedmodels/` beside the package
(a checkout, or an editable install).
"""

import builtins
import json
import os

ENV_VAR = "TFP_VAE_SAVEDMODELS"
INDEX = "index.json"


def _candidates() -> builtins.list[tuple[str, str]]:
    """The (description, folder) pairs looked in, in order."""
    package = os.path.dirname(os.path.abspath(__file__))
    out = [] if not os.environ.get(ENV_VAR) else [(f"${ENV_VAR}", os.environ[ENV_VAR])]
    out.append(("installed with the package", os.path.join(package, "savedmodels")))
    out.append(("the repository's", os.path.join(os.path.dirname(package), "savedmodels")))
    return out


def directory() -> str:
    """The folder of the shipped models: $TFP_VAE_SAVEDMODELS if set, else the first of the
    package's `savedmodels/` and the repository's that holds an `index.json`.

    Raises:
      FileNotFoundError (one line): none does; the message names each folder looked in.
    """
    candidates = _candidates()
    if os.environ.get(ENV_VAR):
        # An explicit choice: never a silent fall-through to another folder.
        candidates = candidates[:1]
    for _, folder in candidates:
        if os.path.isfile(os.path.join(folder, INDEX)):
            return folder
    looked = "; ".join(f"{what} {folder}" for what, folder in candidates)
    raise FileNotFoundError(
        f"No {INDEX} listing the shipped models in: {looked}. Install tfp_vae with "
        f"`pip install .` from a checkout, or set {ENV_VAR} to a folder like savedmodels/."
    )


def _read_index(path: str) -> builtins.list[dict]:
    """The "models" entries of the index at `path`, each a dict with a "name"; a ValueError
    naming the file (one line) for one that is not such JSON."""
    fix = "restore it (git checkout savedmodels/index.json, or reinstall tfp_vae)"
    try:
        with open(path) as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {fix}.") from None
    entries = index.get("models") if isinstance(index, dict) else None
    if not isinstance(entries, builtins.list):
        raise ValueError(
            f'{path} is not an index of models (a JSON object with a "models" list); {fix}.'
        )
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f'{path}: entry {i} of "models" has no "name"; {fix}.')
    return entries


def list() -> builtins.list[dict]:  # noqa: A001  The name the issue and users ask for: tfp_vae.pretrained.list().
    """The shipped models: a list of dicts with `name`, `model` (its class), `description`,
    `scores` (name -> value, as measured), `trained_with` and `measured_with` (commands),
    `savedmodel` and `keras` (absolute paths)."""
    folder = directory()
    entries = _read_index(os.path.join(folder, INDEX))
    return [
        {
            **entry,
            "savedmodel": os.path.join(folder, entry["name"]),
            "keras": os.path.join(folder, entry["name"] + ".keras"),
        }
        for entry in entries
    ]


def names() -> builtins.list[str]:
    """The names `load` takes."""
    return [entry["name"] for entry in list()]


def load(name: str, compile: bool = True):  # noqa: A002  Keras' own argument name.
    """The shipped Keras model `name` (see `list`), compiled unless `compile` is False."""
    import keras

    import tfp_vae.models  # noqa: F401  Registers the model classes with Keras.

    known = names()
    if name not in known:
        raise ValueError(
            f"No shipped model {name!r}; the shipped ones are "
            f"{', '.join(sorted(known))} (tfp_vae.pretrained.list())."
        )
    from tfp_vae import files

    path = files.check_keras_file(os.path.join(directory(), name + ".keras"))
    return keras.models.load_model(path, compile=compile)


def load_savedmodel(name: str):
    """The shipped SavedModel `name`, loaded with `tf.saved_model.load` (its signatures)."""
    import tensorflow as tf

    if name not in names():
        raise ValueError(f"No shipped model {name!r}; see tfp_vae.pretrained.list().")
    return tf.saved_model.load(os.path.join(directory(), name))
