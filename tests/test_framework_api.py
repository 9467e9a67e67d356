"""The private Keras/TensorFlow names the package still relies on, and the public APIs it moved
to: each test fails loudly when the framework changes one, instead of an override that silently
stops being called.

Private names kept (no public way to do the same):
- `keras.Model._maybe_symbolic_build` (TF backend trainer): overridden by our models to build the
  optimizer in the strategy's scope (`models.core.symbolic_build_under_strategy`).
- `keras.export.ExportArchive._tf_trackable`: the object `write_out` saves; the trainable export
  attaches the learning-rate variable to it (`tfp_vae.export.export`).
- `keras.export.ExportArchive._get_concrete_fn`: where `write_out` takes each endpoint's
  signature; replaced on our archive so that the signatures declare feature shapes while the
  loaded functions keep open specs (`tfp_vae.export.declare_signatures`).
"""

import os

import keras
import numpy as np
import pytest

from tfp_vae import export, models

pytestmark = pytest.mark.integration


def _vae():
    model = models.VAE(z_dim=2, hidden=(8,))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    return model


def test_keras_still_calls_our_symbolic_build_hook(monkeypatch):
    assert hasattr(keras.Model, "_maybe_symbolic_build"), "Keras dropped _maybe_symbolic_build"
    calls = []
    original = models.VAE._maybe_symbolic_build

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(models.VAE, "_maybe_symbolic_build", counting)
    model = _vae()
    model.fit(np.zeros((8, 784), np.float32), batch_size=4, epochs=1, verbose=0)
    assert calls, "model.fit no longer calls _maybe_symbolic_build: our override is dead"
    assert model.optimizer.built


@pytest.mark.slow
def test_export_archive_still_has_the_trackable_it_writes(tmp_path):
    archive = keras.export.ExportArchive()
    assert hasattr(archive, "_tf_trackable"), "ExportArchive dropped _tf_trackable"
    path = export.export(_vae(), str(tmp_path / "sm"), trainable=True)
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    assert float(loaded.learning_rate) == pytest.approx(1e-3)  # Attached through it.


def test_export_archive_still_takes_signatures_from_get_concrete_fn(tmp_path):
    assert hasattr(keras.export.ExportArchive(), "_get_concrete_fn")
    import tensorflow as tf

    loaded = tf.saved_model.load(export.export(_vae(), str(tmp_path / "sm")))
    # The declared signature (through our _get_concrete_fn), the open function beside it.
    assert loaded.signatures["encode"].structured_input_signature[1]["x"].shape == (None, 784)
    assert loaded.encode.concrete_functions[0].structured_input_signature[0][0].shape.rank is None


def test_the_public_apis_we_use_behave_as_we_rely_on():
    model = _vae()
    # A fixed learning rate is the optimizer's variable itself (read and assigned on resume).
    assert isinstance(model.optimizer.learning_rate, keras.Variable)
    model.optimizer.learning_rate = 5e-4
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)
    # get_compile_config / compile_from_config carry our jit_compile setting through a reload.
    for setting in (True, False, "auto"):
        model.compile(keras.optimizers.Adam(1e-3), jit_compile=setting)
        assert model.get_compile_config()["jit_compile"] == setting
    assert model.distribute_strategy is not None


@pytest.mark.slow
def test_import_tfp_vae_alone_registers_every_class(tmp_path):
    """A fresh interpreter that imports only `tfp_vae` reloads a saved model (with a user's
    network), and `import tfp_vae` keeps TF's start-up INFO lines off stderr when
    TF_CPP_MIN_LOG_LEVEL=2 asks for that, while other stderr output still comes through."""
    import subprocess
    import sys

    import keras

    from tfp_vae import models

    path = str(tmp_path / "m.keras")
    models.VAE(z_dim=2, hidden=(4,), decoder=keras.layers.Dense(784)).save(path)
    code = (
        "import tfp_vae, keras, sys; m = keras.models.load_model(sys.argv[1]); "
        "print(type(m).__name__, tfp_vae.VAE is type(m)); "
        "sys.stderr.write('a line of our own\\n')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-c", code, path],
        capture_output=True,
        text=True,
        env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["VAE", "True"]
    lines = out.stderr.splitlines()
    assert "a line of our own" in lines
    # TF's INFO lines are gone (its later warnings and errors, such as a failing cuInit on a
    # machine without a GPU, may remain: level 2 shows those).
    assert not [line for line in lines if line.startswith(("I0000", "WARNING: All log"))], lines
