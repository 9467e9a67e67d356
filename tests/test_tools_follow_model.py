"""The tools follow the model: the binaries, evaluation and figures ask the model (its likelihood,
its data, its figures) instead of switching on its kind, so a user's likelihood and a user's own
model class go through every binary."""

import json
import os
import re
import textwrap

import binaries
import keras
import numpy as np
import pytest
import tensorflow as tf
from binaries import run as run_binary

from tfp_vae import data, likelihoods, models

# In-process checks; the tests that run the binaries are marked slow.
pytestmark = pytest.mark.unit

TINY = {"z_dim": 2, "hidden": (16,)}


def _gray_npz(path, n_train=120, n_test=40, seed=0):
    """A small npz of grayscale 28x28 uint8 images with labels (values across 0..255)."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=np.arange(n_train) % 10,
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test) % 10,
    )
    return path


# ---- the likelihood owns its data transform -----------------------------------------------------


@pytest.mark.parametrize(
    "family, train, evaluation",
    [
        ("bernoulli", "dynamic", "static"),
        ("continuous_bernoulli", "none", "none"),
        ("gaussian", "none", "none"),
        ("heteroscedastic_gaussian", "none", "none"),
    ],
)
def test_each_likelihood_says_how_its_data_are_prepared(family, train, evaluation):
    model = models.VAE(likelihood=family, **TINY)
    assert model.data_transforms == {"train": train, "eval": evaluation}
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = model.eval_inputs(images)
    assert x.shape == (5, 784) and x.dtype == np.float32
    if evaluation == "static":
        np.testing.assert_array_equal(x, data.binarize_static(images))
    else:  # Never binarised: grayscale as it is.
        np.testing.assert_allclose(x, images.reshape(5, 784) / 255.0, rtol=1e-6)
    # The training stream follows the likelihood too.
    ds = model.train_dataset(data.ImageDataset(images, None, images, None, "test"), 5, seed=0)
    batch = next(iter(ds)).numpy()
    assert set(np.unique(batch)) <= {0.0, 1.0} if train == "dynamic" else len(np.unique(batch)) > 2


def test_a_transform_the_likelihood_cannot_model_is_refused_in_one_line():
    images = np.zeros((4, 28, 28), np.uint8)
    dataset = data.ImageDataset(images, None, images, None, "test")
    gray = models.VAE(likelihood="continuous_bernoulli", **TINY)
    with pytest.raises(ValueError, match="binarises the data, and the continuous_bernoulli"):
        gray.train_dataset(dataset, 4, binarization="dynamic")
    binary = models.VAE(**TINY)
    with pytest.raises(ValueError, match="feeds grayscale pixels to the bernoulli likelihood"):
        binary.train_dataset(dataset, 4, binarization="none")


def test_one_gaussian_for_the_vae_and_the_ssvae():
    vae = models.VAE(likelihood="gaussian", **TINY)
    ssvae = models.SSVAE(likelihood="gaussian", z_dim=2, hidden=(8,), classifier_hidden=(8,))
    assert type(vae.likelihood) is type(ssvae.likelihood) is likelihoods.GaussianLikelihood
    assert ssvae.decoder.output_shape[-1] == ssvae.x_dim  # Means only: the scale is learned.
    m2 = models.SSVAE(
        likelihood="heteroscedastic_gaussian", z_dim=2, hidden=(8,), classifier_hidden=(8,)
    )
    assert m2.decoder.output_shape[-1] == 2 * m2.x_dim


def test_a_users_likelihood_by_instance_and_by_registered_name(tmp_path):
    @keras.saving.register_keras_serializable("test_tools")
    class Laplace(likelihoods.Likelihood):
        family = "test_laplace"
        on_pixels = False

        def call(self, means):
            import tensorflow_probability as tfp

            tfd = tfp.distributions
            return tfd.Independent(tfd.Laplace(tf.cast(means, tf.float32), 0.5), 1)

    likelihoods.register("test_laplace", lambda x_dim, min_variance: Laplace())
    try:
        x = np.random.default_rng(0).normal(size=(6, 784)).astype(np.float32)
        for spec in ("test_laplace", Laplace()):
            model = models.VAE(likelihood=spec, **TINY)
            assert model.likelihood_name == "test_laplace"
            assert np.all(np.isfinite(model.elbo(x, seed=tf.constant([1, 2]))))
        model.compile("adam")
        model.save(tmp_path / "laplace.keras")
        again = keras.models.load_model(tmp_path / "laplace.keras")
        assert isinstance(again.likelihood, Laplace)
    finally:
        likelihoods._REGISTRY.pop("test_laplace")


# ---- the binaries follow the model's likelihood -------------------------------------------------


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory):
    """bin/train of a continuous-Bernoulli VAE on a small grayscale npz."""
    tmp = tmp_path_factory.mktemp("gray")
    npz = _gray_npz(tmp / "gray.npz")
    out = tmp / "run"
    result = run_binary(
        "train",
        "--likelihood=continuous_bernoulli",
        f"--dataset=npz:{npz}",
        "--z_dim=2",
        "--hidden=16",
        "--steps=20",
        "--steps_per_epoch=20",
        "--batch_size=20",
        "--verbose=0",
        f"--out_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return npz, out


@pytest.mark.slow
def test_train_and_evaluate_never_binarise_a_grayscale_model(gray_run, tmp_path):
    npz, out = gray_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["likelihood"] == "continuous_bernoulli"
    assert metrics["data_transforms"] == {"train": "none", "eval": "none"}
    assert metrics["data_transform"] == "none"
    # bin/evaluate reports the grayscale bound, the one the model's own evaluate gives.
    result = run_binary(
        "evaluate",
        f"--model_path={out}",
        f"--dataset=npz:{npz}",
        "--iw=2",
        f"--output_json={tmp_path / 'e.json'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["data_transform"] == "none"
    model = keras.models.load_model(out / "model.keras")
    x_test = np.load(npz)["x_test"]
    gray = model.evaluate(data.eval_dataset(x_test, binarization="none"), return_dict=True)
    binary = model.evaluate(data.eval_dataset(x_test), return_dict=True)
    assert evaluated["nelbo"] == pytest.approx(gray["nelbo"], rel=1e-5)
    # A binarised test set would be caught: its bound differs far beyond float32 rounding.
    assert evaluated["nelbo"] != pytest.approx(binary["nelbo"], rel=1e-3)
    # The figures' inputs are the grayscale images too.
    plotted = run_binary(
        "plot",
        f"--model_path={out}",
        f"--dataset=npz:{npz}",
        "--kind=reconstructions",
        f"--output={tmp_path / 'r.png'}",
    )
    assert plotted.returncode == 0, plotted.stderr[-3000:]


@pytest.mark.slow
def test_train_refuses_a_binarisation_the_likelihood_cannot_model(gray_run, tmp_path):
    npz, _ = gray_run
    result = run_binary(
        "train",
        "--likelihood=continuous_bernoulli",
        "--binarization=dynamic",
        f"--dataset=npz:{npz}",
        "--steps=2",
        f"--out_dir={tmp_path / 'r'}",
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "continuous_bernoulli" in result.stderr
    unknown = run_binary(
        "train", "--likelihood=poisson", "--steps=2", f"--out_dir={tmp_path / 'u'}"
    )
    assert unknown.returncode == 1 and "--likelihood=poisson" in unknown.stderr
    assert not (tmp_path / "u" / "checkpoints").exists()


# ---- a user's own model class through every binary ----------------------------------------------

USER_MODULE = textwrap.dedent(
    '''
    """A VampPrior VAE (Tomczak & Welling, 2018): p(z) is the mixture of q(z|u_k) over K
    learned pseudo-inputs u_k."""
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import tfp_vae

    tfd = tfp.distributions


    @keras.saving.register_keras_serializable("user_vamp")
    class VampVAE(tfp_vae.VAE):
        analytic_kl = False

        def __init__(self, pseudo_inputs=5, **kwargs):
            self.pseudo_inputs = int(pseudo_inputs)
            super().__init__(**kwargs)

        def make_prior(self):
            self.u = self.add_weight(
                shape=(self.pseudo_inputs, self.x_dim), initializer="random_uniform", name="u"
            )
            return None

        def prior(self):
            q = self.encode(tf.sigmoid(tf.convert_to_tensor(self.u)))
            return tfd.MixtureSameFamily(
                tfd.Categorical(logits=tf.zeros([self.pseudo_inputs])), q
            )

        def get_config(self):
            return {**super().get_config(), "pseudo_inputs": self.pseudo_inputs}
    '''
)


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A VampVAE trained from Python (in its own process, as a user's script would) and saved."""
    tmp = tmp_path_factory.mktemp("user")
    (tmp / "user_vamp.py").write_text(USER_MODULE)
    npz = _gray_npz(tmp / "bin.npz")
    script = textwrap.dedent(
        f"""
        import numpy as np, keras, tfp_vae
        from tfp_vae import data
        import user_vamp
        d = data.load("npz:{npz}")
        model = user_vamp.VampVAE(z_dim=2, hidden=(16,))
        model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
        model.fit(model.train_dataset(d, 20, seed=0), steps_per_epoch=5, epochs=1, verbose=0)
        model.save("{tmp / "vamp.keras"}")
        """
    )
    path = os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3")
    done = binaries.python("-c", script, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, npz


@pytest.mark.slow
def test_a_users_model_class_goes_through_every_binary(user_model):
    tmp, npz = user_model
    model_path = tmp / "vamp.keras"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}
    refused = run_binary("evaluate", f"--model_path={model_path}", f"--dataset=npz:{npz}")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "VampVAE" in refused.stderr and "--import=MODULE" in refused.stderr
    common = ["--import=user_vamp", f"--model_path={model_path}"]
    evaluated = run_binary("evaluate", *common, f"--dataset=npz:{npz}", "--iw=3", env_extra=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"niwae_3\s+\d", evaluated.stdout)
    plotted = run_binary(
        "plot",
        *common,
        f"--dataset=npz:{npz}",
        "--kind=all",
        f"--output={tmp / 'fig'}",
        env_extra=env,
    )
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert (tmp / "fig" / "latent_map.png").exists()
    assert not (tmp / "fig" / "class_grid.png").exists()  # The model draws no class grid.
    sampled = run_binary("sample", *common, f"--output={tmp / 's.png'}", env_extra=env)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    exported = run_binary("export", *common, f"--export_dir={tmp / 'sm'}", env_extra=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp / "sm" / "saved_model.pb").exists()
    # The SavedModel says how its data were prepared (TensorFlow ignores assets.extra).
    described = json.loads((tmp / "sm" / "assets.extra" / "tfp_vae.json").read_text())
    assert described["model"] == "VampVAE" and described["likelihood"] == "bernoulli"
    assert described["data_transforms"] == {"train": "dynamic", "eval": "static"}
    assert described["data_shape"] == [784] and "log_likelihood" in described["signatures"]
    missing = run_binary(
        "sample", "--import=no_such_module", *common[1:], f"--output={tmp / 'x.png'}"
    )
    assert missing.returncode == 1 and "--import=no_such_module" in missing.stderr


