"""`clip_norm` (and `bin/train --clip_norm`): one implementation (`models.core.gradient_step`)
for every model and every path. One SGD step at learning rate 1 moves the weights by exactly
the clipped gradient, whose global norm is then `clip_norm`. (The replicated step against the
single-device one, clipped: tests/test_distribute.py.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import models

pytestmark = pytest.mark.unit

CLIP = 0.1


def _binary(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


def _vae(**kw):
    return models.VAE(z_dim=2, hidden=(8,), **kw)


MODELS = {
    "vae": _vae,
    "gmvae": lambda **kw: models.GMVAE(z_dim=2, hidden=(8,), k=3, **kw),
    "ssvae": lambda **kw: models.SSVAE(z_dim=2, hidden=(8,), classifier_hidden=(8,), **kw),
    "m1m2": lambda **kw: models.M1M2(_vae(), **kw),
}


def _batch(name):
    if name in ("ssvae", "m1m2"):
        return (_binary(16), (_binary(10, 1), np.arange(10, dtype=np.int32)))
    return _binary(16)


def _update_norm(name, clip_norm, jit_compile):
    keras.utils.set_random_seed(0)
    model = MODELS[name](clip_norm=clip_norm)
    model.compile(keras.optimizers.SGD(1.0), jit_compile=jit_compile)
    before = [np.array(v, np.float64) for v in model.trainable_variables]
    model.fit(
        tf.data.Dataset.from_tensors(_batch(name)).repeat(), epochs=1, steps_per_epoch=1, verbose=0
    )
    after = [np.array(v, np.float64) for v in model.trainable_variables]
    return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True))))


@pytest.mark.parametrize(
    "name, jit_compile",
    [("vae", False), ("vae", True), ("gmvae", False), ("ssvae", False), ("m1m2", False)],
)
def test_clip_norm_bounds_the_step_for_every_model(name, jit_compile):
    # An unclipped step would have the gradient's own norm (hundreds here), not the bound.
    assert _update_norm(name, CLIP, jit_compile) == pytest.approx(CLIP, rel=1e-4)


def test_without_clip_norm_the_step_is_the_whole_gradient():
    assert _update_norm("vae", None, False) > 10 * CLIP


def test_clip_norm_is_checked_and_kept_in_the_config():
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        _vae(clip_norm=0.0)
    model = _vae(clip_norm=2.5)
    assert models.VAE.from_config(model.get_config()).clip_norm == 2.5
