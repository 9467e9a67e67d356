"""The shipped models one call away (`tfp_vae.pretrained`), the Keras model beside every
SavedModel (`export(..., with_keras=True)`, `bin/export`), SavedModel directories as the binaries'
--model_path, and the `sample` function's optional seed."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from binaries import ROOT
from binaries import run as run_binary
from numpy_reference import np_iwae

import tfp_vae
from tfp_vae import export, pretrained
from tfp_vae.cli import common

pytestmark = pytest.mark.integration


def binary(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


def test_export_writes_the_keras_model_beside_and_the_binaries_load_it(tmp_path):
    model = tfp_vae.VAE(z_dim=3, hidden=(16,))
    model.compile(keras.optimizers.Adam(1e-3))
    path = str(tmp_path / "vae")
    export.export(model, path, with_keras=True)
    assert os.path.isfile(path + ".keras") and export.keras_path(path + "/") == path + ".keras"
    # Nothing but the SavedModel in its directory (so that overwrite may replace it).
    assert "model.keras" not in os.listdir(path)
    loaded = common.load_model(path)  # The SavedModel directory, as --model_path.
    x = binary(4)
    np.testing.assert_allclose(loaded.encode(x).mean(), model.encode(x).mean(), rtol=1e-6)
    with pytest.raises(FileExistsError, match=r"vae(\.keras)? already exists"):
        export.export(model, path, with_keras=True)
    export.export(model, path, with_keras=True, overwrite=True)
    # Overwrite replaces only the Keras model of an earlier export, never a user's file.
    other = str(tmp_path / "mine")
    with open(other + ".keras", "w") as f:
        f.write("my notes")
    with pytest.raises(FileExistsError, match="is not the Keras model of an earlier export"):
        export.export(model, other, with_keras=True, overwrite=True)
    assert open(other + ".keras").read() == "my notes" and not os.path.exists(other)
    os.remove(path + ".keras")
    with pytest.raises(
        FileNotFoundError,
        match=r"a SavedModel without its Keras model beside "
        r"it \(.*vae\.keras, which bin/export writes\)",
    ):
        common.load_model(path)


def test_the_sample_function_takes_an_optional_seed(tmp_path):
    path = export.export(tfp_vae.VAE(z_dim=3, hidden=(8,)), str(tmp_path / "m"))
    loaded = tf.saved_model.load(path)
    # The signature is unchanged: n alone.
    assert set(loaded.signatures["sample"].structured_input_signature[1]) == {"n"}
    n = tf.constant(5)
    a = loaded.sample(n=n, seed=tf.constant([3, 4]))["images"]
    b = loaded.sample(n=n, seed=tf.constant([3, 4]))["images"]
    c = loaded.sample(n=n, seed=tf.constant([3, 5]))["images"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert loaded.sample(n=n)["images"].shape == (5, 784)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        loaded.sample(n=n, seed=tf.constant([1, 2, 3]))


def test_every_shipped_model_is_listed_with_both_files_and_scores():
    entries = pretrained.list()
    assert {e["name"] for e in entries} >= {"vae", "gmvae", "ssvae", "m1m2"}
    for entry in entries:
        assert os.path.isfile(os.path.join(entry["savedmodel"], "saved_model.pb")), entry
        assert os.path.isfile(entry["keras"]), entry
        assert entry["scores"] and entry["trained_with"].startswith("bin/train"), entry
    with pytest.raises(ValueError, match="No shipped model 'nope'; the shipped ones are"):
        pretrained.load("nope")


@pytest.mark.parametrize("name", ["vae", "ssvae"])
def test_a_shipped_keras_model_is_its_savedmodel_and_trains_on(name):
    model = pretrained.load(name)
    served = pretrained.load_savedmodel(name)
    x = binary(6)
    if name == "vae":
        ours, theirs = model.encode(x).mean(), served.signatures["encode"](x=x)["mean"]
    else:
        ours, theirs = model.classify(x), served.signatures["classify"](x=x)["probs"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    if name == "vae":  # Fine-tunable: compiled, with its optimizer state.
        before = model.optimizer.iterations.numpy()
        model.fit(x, batch_size=6, epochs=1, verbose=0)
        assert model.optimizer.iterations.numpy() == before + 1


@pytest.mark.slow  # Three binaries on the shipped models.
def test_the_binaries_take_a_shipped_savedmodel(tmp_path):
    out = str(tmp_path / "s.png")
    gmvae = os.path.join(ROOT, "savedmodels", "gmvae")
    result = run_binary("sample", f"--model_path={gmvae}", f"--output={out}", "--rows=2")
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(out) > 0


def test_evaluation_gives_the_same_numbers_every_time():
    """The test step's posterior draws are seeded by the model's seed and the batch
    (`core.evaluation_seed`): the same weights and data give the same NELBO."""
    x = binary(64)
    vae = tfp_vae.VAE(z_dim=3, hidden=(16,), seed=1)
    vae.compile(keras.optimizers.Adam(1e-3))
    first, second = (vae.evaluate(x, batch_size=32, verbose=0, return_dict=True) for _ in range(2))
    assert first == second
    ssvae = tfp_vae.SSVAE(z_dim=3, hidden=(8,), classifier_hidden=(8,), seed=1)
    ssvae.compile(keras.optimizers.Adam(1e-3))
    y = np.arange(64) % 10
    first, second = (
        ssvae.evaluate(x, y, batch_size=32, verbose=0, return_dict=True) for _ in range(2)
    )
    assert first == second


@pytest.mark.slow
def test_the_best_mnist_model_serves_its_bound(mnist):
    """savedmodels/best_mnist, through its SavedModel's log_likelihood signature (TensorFlow
    alone), gives on the first 50 test images the IWAE-100 that a float64 NumPy computation
    from its Keras model's weights gives, within what two Monte Carlo estimates can differ by
    (five standard errors, the error measured here from two NumPy estimates); and a bound far
    below the recipes' (about 93 nats at IWAE-5000 on the full set)."""
    from tfp_vae import data

    x = data.binarize_static(mnist.x_test)[:50].astype(np.float32)
    served = pretrained.load_savedmodel("best_mnist").signatures["log_likelihood"](
        x=tf.constant(x), m=tf.constant(100), seed=tf.constant([0, 0])
    )["log_likelihood"]
    model = pretrained.load("best_mnist", compile=False)
    first, second = (
        np.concatenate([np_iwae(model, x[i : i + 10], 100, seed + i) for i in range(0, 50, 10)])
        for seed in (1, 1000)
    )
    standard_error = np.std(first - second) / np.sqrt(len(x))  # Of one estimate's mean, x sqrt 2.
    assert abs(np.mean(served) - np.mean(first)) < 5 * standard_error + 1e-3
    assert -np.mean(served) < 90.0
