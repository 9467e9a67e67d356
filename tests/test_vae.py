"""The VAE end to end: convergence on real MNIST, model API, save/load, resume, NaN stop, bad
input."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, training
from tfp_vae.models import GMVAE, VAE

pytestmark = pytest.mark.unit


def _small_vae(**kwargs):
    keras.utils.set_random_seed(0)
    model = VAE(z_dim=4, hidden=(32,), x_dim=784, **kwargs)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    return model


def _random_binary(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


@pytest.mark.parametrize("model_cls", [VAE, GMVAE])
@pytest.mark.slow
def test_converges_on_mnist(mnist, model_cls):
    """1500 steps of the recipe: the bound, computed independently of `kl()` through sampled
    log q - log p (IWAE with m = 1), must fall far below its start. A broken KL (say, beta 0 or
    a wrong sign) collapses the posterior and blows this bound up; a broken likelihood never
    gets the reconstruction term down."""
    keras.utils.set_random_seed(1)
    model = model_cls(**({"k": 50} if model_cls is GMVAE else {}))
    # The binaries' default: XLA-compiled updates, 25 steps per execution.
    model.compile(keras.optimizers.Adam(1e-3), steps_per_execution=25)
    model.fit(
        data.train_dataset(mnist.x_train, 97, seed=1), steps_per_epoch=1500, epochs=1, verbose=0
    )
    x = data.binarize_static(mnist.x_test[:1000])
    metrics = model.evaluate(x, batch_size=500, verbose=0, return_dict=True)
    sampled_bound = -float(tf.reduce_mean(model.iwae(x, 1, seed=[3, 4])))
    assert sampled_bound < 122.0, (sampled_bound, metrics)
    # The analytic (or one-sample) KL and the sampled-density bound agree: both are the ELBO.
    assert abs(metrics["nelbo"] - sampled_bound) < 2.0, (metrics, sampled_bound)
    assert 8.0 < metrics["kl"] < 35.0, metrics
    assert 75.0 < metrics["rec"] < 115.0, metrics


def test_api_shapes_and_ranges():
    model = _small_vae()
    x = _random_binary(5)
    q = model.encode(x)
    assert q.batch_shape == [5] and q.event_shape == [4]
    p = model.decode(q.sample())
    assert p.batch_shape == [5] and p.event_shape == [784]
    samples = np.asarray(model.sample(6))
    assert samples.shape == (6, 784) and samples.min() >= 0 and samples.max() <= 1
    assert np.asarray(model.reconstruct(x)).shape == (5, 784)
    elbo = np.asarray(model.elbo(x, seed=tf.constant([1, 2])))
    assert elbo.shape == (5,) and np.all(elbo < 0)
    np.testing.assert_array_equal(elbo, model.elbo(x, seed=tf.constant([1, 2])))
    # 28x28 images are accepted and flattened.
    np.testing.assert_allclose(model.elbo(x.reshape(5, 28, 28), seed=tf.constant([1, 2])), elbo)


def test_beta_weights_kl_in_loss_only():
    model = _small_vae(beta=4.0)
    x = _random_binary(8)
    tf.random.set_seed(5)
    terms = model.compute_terms(x)
    np.testing.assert_allclose(terms["loss"], terms["rec"] + 4.0 * terms["kl"], rtol=1e-6)
    np.testing.assert_allclose(terms["nelbo"], terms["rec"] + terms["kl"], rtol=1e-6)


def test_keras_save_and_load_roundtrip(tmp_path):
    model = _small_vae()
    x = _random_binary(4)
    model.fit(x, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, VAE) and loaded.get_config() == model.get_config()
    seed = tf.constant([7, 7])
    np.testing.assert_allclose(loaded.elbo(x, seed=seed), model.elbo(x, seed=seed), rtol=1e-6)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)


def test_fit_with_validation_and_callbacks():
    model = _small_vae()
    history = model.fit(
        _random_binary(64),
        epochs=2,
        batch_size=16,
        verbose=0,
        validation_data=(_random_binary(32, seed=1),),
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_nelbo", mode="min", patience=5)],
    )
    assert {"nelbo", "kl", "rec", "loss", "val_nelbo", "val_kl", "val_rec"} <= set(history.history)


class _Kill(keras.callbacks.Callback):
    """Simulates a kill right after the checkpoint of epoch `at` has been written."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt


def test_resume_restores_weights_optimizer_and_step(tmp_path):
    train = data.train_dataset(
        np.random.default_rng(0).integers(0, 256, (300, 28, 28), np.uint8), 16, seed=0
    )
    model = _small_vae()
    with pytest.raises(KeyboardInterrupt):
        training.fit(
            model,
            train,
            steps=60,
            out_dir=str(tmp_path),
            steps_per_epoch=20,
            verbose=0,
            extra_callbacks=[_Kill(at=2)],
        )
    saved = [np.array(v) for v in model.weights]
    saved_opt = [np.array(v) for v in model.optimizer.variables]
    fresh = _small_vae()
    fresh.optimizer.build(fresh.trainable_variables)
    assert training.restore(fresh, str(tmp_path / "checkpoints"))["step"] == 40
    for a, b in zip(saved, fresh.weights, strict=True):
        np.testing.assert_array_equal(a, np.array(b))
    for a, b in zip(saved_opt, fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a, np.array(b))
    assert int(fresh.optimizer.iterations) == 40
    resumed = _small_vae()
    history = training.fit(
        resumed, train, steps=60, out_dir=str(tmp_path), steps_per_epoch=20, resume=True, verbose=0
    )
    assert int(resumed.optimizer.iterations) == 60 and len(history.history["loss"]) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = _small_vae()
    original = model.compute_terms

    def poisoned(x, training=False, seed=None):
        terms = original(x, training, seed)
        bad = model.optimizer.iterations >= 30
        terms["loss"] = tf.where(bad, np.float32(np.nan), terms["loss"])
        return terms

    model.compute_terms = poisoned
    train = data.train_dataset(
        np.random.default_rng(0).integers(0, 256, (300, 28, 28), np.uint8), 16, seed=0
    )
    with pytest.raises(training.NonFiniteLossError, match=r"step 3[01]"):
        training.fit(model, train, steps=100, out_dir=str(tmp_path), steps_per_epoch=20, verbose=0)
    ckpt = tmp_path / "checkpoints"
    assert [step for step, _ in training.checkpoints(str(ckpt))] == [20]
    assert json.loads((ckpt / "step-000000020" / "state.json").read_text())["step"] == 20
    good = _small_vae()
    good.optimizer.build(good.trainable_variables)
    training.restore(good, str(ckpt))
    assert all(np.all(np.isfinite(np.array(v))) for v in good.weights)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 100), np.float32), r"shape \[batch, 784\]"),
        (np.zeros((784,), np.float32), r"shape \[batch, 784\]"),
        (np.full((2, 784), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((2, 784), np.nan, np.float32), "NaN"),
        (np.full((2, 784), 0.5, np.float32), "binary"),
    ],
)
def test_bad_input_eager(bad, message):
    model = _small_vae()
    with pytest.raises(ValueError, match=message):
        model.elbo(bad)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.slow
def test_bad_input_in_fit_fails_clearly_and_changes_nothing(jit_compile):
    """XLA drops assertion ops: the fused update must still refuse a bad batch, untouched."""
    model = _small_vae()
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    model.fit(_random_binary(8), batch_size=4, epochs=1, verbose=0)
    before = [np.array(v) for v in model.weights + model.optimizer.variables]
    for bad, message in [(0.5, "binary"), (np.nan, "NaN"), (3.0, r"\[0, 1\]")]:
        # A dataset reaches the step unchecked (arrays are checked up front, in fit).
        batches = tf.data.Dataset.from_tensor_slices(np.full((8, 784), bad, np.float32)).batch(4)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            model.fit(batches, epochs=1, verbose=0)
    after = [np.array(v) for v in model.weights + model.optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match=r"\[batch, 784\]"):
        model.fit(np.zeros((8, 10), np.float32), batch_size=4, epochs=1, verbose=0)


def _fixed_noise_terms(model, x):
    """The ELBO terms with the reparameterisation noise fixed at 0.5 (XLA's RNG streams differ
    from TF's, even stateless ones)."""
    q = model.encode(x)
    z = q.mean() + 0.5 * tf.sqrt(q.variance())
    rec = -model.decode(z).log_prob(x)
    kl = model.kl(q, z)
    return {"nelbo": rec + kl, "kl": kl, "rec": rec}


def test_xla_update_matches_graph_update():
    """The XLA-compiled fused update computes the same step as the plain graph one.

    SGD with momentum (an optimizer slot, like Adam's), not Adam: Adam's step lr g / (|g| + eps)
    turns a float32 difference in a near-zero gradient into up to lr / eps = 1e5 times as much
    (a sign flip moves a weight by 2 lr), and which gradients land near zero depends on each
    kernel's summation order, so on the CPU. Here the two gradients differ by at most n 2^-24
    (n <= 800 summands: 5e-5) of the sum of their terms' magnitudes (<= 3 here), and momentum 0.9
    over 3 steps multiplies by 1 + 1.9 + 2.71: |weight difference| <= 5.6 lr 5e-5 * 3 = 8e-6,
    12x under atol, while the update moves ~97% of the weights by more than the tolerance."""
    models = []
    for jit in (False, True):
        model = _small_vae()
        model.compile(keras.optimizers.SGD(1e-2, momentum=0.9), jit_compile=jit)
        model.elbo_terms = lambda x, seed=None, m=model: _fixed_noise_terms(m, x)
        for _ in range(3):
            logs = model.train_on_batch(_random_binary(16), return_dict=True)
        models.append((model, logs))
    (graph, graph_logs), (xla, xla_logs) = models
    assert xla.xla_update and not graph.xla_update
    for a, b in zip(graph.weights, xla.weights, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)
    for name in graph_logs:
        np.testing.assert_allclose(graph_logs[name], xla_logs[name], rtol=1e-5)
    assert int(xla.optimizer.iterations) == 3


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="objective"):
        VAE(objective="wake-sleep")
    with pytest.raises(ValueError, match="iw"):
        VAE(objective="iwae", iw=0)
    with pytest.raises(ValueError, match="init"):
        VAE(init="he")
