"""Bad input meets a readable sentence: in every SavedModel signature (checked in the graph, so a
loaded model raises InvalidArgumentError carrying it) and at the Python API's `fit`/`evaluate`
(a ValueError before the first step)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import export
from tfp_vae.checks import check_count, check_features, check_images, check_seed
from tfp_vae.models import GMVAE, VAE
from tfp_vae.models.ssvae import SSVAE
from tfp_vae.models.stacked import M1M2

from isolation import BLOCK_PACKAGE_IMPORTS

pytestmark = pytest.mark.slow  # One export of each model, ~35 s: not in make test-fast.

Z = 3
TINY = dict(z_dim=Z, hidden=(8,))
SIGNATURES = {  # name -> output keys (those of the shipped savedmodels/)
    "vae": {
        "encode": {"mean", "variance"},
        "decode": {"probs", "logits"},
        "sample": {"images", "z"},
        "elbo": {"elbo", "kl", "rec"},
        "log_likelihood": {"log_likelihood"},
    },
    "ssvae": {
        "classify": {"probs"},
        "encode": {"mean", "variance"},
        "decode": {"probs", "logits"},
        "sample": {"images"},
        "elbo": {"elbo", "kl_z", "kl_y", "rec"},
    },
}
SIGNATURES["gmvae"] = SIGNATURES["vae"]
SIGNATURES["m1m2"] = {**SIGNATURES["ssvae"], "decode": {"mean", "variance", "observed"}}
MODELS = list(SIGNATURES)

PIXELS = (
    "Pixel values must lie in [0, 1]; divide uint8 images by 255 (and binarise them for a "
    "Bernoulli likelihood: tfp_vae.data.binarize_static)."
)
NAN_PIXELS = "Images contain NaN or Inf values; clean the input."
BINARY = "Pixels must be binary (0 or 1)"
IMAGE_SHAPE = (
    "Expected images of shape [batch, 784] (or [batch, 28, 28, 1] or [batch, 28, 28]); got shape "
)
NAN_LATENTS = "Latents contain NaN or Inf values; clean the input."


def make_model(name):
    keras.utils.set_random_seed(0)
    if name == "vae":
        return VAE(**TINY)
    if name == "gmvae":
        return GMVAE(k=3, **TINY)
    if name == "ssvae":
        return SSVAE(classifier_hidden=(8,), **TINY)
    return M1M2(VAE(z_dim=4, hidden=(8,)), classifier_hidden=(8,), **TINY)


def binary_images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (Python model, path of its SavedModel, loaded signatures, the loaded object);
    exported once."""
    out = {}
    for name in MODELS:
        model = make_model(name)
        path = tmp_path_factory.mktemp("saved") / name
        export.export(model, path)
        loaded = tf.saved_model.load(str(path))
        out[name] = (model, path, loaded.signatures, loaded)
    return out


def labelled(name, **kwargs):
    """kwargs, plus labels y for as many examples as `x` or `z` has (the SSVAE's signatures)."""
    if name in ("ssvae", "m1m2") and "y" not in kwargs:
        batch = (kwargs.get("x", kwargs.get("z"))).shape[0]
        kwargs["y"] = tf.range(batch, dtype=tf.int32) % 10
    return kwargs


def good_inputs(name, batch):
    """A valid call of every signature of the model: name -> kwargs, for `batch` examples."""
    x = tf.constant(binary_images(batch))
    seed = tf.constant([1, 2])
    calls = {
        "encode": labelled(name, x=x),
        "decode": labelled(name, z=tf.zeros([batch, Z])),
        "elbo": dict(x=x, seed=seed),
    }
    if name in ("ssvae", "m1m2"):
        calls["classify"] = dict(x=x)
        calls["sample"] = dict(n=tf.constant(batch), y=tf.constant([7]))
    else:
        calls["sample"] = dict(n=tf.constant(batch))
        calls["log_likelihood"] = dict(x=x, m=tf.constant(3), seed=seed)
    return calls


