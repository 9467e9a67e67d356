"""The convolutional preset: networks.conv_encoder / conv_decoder (shapes, refused shapes, .keras
round trip), a conv VAE that learns on real MNIST, and `bin/train --arch=conv`."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from binaries import run as run_binary

from tfp_vae import data, networks
from tfp_vae.models import VAE

pytestmark = pytest.mark.unit

SHAPES = [(28, 28, 1), (32, 32, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_output_shapes(shape):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((5, *shape)).astype(np.float32)
    encoder = networks.conv_encoder(shape, 20)
    assert tuple(encoder(x).shape) == (5, 20)
    # Two stride-2 stages: [B, H/2, W/2, 32], then [B, H/4, W/4, 64].
    convs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [tuple(c.output.shape[1:]) for c in convs] == [
        (shape[0] // 2, shape[1] // 2, 32),
        (shape[0] // 4, shape[1] // 4, 64),
    ]
    z = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
    assert tuple(networks.conv_decoder(10, shape)(z).shape) == (5, *shape)
    # Any sequence of three ints: a shape taken from an array, say.
    assert networks.conv_encoder(np.zeros(shape).shape, 20).input_shape == (None, *shape)
    assert networks.conv_encoder(np.array(shape), 20).input_shape == (None, *shape)
    assert tuple(networks.conv_decoder(10, shape, out_channels=2)(z).shape) == (5, *shape[:2], 2)
    # Linear outputs (a posterior's parameters, logits): no activation on the last layer.
    assert encoder.layers[-1].activation is keras.activations.linear
    assert networks.conv_decoder(10, shape).layers[-1].activation is keras.activations.linear


@pytest.mark.parametrize(
    "shape",
    [
        (28, 28),
        (784,),
        784,
        (30, 28, 1),
        (28, 30, 1),
        (28, 28, 1, 1),
        (28.0, 28, 1),
        (28, 28, 0),
        (True, 28, 1),
        "28x28",
        None,
        np.array([28, 28]),
    ],
)
def test_bad_shapes_are_refused(shape):
    message = r"input_shape must be \(H, W, C\), positive integers with H and W divisible by 4"
    with pytest.raises(ValueError, match=message):
        networks.conv_encoder(shape, 20)
    with pytest.raises(ValueError, match=message):
        networks.conv_decoder(10, shape)


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="out_dim must be a positive integer; got 0"):
        networks.conv_encoder((28, 28, 1), 0)
    with pytest.raises(ValueError, match=re.escape("in_dim must be a positive integer; got 2.5")):
        networks.conv_decoder(2.5, (28, 28, 1))
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        networks.conv_decoder(10, (28, 28, 1), out_channels=-1)


@pytest.mark.parametrize("shape", SHAPES)
def test_keras_file_round_trip(tmp_path, shape):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for network, x in [
        (networks.conv_encoder(shape, 20), rng.random((4, *shape))),
        (networks.conv_decoder(10, shape), rng.normal(size=(4, 10))),
    ]:
        x = x.astype(np.float32)
        path = tmp_path / f"{network.name}.keras"
        network.save(path)
        loaded = keras.models.load_model(path)
        assert isinstance(loaded, keras.Sequential) and loaded.name == network.name
        np.testing.assert_array_equal(loaded(x), network(x))


@pytest.mark.slow  # A convergence run on real MNIST.
def test_conv_vae_learns_on_mnist(mnist):
    """300 steps on 500 real training images take the test NELBO from the untrained ~544 nats to
    below 160. A model whose decoder ignores z (a broken reshape, a collapsed posterior) can do
    no better than independent pixels at their training means, ~198 nats on these images; a
    broken likelihood or KL does not get there at all."""
    keras.utils.set_random_seed(0)
    shape = (28, 28, 1)
    model = VAE(
        z_dim=10,
        input_shape=shape,
        encoder=networks.conv_encoder(shape, 20),
        decoder=networks.conv_decoder(10, shape),
    )
    # Graph mode: XLA's CPU convolutions are ~20x slower (benchmarks/conv_throughput.py).
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False, steps_per_execution=25)
    x = data.binarize_static(mnist.x_test[:500])
    untrained = model.evaluate(x, batch_size=500, verbose=0, return_dict=True)["nelbo"]
    model.fit(
        data.train_dataset(mnist.x_train[:500], 50, seed=0),
        steps_per_epoch=300,
        epochs=1,
        verbose=0,
    )
    metrics = model.evaluate(x, batch_size=500, verbose=0, return_dict=True)
    means = np.clip(mnist.x_train.reshape(len(mnist.x_train), -1).mean(0) / 255.0, 1e-3, 1 - 1e-3)
    independent = -np.mean((x * np.log(means) + (1 - x) * np.log1p(-means)).sum(1))
    assert untrained > 500.0 and metrics["nelbo"] < 160.0 < independent - 30.0, (
        untrained,
        metrics,
        independent,
    )
    assert 5.0 < metrics["kl"] < 40.0, metrics  # z is used, and the KL is sane.
    # The bound through sampled log q - log p (independent of the analytic KL) agrees.
    sampled = -float(tf.reduce_mean(model.iwae(x, 1, seed=[3, 4])))
    assert abs(sampled - metrics["nelbo"]) < 3.0, (sampled, metrics)


def _one_line_error(result, expected):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and expected in lines[0], lines


@pytest.mark.slow
def test_train_binary_with_arch_conv(tmp_path):
    out = tmp_path / "run"
    result = run_binary(
        "train",
        "--model=vae",
        "--arch=conv",
        "--steps=20",
        "--steps_per_epoch=10",
        "--verbose=0",
        f"--out_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # The untrained model is at ~544 nats; 20 steps get it below 400.
    assert metrics["steps"] == 20 and metrics["nelbo"] < 400.0, metrics
    model = keras.models.load_model(out / "model.keras")
    assert tuple(model.input_shape) == (28, 28, 1)
    assert [type(layer).__name__ for layer in model.encoder.layers][:2] == ["Conv2D", "Conv2D"]
    assert type(model.decoder.layers[-1]).__name__ == "Conv2DTranspose"
    # --arch defines the run: resuming with the other one is refused, naming it.
    resumed = run_binary(
        "train",
        "--model=vae",
        "--arch=mlp",
        "--steps=30",
        "--steps_per_epoch=10",
        "--resume",
        f"--out_dir={out}",
    )
    _one_line_error(resumed, "--arch=mlp (the run has conv)")
    # A checkpoint from before the flag was an MLP run: it resumes as --arch=mlp only.
    for state in out.glob("checkpoints/step-*/state.json"):
        saved = json.loads(state.read_text())
        del saved["settings"]["arch"]
        state.write_text(json.dumps(saved))
    resumed = run_binary(
        "train",
        "--model=vae",
        "--arch=conv",
        "--steps=30",
        "--steps_per_epoch=10",
        "--resume",
        f"--out_dir={out}",
    )
    _one_line_error(resumed, "--arch=conv (the run has mlp)")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=ssvae", "--arch=conv"], "--arch=conv sets the VAE and GMVAE networks"),
        (["--model=m1m2", "--m1_path=m1", "--arch=conv"], "--arch=conv sets the VAE and GMVAE"),
        (["--model=vae", "--arch=conv", "--hidden=300"], "--hidden sizes the MLPs of --arch=mlp"),
        (["--arch=resnet"], "arch"),
    ],
)
@pytest.mark.integration
def test_arch_conv_refusals_are_one_line(tmp_path, args, expected):
    _one_line_error(run_binary("train", *args, f"--out_dir={tmp_path}/o"), expected)
    assert not (tmp_path / "o").exists()
