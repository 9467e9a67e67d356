"""SavedModel export: served by plain TensorFlow in a process that cannot import tfp_vae."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import export
from tfp_vae.models import GMVAE, VAE

from isolation import BLOCK_PACKAGE_IMPORTS

pytestmark = pytest.mark.slow

# Runs in a fresh interpreter that refuses to import tfp_vae or tensorflow_probability.
_SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    x = tf.constant(np.load(sys.argv[2]))
    sig = loaded.signatures
    out = {
        "signatures": sorted(sig.keys()),
        "elbo": sig["elbo"](x=x, seed=tf.constant([3, 4]))["elbo"].numpy().tolist(),
        "iwae": sig["log_likelihood"](x=x, m=tf.constant(50), seed=tf.constant([3, 4]))[
            "log_likelihood"].numpy().tolist(),
        "mean": sig["encode"](x=x)["mean"].numpy().tolist(),
        "sample_shape": list(sig["sample"](n=tf.constant(3))["images"].shape),
        "decode_shape": list(sig["decode"](z=sig["encode"](x=x)["mean"])["probs"].shape),
        "modules": sorted(m for m in sys.modules if m.startswith(("tfp_vae", "tensorflow_prob"))),
    }
    print(json.dumps(out))
""")
_SERVE = BLOCK_PACKAGE_IMPORTS + _SERVE


@pytest.mark.parametrize("model_cls", [VAE, GMVAE])
def test_savedmodel_serves_without_the_package(tmp_path, model_cls):
    keras.utils.set_random_seed(0)
    kwargs = {"k": 7} if model_cls is GMVAE else {}
    model = model_cls(z_dim=3, hidden=(16,), **kwargs)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    x = (np.random.default_rng(0).random((5, 784)) < 0.3).astype(np.float32)
    model.fit(x, batch_size=5, epochs=3, verbose=0)
    path = tmp_path / "saved"
    export.export(model, path)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "serve.py"
    script.write_text(_SERVE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: isolated (no cwd, no PYTHONPATH, no user site), run from elsewhere.
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    assert {"encode", "decode", "sample", "elbo", "log_likelihood", "serving_default"} <= set(
        out["signatures"]
    )
    seed = tf.constant([3, 4])
    np.testing.assert_allclose(out["elbo"], model.elbo(x, seed=seed), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["iwae"], model.iwae(x, 50, seed=seed), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["mean"], model.encode(x).mean(), rtol=1e-5, atol=1e-5)
    assert out["sample_shape"] == [3, 784] and out["decode_shape"] == [5, 784]


def test_refuses_to_overwrite(tmp_path):
    model = VAE(z_dim=2, hidden=(8,))
    path = tmp_path / "saved"
    path.mkdir()
    (path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export(model, path)
    # overwrite replaces only a SavedModel: a folder with anything else is never deleted.
    with pytest.raises(FileExistsError, match="not a SavedModel directory"):
        export.export(model, path, overwrite=True)
    assert (path / "keep.txt").read_text() == "precious"
    other = tmp_path / "other"
    export.export(model, other)
    export.export(model, other, overwrite=True)
    assert (other / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []


@pytest.mark.parametrize("trainable", [False, True])
def test_each_variable_is_stored_once(tmp_path, trainable):
    """The SavedModel holds each weight (and, trainable, each optimizer slot) once: its data
    file is the float32 bytes of the variables, plus at most a few kB of bookkeeping (Keras'
    ExportArchive alone wrote every weight twice)."""
    model = VAE(z_dim=3, hidden=(64,))
    model.compile(keras.optimizers.Adam(1e-3))
    path = export.export(model, str(tmp_path / "m"), trainable=trainable)
    variables = list(model.weights) + (list(model.optimizer.variables) if trainable else [])
    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    data = sum(
        os.path.getsize(os.path.join(path, "variables", f))
        for f in os.listdir(os.path.join(path, "variables"))
        if ".data-" in f
    )
    assert size <= data <= size + 4096, (data, size)
    loaded = tf.saved_model.load(path)
    assert len(loaded.variables) == len(model.weights)
    x = (np.random.default_rng(0).random((4, 784)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(
        loaded.signatures["encode"](x=x)["mean"], model.encode(x).mean(), rtol=1e-5, atol=1e-6
    )
