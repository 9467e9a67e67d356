"""Training under tf.distribute: a replicated step is the single-device step, and the workers of a
MultiWorkerMirroredStrategy run stay in lockstep.

Both tests run TensorFlow in subprocesses: logical devices and the multi-worker server can only be
configured before TensorFlow initialises, once per process. Only loopback addresses are used, and
every wait is bounded.
"""

import json
import os
import socket
import subprocess
import sys

import binaries
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # Seconds for any one subprocess (they take ~30 s on an idle 2-core machine).


def _env(**extra):
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_BACKEND="tensorflow",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def equivalence():
    """The JSON report of tests/distribute_equivalence.py (one SGD step, mirrored vs one device)."""
    result = binaries.python(
        os.path.join(ROOT, "tests", "distribute_equivalence.py"), env=_env(), timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize(
    "model", ["vae", "vae_iwae", "gmvae", "ssvae", "vae_clipped", "ssvae_clipped"]
)
def test_mirrored_step_equals_single_device_step(equivalence, model):
    """MirroredStrategy over two logical CPUs, global batch 97 (split 49 + 48; the SSVAE's
    labelled set of 25 splits 13 + 12): the weights after one SGD step equal the single-device
    ones to float tolerance, and so do the step's metrics (pooled over both replicas)."""
    report = equivalence[model]
    assert report["same_init"] == 0.0
    assert report["update_scale"] > 1e-3  # The step moved the weights.
    assert report["max_rel_diff"] < 1e-5, report
    if "other_batch_rel_diff" in report:
        # Dropping one of the 97 examples moves the update 1000x more than the tolerance: the
        # comparison would catch per-replica means (weights 1/98 and 1/96) or a missing example.
        assert report["other_batch_rel_diff"] > 1e-3, report
    assert report["logs"].keys() == report["logs_mirrored"].keys()
    for name, value in report["logs"].items():
        assert report["logs_mirrored"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_labelled_set_is_split_across_replicas(equivalence):
    assert equivalence["labelled_split"] == [13, 12]


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_training_keeps_workers_identical(tmp_path, h5_arrays):
    """Two `bin/train --strategy=multi_worker` processes on localhost (TF_CONFIG with two
    127.0.0.1 ports) train 200 steps together; both end with identical weights and optimizer
    state, the chief writing to --out_dir and worker 1 to --out_dir/worker-1."""
    rng = np.random.default_rng(0)
    # A small synthetic MNIST: blobs of ink so that the model has something to learn.
    x = (rng.uniform(size=(600, 28, 28)) * 255 * (rng.uniform(size=(600, 1, 1)) < 0.5)).astype(
        np.uint8
    )
    np.savez(
        tmp_path / "mnist.npz",
        x_train=x[:500],
        y_train=rng.integers(0, 10, 500),
        x_test=x[500:],
        y_test=rng.integers(0, 10, 100),
    )
    out = tmp_path / "run"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        os.path.join(ROOT, "bin", "train"),
                        "--strategy=multi_worker",
                        f"--data_dir={tmp_path}",
                        "--steps=200",
                        "--steps_per_epoch=100",
                        "--verbose=0",
                        f"--out_dir={out}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_env(TF_CONFIG=json.dumps(config)),
                ),
                log,
            )
        )
    try:
        codes = [proc.wait(timeout=TIMEOUT) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:  # Timed out (or the test failed): stop our own workers.
                proc.kill()
                proc.wait(timeout=30)
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
    assert codes == [0, 0], logs

    dirs = [out, out / "worker-1"]
    for d in dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["steps"] == 200 and metrics["replicas"] == 2, metrics
        assert metrics["strategy"] == "multi_worker" and np.isfinite(metrics["nelbo"])
    chief, other = (
        h5_arrays(d / "checkpoints" / "step-000000200" / "weights.weights.h5") for d in dirs
    )
    assert chief.keys() == other.keys() and len(chief) > 10
    assert any("optimizer" in name for name in chief)
    for name, value in chief.items():
        np.testing.assert_array_equal(value, other[name], err_msg=name)


@pytest.mark.unit
def test_make_strategy_checks_its_configuration(monkeypatch, tmp_path):
    from tfp_vae import training

    default = training.make_strategy("default")
    assert default.num_replicas_in_sync == 1 and training.is_chief(default)
    assert training.worker_out_dir(str(tmp_path), default) == str(tmp_path)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        training.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}}')
    with pytest.raises(ValueError, match="'task'"):
        training.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="strategy must be one of"):
        training.make_strategy("tpu")


def test_a_strategy_with_one_replica_trains(tmp_path):
    """`bin/train --strategy=mirrored` on a machine with one device (no GPU): the step takes the
    replicated path (the optimizer's merge_call cannot sit in the single-device update's tf.cond
    or XLA function) for the VAE family and the SSVAE."""
    for model in ("vae", "ssvae"):
        out = tmp_path / model
        result = binaries.python(
            os.path.join(ROOT, "bin", "train"),
            f"--model={model}",
            "--z_dim=3",
            "--steps=20",
            "--steps_per_epoch=10",
            "--verbose=0",
            "--strategy=mirrored",
            f"--out_dir={out}",
            env=_env(),
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["replicas"] == 1 and metrics["steps"] == 20
        assert np.isfinite(metrics["nelbo"])