def bad_cases(name):
    """(signature, kwargs, the sentence the error must contain) for the model's signatures."""
    x = binary_images(3)
    seed = tf.constant([1, 2])
    cases = [
        ("encode", labelled(name, x=x * 2.0), PIXELS),
        ("encode", labelled(name, x=x * np.nan), NAN_PIXELS),
        ("encode", labelled(name, x=np.where(x > 0, np.inf, 0.0).astype(np.float32)), NAN_PIXELS),
        ("encode", labelled(name, x=x[:, :783]), IMAGE_SHAPE + "(3, 783)."),
        ("encode", labelled(name, x=x[0]), IMAGE_SHAPE + "(784,)."),
        ("encode", labelled(name, x=x.reshape(3, 28, 28, 1, 1)), IMAGE_SHAPE),
        ("decode", labelled(name, z=np.full((3, Z), np.nan, np.float32)), NAN_LATENTS),
        (
            "decode",
            labelled(name, z=np.zeros((3, Z + 1), np.float32)),
            f"Expected latents of shape [batch, {Z}]; got shape (3, {Z + 1}).",
        ),
        (
            "decode",
            labelled(name, z=np.zeros((3, 1, Z), np.float32)),
            f"Expected latents of shape [batch, {Z}]; got shape (3, 1, {Z}).",
        ),
        ("elbo", dict(x=x * 0.5, seed=seed), BINARY),
        ("elbo", dict(x=x * 255.0, seed=seed), PIXELS),
        ("elbo", dict(x=x[:, :5], seed=seed), IMAGE_SHAPE + "(3, 5)."),
        (
            "elbo",
            dict(x=x, seed=tf.constant([1, 2, 3])),
            "seed must be two integers, shape [2], e.g. [0, 0]; got shape (3,).",
        ),
        (
            "elbo",
            dict(x=x, seed=tf.constant(1)),
            "seed must be two integers, shape [2], e.g. [0, 0]; got shape ().",
        ),
    ]
    y = {"y": tf.constant([1])} if name in ("ssvae", "m1m2") else {}
    cases += [
        ("sample", dict(n=tf.constant(-2), **y), "n must be >= 0 (the number of samples); got -2."),
        (
            "sample",
            dict(n=tf.constant([2]), **y),
            "n must be a single integer (the number of samples), shape []; got shape (1,).",
        ),
    ]
    if name in ("ssvae", "m1m2"):
        cases += [
            ("classify", dict(x=x * 2.0), PIXELS),
            ("classify", dict(x=x * np.nan), NAN_PIXELS),
            ("classify", dict(x=x[:, :10]), IMAGE_SHAPE + "(3, 10)."),
            (
                "sample",
                dict(n=tf.constant(3), y=tf.constant([1, 2])),
                (
                    "y must hold one label per sample (n = 3) or a single label for all of them; "
                    "got 2 labels."
                ),
            ),
            (
                "sample",
                dict(n=tf.constant(2), y=tf.constant([10])),
                "Labels must be class indices in 0..9",
            ),
            (
                "decode",
                dict(z=np.zeros((2, Z), np.float32), y=tf.constant([0, 12])),
                "Labels must be class indices in 0..9",
            ),
        ]
    else:
        cases += [
            (
                "log_likelihood",
                dict(x=x, m=tf.constant(0), seed=seed),
                "m must be >= 1 (the number of importance samples); got 0.",
            ),
            ("log_likelihood", dict(x=x * 0.5, m=tf.constant(2), seed=seed), BINARY),
            (
                "log_likelihood",
                dict(x=x, m=tf.constant(2), seed=tf.constant([[1, 2]])),
                "seed must be two integers, shape [2], e.g. [0, 0]; got shape (1, 2).",
            ),
        ]
    return cases


@pytest.mark.parametrize("name", MODELS)
def test_signature_names_and_output_keys_are_kept(exported, name):
    signatures = exported[name][2]
    assert set(signatures) == set(SIGNATURES[name]) | {"serving_default"}
    for sig, kwargs in good_inputs(name, 3).items():
        assert set(signatures[sig](**kwargs)) == SIGNATURES[name][sig], sig


def fits_declared(signature, kwargs):
    """Whether every input of `kwargs` has a shape the signature declares."""
    specs = signature.structured_input_signature[1]
    return all(specs[k].shape.is_compatible_with(np.shape(v)) for k, v in kwargs.items())


@pytest.mark.parametrize("name", MODELS)
def test_bad_inputs_raise_a_sentence_in_every_signature(exported, name):
    _, _, signatures, loaded = exported[name]
    for sig, kwargs, sentence in bad_cases(name):
        # The loaded object's functions take any shape: every bad input meets its sentence.
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(sentence)):
            getattr(loaded, sig)(**kwargs)
        if fits_declared(signatures[sig], kwargs):  # Bad values: the same sentence.
            with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(sentence)):
                signatures[sig](**kwargs)
        else:  # Outside the declared shapes: refused (by TensorFlow's binding or the check).
            with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
                signatures[sig](**kwargs)
    covered = {sig for sig, _, _ in bad_cases(name)}
    assert covered == set(SIGNATURES[name])


