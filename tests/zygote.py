"""A warm start for the binaries the tests run: one interpreter per pytest worker imports
TensorFlow, TFP and Keras once, then forks a child for each `bin/<binary>` run.

Each binary run in a fresh interpreter spends 6-7 CPU-seconds importing those three before it does
anything (`python -X importtime`); the suite runs about 160 of them. A forked child starts with
the imports done and is otherwise the run a user makes: it gets the test's own stdin, stdout and
stderr (passed over a Unix socket), environment, working directory and `sys.argv`, runs the
launcher as `__main__`, and ends as the interpreter would (SystemExit codes, a traceback and 1 for
an uncaught exception, atexit handlers, a signal's negative code).

It is used only where that cannot change the outcome: the Keras backend is TensorFlow (the import
is done), and no variable that those imports read differs from the server's (`_IMPORT_TIME`).
Otherwise, and wherever a test asks (`fresh=True`), the run gets a fresh interpreter. Fork is safe
here because the server has started no TensorFlow runtime (no eager context, no thread pools)
before forking: only the imports ran. Its only other threads are OpenBLAS' (numpy's and scipy's;
with OPENBLAS_NUM_THREADS=1 there are none), which OpenBLAS stops and restarts around a fork; a
Python thread in the server would make it answer "fresh". `TFP_VAE_TEST_ZYGOTE=0` turns it off.
"""

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import types

# Variables that the imports read once (or that decide what is imported): a run that sets any of
# them differently gets a fresh interpreter, as does one that changes a PYTHON* variable other than
# PYTHONPATH. Entries that a run adds to PYTHONPATH are added to the child's sys.path, unless one
# of them holds a module that the server has imported (a stand-in for TensorFlow, say): then that
# run, too, gets a fresh interpreter.
_IMPORT_TIME = (
    "KERAS_BACKEND",
    "KERAS_HOME",
    "TF_CPP_MIN_LOG_LEVEL",
    "TF_CPP_MAX_VLOG_LEVEL",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_USE_LEGACY_KERAS",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MPLBACKEND",
)


def _send(sock, obj, fds=()):
    data = json.dumps(obj).encode()
    msg = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [msg], list(fds))
    else:
        sock.sendall(msg)


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise EOFError("zygote closed")
        buf += part
    return buf


def _recv(sock, with_fds=0):
    fds = []
    if with_fds:
        msg, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
        if not msg:
            raise EOFError("zygote closed")
        head, rest = msg[:4], msg[4:]
    else:
        head, rest = _recv_exact(sock, 4), b""
    (n,) = struct.unpack("!I", head)
    rest += _recv_exact(sock, n - len(rest))
    return json.loads(rest), fds


# ---- the server: imports once, forks per run ------------------------------------------------


