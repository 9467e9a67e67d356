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
before forking: only the imports ran. `TFP_VAE_TEST_ZYGOTE=0` turns it off.
"""

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading

# Variables that the imports read once (or that decide what is imported): a run that sets any of
# them differently gets a fresh interpreter, as does one that
# changes a PYTHON* variable.
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
    argv = request["argv"]
    code = 0
    try:
        if argv[0] == "-c":  # python -c CODE ARGS: argv ["-c", *ARGS], the path starts with ""
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
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
        sys.excepthook(*sys.exc_info())
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


def serve(fd):
    sock = socket.socket(fileno=fd)
    import keras  # noqa: F401  (TensorFlow backend: the server's KERAS_BACKEND)
    import tensorflow  # noqa: F401
    import tensorflow_probability  # noqa: F401

    _send(sock, {"ready": os.getpid()})
    while True:
        try:
            request, fds = _recv(sock, with_fds=3)
        except EOFError:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(request, fds)
        for fd in fds:
            os.close(fd)
        _send(sock, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(sock, {"returncode": os.waitstatus_to_exitcode(status)})


# ---- the client: one server per pytest worker -----------------------------------------------

_SERVER = None
_LOCK = threading.Lock()


def _base_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def enabled():
    return os.environ.get("TFP_VAE_TEST_ZYGOTE", "1") != "0"


def _start():
    global _SERVER
    ours, theirs = socket.socketpair()
    env = _base_env()
    env.setdefault("KERAS_BACKEND", "tensorflow")
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
    _SERVER = (proc, ours, env)
    return _SERVER


def can_serve(argv, env):
    """Whether a forked child would run `argv` with `env` as a fresh interpreter would."""
    if not enabled():
        return False
    if any(a == "--backend" or a.startswith("--backend=") for a in argv):
        if not any(a in ("--backend=tensorflow", "--backend=tf") for a in argv):
            return False
    base = dict(_base_env())
    base.setdefault("KERAS_BACKEND", "tensorflow")
    keys = set(_IMPORT_TIME) | {k for k in (*env, *base) if k.startswith("PYTHON")}
    return all(env.get(k) == base.get(k) for k in keys)


def run(argv, env, timeout, cwd=None):
    """`python *argv` (a script and its arguments, or -c CODE and its arguments) in a forked
    child -> CompletedProcess."""
    with _LOCK:
        server = _SERVER or _start()
        _, sock, _ = server
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        with open(os.devnull, "rb") as devnull:
            _send(
                sock,
                {"argv": list(argv), "env": env, "cwd": cwd or os.getcwd()},
                fds=(devnull.fileno(), out_w, err_w),
            )
        os.close(out_w)
        os.close(err_w)
        pid = _recv(sock)[0]["pid"]
        chunks = {out_r: [], err_r: []}

        def drain(fd):
            with open(fd, "rb", closefd=True) as f:
                chunks[fd].append(f.read())

        readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
        for r in readers:
            r.start()
        sock.settimeout(timeout)
        try:
            code = _recv(sock)[0]["returncode"]
        except TimeoutError:
            os.kill(pid, 9)
            sock.settimeout(None)
            _recv(sock)
            raise subprocess.TimeoutExpired(argv, timeout) from None
        finally:
            sock.settimeout(None)
        for r in readers:
            r.join()
    # As subprocess.run(text=True) reads them: the locale's encoding, universal newlines.
    out, err = (io.TextIOWrapper(io.BytesIO(b"".join(chunks[fd]))).read() for fd in (out_r, err_r))
    return subprocess.CompletedProcess([sys.executable, *argv], code, out, err)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
