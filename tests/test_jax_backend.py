"""The models on Keras' JAX backend, and `.keras` files that move between the backends.

The in-process tests run only under KERAS_BACKEND=jax; those marked `backend_neutral` (a few
fast ones) are in the JAX tier, `make test-jax`, the rest run with `KERAS_BACKEND=jax pytest
tests/test_jax_backend.py`. The subprocess tests run under either backend and skip when the
interpreter they need lacks JAX or TensorFlow: set TFP_VAE_JAX_PYTHON / TFP_VAE_TF_PYTHON to an
interpreter that has it (by default this one).
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import binaries
import keras
import numpy as np
import pytest
from numpy_reference import (
    as64,
    np_decoder_log_prob,
    np_gaussian_log_prob,
    np_log_mean_exp,
    np_mixture_log_prob,
    np_posterior,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_JAX = keras.backend.backend() == "jax"
jax_only = pytest.mark.skipif(not ON_JAX, reason="runs under KERAS_BACKEND=jax")


def binary(shape, seed=0, p=0.3):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float32)


@functools.cache
def interpreter(backend):
    """An interpreter that has `backend`'s framework installed, or None."""
    python = os.environ.get(f"TFP_VAE_{'JAX' if backend == 'jax' else 'TF'}_PYTHON", sys.executable)
    module = "jax" if backend == "jax" else "tensorflow"
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    found = subprocess.run([python, "-c", code], capture_output=True, check=False)
    return python if found.returncode == 0 else None


