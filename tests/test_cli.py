"""The absl binaries, run as a user would: bin/train, bin/evaluate, bin/export."""

import json
import os
import re

import pytest
from binaries import ROOT
from binaries import run as run_binary

from tfp_vae import data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_binary(
        "train",
        "--model=gmvae",
        "--k=5",
        "--steps=60",
        "--steps_per_epoch=30",
        "--validation_split=100",
        "--verbose=0",
        f"--out_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_train_writes_everything(trained_run):
    out, result = trained_run
    for name in (
        "model.keras",
        "metrics.json",
        "samples.png",
        "reconstructions.png",
        "checkpoints/step-000000060/state.json",
        "checkpoints/step-000000060/weights.weights.h5",
    ):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == 10000 and metrics["steps"] == 60
    assert metrics["backend"] == "tensorflow"  # --backend's default (conftest's KERAS_BACKEND).
    # --validation_split=100: held out of the 60,000 training images, not trained on.
    assert (metrics["validation_examples"], metrics["train_examples"]) == (100, 59900)
    assert metrics["validation_metrics"]["nelbo"] > 0
    assert abs(metrics["nelbo"] - metrics["kl"] - metrics["rec"]) < 1e-3
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(f.startswith("events") for _, _, fs in os.walk(out / "logs") for f in fs)
    assert "nelbo" in result.stdout


@pytest.mark.slow
def test_train_refuses_existing_run_then_resumes(trained_run):
    out, _ = trained_run
    refused = run_binary("train", "--model=gmvae", "--k=5", "--steps=60", f"--out_dir={out}")
    assert refused.returncode != 0 and "--resume" in refused.stderr
    resumed = run_binary(
        "train",
        "--model=gmvae",
        "--k=5",
        "--steps=90",
        "--steps_per_epoch=30",
        "--validation_split=100",
        "--verbose=0",
        "--resume",
        f"--out_dir={out}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 90
    # Resumed again with nothing left to train: the finished run's record stays as it is.
    record = (out / "metrics.json").read_bytes(), (out / "model.keras").stat().st_mtime_ns
    done = run_binary(
        "train",
        "--model=gmvae",
        "--k=5",
        "--steps=90",
        "--steps_per_epoch=30",
        "--validation_split=100",
        "--resume",
        f"--out_dir={out}",
    )
    assert done.returncode == 0 and "is complete: it has trained 90 steps" in done.stdout
    assert record == ((out / "metrics.json").read_bytes(), (out / "model.keras").stat().st_mtime_ns)


@pytest.mark.slow
def test_evaluate_and_export(trained_run, tmp_path):
    out, _ = trained_run
    report = tmp_path / "eval.json"
    result = run_binary(
        "evaluate", f"--model_path={out}", "--iw=1,20", "--examples=200", f"--output_json={report}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(report.read_text())
    assert values["test_examples"] == 200 and "niwae_20" in result.stdout
    # The bound tightens with more samples (200 examples average out the noise).
    assert values["niwae_20"] < values["niwae_1"]
    saved = tmp_path / "saved"
    assert run_binary("export", f"--model_path={out}", f"--export_dir={saved}").returncode == 0
    again = run_binary("export", f"--model_path={out}", f"--export_dir={saved}")
    assert again.returncode != 0 and "--overwrite" in again.stderr


@pytest.mark.parametrize("binary", ["train", "evaluate", "export", "sample", "plot"])
def test_help_explains_every_flag(binary):
    result = run_binary(binary, "--help")
    assert "Traceback" not in result.stderr  # absl's --help exits with status 1 by design.
    text = result.stdout
    module = {
        "sample": ["--model_path", "--output", "--rows", "--y", "--seed"],
        "train": [
            "--model",
            "--z_dim",
            "--beta",
            "--steps",
            "--batch_size",
            "--learning_rate",
            "--dataset",
            "--data_dir",
            "--out_dir",
            "--seed",
            "--resume",
            "--objective",
            "--iw",
            "--k",
            "--clip_norm",
        ],
        "evaluate": ["--model_path", "--iw", "--output_json", "--data_dir"],
        "export": ["--model_path", "--export_dir", "--overwrite"],
        "plot": ["--model_path", "--kind", "--output", "--dataset", "--examples"],
    }[binary]
    for flag in module:
        assert re.search(r"--(\[no\])?" + flag[2:] + ":", text), flag


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=resnet", "--out_dir=x"], "model"),
        (["--steps=-5", "--out_dir=x"], "steps"),
        (["--beta=abc", "--out_dir=x"], "beta"),
        (["--no_such_flag", "--out_dir=x"], "no_such_flag"),
        (["--steps_per_execution=7", "--out_dir=x"], "must divide --steps_per_epoch=1000"),
        (["--model=m1m2", "--out_dir=x"], "--m1_path"),
        (["--m1_path=runs/vae", "--out_dir=x"], "--m1_path"),
        (["--hidden=600,x", "--out_dir=x"], "--hidden must be positive integers"),
        (["--model=ssvae", "--hidden=600", "--out_dir=x"], "--hidden sets the VAE"),
        (["--labelled_batch_size=100", "--out_dir=x"], "--labelled_batch_size: --model=vae has no"),
        (["--labels_per_class=5", "--k=3", "--out_dir=x"], "--k, --labels_per_class: --model=vae"),
        (["--model=ssvae", "--labelled_batch_size=0", "--out_dir=x"], "labelled_batch_size"),
        (["--lr_scaling=linear", "--out_dir=x"], "lr_scaling"),
        (["--seed=-1", "--out_dir=x"], "--seed"),
        (["--seed=3000000000", "--out_dir=x"], "--seed"),
        (["--model=ssvae", "--label_seed=-1", "--out_dir=x"], "--label_seed"),
        (["--hidden=32", "--hidden=", "--out_dir=x"], "--hidden is empty"),
        (["--learning_rate=nan", "--out_dir=x"], "--learning_rate must be a finite number"),
        (["--clip_norm=0", "--out_dir=x"], "--clip_norm must be > 0"),
        ([], "out_dir"),
    ],
)
def test_bad_flags_give_a_one_line_error(args, expected):
    result = run_binary("train", *args)
    assert result.returncode == 1
    # One line: the reason, not a page of --help (nor TensorFlow's start-up lines).
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and expected in lines[0], lines


@pytest.mark.slow
def test_outputs_and_models_that_cannot_be_are_one_line(tmp_path):
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_text("not a model")
    for binary, args, expected in [
        (
            "sample",
            [f"--model_path={not_a_model}", f"--output={tmp_path}"],
            "is a directory; give a file name",
        ),
        (
            "sample",
            [f"--model_path={not_a_model}", f"--output={tmp_path}/s.png"],
            "is not a valid .keras file (truncated or empty?",
        ),
        (
            "export",
            [f"--model_path={tmp_path}", f"--export_dir={tmp_path}/e"],
            "is not a valid .keras file (truncated or empty?",
        ),
        (
            "evaluate",
            [f"--model_path={not_a_model}", f"--output_json={tmp_path}/no/r.json"],
            "does not exist",
        ),
    ]:
        result = run_binary(binary, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and expected in lines[0], lines


@pytest.mark.slow
def test_missing_data_names_every_place(tmp_path):
    result = run_binary("train", f"--data_dir={tmp_path}", "--steps=1", f"--out_dir={tmp_path}/o")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(tmp_path) in result.stderr and "train-images-idx3-ubyte.gz" in result.stderr
    env = {data.ENV_VAR: str(tmp_path / "nowhere"), "KERAS_HOME": str(tmp_path / "keras")}
    result = run_binary("evaluate", f"--model_path={tmp_path}", env_extra=env)
    assert result.returncode != 0 and "No saved model" in result.stderr


@pytest.mark.slow
def test_bad_labelled_indices_file_is_one_line(tmp_path):
    idx = tmp_path / "idx.txt"
    idx.write_text("0 1 2 3\n")  # Four examples cannot cover ten classes.
    result = run_binary(
        "train",
        "--model=ssvae",
        f"--labelled_indices={idx}",
        "--steps=1",
        f"--out_dir={tmp_path}/o",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no examples of class(es)" in result.stderr
    assert not os.path.exists(tmp_path / "o" / "checkpoints")


@pytest.mark.slow
def test_m1m2_on_a_trained_run(trained_run, tmp_path):
    """M2 on the features of the module's trained GMVAE: trains, reports accuracy, exports."""
    m1, _ = trained_run
    out = tmp_path / "m1m2"
    result = run_binary(
        "train",
        "--model=m1m2",
        f"--m1_path={m1}",
        "--active_threshold=0",
        "--steps=20",
        "--steps_per_epoch=10",
        "--validation_split=100",
        "--noxla",
        "--verbose=0",
        f"--out_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "m1m2" and 0 <= metrics["accuracy"] <= 1
    assert metrics["steps"] == 20 and metrics["nelbo"] > 0
    result = run_binary("export", f"--model_path={out}", f"--export_dir={tmp_path}/sm")
    assert result.returncode == 0, result.stderr[-3000:]
    # A threshold no unit passes, and an M1 that is not a VAE, are refused in one line.
    refused = run_binary(
        "train",
        "--model=m1m2",
        f"--m1_path={m1}",
        "--active_threshold=1000",
        "--steps=1",
        f"--out_dir={tmp_path}/none",
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--active_threshold=1000" in refused.stderr
    # An M1 that is not a VAE is refused in one line.
    refused = run_binary(
        "train", "--model=m1m2", f"--m1_path={out}", "--steps=1", f"--out_dir={tmp_path}/again"
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "m1 must be a trained VAE" in refused.stderr


@pytest.mark.slow
def test_sample_writes_grids(trained_run, tmp_path):
    out, _ = trained_run
    png = tmp_path / "s.png"
    result = run_binary("sample", f"--model_path={out}", f"--output={png}", "--rows=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = run_binary("sample", f"--model_path={out}", f"--output={png}", "--y=3")
    assert refused.returncode != 0 and "ssvae" in refused.stderr


@pytest.mark.slow
def test_sample_ssvae_style_grid(tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from tfp_vae.models import SSVAE

    model = SSVAE(z_dim=4, hidden=(16,), classifier_hidden=(16,))
    model.compile(keras.optimizers.Adam(), jit_compile=False)
    path = tmp_path / "ss.keras"
    model.save(path)
    png = tmp_path / "style.png"
    result = run_binary("sample", f"--model_path={path}", f"--output={png}", "--rows=3")
    assert result.returncode == 0, result.stderr[-3000:]
    image = tf.io.decode_png(png.read_bytes()).numpy()
    assert image.shape == (3 * 29 + 1, 10 * 29 + 1, 1)
    for args in (["--y=7"], ["--y=12"]):
        result = run_binary("sample", f"--model_path={path}", f"--output={png}", *args)
        assert (result.returncode == 0) == (args == ["--y=7"]), result.stderr[-2000:]
    assert np.any(image < 255)
    # A PDF, labelled by default (through matplotlib); an unknown extension is refused at once.
    pdf = tmp_path / "style.pdf"
    result = run_binary("sample", f"--model_path={path}", f"--output={pdf}", "--dpi=72")
    assert result.returncode == 0 and pdf.read_bytes()[:4] == b"%PDF", result.stderr[-2000:]
    for args, expected in (
        ([f"--output={tmp_path}/s.jpg"], "ending in .png, .pdf or .svg"),
        ([f"--output={png}", "--dpi=300"], "one pixel per image pixel"),
    ):
        result = run_binary("sample", f"--model_path={path}", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and expected in lines[0], lines


def test_sample_pdf_without_matplotlib_is_one_line(tmp_path):
    """Without matplotlib, a .pdf (or --labels) is refused in one line naming the extra."""
    (tmp_path / "matplotlib").mkdir()
    (tmp_path / "matplotlib" / "__init__.py").write_text("raise ImportError('not here')\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    result = run_binary(
        "sample",
        f"--model_path={tmp_path}/none.keras",
        f"--output={tmp_path}/s.pdf",
        env_extra={"PYTHONPATH": path},
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert 'pip install "tfp_vae[plots]"' in lines[0]


def test_build_model_takes_its_settings_as_arguments():
    """`cli.building.build_model` reads no global flag: the settings come as a dict."""
    from tfp_vae.cli import building as train

    settings = dict(
        model="gmvae",
        likelihood="bernoulli",
        seed=7,
        clip_norm=None,
        z_dim=3,
        hidden=["8"],
        arch="mlp",
        beta=1.0,
        objective="elbo",
        iw=1,
        k=4,
        learn_mixture_weights=False,
        gen_weight=1.0,
        class_weight=100.0,
        labelled_bound=True,
        m1_path=None,
        active_threshold=0.1,
        ema_momentum=None,
    )
    assert set(settings) == set(train.MODEL_FLAGS)
    model = train.build_model(None, settings, 2e-3, jit_compile=False)
    assert (type(model).__name__, model.z_dim, model.hidden, model.seed) == ("GMVAE", 3, (8,), 7)
    assert model.prior().components_distribution.batch_shape == [4]
    assert abs(float(model.optimizer.learning_rate) - 2e-3) < 1e-9


# ---- what a log file or a pipe receives ---------------------------------------------------------


def _unset_log_level():
    """The environment without TF_CPP_MIN_LOG_LEVEL (conftest sets it for the tests' own TF)."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


@pytest.mark.slow  # A training run through a pipe, ~15 s.
def test_piped_training_log_has_no_colour_codes_nor_tf_lines(tmp_path):
    """bin/train with stdout and stderr to pipes and TF_CPP_MIN_LOG_LEVEL unset: the default
    --verbose=1 writes one plain line an epoch, and stderr holds nothing (no cuInit error,
    oneDNN or cuDNN-factory line of TensorFlow's start-up)."""
    import subprocess
    import sys

    import numpy as np

    images = (np.random.default_rng(0).random((60, 28, 28)) * 255).astype(np.uint8)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=images, x_test=images)  # The PNGs show 50 test images.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "train"), "--model=vae", "--hidden=8",
         f"--dataset=npz:{npz}", "--steps=4", "--steps_per_epoch=2", "--batch_size=10",
         "--validation_split=10", f"--out_dir={tmp_path}/run"],
        capture_output=True, text=True, env=_unset_log_level(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\x1b[" not in result.stdout + result.stderr
    assert "\b" not in result.stdout and "Epoch 2/2" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow  # A binary started as its console script.
def test_console_script_is_quiet(tmp_path):
    """A console script of setup.cfg (`tfp_vae_sample`, written here as pip writes it) with
    TF_CPP_MIN_LOG_LEVEL unset prints only the binary's own line."""
    import subprocess
    import sys

    from tfp_vae.models import VAE

    VAE(z_dim=2, hidden=(8,)).save(tmp_path / "vae.keras")
    script = tmp_path / "tfp_vae_sample"
    script.write_text(
        f"import sys\nsys.path.insert(0, {ROOT!r})\n"
        "from tfp_vae.cli.sample import run\nsys.exit(run())\n"
    )
    png = tmp_path / "s.png"
    result = subprocess.run(
        [sys.executable, str(script), f"--model_path={tmp_path}/vae.keras", f"--output={png}"],
        capture_output=True, text=True, env=_unset_log_level(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "" and result.stdout == f"Wrote {png}\n"


def test_plain_stream_drops_ansi_escapes():
    import io

    from tfp_vae.cli import common

    out = io.StringIO()
    stream = common.PlainStream(out)
    text = "\x1b[1m10/10\x1b[0m \x1b[32m\u2501\x1b[0m - loss: 1.0\n"
    assert stream.write(text) == len(text)  # What was asked, as a stream answers.
    assert out.getvalue() == "10/10 \u2501 - loss: 1.0\n" and not stream.isatty()


def test_mistakes_that_need_no_model_are_said_before_tensorflow_starts(tmp_path):
    """A missing or broken model file, an --import that is nowhere, and train's run-directory and
    --validation_split mistakes: one line, and TensorFlow never imported (python -X importtime
    lists every import on stderr)."""
    import subprocess
    import sys
    import zipfile

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000000010").mkdir(parents=True)
    archive = tmp_path / "m.keras"  # What a .keras file looks like from outside, to get past it.
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
    for binary, args, expected in [
        ("sample", [f"--model_path={tmp_path / 'none'}", f"--output={tmp_path}/s.png"], "No saved"),
        ("evaluate", [f"--model_path={broken}"], "is not a valid .keras file"),
        ("export", [f"--model_path={run}", f"--export_dir={tmp_path}/e"], "No saved model"),
        ("plot", [f"--model_path={broken}", f"--output={tmp_path}/p.png"], "not a valid .keras"),
        (
            "sample",
            ["--import=nowhere", f"--model_path={archive}", f"--output={tmp_path}/s.png"],
            "no module named",
        ),
        ("train", [f"--out_dir={a_file}"], "is a file, not a directory"),
        ("train", [f"--out_dir={run}"], "already holds a training run; pass --resume"),
        ("train", ["--validation_split=2.5", f"--out_dir={tmp_path}/v"], "neither a whole count"),
    ]:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", os.path.join(ROOT, "bin", binary), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        errors = [line for line in result.stderr.splitlines() if not line.startswith("import ")]
        assert result.returncode == 1 and len(errors) == 1 and expected in errors[0], errors
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()[1:]}
        assert "tensorflow" not in imported and "keras" not in imported, (binary, args)
    assert not (tmp_path / "v").exists() and not (tmp_path / "e").exists()