# ---- any input shape, read from the data --------------------------------------------------------


@pytest.mark.slow
def test_images_of_another_shape_train_evaluate_and_sample(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "small.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 256, (60, 16, 16), dtype=np.uint8),
        x_test=rng.integers(0, 256, (20, 16, 16), dtype=np.uint8),
    )
    out = tmp_path / "run"
    train = ["--z_dim=2", "--hidden=8", "--steps=10", "--steps_per_epoch=10", "--batch_size=10"]
    result = run_binary("train", f"--dataset=npz:{npz}", *train, "--verbose=0", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.models.load_model(out / "model.keras")
    assert model.input_shape == (16, 16) and model.x_dim == 256
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == 20 and np.isfinite(metrics["nelbo"])
    evaluated = run_binary("evaluate", f"--model_path={out}", f"--dataset=npz:{npz}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    sampled = run_binary(
        "sample", f"--model_path={out}", "--rows=2", f"--output={tmp_path / 's.png'}"
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "s.png"))).numpy()
    assert png.shape[:2] == (2 * 17 + 1, 10 * 17 + 1)  # 16-pixel cells, 1-pixel lines.
    # A model of 16x16 images refuses MNIST in one line.
    wrong = run_binary("evaluate", f"--model_path={out}", "--dataset=mnist", "--examples=10")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
    assert "[16, 16]" in wrong.stderr and "[28, 28]" in wrong.stderr


