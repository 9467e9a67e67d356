"""The user's own networks: `VAE(encoder=..., decoder=...)`, `SSVAE(..., classifier=...)`: shape
checks, IWAE sample axes, save/load, SavedModel export, the SSVAE's label enumeration."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import export, networks
from tfp_vae.models import GMVAE, M1M2, SSVAE, VAE

pytestmark = pytest.mark.unit

X_DIM, Z_DIM, K = 784, 3, 10


def binary(n, seed=0, dim=X_DIM):
    return (np.random.default_rng(seed).random((n, dim)) < 0.3).astype(np.float32)


def seq(*units):
    """An unbuilt keras.Sequential of Dense layers (tanh between them, linear output)."""
    return keras.Sequential(
        [keras.layers.Dense(u, activation="tanh") for u in units[:-1]]
        + [keras.layers.Dense(units[-1])]
    )


@keras.saving.register_keras_serializable("test_user_networks")
class RankTwoOnly(keras.layers.Layer):
    """A Dense layer that records the shapes it is called on and refuses anything but [B, d]."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.seen = units, []
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        self.seen.append(tuple(x.shape))
        if len(x.shape) != 2:
            raise ValueError(f"RankTwoOnly got shape {tuple(x.shape)}")
        return self.dense(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def vae(model_cls=VAE, **kwargs):
    keras.utils.set_random_seed(0)
    extra = {"k": 5} if model_cls is GMVAE else {}
    return model_cls(
        z_dim=Z_DIM, encoder=seq(16, 2 * Z_DIM), decoder=seq(16, X_DIM), **extra, **kwargs
    )


@pytest.mark.parametrize("model_cls", [VAE, GMVAE])
def test_keras_file_round_trip(tmp_path, model_cls):
    model = vae(model_cls)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    x = binary(6)
    model.fit(x, batch_size=6, epochs=1, verbose=0)
    config = model.get_config()
    assert config["encoder"]["class_name"] == "Sequential" and "decoder" in config
    # The networks are the user's: 784 -> 16 -> 6 and 3 -> 16 -> 784.
    assert [tuple(w.shape) for w in model.encoder.weights] == [(784, 16), (16,), (16, 6), (6,)]
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is model_cls
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    seed = tf.constant([1, 2])
    np.testing.assert_array_equal(loaded.elbo(x, seed=seed), model.elbo(x, seed=seed))
    np.testing.assert_array_equal(loaded.reconstruct(x), model.reconstruct(x))
    assert int(loaded.optimizer.iterations.numpy()) == 1


def test_default_networks_stay_out_of_the_config():
    keras.utils.set_random_seed(0)
    model = VAE(z_dim=Z_DIM, hidden=(8,))
    decoder = seq(X_DIM)  # Keras draws its initialisers' seeds here, before the reseeding.
    keras.utils.set_random_seed(0)
    mixed = VAE(z_dim=Z_DIM, hidden=(8,), decoder=decoder)
    config = model.get_config()
    assert "encoder" not in config and "decoder" not in config
    assert "encoder" not in mixed.get_config() and "decoder" in mixed.get_config()
    # Leaving a network out builds the recipe's MLP, drawn first as before.
    for a, b in zip(model.encoder.get_weights(), mixed.encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_shapes_are_checked_once_with_a_clear_message():
    with pytest.raises(
        ValueError,
        match=r"encoder must map \[batch, 784\] to "
        r"\[batch, 2 \* z_dim\] = \[batch, 6\]; it gives \[batch, 5\]",
    ):
        VAE(z_dim=Z_DIM, encoder=seq(5))
    with pytest.raises(
        ValueError,
        match=r"decoder must map \[batch, z_dim\] = \[batch, 3\] to "
        r"\[batch, x_dim\] = \[batch, 784\]; it gives \[batch, 10\]",
    ):
        VAE(z_dim=Z_DIM, decoder=seq(10))
    fixed = keras.Sequential([keras.Input((10,)), keras.layers.Dense(6)])
    with pytest.raises(
        ValueError,
        match=r"encoder must map \[batch, 784\].*calling it on "
        r"\[batch, 784\] failed",
    ):
        VAE(z_dim=Z_DIM, encoder=fixed)
    with pytest.raises(ValueError, match=r"pass a Keras layer or model.*got function"):
        VAE(z_dim=Z_DIM, encoder=lambda x: x)
    with pytest.raises(
        ValueError,
        match=r"encoder must map \[batch, x_dim \+ num_classes\] = "
        r"\[batch, 794\] to \[batch, 2 \* z_dim\] = \[batch, 6\]; it gives "
        r"\[batch, 7\]",
    ):
        SSVAE(z_dim=Z_DIM, encoder=seq(7))
    with pytest.raises(
        ValueError,
        match=r"decoder must map .* to \[batch, 2 \* x_dim\] = "
        r"\[batch, 12\]; it gives \[batch, 6\]",
    ):
        SSVAE(z_dim=Z_DIM, x_dim=6, likelihood="heteroscedastic_gaussian", decoder=seq(6))
    with pytest.raises(
        ValueError,
        match=r"classifier must map \[batch, 784\] "
        r"to \[batch, num_classes\] = \[batch, 10\]; it gives \[batch, 9\]",
    ):
        SSVAE(z_dim=Z_DIM, classifier=seq(9))
    # Any layer is a network; a built one is checked as it is.
    built = keras.Sequential([keras.Input((X_DIM,)), keras.layers.Dense(2 * Z_DIM)])
    model = VAE(z_dim=Z_DIM, encoder=built, decoder=keras.layers.Dense(X_DIM))
    assert model.encoder is built and model.encode(binary(2)).batch_shape == [2]


def test_iwae_flattens_the_sample_axis_for_the_decoder():
    keras.utils.set_random_seed(0)
    decoder = RankTwoOnly(X_DIM)
    model = VAE(z_dim=Z_DIM, hidden=(8,), decoder=decoder, objective="iwae", iw=3)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    x = binary(4)
    history = model.fit(x, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["niwae"][0])
    decoder.seen.clear()
    bound = model.iwae(x, m=5, seed=[3, 4])
    assert bound.shape == [4] and np.all(np.isfinite(bound))
    assert decoder.seen == [(20, Z_DIM)]  # [m * B, z_dim]
    # The flattened pass gives sample i's likelihood for every i: decode each [B, z] alone.
    _, z, log_lik, _, _ = model._importance_samples(x, 5, seed=tfp.random.sanitize_seed([5, 6]))
    for i in range(5):
        np.testing.assert_allclose(log_lik[i], model.decode(z[i]).log_prob(x), rtol=1e-6)
    assert all(len(shape) == 2 for shape in decoder.seen)


@pytest.mark.slow
def test_savedmodel_export_serves_elbo(tmp_path):
    model = vae()
    path = export.export(model, tmp_path / "saved")
    loaded = tf.saved_model.load(path)
    x, seed = binary(5), tf.constant([3, 4])
    out = loaded.signatures["elbo"](x=tf.constant(x), seed=seed)
    np.testing.assert_allclose(out["elbo"], model.elbo(x, seed=seed), rtol=1e-5, atol=1e-3)


@keras.saving.register_keras_serializable("test_user_networks")
class Classifier(keras.Model):
    """A subclassed classifier."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(K)

    def call(self, x):
        return self.out(self.hidden(x))


def functional(input_dim, output_dim):
    inputs = keras.Input((input_dim,))
    return keras.Model(
        inputs, keras.layers.Dense(output_dim)(keras.layers.Dense(8, activation="elu")(inputs))
    )


def ssvae(**kwargs):
    keras.utils.set_random_seed(0)
    return SSVAE(
        z_dim=Z_DIM,
        classifier=Classifier(),
        encoder=seq(8, 2 * Z_DIM),
        decoder=functional(Z_DIM + K, X_DIM),
        **kwargs,
    )


def test_ssvae_user_networks_enumerate_labels_exactly():
    model = ssvae()
    # A Sequential whose first layer is Dense on [x, onehot(y)] is split; any other is tiled.
    assert networks.split_first_dense(model.encoder, K) is not None
    assert networks.split_first_dense(model.decoder, K) is None
    assert (
        networks.split_first_dense(
            keras.Sequential(
                [keras.Input((X_DIM + K,)), keras.layers.Dropout(0.1), keras.layers.Dense(6)]
            ),
            K,
        )
        is None
    )
    x = tf.constant(binary(4))
    terms = {}
    for factorise in (True, False):
        model.factorise_labels = factorise
        terms[factorise] = model.unlabelled_terms(x, seed=[1, 2])
    for name in ("nelbo", "rec", "kl_z", "kl_y"):
        np.testing.assert_allclose(terms[True][name], terms[False][name], rtol=1e-5, atol=1e-4)
    # The enumerated KL of each label is the class-by-class one.
    _, kl_z = model.enumerated_terms(x, seed=[1, 2])
    for k in range(K):
        labels = tf.fill([4], k)
        q = model._encode(x, labels)
        np.testing.assert_allclose(
            kl_z[:, k], tfp.distributions.kl_divergence(q, model.prior()), rtol=1e-5, atol=1e-5
        )


def test_ssvae_keras_file_round_trip(tmp_path):
    model = ssvae()
    config = model.get_config()
    assert {"classifier", "encoder", "decoder"} <= set(config)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.classifier, Classifier)
    x, seed = binary(5), tf.constant([1, 2])
    np.testing.assert_array_equal(loaded.classify(x), model.classify(x))
    np.testing.assert_array_equal(loaded.elbo(x, seed=seed), model.elbo(x, seed=seed))
    np.testing.assert_array_equal(
        loaded.labelled_elbo(x, np.arange(5), seed=seed),
        model.labelled_elbo(x, np.arange(5), seed=seed),
    )


def test_m1m2_passes_the_networks_through():
    keras.utils.set_random_seed(0)
    m1 = VAE(z_dim=4, hidden=(8,))
    model = M1M2(
        m1,
        z_dim=2,
        hidden=(8,),
        classifier=seq(K),
        encoder=seq(4),
        decoder=functional(2 + K, 2 * 4),
    )
    config = model.get_config()
    assert {"classifier", "encoder", "decoder"} <= set(config)
    again = M1M2.from_config(config)
    again.set_weights(model.get_weights())
    x = binary(3)
    np.testing.assert_array_equal(again.classify(x), model.classify(x))


# ---- input_shape: networks on images, shape errors that name the real shape -----------------


def conv_pair(shape, z_dim=Z_DIM):
    """A tiny conv encoder [B, *shape] -> [B, 2 z] and a decoder [B, z] -> [B, *shape]."""
    h, w, c = shape
    encoder = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, strides=2, padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(2 * z_dim),
        ]
    )
    decoder = keras.Sequential([keras.layers.Dense(h * w * c), keras.layers.Reshape(shape)])
    return encoder, decoder


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 3)])
def test_input_shape_gives_a_users_networks_shaped_inputs(shape, tmp_path):
    encoder, decoder = conv_pair(shape)
    model = VAE(
        z_dim=Z_DIM, input_shape=shape, encoder=encoder, decoder=decoder, objective="iwae", iw=3
    )
    assert model.input_shape == shape and model.x_dim == int(np.prod(shape))
    x = binary(5, dim=model.x_dim)
    # Shaped and flat inputs are the same inputs; outputs are flat.
    np.testing.assert_allclose(
        model.reconstruct(x.reshape((5,) + shape)), model.reconstruct(x), rtol=1e-6
    )
    assert model.sample(4).shape == (4, model.x_dim)
    iw = model.iwae(x.reshape((5,) + shape), 7, seed=[1, 2])  # [m, B, z] samples decoded.
    assert iw.shape == (5,) and np.all(np.isfinite(iw))
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    model.fit(x.reshape((5,) + shape), batch_size=5, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.input_shape == shape
    np.testing.assert_allclose(loaded.reconstruct(x), model.reconstruct(x), rtol=1e-6)


def test_input_shape_errors_name_the_real_shape():
    encoder, decoder = conv_pair((32, 32, 3))
    model = VAE(z_dim=Z_DIM, input_shape=(32, 32, 3), encoder=encoder, decoder=decoder)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Expected images of shape [batch, 32, 32, 3] (or [batch, 3072]); got shape (2, 28, 28)."
        ),
    ):
        model.elbo(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"encoder must map \[batch, 32, 32, 3\]"):
        VAE(z_dim=Z_DIM, input_shape=(32, 32, 3), encoder=keras.layers.Dense(2 * Z_DIM))
    with pytest.raises(
        ValueError,
        match=r"decoder must map \[batch, z_dim\] = \[batch, 3\] to "
        r"\[batch, 32, 32, 3\] or \[batch, x_dim\] = \[batch, 3072\]",
    ):
        VAE(z_dim=Z_DIM, input_shape=(32, 32, 3), encoder=encoder, decoder=seq(10))
    with pytest.raises(ValueError, match=r"x_dim=784 does not match input_shape=\(32, 32, 3\)"):
        VAE(input_shape=(32, 32, 3), x_dim=784)
    with pytest.raises(ValueError, match="input_shape must be the shape of one input"):
        VAE(input_shape=(28, 0))
    # Real-valued vectors: a Gaussian likelihood on (64,).
    vectors = VAE(z_dim=2, hidden=(8,), input_shape=(64,), likelihood="gaussian")
    with pytest.raises(ValueError, match=re.escape("Expected features of shape [batch, 64]")):
        vectors.elbo(np.zeros((2, 63), np.float32))
    assert vectors.elbo(np.random.default_rng(0).normal(size=(2, 64))).shape == (2,)


def test_ssvae_input_shape_gives_a_users_classifier_shaped_inputs():
    classifier = keras.Sequential(
        [keras.layers.Conv2D(4, 3, strides=2), keras.layers.Flatten(), keras.layers.Dense(K)]
    )
    model = SSVAE(
        z_dim=Z_DIM,
        hidden=(8,),
        classifier_hidden=(8,),
        input_shape=(28, 28, 1),
        classifier=classifier,
    )
    x = binary(3)
    probs = model.classify(x.reshape(3, 28, 28, 1))
    np.testing.assert_allclose(probs, model.classify(x), rtol=1e-6)
    assert model.get_config()["input_shape"] == [28, 28, 1]


def test_auto_jit_compile_leaves_convolutions_to_tensorflow_without_a_gpu():
    """jit_compile="auto" (compile's default) is XLA for the MLPs, and for a model with a
    convolution only when a GPU is visible (XLA's CPU convolutions are far slower)."""
    gpu = bool(tf.config.list_physical_devices("GPU"))
    encoder, decoder = conv_pair((28, 28, 1))
    conv = VAE(z_dim=Z_DIM, input_shape=(28, 28, 1), encoder=encoder, decoder=decoder)
    mlp = VAE(z_dim=Z_DIM, hidden=(8,))
    for model in (conv, mlp):
        model.compile(keras.optimizers.Adam(1e-3))
    assert conv.xla_update is gpu and mlp.xla_update is True
    conv.compile(keras.optimizers.Adam(1e-3), jit_compile=True)  # Asked for: XLA.
    assert conv.xla_update is True
