"""The user's networks run with training=True in every training step (the fused update, plain
and XLA; the tf.distribute step; the trainable SavedModel's `train_step`) and with
training=False everywhere else, so that a BatchNormalization layer's moving statistics follow
`fit` and evaluation does not drop units. M1 of a stacked model stays in inference mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import export
from tfp_vae.models import M1M2, SSVAE, VAE

pytestmark = pytest.mark.unit  # Small in-process fits; the SavedModel one is slow.

X_DIM, Z_DIM, K = 16, 2, 3


def _binary(rows, seed=0):
    return (np.random.default_rng(seed).random((rows, X_DIM)) < 0.5).astype(np.float32)


def _network(out_dim, name):
    """Dense -> BatchNormalization -> Dropout(0.5) -> Dense: a plain Dense first (the SSVAE
    factorises it and runs the rest itself), then both layers whose mode matters."""
    return keras.Sequential(
        [
            keras.layers.Dense(8, activation="elu", name=f"{name}_dense"),
            keras.layers.BatchNormalization(name=f"{name}_bn"),
            keras.layers.Dropout(0.5, name=f"{name}_dropout"),
            keras.layers.Dense(out_dim, name=f"{name}_out"),
        ],
        name=name,
    )


def _moving_means(network):
    """The moving means of the BatchNormalization layers of `network`, as arrays."""
    return [
        np.array(layer.moving_mean.value)
        for layer in network.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _vae(**kwargs):
    return VAE(
        z_dim=Z_DIM,
        input_shape=(X_DIM,),
        encoder=_network(2 * Z_DIM, "encoder"),
        decoder=_network(X_DIM, "decoder"),
        seed=0,
        **kwargs,
    )


def _ssvae():
    return SSVAE(
        z_dim=Z_DIM,
        x_dim=X_DIM,
        num_classes=K,
        encoder=_network(2 * Z_DIM, "encoder"),
        decoder=_network(X_DIM, "decoder"),
        classifier=_network(K, "classifier"),
        seed=0,
    )


def _ssvae_data():
    """Three training elements (unlabelled [8, X_DIM], (labelled [6, X_DIM], labels [6])), and
    test data (x, y)."""
    x = _binary(24)
    y = np.arange(24) % K
    train = tf.data.Dataset.from_tensor_slices(
        (x.reshape(3, 8, X_DIM), (np.stack([x[:6]] * 3), np.stack([y[:6]] * 3)))
    )
    return train, (x, y)


def _assert_moved(before, after):
    assert before and len(before) == len(after)
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(
    "objective, jit",
    # The XLA twin compiles for 5 CPU-seconds: the slow tier (the graph one stays fast).
    [("elbo", False), pytest.param("elbo", True, marks=pytest.mark.slow), ("iwae", False)],
    ids=["graph", "xla", "iwae"],
)
def test_vae_fit_updates_batch_norm_and_evaluation_is_deterministic(jit, objective):
    model = _vae(objective=objective, iw=2)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=jit)
    assert model.xla_update == jit
    before = _moving_means(model.encoder) + _moving_means(model.decoder)
    x = _binary(40)
    model.fit(x, batch_size=20, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 4
    _assert_moved(before, _moving_means(model.encoder) + _moving_means(model.decoder))

    # Evaluation leaves the moving statistics alone and drops nothing: the same call twice, the
    # same numbers (Dropout(0.5) in training mode would change every one of them).
    frozen = _moving_means(model.encoder)
    assert model.evaluate(x, verbose=0, return_dict=True) == model.evaluate(
        x, verbose=0, return_dict=True
    )
    for call in (
        lambda: model.elbo(x, seed=[1, 2]),
        lambda: model.iwae(x, 3, seed=[1, 2]),
        lambda: model.reconstruct(x),
        lambda: model.predict(x, verbose=0),
        lambda: model.sample(4, seed=[3, 4]),
    ):
        np.testing.assert_array_equal(call(), call())
    for a, b in zip(frozen, _moving_means(model.encoder), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_mode_changes_the_loss():
    """compute_losses(training=True) runs the networks as the step does: with Dropout the loss
    differs from the inference-mode one at the same seed; training=False is the default."""
    model = _vae()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    x = tf.constant(_binary(20))
    seed = tf.constant([5, 6])
    inference = model.compute_losses(x, seed)[0]
    assert float(model.compute_losses(x, seed, training=False)[0]) == float(inference)
    assert float(model.compute_losses(x, seed, training=True)[0]) != float(inference)


def test_ssvae_fit_updates_batch_norm_and_evaluation_is_deterministic():
    model = _ssvae()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)  # The VAE's test has XLA.
    networks = (model.classifier, model.encoder, model.decoder)
    before = [m for n in networks for m in _moving_means(n)]
    train, test = _ssvae_data()
    model.fit(train, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 3
    _assert_moved(before, [m for n in networks for m in _moving_means(n)])

    x, y = test
    assert model.evaluate(x, y, verbose=0, return_dict=True) == model.evaluate(
        x, y, verbose=0, return_dict=True
    )
    for call in (
        lambda: model.elbo(x, seed=[1, 2]),
        lambda: model.classify(x),
        lambda: model.reconstruct(x),
        lambda: model.sample(4, seed=[3, 4]),
    ):
        np.testing.assert_array_equal(call(), call())


class _ModeRecorder(keras.layers.Layer):
    """The identity, recording each `training` value it is called with (at trace time)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, x, training=None):
        self.seen.append(training)
        return x


