"""The models shipped in `savedmodels/`, one call away.

Each is a SavedModel (`savedmodels/NAME/`, served by TensorFlow alone) with its Keras model beside
it (`savedmodels/NAME.keras`, compiled: `fit` goes on training it). `savedmodels/index.json` lists
them with their measured scores and the commands that trained and measured them.

    import tfp_vae
    tfp_vae.pretrained.list()             # [{"name": "gmvae", "scores": {...}, ...}, ...]
    model = tfp_vae.pretrained.load("gmvae")
    model.iwae(x, m=1000)

The folder is the repository's `savedmodels/` (beside the package); the environment variable
TFP_VAE_SAVEDMODELS names another.
"""

import builtins
import json
import os

ENV_VAR = "TFP_VAE_SAVEDMODELS"
INDEX = "index.json"


def directory() -> str:
    """The folder of the shipped models: $TFP_VAE_SAVEDMODELS, else the repository's
    `savedmodels/`."""
    return os.environ.get(ENV_VAR) or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "savedmodels"
    )


def list() -> builtins.list[dict]:  # noqa: A001  The name the issue and users ask for: tfp_vae.pretrained.list().
    """The shipped models: a list of dicts with `name`, `model` (its class), `description`,
    `scores` (name -> value, as measured), `trained_with` and `measured_with` (commands),
    `savedmodel` and `keras` (absolute paths)."""
    path = os.path.join(directory(), INDEX)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {INDEX} in {directory()}, which lists the shipped models: use a checkout of "
            f"the repository (its savedmodels/ folder) or set {ENV_VAR} to such a folder."
        )
    with open(path) as f:
        entries = json.load(f)["models"]
    return [
        {
            **entry,
            "savedmodel": os.path.join(directory(), entry["name"]),
            "keras": os.path.join(directory(), entry["name"] + ".keras"),
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
    return keras.models.load_model(os.path.join(directory(), name + ".keras"), compile=compile)


def load_savedmodel(name: str):
    """The shipped SavedModel `name`, loaded with `tf.saved_model.load` (its signatures)."""
    import tensorflow as tf

    if name not in names():
        raise ValueError(f"No shipped model {name!r}; see tfp_vae.pretrained.list().")
    return tf.saved_model.load(os.path.join(directory(), name))
