"""The end of a run is as safe as its middle: `bin/train` killed at each write of its finish
(the final model, metrics.json, the pictures, the completion record) resumes to the results of a
run never killed; a full disk is one sentence naming the last good checkpoint, and a rerun with
room resumes exactly.

The kills are real SIGKILLs: a small driver wraps `tfp_vae.files.commit` (the rename that puts
each finished file in place) to kill its own process just before or just after one file's
rename, then runs the binary's `main` as the launcher does.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import uuid

import binaries
import numpy as np
import pytest
from binaries import ROOT
from test_faults import _FLAGS  # The same small run as the fault tests, on the same data.

from tfp_vae import files, rundir, training

pytestmark = pytest.mark.slow

_DRIVER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tfp_vae import files
when, name = sys.argv[2], sys.argv[3]
original = files.commit

def commit(temporary, path):
    if when == "before" and os.path.basename(path) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    original(temporary, path)
    if when == "after" and os.path.basename(path) == name:
        os.kill(os.getpid(), signal.SIGKILL)

files.commit = commit
if when == "fill":  # Fills the disk once the checkpoint of step `name` is in place.
    from tfp_vae import training
    save = training.save_checkpoint
    def save_checkpoint(model, directory, settings=None):
        path = save(model, directory, settings)
        if training.global_step(model) == int(name):
            with open(os.environ["FILLER"], "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 16))
                except OSError:
                    pass
        return path
    training.save_checkpoint = save_checkpoint
if when == "inject":  # No tmpfs to fill: the weights file of checkpoint `name` fails as a full
    import errno, keras  # disk fails it.
    from tfp_vae import training
    original_save = keras.Model.save_weights
    def save_weights(self, path, *args, **kwargs):
        if training.global_step(self) >= int(name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return original_save(self, path, *args, **kwargs)
    keras.Model.save_weights = save_weights
from tfp_vae.cli.train import run
sys.argv = ["train"] + sys.argv[4:]
run()
"""


def _train(*args, driver=None, env=None):
    if driver is None:
        cmd = [os.path.join(ROOT, "bin", "train"), *args]
    else:
        cmd = ["-c", _DRIVER, ROOT, *driver, *args]
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return binaries.python(*cmd, env=environ, timeout=300)


