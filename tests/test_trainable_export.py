"""export(..., trainable=True): a SavedModel that TensorFlow alone trains further and re-saves."""

import json
import os
import subprocess
import sys
import textwrap

import binaries
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, export
from tfp_vae.models import GMVAE, SSVAE, VAE

from isolation import BLOCK_PACKAGE_IMPORTS

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter that cannot import tfp_vae or tensorflow_probability: it reads MNIST
# with numpy/gzip, trains the SavedModel through its train_step signature, re-saves it with
# tf.saved_model.save and serves the re-saved copy. (`import tensorflow` itself imports keras
# where it is installed, so keras is not blocked; no tfp_vae code is needed to run the graph.)
_TRAIN = textwrap.dedent("""
    import gzip, json, os, sys
    import numpy as np, tensorflow as tf

    saved, resaved, data_dir = sys.argv[1:4]

    def images(name):  # The file, or its parts in order (the shipped copy's training images).
        path = os.path.join(data_dir, name)
        parts = sorted(p for p in os.listdir(data_dir) if p.startswith(name + ".part"))
        paths = [path] if os.path.isfile(path) else [os.path.join(data_dir, p) for p in parts]
        raw = gzip.decompress(b"".join(open(p, "rb").read() for p in paths))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)

    rng = np.random.default_rng(0)
    train = images("train-images-idx3-ubyte.gz")
    test = images("t10k-images-idx3-ubyte.gz")[:1000]
    x_test = tf.constant((rng.random(test.shape) < test / 255.0).astype(np.float32))
    seed = tf.constant([0, 0])

    def nelbo(model):
        return -float(np.mean(model.signatures["elbo"](x=x_test, seed=seed)["elbo"].numpy()))

    model = tf.saved_model.load(saved)
    out = {"nelbo_before": nelbo(model), "iterations": [], "losses": []}
    order = rng.permutation(len(train))
    for step in range(300):
        batch = train[order[step * 97:(step + 1) * 97]]
        x = tf.constant((rng.random(batch.shape) < batch / 255.0).astype(np.float32))
        metrics = model.signatures["train_step"](x=x)
        out["iterations"].append(int(metrics["optimizer_iterations"]))
        out["losses"].append(float(metrics["loss"]))
    out["metric_dtypes"] = {k: v.dtype.name for k, v in metrics.items()}
    out["nelbo_after"] = nelbo(model)

    tf.saved_model.save(model, resaved, signatures=model.signatures)
    again = tf.saved_model.load(resaved)
    out["resaved_signatures"] = sorted(again.signatures.keys())
    out["nelbo_resaved"] = nelbo(again)
    out["resaved_sample_shape"] = list(again.signatures["sample"](n=tf.constant(2))["images"].shape)
    out["resaved_iterations"] = int(again.signatures["train_step"](x=x)["optimizer_iterations"])
    out["modules"] = sorted(m for m in sys.modules if m.startswith(("tfp_vae", "tensorflow_prob")))
    print(json.dumps(out))
""")
_TRAIN = BLOCK_PACKAGE_IMPORTS + _TRAIN


