"""Sizes have limits that say so, every float flag refuses NaN and Inf, and the remaining one-line
cases of issue #22: `n` of sample (chunked; refused above what a tensor or the memory holds), `m`
of the bounds, batch sizes, in Python, the signatures and the binaries; a corrupt index of the
shipped models, a truncated .keras file, an output that cannot be written, an empty --export_dir,
`fit` on no data, a test set under 50 images and `bin/plot --kind=class_grid` alone."""

import errno
import json
import os
import re
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from binaries import ROOT
from binaries import run as run_binary

from tfp_vae import checks, data, evaluation, pretrained, signatures
from tfp_vae.cli import common
from tfp_vae.models import SSVAE, VAE

pytestmark = pytest.mark.unit


def _images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def vae():
    keras.utils.set_random_seed(0)
    return VAE(z_dim=3, hidden=(16,))


@pytest.fixture(scope="module")
def ssvae():
    keras.utils.set_random_seed(0)
    return SSVAE(z_dim=3, hidden=(16,), classifier_hidden=(16,))


def _dataset(n_train=60, n_test=60):
    images = (np.random.default_rng(0).random((max(n_train, n_test), 28, 28)) * 255).astype(
        np.uint8
    )
    labels = np.arange(len(images)) % 10
    return data.ImageDataset(
        images[:n_train], labels[:n_train], images[:n_test], labels[:n_test], source="tiny"
    )


# ---- n of sample ------------------------------------------------------------------------------

TENSOR_LIMIT = "one tensor holds at most 2739137 rows of 784 values"


@pytest.mark.parametrize("n", [3_000_000, 10**9, 2**31 - 1])
def test_sample_refuses_what_a_tensor_cannot_hold(vae, ssvae, n):
    for model in (vae, ssvae):
        with pytest.raises(ValueError, match=f"n={n} is too large: {TENSOR_LIMIT}"):
            model.sample(n)
    with pytest.raises(ValueError, match=r"n must be at most 2147483647 .*got 10000000000\."):
        vae.sample(10**10)  # Beyond int32: refused before the cast could wrap it.


def test_sample_refuses_what_the_memory_cannot_hold(vae, monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: 2**20)  # 1 MiB left.
    with pytest.raises(ValueError, match=r"n=1000 is too large: it needs about .* more than"):
        vae.sample(1000)
    assert vae.sample(10).shape == (10, 784)


def test_a_large_n_is_drawn_in_chunks(vae, ssvae, monkeypatch):
    monkeypatch.setattr(checks, "CHUNK_VALUES", 4 * 784)  # Chunks of 4 rows.
    assert checks.chunk_rows(vae.widest_values()) == 4
    seed = tf.constant([3, 4])
    images = vae.sample(10, seed=seed).numpy()
    assert images.shape == (10, 784) and np.array_equal(images, vae.sample(10, seed=seed))
    # Chunks differ (each has its own seed) and n within a chunk draws as before.
    assert not np.allclose(images[:4], images[4:8])
    z = vae.prior().sample(3, seed=seed)
    np.testing.assert_allclose(vae.sample(3, seed=seed), vae.decode(z).mean(), atol=1e-6)
    # A graph's n (the signatures'): the same chunks.
    traced = tf.function(lambda n: vae.sample(n, seed=seed))
    np.testing.assert_allclose(traced(tf.constant(10)), images, atol=1e-6)
    # The SSVAE's labels follow their chunk: class y's images, whatever chunk they fall in.
    y = np.arange(10) % 10
    drawn = ssvae.sample(10, y, seed=seed).numpy()
    assert drawn.shape == (10, 784)
    one = ssvae.sample(10, 7, seed=seed).numpy()
    assert not np.allclose(drawn, one)


# ---- m of the bounds --------------------------------------------------------------------------


def test_the_bounds_refuse_m_above_the_limit(vae):
    x = _images(2)
    limit = f"m must be at most {checks.MAX_IMPORTANCE_SAMPLES} (the number of importance samples)"
    for m in (10**9, checks.MAX_IMPORTANCE_SAMPLES + 1):
        with pytest.raises(ValueError, match=re.escape(f"{limit}; got {m}. For more")):
            vae.iwae(x, m)
        with pytest.raises(ValueError, match=re.escape(limit)):
            evaluation.negative_iwae(vae, x, m)
    with pytest.raises(ValueError, match="m must be >= 1"):
        vae.iwae(x, 0)
    with pytest.raises(ValueError, match=r"max_rows=1000000000 is too large: one tensor"):
        evaluation.negative_iwae(vae, x, 5, max_rows=10**9)


