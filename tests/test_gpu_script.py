"""benchmarks/gpu.sh, the GPU runs on Keras' JAX backend, run here at its tiny size (--dry_run,
on the CPU): the same commands (the speed table beside the PyTorch peer and the peak, M1, M1+M2
with large batches and the square-root rule, the best MNIST model and its IWAE evaluation), the
same outputs, the merge of results.json across calls and the one-line refusals; and
benchmarks/train_throughput.py's refusals of flags that cannot take effect."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.sh")
THROUGHPUT = os.path.join(ROOT, "benchmarks", "train_throughput.py")


# On PYTHONPATH, it makes every process of the script start as on the GPU machine, without TF.
WITHOUT_TF = os.path.join(ROOT, "tests", "without_tensorflow")


def _run(*args, data_dir=None, timeout=600):
    env = dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([WITHOUT_TF] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("OUT", None)
    if data_dir is not None:
        env["TFP_VAE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        ["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


@pytest.mark.slow
def test_dry_run_writes_every_output_and_merges_the_results(small_mnist_dir, tmp_path):
    out = tmp_path / "gpu"
    parts = ("--parts", "speed,m1,m1m2,best", "--seeds", "0", "--out", str(out))
    result = _run("--dry_run", *parts, data_dir=small_mnist_dir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("m1", "m1m2_s0", "best_mnist"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["backend"] == "jax" and metrics["dtype_policy"] == "mixed_bfloat16"
        assert metrics["steps"] == 10
        assert (out / name / "model.keras").is_file() and (out / f"{name}.log").is_file()
    m1m2 = json.loads((out / "m1m2_s0" / "metrics.json").read_text())
    # The square-root rule at batch 200: 1e-3 * sqrt(200 / 97).
    assert abs(m1m2["learning_rate"] - 1e-3 * (200 / 97) ** 0.5) < 1e-6
    assert f"m1m2_s0: test accuracy {100 * m1m2['accuracy']:.2f}%" in result.stdout
    # The cosine schedule ends at 0.
    best = json.loads((out / "best_mnist" / "metrics.json").read_text())
    assert best["learning_rate"] < 1e-9 and best["model"] == "gmvae"
    results = json.loads((out / "results.json").read_text())
    assert {n: r["status"] for n, r in results["runs"].items()} == dict.fromkeys(
        ("m1", "m1m2_s0", "best_mnist"), "finished"
    )
    assert results["runs"]["best_mnist"]["iwae"]["niwae_10"] > 0
    assert results["m1m2_summary"]["seeds"] == 1
    speed = results["speed"]
    assert speed["matmul_peak_gflops"] > 0 and list(speed["backends"]) == ["jax"]
    rows = {k for k in speed["recipes"] if k.startswith("jax: vae, batch ")}
    assert len(rows) == 4  # Batches 97 and 500, 1 and 5 steps per execution.
    if "torch_version" in speed:  # The peer (pip install -e .[bench]) at both batches.
        for b in (97, 500):
            assert speed["recipes"][f"pytorch: vae peer, batch {b}"]["steps_per_s"] > 0
            assert speed["recipes"][f"jax: vae, batch {b} (jit, 5/exec)"]["ratio_to_pytorch_peer"]
    assert "float32 matmul peak" in result.stdout and "vs its PyTorch peer" in result.stdout
    # The same parts again are refused in one line, before anything runs, and lose nothing.
    again = _run("--dry_run", *parts)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "m1 exists; pass --resume" in again.stderr
    # With --resume a finished run is kept; results.json keeps every earlier entry.
    kept = _run("--dry_run", "--resume", "--parts", "m1", "--out", str(out))
    assert kept.returncode == 0, kept.stderr
    assert "m1: kept" in kept.stdout
    merged = json.loads((out / "results.json").read_text())
    assert len(merged["calls"]) == 2 and merged["speed"] == results["speed"]
    assert set(merged["runs"]) == {"m1", "m1m2_s0", "best_mnist"}
    assert merged["runs"]["m1"]["status"] == "finished"


def test_bad_arguments_are_refused_in_one_line(tmp_path):
    (tmp_path / "m1").mkdir()
    for args, message in [
        (("--parts", "speed,m3"), "unknown part 'm3'"),
        (("--seed", "0"), "unknown argument --seed"),
        (("--out",), "--out needs a value"),
        (("--seeds", "0 x", "--out", str(tmp_path / "o")), "whole numbers"),
        (("--minutes", "0"), "--minutes must be"),
        (("--wheels", str(tmp_path)), "holds no .whl files"),
        (("--parts", "m1", "--out", str(tmp_path)), "m1 exists; pass --resume"),
        (("--parts", "m1m2", "--out", str(tmp_path / "o")), "m1m2 needs M1's finished run"),
    ]:
        result = _run(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_train_throughput_refuses_flags_that_cannot_take_effect():
    for args, message in [
        (["--backends=mxnet"], "'mxnet' is not a Keras backend"),
        (["--backends=jax", "--steps=30"], "--steps=30 must be a multiple"),
        (["--backends=jax", "--xla"], "--xla/--noxla picks TensorFlow's settings"),
        (["--backends=tensorflow", "--jax_steps_per_execution=5"], "times JAX"),
        (["--models=ssvae", "--batch=500"], "--batch sizes the VAE family"),
        (["--models=foo"], "unknown recipe 'foo'"),
    ]:
        result = subprocess.run(
            [sys.executable, THROUGHPUT, *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith("ERROR: ") and message in result.stderr, result.stderr
