"""The documentation runs: the README's "Python in 15 lines" and every `python runnable` block of
docs/*.md, each in its own Python process on real MNIST, and every relative link of README.md and
docs/*.md points at an existing file (and heading). The convention is in docs/design.md
("Runnable code blocks").

The blocks of one page run in order in one temporary working directory (a block may use what an
earlier one of its page wrote); the pages run in parallel, so the whole test takes about as long
as its slowest page.
"""

import concurrent.futures
import glob
import importlib.util
import os
import re
import subprocess

import binaries
import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README] + DOCS
DESIGN = os.path.join(ROOT, "docs", "design.md")
RUNNABLE = "python runnable"  # The info string that marks a block to run.
README_HEADING = "## Python in 15 lines"
README_MAX_LINES = 20
BLOCK_TIMEOUT = 300  # Seconds; a block takes 5-25 s on the shared 2-core CPU.
ENV_VAR = "TFP_VAE_DATA_DIR"  # tfp_vae.data.ENV_VAR, without importing TensorFlow here.
SHIPPED_MNIST = os.path.join(ROOT, "tfp_vae", "datasets", "mnist")  # data.SHIPPED_DATASETS'.

FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


def code_blocks(path):
    """[(line number of the opening fence, info string, code)] of every fenced block of a
    Markdown file (a block inside a longer fence, as in design.md's example, is not one)."""
    blocks, fence, start, lines = [], None, None, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f.read().splitlines(), 1):
            match = FENCE.match(line)
            if fence is None:
                if match:
                    fence, info, start, lines = match.group(1), match.group(2).strip(), number, []
            elif (
                match
                and match.group(1)[0] == fence[0]
                and len(match.group(1)) >= len(fence)
                and not match.group(2).strip()
            ):
                blocks.append((start, info, "\n".join(lines) + "\n"))
                fence = None
            else:
                lines.append(line)
    assert fence is None, f"{path}: the block opened at line {start} is never closed."
    return blocks


def runnable_blocks(path):
    return [(line, code) for line, info, code in code_blocks(path) if info == RUNNABLE]


def rel(path):
    return os.path.relpath(path, ROOT)


RUNNABLE_PAGES = [page for page in PAGES if runnable_blocks(page)]


def mnist_reason():
    """Why the runnable blocks cannot run here (None when MNIST is there): they read it as
    tfp_vae.data.load("mnist") does, from $TFP_VAE_DATA_DIR if set, else (here) the copy shipped
    in the package."""
    data_dir = os.environ.get(ENV_VAR)
    folders = [os.path.join(data_dir, "mnist"), data_dir] if data_dir else [SHIPPED_MNIST]
    for folder in folders:
        names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if (
            "mnist.npz" in names
            or {"train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"} & names
            or "train-images-idx3-ubyte.gz.part1of2" in names
        ):
            return None
    if data_dir:
        return f"No MNIST files in ${ENV_VAR}={data_dir}."
    return f"No MNIST files in {SHIPPED_MNIST} (the copy shipped in the package)."


def run_page(page, work_dir, backend=None):
    """Runs the page's runnable blocks in order in `work_dir` (under KERAS_BACKEND=`backend`
    when given); returns None, or the failure."""
    scripts = os.path.join(os.path.dirname(work_dir), "scripts")
    os.makedirs(scripts, exist_ok=True)
    os.makedirs(work_dir, exist_ok=True)
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TMPDIR": work_dir,
        **({ENV_VAR: os.path.abspath(os.environ[ENV_VAR])} if os.environ.get(ENV_VAR) else {}),
        # The tree under test, also when another copy of the package is installed.
        "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        **({"KERAS_BACKEND": backend} if backend else {}),
    }
    for line, code in runnable_blocks(page):
        script = os.path.join(scripts, f"line{line}.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        try:
            run = binaries.python(script, cwd=work_dir, env=env, timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"{rel(page)}, the block at line {line}: no exit within {BLOCK_TIMEOUT} s."
        if run.returncode != 0:
            return (
                f"{rel(page)}, the block at line {line} failed (exit {run.returncode}):\n"
                f"--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-3000:]}"
            )
    return None


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """page -> a future of `run_page`, all pages started at once (their processes are mostly
    single-threaded start-up and tracing, so they share the cores well)."""
    reason = mnist_reason()
    if reason:
        pytest.skip(reason)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(RUNNABLE_PAGES) + 1)
    futures = {
        page: pool.submit(
            run_page, page, str(tmp_path_factory.mktemp(os.path.basename(page)) / "work")
        )
        for page in RUNNABLE_PAGES
    }
    if importlib.util.find_spec("jax") is not None:  # design.md's models on JAX, beside them.
        futures[DESIGN, "jax"] = pool.submit(
            run_page, DESIGN, str(tmp_path_factory.mktemp("design-jax") / "work"), "jax"
        )
    yield futures
    pool.shutdown(wait=True)


def test_readme_example_is_marked_and_short():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert README_HEADING in text, f"README.md has no {README_HEADING!r} section."
    section = re.split(r"^## ", text.split(README_HEADING, 1)[1], flags=re.M)[0]
    blocks = [b for b in runnable_blocks(README) if b[1] in section]
    assert len(blocks) == 1, (
        f"README.md's {README_HEADING!r} needs one ```{RUNNABLE} block; found {len(blocks)}."
    )
    lines = len(blocks[0][1].splitlines())
    assert lines <= README_MAX_LINES, f"The README example has {lines} lines."


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=rel)
@pytest.mark.slow
def test_runnable_blocks(page, page_runs):
    failure = page_runs[page].result()
    assert failure is None, failure


@pytest.mark.slow
def test_design_models_run_on_jax(page_runs):
    """The models design.md shows how to write (a new prior, a new latent-variable model) train,
    evaluate, sample and save on Keras' JAX backend too, written once."""
    if (DESIGN, "jax") not in page_runs:
        pytest.skip("JAX is not installed (pip install -e .[jax])")
    failure = page_runs[DESIGN, "jax"].result()
    assert failure is None, failure


def test_some_docs_blocks_are_runnable():
    assert [p for p in RUNNABLE_PAGES if p != README], "No docs/*.md block is marked runnable."


# ---- links ---------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(path):
    """The file's text without its fenced blocks and inline code (no links there)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for start, _, code in code_blocks(path):
        for i in range(start - 1, start + len(code.splitlines()) + 1):
            lines[i] = ""
    return INLINE_CODE.sub("", "\n".join(lines))


def anchors(path):
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces
    as hyphens; a repeated one gets -1, -2, ...)."""
    seen, result = {}, set()
    for line in prose(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(f"{target} (no {rel(resolved)})")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {rel(resolved)})")
    assert not broken, f"{rel(page)} links to what is not there: {'; '.join(broken)}"
