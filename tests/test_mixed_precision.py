"""Mixed precision: the networks compute in bfloat16 (or float16), every distribution,
log-probability, log-sum-exp and loss stays float32.

The global dtype policy is process-wide: every test sets it only while building its models and
puts float32 back (the models keep the policy they were built with).
"""

import contextlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import layers
from tfp_vae.models import GMVAE, SSVAE, VAE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def policy(name):
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _structured_images(n, seed=0):
    """Binary images drawn around 10 random prototypes (something a VAE learns quickly)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(size=(10, 784)) ** 3
    return (rng.uniform(size=(n, 784)) < prototypes[rng.integers(0, 10, n)]).astype(np.float32)


def _stream(x, batch=100):
    return tf.data.Dataset.from_tensor_slices(x).batch(batch).repeat()


@pytest.fixture(scope="module")
def trained_pair():
    """A float32 VAE trained for 100 steps (so its logits are far from 0, where rounding
    matters) and the same weights in a mixed_bfloat16 VAE."""
    keras.utils.set_random_seed(1)
    x = _structured_images(1000)
    model32 = VAE(hidden=(100, 100))
    model32.compile(keras.optimizers.Adam(3e-3))
    model32.fit(_stream(x), steps_per_epoch=100, epochs=1, verbose=0)
    with policy("mixed_bfloat16"):
        model16 = VAE(hidden=(100, 100))
    model16.set_weights(model32.get_weights())
    return model32, model16, x


def test_policies_of_the_layers(trained_pair):
    _, model, x = trained_pair
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert model.encoder(x[:4]).dtype == tf.bfloat16  # The networks do compute in bfloat16...
    for layer in (model.posterior, model.likelihood, model.prior_layer):
        assert layer.dtype_policy.name == "float32"   # ...the distribution layers do not.
    q = model.encode(x[:4])
    assert q.dtype == tf.float32 and q.log_prob(q.sample()).dtype == tf.float32
    assert model.decode(q.sample()).log_prob(x[:4]).dtype == tf.float32


def test_bounds_agree_with_float32(trained_pair):
    """Same weights, same seed: the bfloat16 networks move each example's ELBO by less than
    0.5% (measured: 0.15% at most) and the mean over 1000 examples by less than 0.05 nats
    (measured: 0.005); the IWAE bound (log-sum-exp over 20 samples) likewise. Both are float32."""
    model32, model16, x = trained_pair
    seed = tf.constant([1, 2])
    for bound in (lambda m: m.elbo(x, seed=seed), lambda m: m.iwae(x, 20, seed=seed)):
        exact, mixed = bound(model32), bound(model16)
        assert mixed.dtype == tf.float32
        exact, mixed = exact.numpy(), mixed.numpy()
        assert np.all(np.isfinite(mixed))
        assert np.max(np.abs(mixed - exact) / np.abs(exact)) < 5e-3
        assert abs(mixed.mean() - exact.mean()) < 0.05
        assert not np.array_equal(mixed, exact)  # bfloat16 really was used.


@pytest.mark.parametrize("make", [
    lambda: VAE(hidden=(64,), objective="iwae", iw=3),
    lambda: GMVAE(k=5, hidden=(64,)),
], ids=["vae_iwae", "gmvae"])
def test_training_stays_finite(make):
    x = _structured_images(300)
    keras.utils.set_random_seed(2)
    with policy("mixed_bfloat16"):
        model = make()
        model.compile(keras.optimizers.Adam(1e-3))
    before = model.evaluate(x, verbose=0, return_dict=True)["nelbo"]
    history = model.fit(_stream(x), steps_per_epoch=20, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert all(np.isfinite(np.asarray(w)).all() and w.dtype == "float32" for w in model.weights)
    assert model.evaluate(x, verbose=0, return_dict=True)["nelbo"] < before
    if isinstance(model, GMVAE):
        assert model.prior().log_prob(tf.zeros([3, model.z_dim])).dtype == tf.float32


def test_ssvae_training_stays_finite():
    x = _structured_images(200)
    keras.utils.set_random_seed(3)
    with policy("mixed_bfloat16"):
        model = SSVAE(z_dim=8, hidden=(64,), classifier_hidden=(64,))
        model.compile(keras.optimizers.Adam(1e-3))
    x_l, y_l = x[:20], np.arange(20, dtype=np.int32) % 10
    values = model.compute_losses(x[:50], x_l, y_l)
    assert all(v.dtype == tf.float32 for v in values.values())
    assert model.classifier(x_l).dtype == tf.bfloat16
    assert model.label_distribution(x_l).logits.dtype == tf.float32
    train = tf.data.Dataset.from_tensors((x[:50], (x_l, y_l))).repeat()
    history = model.fit(train, steps_per_epoch=10, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())


def test_float16_uses_loss_scaling():
    """mixed_float16 (older GPUs): Keras wraps the optimizer in a LossScaleOptimizer, and the
    train step scales the loss before the gradients (else the update would be divided by the
    scale); a few steps lower the loss and stay finite."""
    x = _structured_images(300)
    keras.utils.set_random_seed(4)
    with policy("mixed_float16"):
        model = VAE(hidden=(64,))
        model.compile(keras.optimizers.Adam(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(_stream(x), steps_per_epoch=30, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    assert model.elbo(x[:10]).dtype == tf.float32
    keras.utils.set_random_seed(4)
    reference = VAE(hidden=(64,))
    reference.compile(keras.optimizers.Adam(1e-3))
    expected = reference.fit(_stream(x), steps_per_epoch=30, epochs=1, verbose=0).history
    assert history["loss"][-1] == pytest.approx(expected["loss"][-1], rel=0.02)


def test_train_binary_mixed_precision(tmp_path):
    """bin/train --mixed_precision on a small synthetic MNIST: finite float32 metrics, the policy
    recorded in metrics.json. Mixed precision is a training setting: the saved model (float32
    weights) loads back as a float32 model, so bin/evaluate and bin/export are float32."""
    rng = np.random.default_rng(0)
    images = (_structured_images(400).reshape(400, 28, 28) * 255).astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=images[:300], y_train=rng.integers(0, 10, 300),
             x_test=images[300:], y_test=rng.integers(0, 10, 100))
    out = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "train"), "--mixed_precision",
         f"--data_dir={tmp_path}", "--steps=30", "--steps_per_epoch=30",
         "--validation_examples=0", "--verbose=0", f"--out_dir={out}"],
        capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dtype_policy"] == "mixed_bfloat16" and np.isfinite(metrics["nelbo"])
    model = keras.models.load_model(out / "model.keras")
    assert model.encoder(np.zeros([1, 784], np.float32)).dtype == tf.float32
    assert isinstance(model.posterior, layers.GaussianPosterior)
    assert model.posterior.dtype_policy.name == "float32"
    x = (images[300:310].reshape(10, 784) > 127).astype(np.float32)
    assert np.all(np.isfinite(model.elbo(x).numpy()))