def _run_isolated(script, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # -I: isolated (no cwd, no PYTHONPATH, no user site), run from elsewhere.
    result = subprocess.run(
        [sys.executable, "-I", str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=str(cwd),
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_savedmodel_trains_and_resaves_without_the_package(mnist, tmp_path):
    """A briefly trained recipe-size VAE, saved as .keras and reloaded (optimizer restored),
    exported trainable; TensorFlow alone trains it 300 steps, re-saves and serves it."""
    keras.utils.set_random_seed(0)
    model = VAE()
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    model.fit(
        data.train_dataset(mnist.x_train, 97, seed=0),
        steps_per_epoch=20,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    model.save(tmp_path / "model.keras")
    model = keras.models.load_model(tmp_path / "model.keras")
    assert int(model.optimizer.iterations) == 20
    export.export(model, tmp_path / "saved", trainable=True)

    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    out = _run_isolated(
        script,
        tmp_path / "saved",
        tmp_path / "resaved",
        os.path.dirname(next(iter(mnist.files))),  # The folder the fixture read MNIST from.
        cwd=tmp_path,
    )
    assert out["modules"] == []
    # The optimizer state came along: counting resumes from the 20 Keras steps.
    assert out["iterations"] == list(range(21, 321))
    assert set(out["metric_dtypes"]) >= {"loss", "nelbo", "kl", "rec", "optimizer_iterations"}
    assert out["metric_dtypes"]["loss"] == "float32"
    # Training through the signature moved the variables the serving signatures read.
    assert out["nelbo_after"] < out["nelbo_before"] - 30, out
    assert np.mean(out["losses"][-50:]) < np.mean(out["losses"][:50]) - 20
    # The re-saved copy serves the trained weights and keeps the optimizer state.
    assert {
        "elbo",
        "encode",
        "decode",
        "sample",
        "log_likelihood",
        "train_step",
        "serving_default",
    } <= set(out["resaved_signatures"])
    np.testing.assert_allclose(out["nelbo_resaved"], out["nelbo_after"], rtol=1e-6)
    assert out["resaved_sample_shape"] == [2, 784]
    assert out["resaved_iterations"] == 321


@pytest.mark.parametrize(
    "model_cls, kwargs", [(VAE, {}), (GMVAE, {"k": 5}), (VAE, {"objective": "iwae", "iw": 3})]
)
def test_exported_optimizer_state_is_the_models_and_advances(tmp_path, model_cls, kwargs):
    keras.utils.set_random_seed(0)
    model = model_cls(z_dim=3, hidden=(16,), **kwargs)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    x = (np.random.default_rng(0).random((20, 784)) < 0.3).astype(np.float32)
    model.fit(x, batch_size=10, epochs=2, verbose=0)
    export.export(model, tmp_path / "saved", trainable=True)

    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    # Adam's iteration count, learning rate and moments, exactly as the Keras optimizer has them.
    saved_state = {v.name: v.numpy() for v in loaded.optimizer_variables}
    keras_state = {v.path: np.asarray(v) for v in model.optimizer.variables}
    assert len(saved_state) == len(keras_state) > 2
    for name, value in keras_state.items():
        np.testing.assert_array_equal(saved_state[name + ":0"], value)
    assert int(saved_state[model.optimizer.iterations.path + ":0"]) == 4
    assert float(loaded.learning_rate) == pytest.approx(1e-2)

    sig = loaded.signatures
    xt, seed = tf.constant(x), tf.constant([1, 2])
    before = {
        name: sig[name](x=xt, **extra) for name, extra in (("elbo", {"seed": seed}), ("encode", {}))
    }
    weights = [v.numpy() for v in loaded.trainable_variables]
    metrics = sig["train_step"](x=xt)
    assert int(metrics["optimizer_iterations"]) == 5
    names = ["loss", "nelbo", "kl", "rec", "learning_rate"] + (
        ["niwae"] if kwargs.get("objective") == "iwae" else []
    )
    assert all(metrics[k].dtype == tf.float32 and metrics[k].shape == [] for k in names)
    # The update reached the variables that the serving signatures read...
    assert not np.allclose(sig["encode"](x=xt)["mean"], before["encode"]["mean"])
    assert not np.allclose(sig["elbo"](x=xt, seed=seed)["elbo"], before["elbo"]["elbo"])
    # ...and the optimizer's own state.
    after = {v.name: v.numpy() for v in loaded.optimizer_variables}
    moments = [n for n in after if n.endswith(("_momentum:0", "_velocity:0"))]
    assert moments and all(not np.array_equal(after[n], saved_state[n]) for n in moments)
    # Every trainable variable (the GMVAE's mixture prior too) moved.
    trained = [v.numpy() for v in loaded.trainable_variables]
    assert len(trained) == len(weights) == len(model.trainable_variables)
    assert all(not np.array_equal(a, b) for a, b in zip(trained, weights, strict=True))
    # A new learning rate takes effect on the next step.
    loaded.learning_rate.assign(1e-4)
    assert float(sig["train_step"](x=xt)["learning_rate"]) == pytest.approx(1e-4)


def test_default_export_is_not_trainable(tmp_path):
    model = VAE(z_dim=2, hidden=(8,))
    model.compile(keras.optimizers.Adam(1e-3))
    export.export(model, tmp_path / "saved")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    assert "train_step" not in loaded.signatures
    assert not hasattr(loaded, "optimizer_variables")


def test_trainable_export_needs_an_optimizer(tmp_path):
    model = VAE(z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="compile"):
        export.export(model, tmp_path / "saved", trainable=True)
    assert not (tmp_path / "saved").exists()
    # A compiled model whose optimizer never stepped is built at export; it starts at 0.
    model.compile(keras.optimizers.Adam(1e-3))
    export.export(model, tmp_path / "saved", trainable=True)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    x = tf.constant((np.random.default_rng(1).random((4, 784)) < 0.5).astype(np.float32))
    assert int(loaded.signatures["train_step"](x=x)["optimizer_iterations"]) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="binary"):
        loaded.signatures["train_step"](x=x * 0.5)


def test_ssvae_trainable_export(tmp_path):
    keras.utils.set_random_seed(0)
    model = SSVAE(z_dim=2, hidden=(8,), classifier_hidden=(8,))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    export.export(model, tmp_path / "saved", trainable=True)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    rng = np.random.default_rng(0)
    x_u = tf.constant((rng.random((6, 784)) < 0.3).astype(np.float32))
    x_l = tf.constant((rng.random((4, 784)) < 0.3).astype(np.float32))
    y_l = tf.constant([0, 1, 2, 3], tf.int32)
    before = loaded.signatures["classify"](x=x_u)["probs"].numpy()
    metrics = loaded.signatures["train_step"](unlabelled_x=x_u, labelled_x=x_l, labelled_y=y_l)
    assert int(metrics["optimizer_iterations"]) == 1
    assert {"loss", "nelbo", "labelled_nelbo", "class_loss", "accuracy"} <= set(metrics)
    assert not np.allclose(loaded.signatures["classify"](x=x_u)["probs"], before)


def test_export_binary_trainable_flag(tmp_path):
    keras.utils.set_random_seed(0)
    model = VAE(z_dim=2, hidden=(8,))
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(np.zeros((4, 784), np.float32), batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    result = binaries.run(
        "export",
        f"--model_path={tmp_path / 'model.keras'}",
        f"--export_dir={tmp_path / 'saved'}",
        "--trainable",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train_step" in result.stdout
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    x = tf.zeros([3, 784])
    assert int(loaded.signatures["train_step"](x=x)["optimizer_iterations"]) == 3