def test_a_large_batch_takes_fewer_samples_per_chunk(vae, monkeypatch):
    x, seed = _images(6), tf.constant([1, 2])
    whole = vae.iwae(x, 8, seed=seed).numpy()
    monkeypatch.setattr(checks, "CHUNK_VALUES", 12 * 784)  # 12 rows: 2 samples of 6 a chunk.
    chunked = vae.iwae(x, 8, seed=seed).numpy()
    assert np.all(np.isfinite(chunked)) and not np.allclose(whole, chunked)  # Other draws.
    np.testing.assert_allclose(whole, chunked, atol=5.0)  # The same bound (8 samples each).


def test_the_signatures_check_n_and_m_in_the_graph(vae):
    functions = signatures.latent_variable_functions(vae)
    sample = tf.function(functions["sample"][0], input_signature=functions["sample"][1][0])
    for n in (3_000_000, 2**31 - 1):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"n={n} is too large"):
            sample(tf.constant(n))
    assert sample(tf.constant(5))["images"].shape == (5, 784)
    fn, spec = functions["log_likelihood"]
    log_likelihood = tf.function(fn, input_signature=spec)
    with pytest.raises(tf.errors.InvalidArgumentError, match="m must be at most 16777216"):
        log_likelihood(_images(2), tf.constant(10**9), tf.constant([0, 0]))


# ---- batch sizes ------------------------------------------------------------------------------


def test_batch_sizes_are_checked_before_any_allocation(vae, ssvae, monkeypatch):
    dataset = _dataset()
    with pytest.raises(ValueError, match=f"batch_size=100000000 is too large: {TENSOR_LIMIT}"):
        vae.train_dataset(dataset, 10**8)
    with pytest.raises(ValueError, match="labelled_batch_size=1000000000 is too large"):
        ssvae.train_dataset(dataset, 97, labels_per_class=5, labelled_batch_size=10**9)
    monkeypatch.setattr(checks, "available_memory", lambda: 2**30)
    need = vae.training_bytes() * 100_000
    with pytest.raises(ValueError, match=r"batch_size=100000 is too large: it needs about"):
        vae.train_dataset(dataset, 100_000)
    assert need > 2**30 and vae.check_batch_size(97) == 97


def test_check_size_in_a_graph_is_an_assertion():
    check = tf.function(lambda n: checks.check_size(n, 1000, "rows", "ask for fewer."))
    assert int(check(tf.constant(5))) == 5
    with pytest.raises(tf.errors.InvalidArgumentError, match="rows=2147484 is too large"):
        check(tf.constant(2147484))


# ---- fit on no data ---------------------------------------------------------------------------


def test_fit_on_no_examples_is_refused(vae):
    model = VAE(z_dim=2, hidden=(4,))
    model.compile()
    empty = np.zeros((0, 784), np.float32)
    for x in (empty, tf.data.Dataset.from_tensor_slices(empty).batch(4)):
        with pytest.raises(ValueError, match="fit got no training examples"):
            model.fit(x, epochs=1, verbose=0)


# ---- the shipped models' index, truncated .keras files -----------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"models": [', "is not valid JSON"),
        ("[]", 'is not an index of models (a JSON object with a "models" list)'),
        ('{"models": [{"model": "VAE"}]}', 'entry 0 of "models" has no "name"'),
    ],
)
def test_a_corrupt_index_names_its_file(tmp_path, monkeypatch, text, expected):
    (tmp_path / "index.json").write_text(text)
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))
    for call in (pretrained.list, pretrained.names, lambda: pretrained.load("vae")):
        with pytest.raises(ValueError) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(str(tmp_path / "index.json")) and expected in message
        assert "\n" not in message


@pytest.mark.parametrize("size", [0, 5000])
def test_a_truncated_keras_file_is_called_what_it_is(vae, tmp_path, monkeypatch, size):
    saved = tmp_path / "whole.keras"
    vae.save(saved)
    broken = tmp_path / "vae.keras"
    broken.write_bytes(saved.read_bytes()[:size])
    sentence = f"{broken} is not a valid .keras file (truncated or empty? {size} bytes"
    with pytest.raises(common.UserError, match=re.escape(sentence)):
        common.load_model(str(broken))
    os.makedirs(tmp_path / "run")
    os.replace(broken, tmp_path / "run" / "model.keras")  # A run's out_dir, as bin/evaluate's.
    with pytest.raises(common.UserError, match=re.escape("model.keras is not a valid .keras file")):
        common.load_model(str(tmp_path / "run"))
    os.replace(tmp_path / "run" / "model.keras", broken)
    (tmp_path / "index.json").write_text(json.dumps({"models": [{"name": "vae"}]}))
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(sentence)):
        pretrained.load("vae")
    assert common.load_model(str(saved)).z_dim == 3


