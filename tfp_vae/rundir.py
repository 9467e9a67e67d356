"""A training run's output directory: made safely, held by one process at a time.

`RunDirectory(path)` is a context manager. Entering it creates `path` if needed (a one-line
`RunDirectoryError` when it cannot: under a file, read-only, ...) and takes the run's lock,
`path/.lock`: an exclusive `fcntl.flock` on that file, which holds the owner's pid and host. A
second process on the same directory fails at once, naming the holder. The kernel drops the lock
when its process dies, however it dies (SIGKILL included), so a stale lock file from a dead run is
simply taken over. Leaving the context after an exception that happened before `started()` was
called removes the directory again if this process created it and wrote nothing else in it, so a
run that failed early (missing data, a bad flag) leaves nothing behind.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket

LOCK_FILE = ".lock"


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used (one line saying why and what to do)."""


def _os_reason(e):
    return os.strerror(e.errno) if e.errno else str(e)


class RunDirectory:
    """The lock on a run's output directory; see the module docstring."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._fd = None
        self._created = False
        self._started = False

    def __enter__(self):
        path = self.path
        if os.path.exists(path) and not os.path.isdir(path):
            raise RunDirectoryError(
                f"--out_dir {path} is a file, not a directory; choose another --out_dir."
            )
        self._created = not os.path.exists(path)
        try:
            os.makedirs(path, exist_ok=True)
            fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if self._created and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
            where = e.filename or path
            if e.errno in (errno.ENOTDIR, errno.EEXIST):
                reason = f"a part of the path ({where}) is a file"
            else:
                reason = _os_reason(e)
            raise RunDirectoryError(
                f"Cannot write the run directory {path}: {reason}; choose another --out_dir."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryError(
                f"{path} is in use by another training run ({holder}); "
                "wait for it to end or choose another --out_dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def started(self):
        """Marks the run as started: from now on the directory stays, whatever happens."""
        self._started = True

    def __exit__(self, exc_type, exc, tb):
        lock = os.path.join(self.path, LOCK_FILE)
        try:
            if exc_type is not None and self._created and not self._started:
                if set(os.listdir(self.path)) <= {LOCK_FILE}:
                    os.remove(lock)
                    os.rmdir(self.path)
        finally:
            if self._fd is not None:
                os.close(self._fd)  # Releases the lock.
                self._fd = None
        return False


# ---- the checkpoints of a run (written by `tfp_vae.training`) -----------------------------------
CHECKPOINT_PREFIX = "step-"  # checkpoints/step-<global step, 9 digits>/
STATE = "state.json"
LEGACY_WEIGHTS = "last.weights.h5"  # Before checkpoints were directories: with state.json.


def checkpoints(directory):
    """[(step, path)] of the complete checkpoints in `directory`, newest first."""
    found = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
                found.append((int(name[len(CHECKPOINT_PREFIX) :]), os.path.join(directory, name)))
        legacy = os.path.join(directory, STATE)
        if os.path.isfile(legacy) and os.path.isfile(os.path.join(directory, LEGACY_WEIGHTS)):
            try:
                with open(legacy) as f:
                    found.append((int(json.load(f)["step"]), directory))
            except (OSError, ValueError, KeyError, TypeError):
                found.append((-1, directory))
    return sorted(found, reverse=True)


def has_checkpoint(directory):
    return bool(checkpoints(directory))


# ---- the end of a run ---------------------------------------------------------------------------
# A run is finished when its results (the final model, metrics.json, its pictures) are all
# written. Each is written whole or not at all (`tfp_vae.files`); `FINISHED` is written last and
# names the step they belong to and each file's SHA-256. A run whose checkpoint is at its last
# step but whose record is missing, of another step, or whose files are missing or changed is
# not finished: `bin/train --resume` makes the results again from the checkpoint.

FINISHED = "finished.json"


def record_finished(path, step, names):
    """Records the run at `path` as finished at `step` with its result files `names` (written
    last, after them)."""
    from tfp_vae import files

    digests = {name: files.sha256(os.path.join(path, name)) for name in names}
    files.write_json(os.path.join(path, FINISHED), {"step": int(step), "files": digests})


def unfinished(path, step):
    """None when the run at `path` is finished at `step` (see above); else why not, as a
    clause ("its results are from step 200", "model.keras is missing", ...)."""
    import json

    from tfp_vae import files

    try:
        with open(os.path.join(path, FINISHED)) as f:
            record = json.load(f)
        recorded, names = int(record["step"]), dict(record["files"])
    except FileNotFoundError:
        return _unrecorded(path, step)
    except (OSError, ValueError, KeyError, TypeError):
        return f"its record {FINISHED} is damaged"
    if recorded != step:
        return f"its results are from step {recorded}"
    for name, digest in names.items():
        where = os.path.join(path, name)
        if not os.path.isfile(where):
            return f"{name} is missing"
        if files.sha256(where) != digest:
            return f"{name} is not the file written at the end of the run"
    return None


def _unrecorded(path, step):
    """A run finished before the record existed counts as finished when its metrics.json says
    `step` and its model.keras is a whole Keras file (a zip)."""
    import json
    import zipfile

    try:
        with open(os.path.join(path, "metrics.json")) as f:
            steps = json.load(f).get("steps")
    except (OSError, ValueError, AttributeError):
        return "its results were never all written"
    model = os.path.join(path, "model.keras")
    if steps != step:
        return f"its results are from step {steps}"
    if not zipfile.is_zipfile(model):
        return "model.keras is missing or damaged"
    return None


def clear_leftovers(path):
    """Removes the temporary files of writes a killed process left in `path` (see
    `tfp_vae.files.replacing`); call it holding the run's lock."""
    from tfp_vae import files

    for name in os.listdir(path):
        if files.is_partial(name):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(path, name))
