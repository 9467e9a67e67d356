"""README.md's "## Your own model" example, run verbatim in a subprocess on real MNIST."""

import math
import os
import re

import binaries
import pytest

pytestmark = pytest.mark.unit

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
HEADING = "## Your own model"
MAX_LINES = 40


def readme_example():
    """The first ```python block after the heading (its lines, without the fences)."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert HEADING in text, f"README.md has no {HEADING!r} section."
    match = re.search(r"^```python\n(.*?)^```$", text.split(HEADING, 1)[1], re.S | re.M)
    assert match, f"No ```python block after {HEADING!r} in README.md."
    return match.group(1)


def test_example_is_short():
    code = readme_example()
    assert len(code.splitlines()) <= MAX_LINES, (
        f"The README example has {len(code.splitlines())} lines; at most {MAX_LINES}."
    )


@pytest.mark.slow
def test_example_runs(tmp_path):
    from tfp_vae import data

    data_dir = os.environ.get(data.ENV_VAR)  # Else the copy of MNIST shipped in the package.
    script = tmp_path / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    # TMPDIR: the example's tempfile.mkdtemp() lands under tmp_path, which pytest cleans up.
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **({data.ENV_VAR: os.path.abspath(data_dir)} if data_dir else {}),
        "TMPDIR": str(tmp_path),
    }
    run = binaries.python(str(script), cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, (
        f"The README example failed (exit {run.returncode}):\n"
        f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    found = re.search(r"^IWAE-10 on 1000 test images: (\S+) nats$", run.stdout, re.M)
    assert found, f"No IWAE line in the example's output:\n{run.stdout}"
    bound = float(found.group(1))
    # Measured with this script: untrained -1.0 nats, 1 epoch 252-433 (three init seeds),
    # 2 epochs (as written) 1107-1227, 10 epochs 2478. Positive: a density on [0, 1].
    assert math.isfinite(bound) and 500 < bound < 4000, bound
    assert "SavedModel encode: mean (8, 16) variance (8, 16)" in run.stdout, run.stdout
    assert list(tmp_path.iterdir()) != [script], "The example wrote nothing under TMPDIR."
    assert not (tmp_path / "vae.keras").exists(), "The example wrote to its working directory."