def test_stacked_m1_stays_in_inference_mode_while_m2_trains():
    """M1's encoder sees training=False in M2's training step; M2's classifier sees True."""
    m1_recorder, m2_recorder = _ModeRecorder(), _ModeRecorder()
    m1 = VAE(
        z_dim=4,
        input_shape=(X_DIM,),
        encoder=keras.Sequential([m1_recorder, keras.layers.Dense(8)]),
        seed=0,
    )
    model = M1M2(
        m1,
        z_dim=Z_DIM,
        num_classes=K,
        hidden=(8,),
        classifier=keras.Sequential([m2_recorder, keras.layers.Dense(K)]),
        seed=0,
    )
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    m1_recorder.seen.clear()
    m2_recorder.seen.clear()
    model.fit(_ssvae_data()[0], epochs=1, shuffle=False, verbose=0)
    assert True in m2_recorder.seen
    assert m1_recorder.seen and not any(m1_recorder.seen)


@pytest.mark.integration
def test_mirrored_step_updates_batch_norm():
    """The replicated step (a one-replica MirroredStrategy: a replica context, no fused
    update) runs the networks in training mode too."""
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = _vae()
        model.compile(keras.optimizers.Adam(1e-2))
    before = _moving_means(model.encoder) + _moving_means(model.decoder)
    model.fit(_binary(40), batch_size=20, epochs=1, verbose=0)
    assert int(np.asarray(model.optimizer.iterations.value)) == 2
    _assert_moved(before, _moving_means(model.encoder) + _moving_means(model.decoder))


@pytest.mark.slow
def test_trainable_savedmodel_step_updates_batch_norm(tmp_path):
    model = _vae()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    export.export(model, tmp_path / "saved", trainable=True)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    means = [v for v in loaded.variables if "moving_mean" in v.name]
    before = [v.numpy() for v in means]
    x = tf.constant(_binary(20))
    seed = tf.constant([1, 2])
    elbo = loaded.signatures["elbo"](x=x, seed=seed)["elbo"].numpy()
    np.testing.assert_array_equal(loaded.signatures["elbo"](x=x, seed=seed)["elbo"], elbo)
    loaded.signatures["train_step"](x=x)
    assert len(means) == 2
    _assert_moved(before, [v.numpy() for v in means])


def test_saves_and_loads_with_batch_norm_and_dropout(tmp_path):
    model = _vae()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    x = _binary(20)
    model.fit(x, batch_size=10, epochs=1, verbose=0)
    model.save(tmp_path / "vae.keras")
    loaded = keras.models.load_model(tmp_path / "vae.keras")
    for a, b in zip(_moving_means(model.encoder), _moving_means(loaded.encoder), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.reconstruct(x), model.reconstruct(x))
    np.testing.assert_array_equal(loaded.elbo(x, seed=[1, 2]), model.elbo(x, seed=[1, 2]))