def test_a_test_set_under_50_images_still_gets_its_pictures(vae, tmp_path):
    names = common.write_images(vae, _dataset(n_test=20), str(tmp_path), seed=0)
    assert names == ["samples.png", "reconstructions.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- outputs that cannot be written ----------------------------------------------------------


def test_an_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    common.check_output_file(str(target), "output")  # Writable: nothing left behind.
    assert os.listdir(tmp_path) == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(app.UsageError, match=re.escape(f"--output={target}: cannot write in")):
        common.check_output_file(str(target), "output")


# ---- float flags --------------------------------------------------------------------------------

FLOAT_FLAGS = """
import math, sys
from absl import flags
import importlib
importlib.import_module(sys.argv[1])
from tfp_vae.cli import common
common.refuse_non_finite_floats()
names = [f.name for m, fs in flags.FLAGS.flags_by_module_dict().items() if m == sys.argv[1]
         for f in fs if isinstance(f.parser, flags.FloatParser)]
for name in names:
    for value in ("nan", "inf", "-inf", "NaN"):
        try:
            flags.FLAGS[name].parse(value)
            flags.FLAGS.validate_all_flags()
            print(f"ACCEPTED --{name}={value}")
        except flags.Error as e:
            print(f"REFUSED --{name}={value}: {e}")
        flags.FLAGS[name].unparse()
print("FLOATS", ",".join(names))
"""


@pytest.mark.integration  # A Python per binary (no TensorFlow): their flags share one registry.
def test_every_float_flag_of_every_binary_refuses_nan_and_inf():
    env = dict(os.environ, TFP_VAE_DEFER_IMPORT="1", PYTHONPATH=ROOT)
    floats = []
    for binary in ("train", "evaluate", "export", "sample", "plot"):
        result = subprocess.run(
            [sys.executable, "-c", FLOAT_FLAGS, f"tfp_vae.cli.{binary}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        lines = result.stdout.splitlines()
        floats += [n for n in lines[-1].split(" ", 1)[1].split(",") if n]
        assert not [line for line in lines if line.startswith("ACCEPTED")], result.stdout
    # The flags among them (beta, the class and generative weights, the learning rate,
    # clip norm, EMA momentum), each refused.
    for name in ("beta", "class_weight", "gen_weight", "learning_rate", "clip_norm"):
        assert name in floats
    assert "ema_momentum" in floats and len(floats) >= 8


# ---- the binaries -------------------------------------------------------------------------------


def _one_line(result, *parts):
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ERROR: "), result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


def _takes_no_file(folder):
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return os.path.isdir(folder)
    os.close(fd)
    os.remove(probe)
    return False


@pytest.mark.integration
def test_the_binaries_say_each_limit_in_one_line(vae, tmp_path):
    model = tmp_path / "vae.keras"
    vae.save(model)
    rng = np.random.default_rng(0)
    images = (rng.random((60, 28, 28)) * 255).astype(np.uint8)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=images, x_test=images)
    # Refused as the flags are read (no TensorFlow yet).
    result = run_binary("train", "--beta=nan", f"--out_dir={tmp_path}/a")
    _one_line(result, "--beta must be a finite number")
    _one_line(
        run_binary("export", f"--model_path={model}", "--export_dir="), "--export_dir is empty"
    )
    # /sys takes no new file, even from root (chmod would not stop root); else not tested here
    # (test_an_unwritable_output_is_refused_before_any_work injects the error).
    if _takes_no_file("/sys"):
        for binary, flag, path in (
            ("sample", "output", "/sys/x.png"),
            ("evaluate", "output_json", "/sys/x.json"),
        ):
            result = run_binary(binary, f"--model_path={model}", f"--{flag}={path}")
            _one_line(result, f"--{flag}={path}: cannot write in /sys")
    # Refused before the data go into a stream or a bound.
    _one_line(
        run_binary(
            "train", "--batch_size=100000000", f"--dataset=npz:{npz}", f"--out_dir={tmp_path}/b"
        ),
        "batch_size=100000000 is too large: one tensor holds at most",
    )
    _one_line(
        run_binary("evaluate", f"--model_path={model}", f"--dataset=npz:{npz}", "--iw=1000000000"),
        "--iw must be at most 16777216",
    )
    assert not os.path.exists(tmp_path / "b" / "checkpoints")


@pytest.mark.slow  # bin/plot starts TensorFlow and matplotlib.
def test_plot_class_grid_alone(ssvae, tmp_path):
    model = tmp_path / "ssvae.keras"
    ssvae.save(model)
    result = run_binary(
        "plot", f"--model_path={model}", "--kind=class_grid", f"--output={tmp_path}/grid.png"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
