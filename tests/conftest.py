"""Shared fixtures, and the test tiers.

TF's C++ logging is silenced before anything imports TensorFlow (this module is imported by
pytest before any test module).

Tiers (tests/tiers.py, docs/testing.md): each test is `unit`, `integration` or `slow`, from its
own mark, else its class's, else its module's `pytestmark`; a test with none is `integration`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
import tiers


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST (tfp_vae.data.ImageDataset), found as `data.load("mnist")` finds it:
    $TFP_VAE_DATA_DIR if set, else (on a machine without another copy) the one shipped in the
    package, tfp_vae/datasets/mnist/. Never downloaded."""
    from tfp_vae import data

    return data.load("mnist", download=False)


@pytest.fixture
def keras_seed():
    """Seeds Python, NumPy, TensorFlow and Keras (keras.utils.set_random_seed); returns the seed."""
    import keras

    seed = 1234
    keras.utils.set_random_seed(seed)
    return seed


def _read_h5(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return arrays


@pytest.fixture
def h5_arrays():
    """A function: an HDF5 file (a Keras weights file) -> {dataset name: array}."""
    return _read_h5


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # tryfirst: before pytest's own hook deselects by `-m`, which must see one tier per test.
    tiers.assign(items, config)


@pytest.fixture(scope="module")
def small_mnist_dir(tmp_path_factory):
    """A folder with a small MNIST-like `mnist.npz` (random pixels): 600 training and 100 test
    images with labels, for the tests that run `bin/train` many times (faults, the finish)."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (700, 28, 28), dtype=np.uint8)
    np.savez(
        d / "mnist.npz",
        x_train=x[:600],
        y_train=rng.integers(0, 10, 600),
        x_test=x[600:],
        y_test=rng.integers(0, 10, 100),
    )
    return str(d)