@pytest.mark.parametrize("name", MODELS)
def test_empty_batch_gives_empty_outputs_in_every_signature(exported, name):
    signatures = exported[name][2]
    full = {sig: signatures[sig](**kwargs) for sig, kwargs in good_inputs(name, 3).items()}
    empty = {sig: signatures[sig](**kwargs) for sig, kwargs in good_inputs(name, 0).items()}
    assert set(empty) == set(SIGNATURES[name])
    for sig, outputs in empty.items():
        for key, value in outputs.items():
            assert value.shape == (0,) + tuple(full[sig][key].shape[1:]), (sig, key)
    if name in ("ssvae", "m1m2"):  # Also no labels at all for no samples.
        images = signatures["sample"](n=tf.constant(0), y=tf.zeros([0], tf.int32))["images"]
        assert images.shape == (0, 784)


@pytest.mark.parametrize("name", MODELS)
def test_valid_inputs_are_served_as_the_python_api_serves_them(exported, name):
    model, _, signatures, loaded = exported[name]
    x = binary_images(4, seed=1)
    gray = np.random.default_rng(2).random((4, 784)).astype(np.float32)
    y = labelled(name, x=x).get("y")
    extra = {} if y is None else {"y": y}
    flat = signatures["encode"](x=x, **extra)["mean"]
    # Images as [B, 28, 28] (and [B, 28, 28, 1]), as check_images accepts them: the loaded
    # object's functions take them (the signatures declare [B, 784]).
    np.testing.assert_allclose(loaded.encode(x=x, **extra)["mean"], flat, rtol=1e-6)
    np.testing.assert_allclose(
        loaded.encode(x=x.reshape(4, 28, 28), **extra)["mean"], flat, rtol=1e-6
    )
    np.testing.assert_allclose(
        loaded.encode(x=x.reshape(4, 28, 28, 1), **extra)["mean"], flat, rtol=1e-6
    )
    # Grayscale pixels are fine for encode (and classify), as before.
    q = model.encode(gray, *([] if y is None else [y]))
    np.testing.assert_allclose(
        signatures["encode"](x=gray, **extra)["mean"], q.mean(), rtol=1e-5, atol=1e-6
    )
    if "classify" in signatures:
        np.testing.assert_allclose(
            signatures["classify"](x=gray)["probs"], model.classify(gray), rtol=1e-5, atol=1e-6
        )
    seed = tf.constant([3, 4])
    np.testing.assert_allclose(
        signatures["elbo"](x=x, seed=seed)["elbo"], model.elbo(x, seed=seed), rtol=1e-5, atol=1e-4
    )
    if "log_likelihood" in signatures:
        np.testing.assert_allclose(
            signatures["log_likelihood"](x=x, m=tf.constant(5), seed=seed)["log_likelihood"],
            model.iwae(x, 5, seed=seed),
            rtol=1e-5,
            atol=1e-4,
        )


_SERVE = BLOCK_PACKAGE_IMPORTS + textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    sig = tf.saved_model.load(sys.argv[1]).signatures
    x = tf.constant((np.random.default_rng(0).random((3, 784)) < 0.3).astype("float32"))
    out = {}
    try:
        sig["encode"](x=2.0 * x)
    except tf.errors.InvalidArgumentError as e:
        out["error"] = e.message
    out["empty"] = list(sig["elbo"](x=x[:0], seed=tf.constant([0, 0]))["elbo"].shape)
    out["images"] = list(sig["sample"](n=tf.constant(2))["images"].shape)
    out["modules"] = sorted(m for m in sys.modules if m.startswith(("tfp_vae", "tensorflow_prob")))
    print(json.dumps(out))
