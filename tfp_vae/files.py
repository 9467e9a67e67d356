"""Files written whole or not at all.

A result a run or a binary writes (the final `model.keras`, `metrics.json`, its pictures, an
`iwae.json`, a figure) is first written under a temporary name beside its destination, flushed to
the disk, and then renamed into place in one step (`os.replace`, atomic within a file system).
Whenever the process dies (a kill, a full disk, a crash), the destination is either the old file
or the new one, never a truncated one, and the temporary file is removed on any failure that
Python sees. Leftovers of a process killed mid-write start with "." and hold ".partial-" in their
name (`is_partial`), so nothing mistakes them for results.
"""

import contextlib
import errno
import hashlib
import json
import os
import tempfile

PARTIAL = ".partial-"


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path: str) -> None:
    """Flushes the file or directory at `path` to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: str) -> str:
    """The SHA-256 of the file at `path`, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_partial(name: str) -> bool:
    """Whether a file name is a temporary one of `replacing` (a leftover of a killed write)."""
    return name.startswith(".") and PARTIAL in name


def commit(temporary: str, path: str) -> None:
    """Flushes `temporary` and renames it to `path` in one step, then flushes the folder (so
    the rename itself survives a power cut). `replacing` calls it; fault tests wrap it."""
    fsync(temporary)
    os.replace(temporary, path)
    fsync(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """Yields a temporary path to write the new content of `path` to; on leaving the block
    without an error, it replaces `path` (`commit`); on an error it is removed.

    The temporary file is in the same folder (a rename never crosses file systems) and keeps
    the extension of `path` (Keras saves only to ".keras", matplotlib reads the format from it).
    It exists, empty, when the block starts, with the permissions a new file would get.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    extension = os.path.splitext(name)[1]
    handle, temporary = tempfile.mkstemp(prefix=f".{name}{PARTIAL}", suffix=extension, dir=folder)
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp's 0600 -> what open() would give.
        yield temporary
        commit(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` whole or not at all (`replacing`)."""
    with replacing(path) as temporary, open(temporary, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes `obj` as indented, key-sorted JSON to `path` whole or not at all."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_bytes(path, text.encode())


def disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) says the disk is full: ENOSPC, or a
    quota (EDQUOT), or a library's message of it (h5py, TensorFlow's file system)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def check_keras_file(path: str) -> str:
    """`path` if it is a .keras archive (a zip holding config.json), else a ValueError saying
    it is not a valid .keras file (Keras calls a truncated or empty one "File not found"), or a
    FileNotFoundError where there is no file."""
    import zipfile

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .keras file at {path}.")
    try:
        with zipfile.ZipFile(path) as archive:
            valid = "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        valid = False
    if not valid:
        raise ValueError(
            f"{path} is not a valid .keras file (truncated or empty? "
            f"{os.path.getsize(path)} bytes, not a zip "
            "archive with the model's config.json); write it again (model.save, bin/train "
            "--resume) or restore it."
        )
    return path