@pytest.mark.slow
def test_real_valued_vectors_with_a_gaussian_likelihood(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "vectors.npz"
    np.savez(
        npz,
        x_train=rng.normal(3.0, 2.0, (60, 6)).astype(np.float32),
        x_test=rng.normal(3.0, 2.0, (20, 6)).astype(np.float32),
    )
    loaded = data.load(f"npz:{npz}")
    assert loaded.x_train.dtype == np.float32 and loaded.x_train.shape == (60, 6)
    out = tmp_path / "run"
    args = ["--likelihood=gaussian", f"--dataset=npz:{npz}", "--z_dim=2", "--hidden=8"]
    steps = ["--steps=10", "--steps_per_epoch=10", "--batch_size=10", "--verbose=0"]
    result = run_binary("train", *args, *steps, f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_transforms"] == {"train": "none", "eval": "none"}
    model = keras.models.load_model(out / "model.keras")
    # Evaluated on the values themselves (no scaling by 255, no binarisation).
    expected = model.evaluate(
        data.eval_dataset(loaded.x_test, binarization="none"), verbose=0, return_dict=True
    )
    assert metrics["nelbo"] == pytest.approx(expected["nelbo"], rel=1e-5)
    assert not (out / "samples.png").exists()  # Vectors are not pictures.
    sampled = run_binary("sample", f"--model_path={out}", f"--output={tmp_path / 's.png'}")
    assert sampled.returncode == 1 and "not square" in sampled.stderr
    plotted = run_binary(
        "plot", f"--model_path={out}", f"--dataset=npz:{npz}", f"--output={tmp_path / 'fig'}"
    )
    assert plotted.returncode == 1 and plotted.stderr.count("\n") == 1
    assert "not square" in plotted.stderr and not (tmp_path / "fig").exists()
    refused = run_binary(
        "train", "--likelihood=bernoulli", f"--dataset=npz:{npz}", *steps[:1], f"--out_dir={out}2"
    )
    assert refused.returncode == 1 and "real-valued" in refused.stderr


# ---- each parameter validated once, at the constructor ------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: models.VAE(z_dim=0), "z_dim must be a positive whole number; got 0."),
        (lambda: models.VAE(z_dim=2.5), "z_dim must be a positive whole number; got 2.5."),
        (lambda: models.VAE(hidden=(300, 0)), "hidden[1] must be a positive whole number"),
        (lambda: models.VAE(beta=float("nan")), "beta (the weight on KL) must be finite"),
        (lambda: models.VAE(min_variance=-1), "min_variance must be finite and >= 0"),
        (lambda: models.GMVAE(k=0), "k (mixture components) must be a positive whole number"),
        (lambda: models.SSVAE(z_dim=0), "z_dim must be a positive whole number; got 0."),
        (lambda: models.SSVAE(class_weight=float("inf")), "class_weight must be finite"),
    ],
)
def test_constructors_refuse_bad_settings_in_one_sentence(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
