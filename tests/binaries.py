"""What the tests that run the binaries share: `run`, bin/<binary> in a fresh interpreter as a
user would run it (TensorFlow's C++ logging off, so that stderr holds only the binary's own
lines)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(binary, *args, env_extra=None, timeout=300):
    """`bin/<binary> *args` -> subprocess.CompletedProcess (text stdout and stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", binary), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
