"""The convolutional preset: networks.conv_encoder / conv_decoder (shapes, refused shapes, .keras
round trip) and a conv VAE that learns on real MNIST."""

import keras
import numpy as np
import pytest

from tfp_vae import networks

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
        (shape[0] // 2, shape[1] // 2, 32), (shape[0] // 4, shape[1] // 4, 64)]
    z = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
    assert tuple(networks.conv_decoder(10, shape)(z).shape) == (5, *shape)
    # Any sequence of three ints: a shape taken from an array, say.
    assert networks.conv_encoder(np.zeros(shape).shape, 20).input_shape == (None, *shape)
    assert networks.conv_encoder(np.array(shape), 20).input_shape == (None, *shape)
    assert tuple(networks.conv_decoder(10, shape, out_channels=2)(z).shape) == (5, *shape[:2], 2)
    # Linear outputs (a posterior's parameters, logits): no activation on the last layer.
    assert encoder.layers[-1].activation is keras.activations.linear
    assert networks.conv_decoder(10, shape).layers[-1].activation is keras.activations.linear


@pytest.mark.parametrize("shape", [(28, 28), (784,), 784, (30, 28, 1), (28, 30, 1),
                                   (28, 28, 1, 1), (28.0, 28, 1), (28, 28, 0), (True, 28, 1),
                                   "28x28", None, np.array([28, 28])])
def test_bad_shapes_are_refused(shape):
    message = r"input_shape must be \(H, W, C\), positive integers with H and W divisible by 4"
    with pytest.raises(ValueError, match=message):
        networks.conv_encoder(shape, 20)
    with pytest.raises(ValueError, match=message):
        networks.conv_decoder(10, shape)


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="out_dim must be a positive integer; got 0"):
        networks.conv_encoder((28, 28, 1), 0)
    with pytest.raises(ValueError, match="in_dim must be a positive integer; got 2.5"):
        networks.conv_decoder(2.5, (28, 28, 1))
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        networks.conv_decoder(10, (28, 28, 1), out_channels=-1)


@pytest.mark.parametrize("shape", SHAPES)
def test_keras_file_round_trip(tmp_path, shape):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for network, x in [(networks.conv_encoder(shape, 20), rng.random((4, *shape))),
                       (networks.conv_decoder(10, shape), rng.normal(size=(4, 10)))]:
        x = x.astype(np.float32)
        path = tmp_path / f"{network.name}.keras"
        network.save(path)
        loaded = keras.models.load_model(path)
        assert isinstance(loaded, keras.Sequential) and loaded.name == network.name
        np.testing.assert_array_equal(loaded(x), network(x))
