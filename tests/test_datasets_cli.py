"""bin/train's --dataset: fashion_mnist is Fashion-MNIST, npz:PATH a user's own arrays, and
metrics.json records the files read with their SHA-256."""

import hashlib
import json
import os

import numpy as np
import pytest
from binaries import run as run_binary

pytestmark = pytest.mark.integration

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SMALL = (
    "--steps=20",
    "--steps_per_epoch=10",
    "--verbose=0",
    "--z_dim=3",
    "--hidden=16",
)


def _train(*args, **kwargs):
    return run_binary("train", *args, **kwargs)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("ERROR: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR),
    reason=f"{FASHION_DIR} is missing (apt install dataset-fashion-mnist)",
)
@pytest.mark.slow
def test_train_on_real_fashion_mnist(tmp_path):
    """--dataset=fashion_mnist trains on the real Fashion-MNIST (also when $TFP_VAE_DATA_DIR is
    at an MNIST folder, as CI sets it: the MNIST files are passed over), and metrics.json says
    which files."""
    env = {"KERAS_HOME": str(tmp_path / "keras")}
    out = tmp_path / "run"
    result = _train("--dataset=fashion_mnist", *SMALL, f"--out_dir={out}", env_extra=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Data: {FASHION_DIR}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "fashion_mnist"
    assert metrics["data_identified_as"] == "fashion_mnist"
    assert metrics["data_source"] == FASHION_DIR
    assert metrics["data_files"] == {
        os.path.join(FASHION_DIR, s + ".gz"): _sha256(os.path.join(FASHION_DIR, s + ".gz"))
        for s in STEMS
    }
    assert metrics["test_examples"] == 10000 and metrics["steps"] == 20


@pytest.mark.slow
def test_train_on_a_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    # Float images in [0, 1], flat: converted to uint8 [N, 28, 28].
    np.savez(
        path,
        x_train=rng.random((300, 784), dtype=np.float32),
        x_test=rng.random((50, 784), dtype=np.float32),
    )
    out = tmp_path / "run"
    result = _train(f"--dataset=npz:{path}", *SMALL, f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == f"npz:{path}" and metrics["test_examples"] == 50
    assert metrics["data_files"] == {str(path): _sha256(path)}
    assert metrics["data_identified_as"] is None
    assert np.isfinite(metrics["nelbo"])
    report = tmp_path / "eval.json"
    result = run_binary(
        "evaluate",
        f"--model_path={out}",
        f"--dataset=npz:{path}",
        "--examples=20",
        f"--output_json={report}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(report.read_text())
    assert results["dataset"] == f"npz:{path}" and results["test_examples"] == 20
    assert results["data_files"] == {str(path): _sha256(path)}


@pytest.mark.slow  # Binaries that start TensorFlow.
def test_dataset_flag_mistakes_are_one_line(tmp_path):
    """Refused before TensorFlow starts: a bad name, a missing file, labels the model needs."""
    for value, expected in [
        ("cifar", "choose mnist, fashion_mnist or npz:PATH"),
        ("npz:", "choose mnist, fashion_mnist or npz:PATH"),
        (f"npz:{tmp_path}/none.npz", "no such file"),
    ]:
        line = _one_line_error(_train(f"--dataset={value}", f"--out_dir={tmp_path}/o"))
        assert expected in line, line
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(
        unlabelled, x_train=np.zeros((20, 28, 28), np.uint8), x_test=np.zeros((5, 28, 28), np.uint8)
    )
    line = _one_line_error(
        _train("--model=ssvae", f"--dataset=npz:{unlabelled}", f"--out_dir={tmp_path}/o")
    )
    assert "SSVAE needs labels" in line and str(unlabelled) in line
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow  # A binary that starts TensorFlow.
def test_bad_npz_content_is_one_line(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.full((20, 28, 28), 2.0), x_test=np.zeros((5, 28, 28)))
    line = _one_line_error(_train(f"--dataset=npz:{path}", *SMALL, f"--out_dir={tmp_path}/o"))
    # Floats outside [0, 1] are real values; the test split's are images: not one kind of data.
    assert str(path) in line and "give both splits the same kind of data" in line
    assert not os.path.exists(tmp_path / "o")
