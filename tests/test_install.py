"""tfp_vae installed, not only checked out: the MNIST copy shipped in the package (its checksums),
where `tfp_vae.pretrained` looks, and `pip install .` (not editable) into a temporary folder,
used from outside the checkout with nothing set.

The install test is marked `slow` (about 40 s on the shared 2-core CPU: a 90 MB wheel built and
unpacked, then two fresh processes that import TensorFlow); it installs with --no-deps and
--no-build-isolation, so it needs no network and leaves TensorFlow where it is.
"""

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from tfp_vae import data, pretrained

pytestmark = pytest.mark.unit  # The pip install at the end is slow.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVEDMODELS = os.path.join(ROOT, "savedmodels")
SHIPPED_MNIST = os.path.join(ROOT, "tfp_vae", "datasets", "mnist")

# The SHA-256 of the published MNIST IDX files, uncompressed (header included), as LeCun's site
# serves them; independent of the README's table and of data.KNOWN_DATASETS (array digests).
PUBLISHED_IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def sha256(blob):
    return hashlib.sha256(blob).hexdigest()


def files_under(folder):
    """{path relative to folder: size} of every file below it."""
    out = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            out[os.path.relpath(path, folder)] = os.path.getsize(path)
    return out


# --------------------------------------------------------------------------------------------
# The shipped MNIST


def test_shipped_mnist_is_the_published_one_and_matches_its_readme():
    with open(os.path.join(SHIPPED_MNIST, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = {
        name: (gz, raw)
        for name, gz, raw in re.findall(
            r"^\| (\S+\.gz) \| ([0-9a-f]{64}) \| ([0-9a-f]{64}) \|$", readme, re.M
        )
    }
    assert sorted(table) == sorted(stem + ".gz" for stem in PUBLISHED_IDX_SHA256)
    # Each file whole, or in parts of at most 5 MiB (no file of the repository may pass that).
    shipped = []
    for name in table:
        parts = data.split_parts(os.path.join(SHIPPED_MNIST, name))
        shipped += [os.path.basename(p) for p in parts] if parts else [name]
    assert sorted(os.listdir(SHIPPED_MNIST)) == sorted([*shipped, "README.md"])
    assert all(os.path.getsize(os.path.join(SHIPPED_MNIST, n)) <= 5 * 2**20 for n in shipped)
    for stem, published in PUBLISHED_IDX_SHA256.items():
        path = os.path.join(SHIPPED_MNIST, stem + ".gz")
        blob = b"".join(open(p, "rb").read() for p in data.split_parts(path) or [path])
        raw = gzip.decompress(blob)
        assert sha256(raw) == published, stem
        assert table[stem + ".gz"] == (sha256(blob), published), stem
        array = data.read_idx(os.path.join(SHIPPED_MNIST, stem + ".gz"))
        key = next(k for k, s in data._IDX_FILES.items() if s == stem)
        assert sha256(array.tobytes()) == data.KNOWN_DATASETS["mnist"][key], stem
    # The terms travel with the files.
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme and "Cortes" in readme


def test_shipped_mnist_is_where_data_looks():
    assert data.SHIPPED_DATASETS == os.path.dirname(SHIPPED_MNIST)
    places = data.candidate_dirs("mnist")
    assert places[-1] == ("shipped with tfp_vae", SHIPPED_MNIST)
    assert all(folder != SHIPPED_MNIST for _, folder in data.candidate_dirs("fashion_mnist"))


# --------------------------------------------------------------------------------------------
# Where tfp_vae.pretrained looks


def test_pretrained_reads_the_repository_folder_in_a_checkout(monkeypatch):
    monkeypatch.delenv(pretrained.ENV_VAR, raising=False)
    assert pretrained.directory() == SAVEDMODELS
    entry = pretrained.list()[0]
    assert entry["keras"] == os.path.join(SAVEDMODELS, entry["name"] + ".keras")


def test_pretrained_env_var_wins_and_is_never_passed_over(monkeypatch, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "index.json").write_text(json.dumps({"models": [{"name": "x"}]}))
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "mine"))
    assert pretrained.names() == ["x"]
    assert pretrained.list()[0]["savedmodel"] == str(tmp_path / "mine" / "x")
    # A folder without index.json: a one-line error naming it, not the repository's models.
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as info:
        pretrained.list()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "empty") in message
    assert SAVEDMODELS not in message


