"""What the tests that run the binaries share: `run`, bin/<binary> as a user would run it
(TensorFlow's C++ logging off, so that stderr holds only the binary's own lines), and `python`,
any `python ARGS` the same way.

A run is a child forked from an interpreter that has imported TensorFlow, TFP and Keras already
(tests/zygote.py: it saves each run 6-7 CPU-seconds of imports) where that cannot change what
the run does, and a fresh interpreter otherwise or when asked (`fresh=True`)."""

import os
import subprocess
import sys

import zygote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(*args, env=None, timeout=300, fresh=False, cwd=None):
    """`python *args` -> subprocess.CompletedProcess (text stdout and stderr); `env`, the whole
    environment, defaults to this one with TensorFlow's C++ logging off."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3") if env is None else env
    if not fresh and zygote.can_serve(args, env):
        forked = zygote.run(args, env, timeout, cwd=cwd)
        if forked is not None:
            return forked
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
    )


def run(binary, *args, env_extra=None, timeout=300, fresh=False):
    """`bin/<binary> *args` -> subprocess.CompletedProcess (text stdout and stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    return python(os.path.join(ROOT, "bin", binary), *args, env=env, timeout=timeout, fresh=fresh)
