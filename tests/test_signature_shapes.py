"""What an exported SavedModel's signatures declare (each input's feature shape with a dynamic
batch) and return (data-space outputs shaped like one input), for flat and image-shaped models;
and a model that writes its own `serving_functions` keeps them."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import export, networks
from tfp_vae.checks import check_features
from tfp_vae.models import GMVAE, VAE
from tfp_vae.models.ssvae import SSVAE

pytestmark = pytest.mark.slow  # Six trainable exports, ~35 s: not in make test-fast.

Z = 3


def make_model(name):
    keras.utils.set_random_seed(0)
    if name == "vae":
        return VAE(z_dim=Z, hidden=(8,))
    if name == "gmvae":
        return GMVAE(k=3, z_dim=Z, hidden=(8,))
    if name == "ssvae":
        return SSVAE(z_dim=Z, hidden=(8,), classifier_hidden=(8,))
    if name == "conv_vae":
        shape = (28, 28, 1)
        return VAE(
            z_dim=Z,
            input_shape=shape,
            encoder=networks.conv_encoder(shape, 2 * Z),
            decoder=networks.conv_decoder(Z, shape),
        )
    if name == "vae_16x16":
        return VAE(z_dim=Z, hidden=(8,), input_shape=(16, 16))
    return SSVAE(z_dim=Z, hidden=(8,), classifier_hidden=(8,), input_shape=(16, 16))


MODELS = ["vae", "gmvae", "ssvae", "conv_vae", "vae_16x16", "ssvae_16x16"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (Python model, loaded SavedModel); trainable exports (with train_step)."""
    out = {}
    for name in MODELS:
        model = make_model(name)
        model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
        path = tmp_path_factory.mktemp("saved") / name
        export.export(model, path, trainable=True)
        out[name] = (model, tf.saved_model.load(str(path)))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_every_input_declares_its_feature_shape_with_a_dynamic_batch(exported, name):
    model, loaded = exported[name]
    data = [None, *model.data_shape]
    expected = {
        "x": data,
        "unlabelled_x": data,
        "labelled_x": data,
        "z": [None, Z],
        "y": [None],
        "labelled_y": [None],
        "n": [],
        "m": [],
        "seed": [2],
    }
    assert "train_step" in loaded.signatures
    for sig, function in loaded.signatures.items():
        args, specs = function.structured_input_signature
        assert args == () and specs, sig
        for key, spec in specs.items():
            assert spec.shape.as_list() == expected[key], (sig, key, spec)


def batch_inputs(name, batch):
    x = (np.random.default_rng(0).random((batch, 784)) < 0.3).astype(np.float32)
    if name in ("vae_16x16", "ssvae_16x16"):
        x = x[:, :256].reshape(batch, 16, 16)
    elif name == "conv_vae":
        x = x.reshape(batch, 28, 28, 1)
    return tf.constant(x)


@pytest.mark.parametrize("name", MODELS)
def test_data_space_outputs_have_the_shape_of_one_input(exported, name):
    model, loaded = exported[name]
    shape = tuple(model.data_shape)
    sig = loaded.signatures
    labels = {"y": tf.constant([1, 2, 3])} if model.class_conditional else {}
    one_label = {"y": tf.constant([4])} if model.class_conditional else {}
    x = batch_inputs(name, 3)
    decoded = sig["decode"](z=tf.zeros([3, Z]), **labels)
    assert decoded and all(v.shape == (3, *shape) for v in decoded.values()), decoded
    assert sig["sample"](n=tf.constant(2), **one_label)["images"].shape == (2, *shape)
    assert sig["sample"](n=tf.constant(0), **one_label)["images"].shape == (0, *shape)
    assert sig["decode"](z=tf.zeros([0, Z]), **({"y": labels["y"][:0]} if labels else {}))[
        next(iter(decoded))
    ].shape == (0, *shape)
    # Latents and per-example values stay as they are.
    assert sig["encode"](x=x, **labels)["mean"].shape == (3, Z)
    assert sig["elbo"](x=x, seed=tf.constant([1, 2]))["elbo"].shape == (3,)
    # The same numbers as the Python API's flat ones.
    flat = (
        model.generate(tf.zeros([3, Z]), labels["y"])
        if model.class_conditional
        else model.decode(tf.zeros([3, Z])).mean()
    )
    key = "probs" if "probs" in decoded else "mean"
    np.testing.assert_allclose(np.reshape(decoded[key], (3, -1)), flat, rtol=1e-5, atol=1e-6)
    # The loaded object's functions also take the inputs flat.
    flat_x = tf.reshape(x, [3, -1])
    np.testing.assert_allclose(
        loaded.encode(x=flat_x, **labels)["mean"], sig["encode"](x=x, **labels)["mean"], rtol=1e-5
    )
    if model.class_conditional:
        assert loaded.signatures["classify"](x=x)["probs"].shape == (3, 10)
    else:
        steps = loaded.signatures["train_step"](x=x)
        assert int(steps["optimizer_iterations"]) == 1


class Scored(VAE):
    """A user's model that writes its own signatures (the way before they moved out of the
    model classes)."""

    def serving_functions(self):
        def mean_image(z):
            return {"mean": self.decode(check_features(z, self.z_dim, name="latents")).mean()}

        return {"mean_image": (mean_image, [tf.TensorSpec(None, tf.float32, name="z")])}


def test_a_model_that_writes_its_own_serving_functions_is_exported_with_them(tmp_path):
    keras.utils.set_random_seed(0)
    model = Scored(z_dim=Z, hidden=(8,))
    loaded = tf.saved_model.load(export.export(model, tmp_path / "own"))
    assert set(loaded.signatures) == {"mean_image", "serving_default"}
    # A known input name gets its declared shape.
    spec = loaded.signatures["mean_image"].structured_input_signature[1]["z"]
    assert spec.shape.as_list() == [None, Z]
    out = loaded.signatures["mean_image"](z=tf.zeros([2, Z]))["mean"]
    np.testing.assert_allclose(out, model.decode(tf.zeros([2, Z])).mean(), rtol=1e-6)