def test_pretrained_error_names_every_place(monkeypatch, tmp_path):
    monkeypatch.delenv(pretrained.ENV_VAR, raising=False)
    fake = tmp_path / "site-packages" / "tfp_vae" / "pretrained.py"
    monkeypatch.setattr(pretrained, "__file__", str(fake))
    with pytest.raises(FileNotFoundError) as info:
        pretrained.load("vae")
    message = str(info.value)
    assert "\n" not in message
    assert str(fake.parent / "savedmodels") in message
    assert str(tmp_path / "site-packages" / "savedmodels") in message


# --------------------------------------------------------------------------------------------
# pip install . into a temporary folder


CHECK_INSTALLED = textwrap.dedent("""
    import json, os, sys
    target, checkout, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    import tfp_vae
    from tfp_vae import data, pretrained
    out = {"file": tfp_vae.__file__}
    out["checkout_on_path"] = [p for p in sys.path if os.path.abspath(p or ".") == checkout]
    data.DEBIAN_DATASETS = os.path.join(os.getcwd(), "no-debian-datasets")  # Whatever is there.
    ds = data.load("mnist", download=False)
    out["mnist"] = [ds.source, ds.identified_as, list(ds.x_train.shape), list(ds.x_test.shape)]
    out["keras_cache"] = os.listdir(data._keras_cache_dir()) if os.path.isdir(
        data._keras_cache_dir()) else []
    out["pretrained"] = [(e["name"], e["keras"], e["savedmodel"]) for e in pretrained.list()]
    model = pretrained.load("vae")
    out["vae"] = [type(model).__name__, model.compiled]
    out["signatures"] = sorted(pretrained.load_savedmodel("vae").signatures)
    print(json.dumps(out))
""")


def _installed_env(home):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", data.ENV_VAR, pretrained.ENV_VAR, "KERAS_HOME")
    }
    env.update(HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _copy_source(dest):
    """The checkout's files as a clean source tree: pip builds in place (build/, *.egg-info)."""
    skip_top = {".git", ".venv", "build", "dist", "runs", "tmp", ".pytest_cache"}

    def ignore(folder, names):
        top = os.path.abspath(folder) == ROOT
        return [
            n
            for n in names
            if (top and n in skip_top) or n == "__pycache__" or n.endswith(".egg-info")
        ]

    shutil.copytree(ROOT, dest, ignore=ignore)
    shutil.rmtree(os.path.join(dest, "docs", "api"), ignore_errors=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Setuptools is replacing distutils")  # find_spec("setuptools")
def test_pip_install_works_outside_the_checkout(tmp_path):
    for module in ("pip", "setuptools", "wheel"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: cannot build without network")
    src, target, home, work = (tmp_path / d for d in ("src", "target", "home", "work"))
    for folder in (home, work):
        folder.mkdir()
    _copy_source(src)
    env = _installed_env(home)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--no-cache-dir", "--quiet", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    shutil.rmtree(src)
    installed = target / "tfp_vae"
    # Every file of savedmodels/ and of the shipped MNIST, byte for byte in size.
    assert files_under(installed / "savedmodels") == files_under(SAVEDMODELS)
    assert files_under(installed / "datasets" / "mnist") == files_under(SHIPPED_MNIST)

    with open(os.path.join(SAVEDMODELS, "index.json")) as f:
        names = [entry["name"] for entry in json.load(f)["models"]]
    env["PYTHONPATH"] = str(target)
    run = subprocess.run(
        [sys.executable, "-c", CHECK_INSTALLED, str(target), ROOT, json.dumps(names)],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["file"] == str(installed / "__init__.py")
    assert out["checkout_on_path"] == []
    mnist_dir = str(installed / "datasets" / "mnist")
    assert out["mnist"] == [mnist_dir, "mnist", [60000, 28, 28], [10000, 28, 28]]
    assert out["keras_cache"] == []
    assert out["pretrained"] == [
        [n, str(installed / "savedmodels" / (n + ".keras")), str(installed / "savedmodels" / n)]
        for n in names
    ]
    assert out["vae"] == ["VAE", True]
    assert "log_likelihood" in out["signatures"], out["signatures"]

    script = target / "bin" / "tfp_vae_train"
    helped = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=env, cwd=work, timeout=600
    )
    # absl's --help exits with status 1 by design; the text says the script ran.
    assert "Traceback" not in helped.stderr, helped.stderr[-3000:]
    assert helped.stdout.startswith("Trains a model") and "--steps" in helped.stdout
    for name in ("evaluate", "export", "sample", "plot"):
        assert os.access(target / "bin" / f"tfp_vae_{name}", os.X_OK), name
