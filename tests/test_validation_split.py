"""bin/train --validation_split: the val_* metrics come from held-out training examples, never
from the test set; the split defines the run (a resume with another is refused); the removed
--validation_examples is refused in one line."""

import json

import keras
import numpy as np
import pytest
from binaries import run as run_binary

import tfp_vae  # noqa: F401  (registers the classes for load_model)
from tfp_vae import data

pytestmark = pytest.mark.slow  # bin/train runs on a small npz.

SMALL = (
    "--z_dim=3",
    "--hidden=16",
    "--batch_size=32",
    "--steps_per_epoch=10",
    "--learning_rate=0.01",
    "--verbose=0",
    "--noxla",
)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """300 dark training images (pixels mostly 0 after binarisation) and 60 all-white test
    images: a model trained on the first scores the second far worse, so numbers computed on
    test images are recognisably not the validation ones."""
    path = tmp_path_factory.mktemp("data") / "dark_white.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 60, (300, 28, 28), dtype=np.uint8),
        y_train=np.arange(300) % 10,
        x_test=np.full((60, 28, 28), 255, np.uint8),  # 50 go to reconstructions.png.
        y_test=np.arange(60) % 10,
    )
    return path


def _one_line_error(result, expected):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr[-3000:]
    assert expected in lines[0], lines[0]
    return lines[0]


def test_validation_comes_from_held_out_training_examples_and_defines_the_run(npz, tmp_path):
    out = tmp_path / "run"
    args = (*SMALL, f"--dataset=npz:{npz}", f"--out_dir={out}")
    split_flags = ("--validation_split=50", "--validation_seed=3")
    result = run_binary("train", *args, "--steps=20", *split_flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation: 50 training examples held out" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["validation_examples"], metrics["validation_seed"]) == (50, 3)
    assert (metrics["train_examples"], metrics["test_examples"]) == (250, 60)
    val = metrics["validation_metrics"]
    assert set(val) >= {"nelbo", "kl", "rec"}

    # The last epoch's val_* are the final model's numbers on the 50 held-out training images
    # (evaluation is deterministic), and far from its numbers on the test images.
    split = data.split_validation(data.load_npz(str(npz)), 50, seed=3)
    model = keras.models.load_model(out / "model.keras")
    held_out = model.evaluate(data.eval_dataset(split.x_validation), verbose=0, return_dict=True)
    assert val["nelbo"] == pytest.approx(held_out["nelbo"], rel=1e-5, abs=1e-3)
    assert metrics["nelbo"] - val["nelbo"] > 100, (metrics["nelbo"], val)
    test_head = model.evaluate(data.eval_dataset(split.x_test), verbose=0, return_dict=True)
    assert test_head["nelbo"] == pytest.approx(metrics["nelbo"], rel=1e-5)

    # The split defines the run: another size, seed, or none is refused on --resume, naming it.
    resume = (*args, "--steps=30", "--resume")
    for flags, expected in [
        (["--validation_split=60", split_flags[1]], "--validation_split=60 (the run has 50)"),
        (["--validation_split=50", "--validation_seed=4"], "--validation_seed=4 (the run has 3)"),
        ([], "--validation_split=0 (the run has 50)"),
    ]:
        _one_line_error(run_binary("train", *resume, *flags), expected)
    # The same split given as a fraction (50 of 300) is the same run: it resumes.
    result = run_binary("train", *resume, "--validation_split=0.1667", "--validation_seed=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 30

    # A checkpoint from before the flag trained on every example: it resumes without a split only.
    for state in out.glob("checkpoints/step-*/state.json"):
        saved = json.loads(state.read_text())
        del saved["settings"]["validation_split"], saved["settings"]["validation_seed"]
        state.write_text(json.dumps(saved))
    _one_line_error(
        run_binary("train", *resume[:-2], "--steps=40", "--resume", "--validation_split=50"),
        "--validation_split=50 (the run has 0)",
    )


def test_bad_splits_and_the_removed_flag_are_one_line(npz, tmp_path):
    def train(*flags, small=SMALL):
        return run_binary(
            "train", *small, "--steps=1", f"--dataset=npz:{npz}", f"--out_dir={tmp_path}/o", *flags
        )

    line = _one_line_error(train("--validation_examples=100"), "--validation_split")
    assert "test images" in line
    _one_line_error(train("--validation_seed=2"), "--validation_seed goes with --validation_split")
    _one_line_error(train("--validation_split=300"), "holds out 300 of the 300 training examples")
    _one_line_error(train("--validation_split=2.5"), "neither a whole count")
    _one_line_error(train("--validation_split=-1"), "validation_split")
    # The semi-supervised labelled examples come from the examples trained on: an index file
    # naming a held-out one is refused.
    split = data.split_validation(data.load_npz(str(npz)), 100)
    held = split.validation_indices[0]
    indices = tmp_path / "labelled.txt"
    indices.write_text(" ".join(str(i) for i in [*split.train_indices[:20], held]))
    _one_line_error(
        train(
            "--model=ssvae",
            "--validation_split=100",
            f"--labelled_indices={indices}",
            small=("--verbose=0", "--noxla"),
        ),
        f"Training-set indices [{held}] are held out for validation",
    )
    assert not (tmp_path / "o").exists()