@pytest.fixture(scope="module")
def whole_run(small_mnist_dir, tmp_path_factory):
    """The run never killed: 20 steps."""
    out = str(tmp_path_factory.mktemp("whole") / "run")
    result = _train(*_FLAGS, "--steps=20", f"--data_dir={small_mnist_dir}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _model_weights(path):
    import keras

    return [np.asarray(v) for v in keras.models.load_model(path, compile=False).weights]


def _same_results(run, whole):
    """The finished files of `run` are those of the uninterrupted `whole`."""
    for a, b in zip(
        _model_weights(os.path.join(run, "model.keras")),
        _model_weights(os.path.join(whole, "model.keras")),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    mine, theirs = (json.load(open(os.path.join(d, "metrics.json"))) for d in (run, whole))
    assert mine["steps"] == theirs["steps"]
    np.testing.assert_allclose(mine["nelbo"], theirs["nelbo"], rtol=1e-5)
    record = json.load(open(os.path.join(run, "finished.json")))
    assert record["step"] == mine["steps"]
    for name, digest in record["files"].items():
        assert files.sha256(os.path.join(run, name)) == digest, name
    assert not [n for n in os.listdir(run) if files.is_partial(n)]  # Leftovers cleared.


def test_killed_at_each_write_of_the_finish_resumes_to_the_same_results(
    whole_run, small_mnist_dir, tmp_path
):
    out = str(tmp_path / "run")
    args = (*_FLAGS, f"--data_dir={small_mnist_dir}", f"--out_dir={out}")
    assert _train(*args, "--steps=10").returncode == 0  # A finished 10-step run, then extended:
    # killed while writing its model (case 1 of #22: the 10-step files stay whole, none partial).
    killed = _train(*args, "--steps=20", "--resume", driver=("before", "model.keras"))
    assert killed.returncode == -signal.SIGKILL
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 10
    assert [n for n in os.listdir(out) if files.is_partial(n)]  # The killed write's leftover.
    # Each resume re-makes the results from the step-20 checkpoint (and says so); killed again
    # once metrics.json is in place, before the pictures, before the completion record.
    for driver in (
        ("after", "metrics.json"),
        ("before", "samples.png"),
        ("before", "finished.json"),
    ):
        killed = _train(*args, "--steps=20", "--resume", driver=driver)
        assert killed.returncode == -signal.SIGKILL, (driver, killed.stderr[-2000:])
        assert "re-making" in killed.stdout, (driver, killed.stdout[-2000:])
    # Case 2 of #22: metrics.json says 20 steps now, but the run is not complete until its
    # record is written: resuming finishes it, and then there is nothing left to do.
    finished = _train(*args, "--steps=20", "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "re-making" in finished.stdout and "step 20" in finished.stdout
    _same_results(out, whole_run)
    again = _train(*args, "--steps=20", "--resume")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout[-2000:]
    # A finished file deleted or changed later makes the run unfinished again (re-made as above).
    assert rundir.unfinished(out, 20) is None and rundir.unfinished(out, 30) is not None
    os.rename(os.path.join(out, "samples.png"), os.path.join(out, "kept.png"))
    assert rundir.unfinished(out, 20) == "samples.png is missing"
    with open(os.path.join(out, "samples.png"), "wb") as f:
        f.write(b"other")
    assert "samples.png is not the file written" in rundir.unfinished(out, 20)


def _small_tmpfs(path, size="4m"):
    """Mounts a tmpfs of `size` at `path`; False where this machine does not let us."""
    os.makedirs(path)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
        )
    except OSError:
        return False
    return result.returncode == 0


def test_a_full_disk_is_one_sentence_and_a_rerun_with_room_resumes_exactly(
    whole_run, small_mnist_dir, tmp_path
):
    disk = str(tmp_path / f"disk-{uuid.uuid4().hex[:6]}")
    mounted = _small_tmpfs(disk)
    try:
        out = os.path.join(disk, "run")
        filler = os.path.join(disk, "filler")
        args = (*_FLAGS, "--steps=20", f"--data_dir={small_mnist_dir}", f"--out_dir={out}")
        # The disk fills up once the checkpoint of step 10 is written (a real full tmpfs where
        # mounting is possible, else the next weights file fails with ENOSPC).
        driver = ("fill", "10") if mounted else ("inject", "20")
        full = _train(*args, driver=driver, env={"FILLER": filler})
        lines = [line for line in full.stderr.splitlines() if line.strip()]
        assert full.returncode == 1 and len(lines) == 1, full.stderr[-3000:]
        assert lines[0].startswith("ERROR: No space left on device"), lines[0]
        assert "step-000000010" in lines[0] and "--resume" in lines[0], lines[0]
        assert [s for s, _ in training.checkpoints(os.path.join(out, "checkpoints"))] == [10]
        assert not os.path.exists(os.path.join(out, "finished.json"))
        assert not [n for n in os.listdir(out) if files.is_partial(n)]
        if mounted:
            os.remove(filler)
        resumed = _train(*args, "--resume")  # With room: on from step 10, to the same end.
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _same_results(out, whole_run)
    finally:
        if mounted:
            subprocess.run(["umount", disk], check=False)
        shutil.rmtree(disk, ignore_errors=True)


@pytest.mark.unit
def test_disk_full_is_recognised_through_library_wrappers():
    assert files.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert files.disk_full(
        RuntimeError("Unable to write (file write failed: No space left on device)")
    )
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise ValueError("saving failed") from e
    except ValueError as e:
        assert files.disk_full(e)
    assert not files.disk_full(OSError(errno.EACCES, "Permission denied"))


@pytest.mark.unit
def test_replacing_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), files.replacing(path) as temporary:
        open(temporary, "w").write("half")
        raise RuntimeError("killed")
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]  # No leftover.
    files.write_json(path, {"a": 2})
    assert json.load(open(path)) == {"a": 2}
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~files.umask())


def test_a_run_shorter_than_an_epoch_trains_its_steps_and_is_then_complete(
    small_mnist_dir, tmp_path
):
    """--steps below --steps_per_epoch: the default steps_per_execution divides --steps (25 made
    a 60-step run train 75, and its rerun was refused for a step no epoch divides)."""
    out = str(tmp_path / "run")
    args = ("--z_dim=3", "--hidden=16", "--batch_size=32", "--verbose=0", "--noxla")
    args += ("--steps=30", f"--data_dir={small_mnist_dir}", f"--out_dir={out}")
    assert _train(*args).returncode == 0
    assert [s for s, _ in training.checkpoints(os.path.join(out, "checkpoints"))] == [30]
    assert json.load(open(os.path.join(out, "finished.json")))["step"] == 30
    again = _train(*args, "--resume")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stderr[-2000:]


def test_a_disk_that_fills_by_itself_is_one_line_and_no_crash(small_mnist_dir, tmp_path):
    """A 3 MiB tmpfs that the run's own checkpoints fill (the issue's case: h5py's finalizers
    then printed tracebacks and the process died of a segfault, rc 139)."""
    disk = str(tmp_path / f"disk-{uuid.uuid4().hex[:6]}")
    if not _small_tmpfs(disk, "3m"):
        pytest.skip("this machine does not let the test mount a tmpfs (see the injected case)")
    try:
        args = ("--z_dim=3", "--hidden=64", "--steps=200", "--steps_per_epoch=50", "--verbose=0")
        args += (f"--data_dir={small_mnist_dir}", f"--out_dir={disk}/run", "--noxla")
        for resume in ((), ("--resume",)):
            full = _train(*args, *resume)
            lines = [line for line in full.stderr.splitlines() if line.strip()]
            assert full.returncode == 1 and len(lines) == 1, full.stderr[-3000:]
            assert lines[0].startswith("ERROR: No space left on device"), lines[0]
    finally:
        subprocess.run(["umount", disk], check=False)
        shutil.rmtree(disk, ignore_errors=True)