def _child(request, fds):
    """In the forked child: become `python <binary> <args>`; never returns."""
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if "tempfile" in sys.modules:  # It keeps the TMPDIR it first saw.
        sys.modules["tempfile"].tempdir = None
    argv = request["argv"]
    code = 0
    try:
        if argv[0] == "-c":  # python -c CODE ARGS: argv ["-c", *ARGS], the path starts with ""
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            main = types.ModuleType("__main__")  # The program's own, as `import __main__` sees.
            sys.modules["__main__"] = main
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            import runpy

            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (the interpreter's own: any uncaught one is printed)
        kind, error, tb = sys.exc_info()
        # The traceback from the program's first frame on, as the interpreter prints it.
        first = "<string>" if argv[0] == "-c" else argv[0]
        while tb is not None and tb.tb_frame.f_code.co_filename != first:
            tb = tb.tb_next
        if tb is not None:
            error.__traceback__ = tb  # What the default hook prints, whatever it is passed.
        sys.excepthook(kind, error, error.__traceback__)
        code = 1
    # What the interpreter does at exit: wait for the non-daemon threads, run atexit, flush.
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    try:
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # a closed pipe: the interpreter ignores it at exit too
                pass
        os._exit(code & 0xFF)


def _added_path(env):
    """The PYTHONPATH entries that `env` adds to the server's, in order; None when the child
    cannot be given them faithfully (one is removed, or one holds a module already imported)."""
    ours = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    theirs = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if any(p not in theirs for p in ours):
        return None
    added = [os.path.abspath(p) for p in theirs if p not in ours]
    # What the server imported, and what any interpreter imports at start-up where it finds it.
    imported = {name.partition(".")[0] for name in sys.modules} | {"sitecustomize", "usercustomize"}
    for entry in added:
        names = os.listdir(entry) if os.path.isdir(entry) else []
        if imported & {name.partition(".")[0] for name in names}:
            return None
    return added


def serve(fd):
    sock = socket.socket(fileno=fd)
    import keras  # noqa: F401  (TensorFlow backend: the server's KERAS_BACKEND)
    import tensorflow  # noqa: F401
    import tensorflow_probability  # noqa: F401

    _send(sock, {"ready": True})
    while True:
        try:
            request, fds = _recv(sock, with_fds=3)
        except EOFError:
            return
        added = _added_path(request["env"])
        if added is None or threading.active_count() > 1:
            for fd in fds:
                os.close(fd)
            _send(sock, {"fresh": True})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            sys.path[1:1] = added
            _child(request, fds)
        for fd in fds:
            os.close(fd)
        _send(sock, {"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
        _send(sock, {"returncode": os.waitstatus_to_exitcode(status), "cpu": cpu})


# ---- the client: one server per pytest worker -----------------------------------------------

# The idle servers of this process: a run takes one, or starts one when all are busy (threads that
# run binaries at once, as test_docs' pages do, each get their own).
_IDLE = []
_LOCK = threading.Lock()
# CPU-seconds of the children this process's runs forked (tests/cpu_profile.py adds them: they
# are not this process's children, so RUSAGE_CHILDREN leaves them out).
CHILD_CPU = 0.0


def _base_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def enabled():
    return os.environ.get("TFP_VAE_TEST_ZYGOTE", "1") != "0"


def _start():
    """A new server, once it has done its imports: (its process, our end of its socket)."""
    ours, theirs = socket.socketpair()
    env = dict(_base_env(), KERAS_BACKEND="tensorflow")
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    theirs.close()
    _recv(ours)
    return proc, ours


def can_serve(argv, env):
    """Whether a forked child would run `argv` with `env` as a fresh interpreter would."""
    if not enabled():
        return False
    backend = [a for a in argv if a == "--backend" or a.startswith("--backend=")]
    if any(a != "--backend=tensorflow" for a in backend):  # "--backend jax" too: fresh.
        return False
    if env.get("KERAS_BACKEND", "tensorflow") != "tensorflow":  # The server's (`_start`).
        return False
    base = _base_env()
    python = {k for k in (*env, *base) if k.startswith("PYTHON") and k != "PYTHONPATH"}
    keys = (set(_IMPORT_TIME) | python) - {"KERAS_BACKEND"}
    return all(env.get(k) == base.get(k) for k in keys)


def run(argv, env, timeout, cwd=None):
    """`python *argv` (a script and its arguments, or -c CODE and its arguments) in a forked
    child -> CompletedProcess; None when the server cannot run it as a fresh interpreter would
    (`_added_path`)."""
    with _LOCK:
        server = _IDLE.pop() if _IDLE else None
    server = server or _start()
    try:
        result = _run_on(server[1], argv, env, timeout, cwd)
    except subprocess.TimeoutExpired:  # The child was killed and its end read: still in step.
        with _LOCK:
            _IDLE.append(server)
        raise
    except BaseException:
        server[1].close()  # Its protocol may be mid-message: it ends, a next run starts another.
        raise
    with _LOCK:
        _IDLE.append(server)
    return result


def _run_on(sock, argv, env, timeout, cwd):
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    with open(os.devnull, "rb") as devnull:
        _send(
            sock,
            {"argv": list(argv), "env": env, "cwd": os.fspath(cwd or os.getcwd())},
            fds=(devnull.fileno(), out_w, err_w),
        )
    os.close(out_w)
    os.close(err_w)
    started = _recv(sock)[0]
    if started.get("fresh"):
        os.close(out_r)
        os.close(err_r)
        return None
    pid = started["pid"]
    chunks = {out_r: [], err_r: []}

    def drain(fd):
        with open(fd, "rb", closefd=True) as f:
            chunks[fd].append(f.read())

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    for r in readers:
        r.start()
    sock.settimeout(timeout)
    try:
        done = _recv(sock)[0]
    except TimeoutError:
        os.kill(pid, 9)
        sock.settimeout(None)
        _recv(sock)
        raise subprocess.TimeoutExpired(argv, timeout) from None
    except BaseException:  # Interrupted (Ctrl-C): the child goes too, as subprocess.run does.
        os.kill(pid, 9)
        raise
    finally:
        sock.settimeout(None)
    for r in readers:
        r.join()
    global CHILD_CPU
    with _LOCK:
        CHILD_CPU += done["cpu"]
    code = done["returncode"]
    # As subprocess.run(text=True) reads them: the locale's encoding, universal newlines.
    out, err = (io.TextIOWrapper(io.BytesIO(b"".join(chunks[fd]))).read() for fd in (out_r, err_r))
    return subprocess.CompletedProcess([sys.executable, *argv], code, out, err)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
