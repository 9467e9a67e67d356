"""A pytest plugin that records each test's CPU time, for finding what makes the suite slow:

    PYTHONPATH=tests python -m pytest -p cpu_profile -n 3 --dist loadfile tests

Each test (setup, call and teardown) appends one JSON line to $CPU_PROFILE_DIR/<worker pid>.jsonl
(default: cpu_profile/ in the current directory): its node id, the CPU seconds of the pytest
process itself ("self") and of the subprocesses it waited for ("children", the binaries), and its
wall seconds. Wall time is contended by the other workers; CPU time much less so. The binaries
forked warm (tests/zygote.py) count in "children"; the imports of the process they fork from
(once per pytest process) count nowhere. Not loaded by default.
"""

import json
import os
import resource
import time

import pytest
import zygote


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    forked = zygote.CHILD_CPU  # the binaries forked for this process (tests/zygote.py)
    return own.ru_utime + own.ru_stime, waited.ru_utime + waited.ru_stime + forked


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own, waited = _cpu()
    start = time.time()
    yield
    own_after, waited_after = _cpu()
    folder = os.environ.get("CPU_PROFILE_DIR", "cpu_profile")
    os.makedirs(folder, exist_ok=True)
    record = {
        "id": item.nodeid,
        "self": round(own_after - own, 3),
        "children": round(waited_after - waited, 3),
        "wall": round(time.time() - start, 3),
    }
    with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
