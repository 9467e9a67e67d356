"""Fault injection: a run killed at any instant resumes to the same weights, one run per
directory, exports that never destroy a run, damaged checkpoints, changed flags on resume.

The kills are real SIGKILLs of `bin/train` processes, at chosen points of the checkpoint code:
a small driver (`_DRIVER`) wraps one function of `tfp_vae.training` to kill its own process
there, then runs the binary's `main` as the launcher does.
"""

import json
import os
import re
import signal
import subprocess
import sys

import binaries
import numpy as np
import pytest

from tfp_vae import rundir, training

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Kills this process at one point of the checkpoint code: `point` at the checkpoint of `step`.
#   before:  at the epoch end, before the checkpoint is written;
#   during:  after the weights file is written into the staging directory, before state.json
#            and the rename;
#   after:   once the checkpoint is in place (renamed), before older ones are pruned.
_DRIVER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tfp_vae import training
point, step = sys.argv[2], int(sys.argv[3])

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "before":
    original = training.save_checkpoint
    def save_checkpoint(model, directory, settings=None):
        if training.global_step(model) == step:
            kill()
        return original(model, directory, settings)
    training.save_checkpoint = save_checkpoint
elif point == "during":
    import keras
    original = keras.Model.save_weights
    def save_weights(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        if training.global_step(self) == step:
            kill()
    keras.Model.save_weights = save_weights
elif point == "after":
    original = training._prune
    def prune(directory):
        if os.path.isdir(os.path.join(directory, "step-%09d" % step)):
            kill()
        return original(directory)
    training._prune = prune
from tfp_vae.cli.train import run
sys.argv = ["train"] + sys.argv[4:]
run()
"""

# A small, fast run: tiny networks on 600 images, checkpoints every 10 steps.
_FLAGS = (
    "--z_dim=3",
    "--hidden=16",
    "--batch_size=32",
    "--steps_per_epoch=10",
    "--verbose=0",
    "--noxla",
)


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _train(*args, kill=None, timeout=240):
    """Runs bin/train (through the killing driver when `kill` = (point, step))."""
    if kill is None:
        cmd = [os.path.join(ROOT, "bin", "train"), *args]
    else:
        cmd = ["-c", _DRIVER, ROOT, kill[0], str(kill[1]), *args]
    return binaries.python(*cmd, env=_env(), timeout=timeout)


def _weights_file(run_dir, step):
    return os.path.join(run_dir, "checkpoints", f"step-{step:09d}", "weights.weights.h5")


def _one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(small_mnist_dir):
    return small_mnist_dir


@pytest.fixture(scope="module")
def whole_run(data_dir, tmp_path_factory):
    """The uninterrupted run: 40 steps."""
    out = str(tmp_path_factory.mktemp("whole") / "run")
    result = _train(*_FLAGS, "--steps=40", f"--data_dir={data_dir}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_killed_anywhere_resumes_to_the_same_weights(whole_run, data_dir, tmp_path, h5_arrays):
    out = str(tmp_path / "run")
    args = (*_FLAGS, "--steps=40", f"--data_dir={data_dir}", f"--out_dir={out}")
    ckpt = os.path.join(out, "checkpoints")
    # Killed while writing the checkpoint of step 20: only step 10's is complete.
    assert _train(*args, kill=("during", 20)).returncode == -signal.SIGKILL
    assert [s for s, _ in training.checkpoints(ckpt)] == [10]
    # Resumed at 10, killed once the checkpoint of step 30 is in place.
    assert _train(*args, "--resume", kill=("after", 30)).returncode == -signal.SIGKILL
    assert [s for s, _ in training.checkpoints(ckpt)][:2] == [30, 20]
    # Resumed at 30, killed after training to 40, before its checkpoint.
    assert _train(*args, "--resume", kill=("before", 40)).returncode == -signal.SIGKILL
    # Resumed at 30 again, to the end.
    result = _train(*args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [n for n in os.listdir(ckpt) if n.startswith(".tmp-")]  # Staging cleared.
    assert [s for s, _ in training.checkpoints(ckpt)] == [40, 30]  # Only the newest two kept.
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 40
    whole, resumed = (h5_arrays(_weights_file(d, 40)) for d in (whole_run, out))
    assert whole.keys() == resumed.keys() and any("optimizer" in k for k in whole)
    for name, value in whole.items():
        # The same updates on the same batches with the same noise: equal to float rounding.
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_resume_refuses_changed_run_flags_and_applies_a_new_learning_rate(
    whole_run, data_dir, tmp_path
):
    out = str(tmp_path / "run")
    subprocess.run(["cp", "-r", whole_run, out], check=True)
    base = ("--steps=50", f"--data_dir={data_dir}", f"--out_dir={out}", "--resume")
    flags = [f for f in _FLAGS if not f.startswith(("--z_dim", "--batch_size"))]
    line = _one_line_error(_train(*flags, "--z_dim=4", "--batch_size=16", *base))
    assert "--z_dim=4 (the run has 3)" in line and "--batch_size=16 (the run has 32)" in line
    line = _one_line_error(_train(*_FLAGS, "--steps_per_epoch=15", *base))
    assert "--steps_per_epoch must divide" in line
    line = _one_line_error(_train(*_FLAGS, *base[1:], "--steps=20"))
    assert "already at step 40, past --steps=20" in line
    result = _train(*_FLAGS, "--learning_rate=2e-4", *base)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["steps"] == 50 and metrics["learning_rate"] == pytest.approx(2e-4)


def test_a_cosine_schedule_resumes_where_it_was_and_keeps_its_setting(
    whole_run, data_dir, tmp_path, h5_arrays
):
    """--lr_schedule=cosine follows the optimizer's step: a run killed half-way and resumed
    ends with the weights of the run never interrupted, at a learning rate of 0. A run keeps
    the schedule it was started with (the optimizers' variables differ)."""
    cosine = (*_FLAGS, "--lr_schedule=cosine", "--steps=40", f"--data_dir={data_dir}")
    whole, out = str(tmp_path / "whole"), str(tmp_path / "run")
    assert _train(*cosine, f"--out_dir={whole}").returncode == 0
    assert _train(*cosine, f"--out_dir={out}", kill=("after", 20)).returncode == -signal.SIGKILL
    result = _train(*cosine, f"--out_dir={out}", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (h5_arrays(_weights_file(d, 40)) for d in (whole, out))
    assert a.keys() == b.keys()
    for name, value in a.items():
        np.testing.assert_allclose(b[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert json.load(open(os.path.join(out, "metrics.json")))["learning_rate"] == 0.0
    # The constant-rate run refuses the schedule, and the cosine run the constant rate.
    for run_dir, flag, had in ((whole_run, "cosine", "constant"), (out, "constant", "cosine")):
        copy = str(tmp_path / f"copy_{flag}")
        subprocess.run(["cp", "-r", run_dir, copy], check=True)
        line = _one_line_error(
            _train(
                *_FLAGS,
                f"--lr_schedule={flag}",
                "--steps=50",
                f"--data_dir={data_dir}",
                f"--out_dir={copy}",
                "--resume",
            )
        )
        assert f"--lr_schedule={flag} (the run has {had})" in line


def test_a_damaged_checkpoint_is_a_clear_error_and_the_previous_one_still_works(
    whole_run, tmp_path
):
    import keras

    from tfp_vae import models

    ckpt = str(tmp_path / "checkpoints")
    subprocess.run(["cp", "-r", os.path.join(whole_run, "checkpoints"), ckpt], check=True)
    newest = os.path.join(ckpt, "step-000000040", "weights.weights.h5")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)

    def model():
        m = models.VAE(z_dim=3, hidden=(16,))
        m.compile(keras.optimizers.Adam(1e-3))
        return m

    with pytest.raises(
        training.CheckpointError,
        match=r"step-000000040 cannot be restored .*"
        r"the previous checkpoint, .*step-000000030 \(step 30\), is intact",
    ):
        training.restore(model(), ckpt)
    os.rename(os.path.join(ckpt, "step-000000040"), str(tmp_path / "damaged"))
    m = model()
    assert training.restore(m, ckpt)["step"] == 30
    assert int(m.optimizer.iterations) == 30
    # Bytes overwritten inside the file (it still reads as HDF5): the recorded SHA-256 says so.
    weights = os.path.join(ckpt, "step-000000030", "weights.weights.h5")
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(training.CheckpointError, match="is damaged: its SHA-256"):
        training.restore(model(), ckpt)


def test_one_run_per_directory(tmp_path, data_dir):
    out = tmp_path / "run"
    with rundir.RunDirectory(out):  # Held by this process, as by a running `train`.
        line = _one_line_error(
            _train(*_FLAGS, "--steps=10", f"--data_dir={data_dir}", f"--out_dir={out}")
        )
        assert f"pid {os.getpid()}" in line and "in use by another training run" in line
        with pytest.raises(rundir.RunDirectoryError, match="in use"):
            rundir.RunDirectory(out).__enter__()
    # A lock left by a process killed while holding it is stale: it is taken over.
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import os, sys; sys.path.insert(0, sys.argv[1]); "
                "from tfp_vae import rundir; "
                "rundir.RunDirectory(sys.argv[2]).__enter__(); "
                "os.kill(os.getpid(), 9)"
            ),
            ROOT,
            str(out),
        ],
        env=_env(),
    )
    assert holder.returncode == -signal.SIGKILL and (out / ".lock").exists()
    with rundir.RunDirectory(out):
        assert (out / ".lock").read_text().startswith(f"pid {os.getpid()}")


def test_export_never_replaces_a_run(whole_run, tmp_path):
    before = sorted(os.listdir(whole_run))
    for target in (whole_run, os.path.dirname(whole_run)):
        line = _one_line_error(
            binaries.run(
                "export",
                f"--model_path={whole_run}",
                f"--export_dir={target}",
                "--overwrite",
                timeout=120,
            )
        )
        assert "is not a SavedModel directory" in line
    assert sorted(os.listdir(whole_run)) == before


def test_export_replaces_a_savedmodel_in_one_swap_with_readable_permissions(tmp_path):
    from tfp_vae import export, models

    model = models.VAE(z_dim=2, hidden=(8,))
    path = str(tmp_path / "sm")
    export.export(model, path)
    old_inode = os.stat(os.path.join(path, "saved_model.pb")).st_ino
    export.export(model, path, overwrite=True)
    assert os.stat(os.path.join(path, "saved_model.pb")).st_ino != old_inode
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == ["sm"]  # No staging or backup left behind.
    (tmp_path / "sm" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape("holds notes.txt")):
        export.export(model, path, overwrite=True)
    assert (tmp_path / "sm" / "notes.txt").read_text() == "mine"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_run_directory_mistakes_are_one_line_and_leave_nothing(tmp_path, data_dir):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = _one_line_error(_train("--steps=10", f"--out_dir={a_file}/run"))
    assert "is a file" in line
    line = _one_line_error(_train("--steps=10", f"--out_dir={a_file}"))
    assert "is a file, not a directory" in line
    # A run that fails before training (here: no data) leaves no directory behind.
    line = _one_line_error(
        _train("--steps=10", f"--data_dir={tmp_path / 'nothing'}", f"--out_dir={tmp_path / 'new'}")
    )
    assert not (tmp_path / "new").exists()


@pytest.mark.integration
def test_nan_before_the_first_checkpoint_says_there_is_none(tmp_path):
    import keras
    import tensorflow as tf

    from tfp_vae import data, models

    model = models.VAE(z_dim=2, hidden=(8,))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    original = model.compute_terms

    def poisoned(x, training=False, seed=None):
        terms = original(x, training, seed)
        terms["loss"] = tf.fill(tf.shape(terms["loss"]), np.float32(np.nan))
        return terms

    model.compute_terms = poisoned
    train = data.train_dataset(np.zeros((64, 28, 28), np.uint8), 16, seed=0)
    with pytest.raises(training.NonFiniteLossError, match="No checkpoint exists yet"):
        training.fit(model, train, steps=20, out_dir=str(tmp_path), steps_per_epoch=10, verbose=0)
    assert not training.has_checkpoint(str(tmp_path / "checkpoints"))


@pytest.mark.integration
def test_a_read_only_run_directory_is_one_sentence(tmp_path, monkeypatch):
    """(Simulated: the suite may run as root, whom permissions do not stop.)"""
    import errno

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        rundir.RunDirectoryError,
        match=r"Cannot write the run directory .*: Read-only file system; choose "
        r"another --out_dir\.",
    ):
        rundir.RunDirectory(tmp_path / "run").__enter__()
    assert not (tmp_path / "run").exists()
