"""benchmarks/ssvae_gpu.sh, the paper's semi-supervised schedule for one GPU, run here at its
tiny size (--dry_run): the same commands (M1, then M1+M2 and M2 with large batches, labelled
batches drawn with replacement, the square-root learning-rate rule, mixed precision), the same
outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "ssvae_gpu.sh")


def _run(*args, timeout=600, data_dir=None):
    env = dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")
    if data_dir is not None:
        env["TFP_VAE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        ["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


@pytest.mark.slow
def test_dry_run_writes_every_output_and_prints_the_accuracy(mnist, tmp_path):
    # The first 3000 training and 500 test images of the real MNIST: the commands and outputs
    # are what is under test, and evaluating the full test set three times would cost a minute.
    np.savez(
        tmp_path / "mnist.npz",
        x_train=mnist.x_train[:3000],
        y_train=mnist.y_train[:3000],
        x_test=mnist.x_test[:500],
        y_test=mnist.y_test[:500],
    )
    out = tmp_path / "gpu"
    result = _run("--dry_run", "--seeds", "0", "--out", str(out), data_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("m1", "m1m2_s0", "m2_s0"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["dtype_policy"] == "mixed_bfloat16"
        assert (out / name / "model.keras").is_file() and (out / f"{name}.log").is_file()
    for name in ("m1m2_s0", "m2_s0"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        # The square-root rule at batch 200: 1e-3 * sqrt(200 / 97).
        assert abs(metrics["learning_rate"] - 1e-3 * (200 / 97) ** 0.5) < 1e-9
        assert metrics["steps"] == 20 and 0.0 <= metrics["accuracy"] <= 1.0
        assert (out / f"savedmodel_{name}" / "saved_model.pb").is_file()
        assert f"{name[:-3]:5s} seed 0: {100 * metrics['accuracy']:.2f}%" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"m1m2_s0", "m2_s0"}
    # A second run on the same directory is refused, and loses nothing.
    again = _run("--dry_run", "--seeds", "0", "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert (out / "m1" / "metrics.json").is_file()


def test_bad_arguments_are_refused_in_one_line(tmp_path):
    for args, message in [
        (("--seed", "0"), "unknown argument --seed"),
        (("--out",), "--out needs a value"),
        (("--seeds", "0 x", "--out", str(tmp_path / "o")), "whole numbers"),
    ]:
        result = _run(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
