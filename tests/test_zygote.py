"""tests/zygote.py, the warm start of the binaries the tests run: a forked run ends as a fresh
interpreter's would (output, exit code, signals, atexit, timeouts), and the runs it cannot serve
faithfully get a fresh interpreter."""

import os
import subprocess
import sys

import binaries
import pytest
import zygote

pytestmark = pytest.mark.integration

_PROGRAMS = {
    "output": "import sys; print('out'); sys.stdout.write('a\\r\\nb\\rc\\n'); "
    "print('err', file=sys.stderr)",
    "exit code": "import sys; print('x'); sys.exit(3)",
    "exit message": "import sys; sys.exit('it went wrong')",
    "uncaught": "raise ValueError('boom')",
    "killed": "import os; print('before', flush=True); os.kill(os.getpid(), 9)",
    "atexit": "import atexit; atexit.register(lambda: print('at exit')); print('main')",
    "argv and path": "import sys; print(sys.argv, sys.path[0] == '')",
    "__main__": "X = 5; import __main__; print(__main__.X, __name__)",
}


@pytest.mark.skipif(not zygote.enabled(), reason="TFP_VAE_TEST_ZYGOTE=0")
@pytest.mark.parametrize("name", sorted(_PROGRAMS))
def test_a_forked_run_ends_as_a_fresh_interpreter_does(name):
    args = ("-c", _PROGRAMS[name], "one", "two")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    assert zygote.can_serve(args, env)
    fresh = binaries.python(*args, env=env, fresh=True)
    forked = binaries.python(*args, env=env)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    # A traceback names the file of the code; both say "<string>".
    assert forked.stderr == fresh.stderr


@pytest.mark.skipif(not zygote.enabled(), reason="TFP_VAE_TEST_ZYGOTE=0")
def test_a_forked_run_is_warm_and_gets_the_callers_directory_and_environment(tmp_path):
    code = "import os, sys; print('tensorflow' in sys.modules, os.getcwd(), os.environ['ZYGOTE_X'])"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", ZYGOTE_X="y")
    forked = zygote.run(("-c", code), env, timeout=60, cwd=str(tmp_path))
    assert forked.stdout.split() == ["True", str(tmp_path), "y"]
    fresh = binaries.python("-c", code, env=env, fresh=True)
    assert fresh.stdout.split()[0] == "False"


@pytest.mark.skipif(not zygote.enabled(), reason="TFP_VAE_TEST_ZYGOTE=0")
def test_pythonpath_entries_are_added_unless_they_hold_a_module_already_imported(tmp_path):
    (tmp_path / "users_module.py").write_text("WHERE = 'theirs'\n")
    code = "import sys, users_module; print('tensorflow' in sys.modules, users_module.WHERE)"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    path = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    with_theirs = dict(env, PYTHONPATH=path)
    assert zygote.run(("-c", code), with_theirs, timeout=60).stdout.split() == ["True", "theirs"]
    # A folder that holds a module the server has imported (tests/without_tensorflow's
    # sitecustomize, a tensorflow of the user's own) gets a fresh interpreter.
    shadow = os.path.join(binaries.ROOT, "tests", "without_tensorflow")
    (tmp_path / "tensorflow.py").write_text("raise ImportError('a stand-in')\n")
    for entry in (shadow, str(tmp_path)):
        shadowing = dict(env, PYTHONPATH=entry)
        assert zygote.run(("-c", "print(1)"), shadowing, timeout=60) is None
    result = binaries.python("-c", "import tensorflow", env=shadowing)
    assert result.returncode == 1 and "a stand-in" in result.stderr


@pytest.mark.skipif(not zygote.enabled(), reason="TFP_VAE_TEST_ZYGOTE=0")
def test_a_run_past_its_timeout_is_killed_and_the_next_one_runs():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with pytest.raises(subprocess.TimeoutExpired):
        zygote.run(("-c", "import time; time.sleep(60)"), env, timeout=1)
    assert zygote.run(("-c", "print('next')"), env, timeout=60).stdout == "next\n"


def test_what_the_imports_would_see_differently_gets_a_fresh_interpreter():
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    train = os.path.join(binaries.ROOT, "bin", "train")
    served = zygote.enabled()
    assert zygote.can_serve((train, "--steps=1"), base) is served
    assert zygote.can_serve((train, "--backend=tensorflow"), base) is served
    assert not zygote.can_serve((train, "--backend=jax"), base)
    assert not zygote.can_serve((train, "--backend", "jax"), base)
    for changed in (
        {"KERAS_BACKEND": "jax"},
        {"PYTHONHASHSEED": "1"},
        {"TF_CPP_MIN_LOG_LEVEL": "0"},
        {"CUDA_VISIBLE_DEVICES": ""},
    ):
        assert not zygote.can_serve((train,), dict(base, **changed)), changed


@pytest.mark.skipif(not zygote.enabled(), reason="TFP_VAE_TEST_ZYGOTE=0")
def test_a_binarys_refusal_is_the_same_forked_or_fresh():
    # A flag mistake is refused before TensorFlow starts, so the fresh run costs little.
    args = ("--no_such_flag=1",)
    fresh = binaries.run("train", *args, fresh=True)
    forked = binaries.run("train", *args)
    assert fresh.returncode != 0
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )
    assert sys.executable in forked.args
