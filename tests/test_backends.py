"""The two Keras backends from the framework's side: the binaries' --backend (set before Keras
is imported, refused where it cannot take effect, in one line), training.fit on either backend
with the NumPy pipeline, resuming exactly, and PNGs written without TensorFlow."""

import json
import struct
import zlib

import keras
import numpy as np
import pytest
from binaries import run

from tfp_vae import data_numpy, images, training
from tfp_vae.cli import common

pytestmark = pytest.mark.unit


def decode_png(blob):
    """uint8 [H, W, C] of an 8-bit, unfiltered grayscale or RGB PNG (what encode_png writes)."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind, payload = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}[colour]
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert depth == 8 and np.all(rows[:, 0] == 0)
    return rows[:, 1:].reshape(height, width, channels)


@pytest.mark.backend_neutral
@pytest.mark.parametrize("shape", [(5, 7, 1), (4, 3, 3), (1, 1, 1)])
def test_png_round_trip(shape, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    images.write_png(str(tmp_path / "a.png"), image)
    np.testing.assert_array_equal(decode_png((tmp_path / "a.png").read_bytes()), image)
    with pytest.raises(ValueError, match="uint8"):
        images.encode_png(image.astype(np.float32))


class Flag:
    def __init__(self, value, present=True):
        self.value, self.present = value, present


def test_set_backend_refusals(monkeypatch):
    running = keras.config.backend()
    monkeypatch.setenv("KERAS_BACKEND", running)
    common.set_backend(flag=Flag(running))  # The one Keras runs on: fine.
    other = "jax" if running == "tensorflow" else "tensorflow"
    with pytest.raises(common.UserError, match=f"Keras already runs on {running}"):
        common.set_backend(flag=Flag(other))
    with pytest.raises(
        common.UserError, match="runs on tensorflow only; pass --backend=tensorflow"
    ):
        common.set_backend(("tensorflow",), Flag("jax"))
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(common.UserError, match="KERAS_BACKEND=torch: tfp_vae runs on"):
        common.set_backend(flag=Flag("tensorflow", present=False))
    # A binary with one backend takes it whatever $KERAS_BACKEND says.
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    if running == "tensorflow":
        common.set_backend(("tensorflow",), Flag("jax", present=False))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("KERAS_BACKEND", running)
    with pytest.raises(common.UserError, match=rf"{running} is not installed; pip install"):
        common.set_backend(flag=Flag(running))


@pytest.mark.integration  # Binaries.
def test_binaries_refuse_a_backend_in_one_line(tmp_path):
    exported = run(
        "export", "--backend=jax", f"--model_path={tmp_path}", f"--export_dir={tmp_path}/e"
    )
    assert exported.returncode == 1
    assert exported.stderr.strip().splitlines() == [
        (
            "ERROR: --backend=jax: this binary runs on tensorflow only; pass "
            "--backend=tensorflow (a model trained on another backend loads there)."
        )
    ]
    torch = run(
        "sample", f"--model_path={tmp_path}", "--output=s.png", env_extra={"KERAS_BACKEND": "torch"}
    )
    assert torch.returncode == 1 and len(torch.stderr.strip().splitlines()) == 1
    assert "KERAS_BACKEND=torch" in torch.stderr
    unknown = run("evaluate", "--backend=numpy", f"--model_path={tmp_path}")
    assert unknown.returncode == 1 and "--backend" in unknown.stderr
    assert "--backend" in run("plot", "--helpfull").stdout


@pytest.mark.integration  # A binary.
def test_train_refuses_multi_worker_on_jax(tmp_path):
    """Several hosts on JAX are jax.distributed's, which bin/train does not run (--strategy=
    mirrored, one host's devices, is keras.distribution.DataParallel: test_distribute_jax.py)."""
    pytest.importorskip("jax")
    result = run("train", "--backend=jax", "--strategy=multi_worker", f"--out_dir={tmp_path}/r")
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        (
            "ERROR: --strategy=multi_worker is tf.distribute's MultiWorkerMirroredStrategy, and "
            "Keras runs on jax: several hosts there take jax.distributed "
            "(keras.distribution.initialize) with keras.distribution.DataParallel, which "
            "bin/train does not run; use --strategy=mirrored for this host's devices, or "
            "--backend=tensorflow. (see --help)"
        )
    ]
    assert not (tmp_path / "r").exists()


def autoencoder():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    model = keras.Model(inputs, keras.layers.Dense(784, "sigmoid")(keras.layers.Dense(4)(inputs)))
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return model


class Pairs(keras.utils.PyDataset):
    """(x, x) batches of a data_numpy stream (a plain Keras model needs targets)."""

    num_batches = None

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def __getitem__(self, i):
        x = self.stream[i]
        return x, x

    def skip(self, n):
        return Pairs(self.stream.skip(n))


@pytest.mark.backend_neutral
def test_fit_on_the_numpy_stream_resumes_exactly(tmp_path, capsys):
    """training.fit with the NumPy pipeline, on the backend of this run: 20 steps straight and
    10 + 10 resumed from the checkpoint (weights, optimizer, step; the stream from step 10) end
    with the same weights; checkpoints are written; TensorBoard logs where TensorFlow is."""
    x = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)

    def stream(start):
        return Pairs(data_numpy.train_dataset(x, 8, seed=1, start_step=start))

    straight = autoencoder()
    training.fit(straight, stream, 20, str(tmp_path / "a"), steps_per_epoch=10, verbose=0)
    first = autoencoder()
    training.fit(first, stream, 10, str(tmp_path / "b"), steps_per_epoch=10, verbose=0)
    resumed = autoencoder()  # A fresh process's model: the same initial weights, then restored.
    training.fit(
        resumed, stream(0), 20, str(tmp_path / "b"), steps_per_epoch=10, resume=True, verbose=0
    )  # A stream, not a function: skipped forward to the checkpoint's step.
    assert training.global_step(resumed) == 20
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert [s for s, _ in training.checkpoints(str(tmp_path / "b" / "checkpoints"))] == [20, 10]
    state = json.loads((tmp_path / "b/checkpoints/step-000000020/state.json").read_text())
    assert state["step"] == 20
    logs = tmp_path / "a" / "logs"
    if training.has_tensorflow():
        assert (logs / "train").is_dir()
    else:
        assert not logs.exists()
        assert "no TensorBoard logs" in capsys.readouterr().out