def run_in(backend, code, block_tensorflow=False):
    """Runs `code` under KERAS_BACKEND=`backend` in its own interpreter (skips the test when none
    has that framework); returns its stdout's last line parsed as JSON."""
    python = interpreter(backend)
    if python is None:
        pytest.skip(f"no interpreter with {backend} (set TFP_VAE_{backend.upper()}_PYTHON)")
    # As on a machine without TensorFlow installed: tests/without_tensorflow hides it.
    hide = [os.path.join(ROOT, "tests", "without_tensorflow")] if block_tensorflow else []
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([*hide, ROOT]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    if python == sys.executable:  # A warm start where it runs as a fresh one (tests/zygote.py).
        out = binaries.python("-c", textwrap.dedent(code), env=env, cwd=ROOT)
    else:
        out = subprocess.run(
            [python, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=ROOT
        )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.backend_neutral  # In the JAX tier (make test-jax).
def test_package_imports_on_jax_without_tensorflow():
    result = run_in(
        "jax",
        """
        import json, sys
        import tfp_vae, tfp_vae.models
        from tfp_vae import backend
        print(json.dumps({"tf": "tensorflow" in sys.modules, "substrate": backend.tfp.__name__,
                          "models": sorted(tfp_vae.models.MODELS)}))
        """,
        block_tensorflow=True,
    )
    assert result == {
        "tf": False,
        "substrate": "tensorflow_probability.substrates.jax",
        "models": ["gmvae", "m1m2", "ssvae", "vae"],
    }


# ---- the models on JAX (in process) -----------------------------------------------------------


@jax_only
@pytest.mark.unit
@pytest.mark.backend_neutral  # In the JAX tier (make test-jax).
@pytest.mark.parametrize("prior", ["normal", "mixture"])
def test_bounds_match_numpy_brute_force(prior):
    """The log-densities, ELBO and IWAE of a VAE and a GMVAE at the model's own samples, against
    float64 NumPy from the weights (tests/numpy_reference.py)."""
    from tfp_vae import backend, objectives
    from tfp_vae.models import GMVAE, VAE

    keras.utils.set_random_seed(0)
    model = (
        VAE(z_dim=3, hidden=(5,), x_dim=16)
        if prior == "normal"
        else GMVAE(z_dim=3, hidden=(5,), x_dim=16, k=4)
    )
    x, m = binary((6, 16)), 7
    _, z, log_lik, log_prior, log_post = model._importance_samples(x, m, backend.as_seed([3, 4]))
    z = as64(z)
    mean, variance = np_posterior(model, x, model.min_variance)
    np_prior = (
        np_gaussian_log_prob(z, 0.0, 1.0)
        if prior == "normal"
        else np_mixture_log_prob(model.prior_layer, z)
    )
    np.testing.assert_allclose(as64(log_lik), np_decoder_log_prob(model, z, x), rtol=1e-5)
    np.testing.assert_allclose(as64(log_prior), np_prior, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as64(log_post), np_gaussian_log_prob(z, mean, variance), rtol=1e-5)
    np_log_w = np_decoder_log_prob(model, z, x) + np_prior - np_gaussian_log_prob(z, mean, variance)
    bound = objectives.iwae_bound(log_lik, log_prior, log_post)
    np.testing.assert_allclose(as64(bound), np_log_mean_exp(np_log_w), rtol=1e-5)


@jax_only
@pytest.mark.integration
def test_iwae_chunks_and_seeds():
    """`iwae` in chunks equals one pass with the same draws (a seed gives the same bound twice),
    and m = 1 is an ELBO with a sampled KL."""
    from tfp_vae.models import VAE

    keras.utils.set_random_seed(0)
    model = VAE(z_dim=2, hidden=(8,), x_dim=16)
    x = binary((5, 16))
    one = model.iwae(x, 50, seed=[1, 2])
    np.testing.assert_array_equal(as64(one), as64(model.iwae(x, 50, seed=[1, 2])))
    assert not np.allclose(as64(one), as64(model.iwae(x, 50, seed=[1, 3])))
    assert np.all(np.isfinite(as64(model.iwae(x, 50, seed=[1, 2], chunk=7))))
    assert model.iwae(x, 1).shape == (5,)


TRAINED = {
    "vae": ("VAE", {}),
    "beta_vae": ("VAE", {"beta": 0.5}),
    "gmvae": ("GMVAE", {"k": 5}),
    "iwae": ("VAE", {"objective": "iwae", "iw": 4}),
}


@jax_only
@pytest.mark.unit
@pytest.mark.parametrize("kind", sorted(TRAINED))
def test_fit_evaluate_sample_save_load(kind, tmp_path):
    import tfp_vae.models

    name, kwargs = TRAINED[kind]
    keras.utils.set_random_seed(0)
    model = getattr(tfp_vae.models, name)(z_dim=3, hidden=(16,), x_dim=64, seed=1, **kwargs)
    model.compile(keras.optimizers.Adam(1e-2))
    x = binary((256, 64), seed=1)
    before = model.evaluate(x, batch_size=128, verbose=0, return_dict=True)
    history = model.fit(x, batch_size=32, epochs=3, verbose=0).history
    after = model.evaluate(x, batch_size=128, verbose=0, return_dict=True)
    assert set(history) == set(model.train_metric_names())
    assert after["loss"] < before["loss"] - 1.0, (before, after)
    # The evaluation is seeded by the batch: the same weights and data, the same numbers.
    assert model.evaluate(x, batch_size=128, verbose=0, return_dict=True) == after
    assert model.sample(4, seed=[0, 1]).shape == (4, 64)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(
        as64(model.iwae(x[:8], 10, seed=[5, 6])), as64(loaded.iwae(x[:8], 10, seed=[5, 6]))
    )
    np.testing.assert_array_equal(
        as64(model.elbo(x[:8], seed=[5, 6])), as64(loaded.elbo(x[:8], seed=[5, 6]))
    )


@jax_only
@pytest.mark.unit
@pytest.mark.backend_neutral  # In the JAX tier (make test-jax).
def test_training_is_reproducible():
    """The step's draws are keyed by the model's seed and the step count: the same seed, data and
    initial weights give the same weights after training."""
    from tfp_vae.models import VAE

    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = VAE(z_dim=2, hidden=(8,), x_dim=16, seed=3)
        model.compile(keras.optimizers.Adam(1e-2))
        model.fit(binary((64, 16)), batch_size=16, epochs=1, verbose=0, shuffle=False)
        weights.append([np.asarray(w) for w in model.weights])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


@jax_only
@pytest.mark.unit
@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_bad_batch_refused_and_nothing_changes(steps_per_execution):
    """A batch the likelihood cannot model fails with the TF path's message, before the compiled
    step: weights and optimizer state stay as they were, and the model still works."""
    from tfp_vae.models import VAE

    keras.utils.set_random_seed(0)
    model = VAE(z_dim=2, hidden=(8,), x_dim=16, seed=3)
    model.compile(keras.optimizers.Adam(1e-2), steps_per_execution=steps_per_execution)
    good = binary((8, 16))
    bad = good.copy()
    bad[0, 0] = 0.5
    model.fit(good, batch_size=8, epochs=1, verbose=0)
    before = [np.asarray(w) for w in model.weights]
    iterations = int(model.optimizer.iterations)

    def stream():
        yield (bad,)
        yield (good,)

    with pytest.raises(ValueError, match=r"^Pixels must be binary \(0 or 1\)"):
        model.fit(stream(), steps_per_epoch=2, verbose=0)
    assert int(model.optimizer.iterations) == iterations
    for a, b in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(ValueError, match=r"^Pixels must be binary"):
        model.evaluate(stream(), steps=1, verbose=0)
    assert np.all(np.isfinite(as64(model.elbo(good, seed=[0, 0]))))


@jax_only
@pytest.mark.unit
@pytest.mark.backend_neutral  # In the JAX tier (make test-jax).
def test_what_only_tensorflow_has_is_refused_in_one_line():
    import jax

    from tfp_vae.models import VAE

    model = VAE(z_dim=2, hidden=(8,), x_dim=16)
    model.compile("adam")
    with pytest.raises(ValueError, match=r"needs the TensorFlow backend.*export it where TF runs"):
        model.signature_train_step(binary((2, 16)))
    x = binary((2, 16))
    # m as a concrete array is m; one known only inside jax.jit cannot size the chunks.
    np.testing.assert_array_equal(
        as64(model.iwae(x, np.array(3), seed=[0, 0])), as64(model.iwae(x, 3, seed=[0, 0]))
    )
    with pytest.raises(ValueError, match=r"must be known outside jax\.jit"):
        jax.jit(lambda m: model.iwae(x, m, seed=[0, 0]))(3)


@jax_only
@pytest.mark.unit
@pytest.mark.backend_neutral  # In the JAX tier (make test-jax).
def test_size_limits_and_chunked_sampling_on_jax(monkeypatch):
    from tfp_vae import checks
    from tfp_vae.models import SSVAE, VAE

    keras.utils.set_random_seed(0)
    vae = VAE(z_dim=3, hidden=(16,))
    ssvae = SSVAE(z_dim=3, hidden=(16,), classifier_hidden=(16,))
    for model in (vae, ssvae):
        with pytest.raises(ValueError, match="n=3000000 is too large: one tensor holds at most"):
            model.sample(3_000_000)
    with pytest.raises(ValueError, match=r"n must be at most 2147483647 .*got 10000000000\."):
        vae.sample(np.array(10**10))  # Compared on the host: JAX has no int64 by default.
    x = binary((2, 784))
    with pytest.raises(ValueError, match=r"m must be at most 16777216 .*For more"):
        vae.iwae(x, checks.MAX_IMPORTANCE_SAMPLES + 1)
    with pytest.raises(ValueError, match="m must be >= 1"):
        vae.iwae(x, 0)
    # A large n in chunks of 4 rows (a Python loop on JAX), each chunk with its own key.
    monkeypatch.setattr(checks, "CHUNK_VALUES", 4 * 784)
    images = as64(vae.sample(10, seed=[3, 4]))
    assert images.shape == (10, 784)
    np.testing.assert_array_equal(images, as64(vae.sample(10, seed=[3, 4])))
    assert not np.allclose(images[:4], images[4:8])
    key = np.array([3, 4], np.uint32)
    z = vae.prior().sample(3, seed=key)
    np.testing.assert_allclose(as64(vae.sample(3, seed=[3, 4])), as64(vae.decode(z).mean()))
    drawn = as64(ssvae.sample(10, np.arange(10) % 10, seed=[3, 4]))
    assert drawn.shape == (10, 784) and not np.allclose(drawn, as64(ssvae.sample(10, 7, [3, 4])))


# ---- models move between backends -------------------------------------------------------------

# Builds (from keras' seed), trains a few steps on fixed data and saves a model, or loads one;
# prints what a model computes deterministically (reconstructions, log p(x|z) at the posterior
# mean, KL or the prior's log-density there) and its IWAE-200 bound (Monte Carlo).
_PROBE = """
import json, sys
import keras, numpy as np
import tfp_vae
from tfp_vae.models import GMVAE, VAE

path, action, kind = sys.argv[1:4] if len(sys.argv) > 3 else (PATH, ACTION, KIND)
x = (np.random.default_rng(1).random((64, 64)) < 0.3).astype("float32")
if action == "save":
    keras.utils.set_random_seed(0)
    model = (VAE if kind == "vae" else GMVAE)(z_dim=3, hidden=(16,), x_dim=64, seed=1,
                                              **({} if kind == "vae" else {"k": 5}))
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=16, epochs=2, verbose=0)
    model.save(path)
else:
    model = keras.models.load_model(path)
q = model.encode(model.check_inputs(x[:16]))
z = q.mean()
exported = {}
if action == "export":  # A model trained on the other backend, exported where TF runs.
    import tensorflow as tf
    from tfp_vae import export
    loaded = tf.saved_model.load(export.export(model, path + ".savedmodel"))
    exported["exported_mean"] = np.asarray(
        loaded.signatures["encode"](x=x[:16])["mean"], np.float64).tolist()
    exported["mean"] = np.asarray(z, np.float64).tolist()
print(json.dumps({
    **exported,
    "reconstruction": np.asarray(model.reconstruct(x[:16]), np.float64).tolist(),
    "log_likelihood": np.asarray(model.decode(z).log_prob(x[:16]), np.float64).tolist(),
    "log_prior": np.asarray(model.prior().log_prob(z), np.float64).tolist(),
    "iwae": float(np.mean(np.asarray(model.iwae(x, 200, seed=[7, 8])))),
}))
"""


def _probe(backend, path, action, kind):
    code = (
        _PROBE.replace("PATH", repr(path))
        .replace("ACTION", repr(action))
        .replace("KIND", repr(kind))
    )
    return run_in(backend, code)


@pytest.mark.slow  # Two fresh interpreters per direction, each training a few steps.
@pytest.mark.parametrize("kind", ["gmvae"])
@pytest.mark.parametrize("source,target", [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_keras_file_moves_between_backends(source, target, kind, tmp_path):
    """A `.keras` trained on one backend loads on the other: the same deterministic outputs to
    float32 precision, and the IWAE-200 bound within Monte Carlo error (the backends' random
    generators differ). A JAX-trained model exports as a SavedModel where TF runs, whose
    `encode` gives the loaded model's posterior means."""
    path = str(tmp_path / f"{kind}.keras")
    saved = _probe(source, path, "save", kind)
    loaded = _probe(target, path, "export" if target == "tensorflow" else "load", kind)
    if target == "tensorflow":
        np.testing.assert_allclose(loaded["exported_mean"], loaded["mean"], rtol=1e-5, atol=1e-6)
    for name in ("reconstruction", "log_likelihood", "log_prior"):
        np.testing.assert_allclose(loaded[name], saved[name], rtol=1e-5, atol=1e-4)
    # IWAE-200 of 64 examples: its Monte Carlo standard error is a few hundredths of a nat.
    assert abs(loaded["iwae"] - saved["iwae"]) < 0.25, (saved["iwae"], loaded["iwae"])


@jax_only
@pytest.mark.integration
def test_ssvae_fits_classifies_and_reloads(tmp_path):
    """The SSVAE on JAX: `fit` on (unlabelled, (labelled x, labels)) elements, `evaluate` on
    (x, y), `classify`, `sample`, and a `.keras` that reloads with the same bound."""
    from tfp_vae.models import SSVAE

    keras.utils.set_random_seed(0)
    x = binary((64, 16), seed=2)
    y = np.arange(64, dtype=np.int32) % 10

    def stream():
        for i in range(1000):
            yield (x[i % 4 * 16 : (i % 4 + 1) * 16], (x[:10], y[:10]))

    model = SSVAE(z_dim=2, hidden=(8,), input_shape=(16,), seed=1)
    model.compile(keras.optimizers.Adam(1e-2))
    history = model.fit(stream(), steps_per_epoch=10, epochs=1, verbose=0).history
    assert set(history) == set(model.train_metric_names())
    results = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert set(results) == set(model.test_metric_names())
    probs = as64(model.classify(x[:5]))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert model.sample(3, seed=[0, 1]).shape == (3, 16)
    path = str(tmp_path / "ssvae.keras")
    model.save(path)
    np.testing.assert_array_equal(
        as64(keras.models.load_model(path).elbo(x[:4], seed=[0, 1])),
        as64(model.elbo(x[:4], seed=[0, 1])),
    )
