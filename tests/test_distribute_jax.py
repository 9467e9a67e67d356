"""`--strategy=mirrored` on JAX: keras.distribution.DataParallel over two CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2, which JAX reads once, when it starts: hence
subprocesses). A two-device step is the one-device step, and bin/train trains, resumes and saves
with the distribution set.

JAX-only (skipped under TensorFlow, run by the JAX tier, `make test-jax`); the interpreter is this
one, or TFP_VAE_JAX_PYTHON (e.g. an environment without TensorFlow).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # Seconds for any one subprocess (~10-30 s on a busy 2-core machine).

pytestmark = [
    pytest.mark.integration,
    pytest.mark.backend_neutral,  # In the JAX tier (make test-jax).
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs under KERAS_BACKEND=jax"),
]


def _run(args, without_tensorflow=False):
    """Runs `args` with the JAX backend on two CPU devices (and, `without_tensorflow`, as where
    TF is not installed: tests/without_tensorflow, which saves its start-up)."""
    path = [os.path.join(ROOT, "tests", "without_tensorflow")] if without_tensorflow else []
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([*path, ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    python = os.environ.get("TFP_VAE_JAX_PYTHON", sys.executable)
    return subprocess.run(
        [python, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT
    )


@pytest.fixture(scope="module")
def equivalence():
    """The JSON report of tests/distribute_equivalence_jax.py."""
    script = os.path.join(ROOT, "tests", "distribute_equivalence_jax.py")
    result = _run([script], without_tensorflow=True)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("model", ["vae", "ssvae"])
def test_two_device_steps_equal_one_device_steps(equivalence, model):
    """Three SGD steps on batches of 10 over two devices (5 rows each; the SSVAE's 5 labelled
    examples whole on both) from the one-device run's weights: the weights agree to 1e-5 of the
    update and the logs to 1e-5. The only difference is the order of the sums (each device sums
    its 5 rows, then the two partial sums are added): float32 rounding, ~1e-7 of the values
    per sum of ~10^3 terms of one sign; measured 1e-7 (VAE) and 7e-7 (SSVAE) of the update.
    Changing one pixel of every image moves the update by 10% of itself, 10^4 times the
    tolerance: the comparison would see a lost or doubled shard. A bad batch laid out on the
    devices still gets the host check's one line and changes no weight."""
    report = equivalence[model]
    assert report["replicas"] == 2 and report["same_init"] == 0.0
    assert report["update_scale"] > 1.0  # The steps moved the weights.
    assert report["max_rel_diff"] < 1e-5, report
    if "other_batch_rel_diff" in report:
        assert report["other_batch_rel_diff"] > 1e-2, report
    sharded = "spec=P('batch', None)"
    assert sharded in report["layout"][0]  # The unlabelled batch is split over the devices.
    if model == "ssvae":  # 5 labelled examples: whole on both devices.
        assert "spec=P(None, None)" in report["layout"][1] and "P(None,)" in report["layout"][2]
    assert report["logs"].keys() == report["logs_parallel"].keys()
    for name, value in report["logs"].items():
        assert report["logs_parallel"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert report["bad_batch_message"].startswith("Pixel values must lie in [0, 1]")
    assert "\n" not in report["bad_batch_message"] and report["bad_batch_untouched"]
    if model == "vae":  # A checkpoint and a .keras file, written and read with it set.
        saved = report["saved_and_restored"]
        assert saved["step"] == 3 and saved["replicated"], saved
        assert saved["restored_diff"] == saved["optimizer_diff"] == saved["loaded_diff"] == 0


def test_train_binary_mirrored(tmp_path, small_mnist_dir):
    """bin/train --backend=jax --strategy=mirrored: the Strategy line names the distribution, a
    run trains two epochs (with --mixed_precision: bfloat16 networks, float32 losses) and writes
    its checkpoints and model.keras with it set (restoring them is tested above); a batch the
    devices cannot share is one line and exit status 1."""
    out = tmp_path / "run"
    args = [
        os.path.join(ROOT, "bin", "train"),
        "--backend=jax",
        "--strategy=mirrored",
        "--mixed_precision",  # bin/train --backend=jax --mixed_precision: bfloat16 networks.
        f"--data_dir={small_mnist_dir}",
        "--z_dim=2",
        "--hidden=8",
        "--batch_size=10",
        "--steps_per_epoch=2",
        "--verbose=0",
        f"--out_dir={out}",
    ]
    refused = _run(args[:-1] + ["--batch_size=9", f"--out_dir={tmp_path / 'refused'}"])
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        (
            "ERROR: --batch_size: the global batch of 9 examples does not divide evenly over the "
            "2 devices of keras.distribution.DataParallel (JAX shards each batch in equal parts): "
            "use a multiple of 2, e.g. 8 or 10. (see --help)"
        )
    ]
    first = _run(args + ["--steps=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert (
        "Strategy: mirrored, 2 replica(s) in sync "
        "(keras.distribution.DataParallel over cpu:0, cpu:1)"
    ) in first.stdout
    # Where TF is installed Keras imports it on JAX too; its start-up lines are dropped there.
    assert "absl::InitializeLog" not in first.stderr and " port.cc:" not in first.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and (out / "checkpoints" / "step-000000004").is_dir(), metrics
    assert metrics["replicas"] == 2 and metrics["strategy"] == "mirrored"
    assert metrics["dtype_policy"] == "mixed_bfloat16"
    assert np.isfinite(metrics["nelbo"]) and (out / "model.keras").is_file()
