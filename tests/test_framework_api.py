"""The private Keras/TensorFlow names the package still relies on, and the public APIs it moved
to: each test fails loudly when the framework changes one, instead of an override that silently
stops being called.

Private names kept (no public way to do the same):
- `keras.Model._maybe_symbolic_build` (TF backend trainer): overridden by our models to build the
  optimizer in the strategy's scope (`models.base.symbolic_build_under_strategy`).
- `keras.export.ExportArchive._tf_trackable`: the object `write_out` saves; the trainable export
  attaches the learning-rate variable to it (`tfp_vae.export.export`).
"""

import keras
import numpy as np
import pytest

from tfp_vae import export, models


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


def test_export_archive_still_has_the_trackable_it_writes(tmp_path):
    archive = keras.export.ExportArchive()
    assert hasattr(archive, "_tf_trackable"), "ExportArchive dropped _tf_trackable"
    path = export.export(_vae(), str(tmp_path / "sm"), trainable=True)
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    assert float(loaded.learning_rate) == pytest.approx(1e-3)  # Attached through it.


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