""")


def test_checks_work_without_the_package(exported, tmp_path):
    path = exported["vae"][1]
    script = tmp_path / "serve.py"
    script.write_text(_SERVE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(path)],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert PIXELS in out["error"]
    assert out["empty"] == [0] and out["images"] == [2, 784] and out["modules"] == []


def test_check_helpers_raise_value_errors_eagerly():
    with pytest.raises(
        ValueError, match=re.escape("n must be >= 0 (the number of samples); got -1.")
    ):
        check_count(-1)
    with pytest.raises(ValueError, match=re.escape("got shape (2,).")):
        check_count([1, 2])
    with pytest.raises(ValueError, match=re.escape("seed must be two integers, shape [2]")):
        check_seed([1, 2, 3])
    with pytest.raises(ValueError, match="seed must be two integers"):
        check_seed([1.0, 2.0])
    with pytest.raises(ValueError, match=re.escape("Expected latents of shape [batch, 3]")):
        check_features(np.zeros((2, 4)), 3, name="latents")
    with pytest.raises(ValueError, match=re.escape(NAN_LATENTS)):
        check_features(np.full((2, 3), np.inf), 3, name="latents")
    assert check_images(np.zeros((2, 28, 28, 1)), 784).shape == (2, 784)
    np.testing.assert_array_equal(check_seed(np.array([5, 6], np.int64)), [5, 6])
    # Traced with an unknown shape, the shape is asserted in the graph with the same sentence.
    checked = tf.function(
        lambda x: check_images(x, 784), input_signature=[tf.TensorSpec(None, tf.float32)]
    )
    assert checked(tf.zeros([2, 28, 28])).shape == (2, 784)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(IMAGE_SHAPE + "(2, 27).")):
        checked(tf.zeros([2, 27]))


# ---- the Python API: fit / evaluate on arrays ---------------------------------------------------


@pytest.mark.parametrize("model_cls", [VAE, GMVAE])
def test_fit_and_evaluate_take_28x28_arrays(model_cls):
    keras.utils.set_random_seed(0)
    model = model_cls(**TINY, **({"k": 3} if model_cls is GMVAE else {}))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    x = binary_images(12).reshape(12, 28, 28)
    history = model.fit(x, batch_size=5, epochs=1, verbose=0, validation_data=(x[:4],))
    assert np.isfinite(history.history["loss"][-1]) and "val_loss" in history.history
    assert int(model.optimizer.iterations) == 3  # 5 + 5 + 2
    results = model.evaluate(x[..., None], batch_size=6, verbose=0, return_dict=True)
    assert np.isfinite(results["nelbo"])


@pytest.mark.parametrize("model_cls", [VAE, GMVAE])
def test_fit_and_evaluate_refuse_bad_arrays_before_the_first_step(model_cls):
    keras.utils.set_random_seed(0)
    model = model_cls(**TINY, **({"k": 3} if model_cls is GMVAE else {}))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    weights = [w.numpy().copy() for w in model.weights]
    binary = binary_images(10).reshape(10, 28, 28)
    uint8 = (binary * 255).astype(np.uint8)
    gray = np.random.default_rng(1).random((10, 784)).astype(np.float32)
    for call in (
        lambda: model.fit(uint8, batch_size=5, verbose=0),
        lambda: model.fit(uint8, None, 5, 1, 0),  # positional
        lambda: model.evaluate(uint8, verbose=0),
    ):
        with pytest.raises(ValueError, match=re.escape(PIXELS)) as info:
            call()
        assert str(info.value) == PIXELS  # The sentence, not a graph trace.
    for call in (
        lambda: model.fit(gray, batch_size=5, verbose=0),
        lambda: model.fit(binary, verbose=0, validation_data=(gray,)),
        lambda: model.fit(binary, verbose=0, validation_data=gray),
        lambda: model.evaluate(x=gray, verbose=0),
        lambda: model.fit(tf.constant(gray), verbose=0),
    ):
        with pytest.raises(ValueError, match=re.escape(BINARY)):
            call()
    with pytest.raises(ValueError, match=re.escape(IMAGE_SHAPE + "(10, 783).")):
        model.fit(gray[:, :783], verbose=0)
    assert int(model.optimizer.iterations) == 0
    for before, after in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())


def test_ssvae_evaluate_refuses_bad_arrays_before_the_first_step():
    model = make_model("ssvae")
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    x = binary_images(6)
    y = np.arange(6) % 10
    gray = np.random.default_rng(1).random((6, 784)).astype(np.float32)
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == set(SSVAE.TEST_METRICS)
    # Grayscale is fine for the classifier's input.
    model.evaluate((x, gray), y, verbose=0)
    with pytest.raises(ValueError, match=re.escape(PIXELS)):
        model.evaluate((x * 255).astype(np.uint8), y, verbose=0)
    with pytest.raises(ValueError, match=re.escape(BINARY)):
        model.evaluate(gray, y, verbose=0)
    with pytest.raises(ValueError, match=re.escape("Labels must be class indices in 0..9")):
        model.evaluate(x, y + 5, verbose=0)
