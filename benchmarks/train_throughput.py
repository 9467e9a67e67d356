"""Training throughput of each model's recipe, with and without XLA, against the machine's
matmul peak and PyTorch implementations of the VAE and SSVAE recipes, all measured in one run.

  python benchmarks/train_throughput.py --steps=300 --output_json=runs/bench_train.json

For every recipe it times `--steps` steps of model.fit (the fastest of --repeats runs, after a
warm-up that traces and compiles) in three settings: the XLA-compiled fused update with 25 steps per
execution (the binaries' default for every model), the plain graph with 25 steps per
execution, and the plain graph one step per execution (Keras' default).
It reports steps/s, examples/s and achieved FLOP/s. FLOPs are counted from the Dense
layers: forward multiply-adds x 2 x 3 (forward + the two backward matmuls), for the rows each
network sees per step. The peak is a large float32 matmul timed in the same run. The PyTorch peer
(optional: `pip install -e .[bench]`) trains the same VAE recipe (same MLPs, init, Adam, batch,
loss), and the PyTorch M2 (benchmarks/torch_m2.py, the course's loss) is the SSVAE's peer; both
are skipped with a note when torch is not installed. Each recipe's ratio is to its own peer.
"""

import itertools
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from peak import dense_macs, matmul_peak_flops  # benchmarks/peak.py

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "steps",
    300,
    "Timed steps per configuration (a multiple of 25, the steps per execution).",
    lower_bound=25,
)
flags.DEFINE_integer(
    "repeats",
    5,
    "Timed runs per configuration; the fastest is reported (and the median).",
    lower_bound=1,
)
flags.register_validator("steps", lambda v: v % 25 == 0, "--steps must be a multiple of 25.")
flags.DEFINE_list(
    "models",
    ["vae", "gmvae", "iwae10", "ssvae", "ssvae_tiled"],
    "Recipes to time (ssvae_tiled: the SSVAE's label enumeration by tiling; best_mnist: the "
    "settings of the best MNIST model, not in the default list).",
)
flags.DEFINE_bool(
    "xla",
    True,
    "Also time each recipe with jit_compile=True (the XLA-compiled "
    "fused update, the pixel and label checks outside it).",
)
flags.DEFINE_bool("torch", True, "Time the PyTorch VAE peer if torch is importable.")
flags.DEFINE_string("output_json", None, "Where to write the results.")

BATCH = 97


# The VAE family's settings: name -> (model, constructor arguments, batch). best_mnist is the
# best MNIST model's (docs/results.md#the-best-mnist-model).
RECIPES = {
    "vae": ("vae", {}, BATCH),
    "gmvae": ("gmvae", {"k": 500}, BATCH),
    "iwae10": ("vae", {"objective": "iwae", "iw": 10}, BATCH),
    "best_mnist": (
        "gmvae",
        {"k": 500, "z_dim": 50, "hidden": (500, 500), "objective": "iwae", "iw": 3},
        100,
    ),
}


def recipe(name):
    """(model, dataset, training FLOPs per step) for a recipe name: vae, gmvae, iwae10,
    best_mnist (the settings of the best MNIST model), ssvae
    (the factorised label enumeration) or ssvae_tiled (every label's pass tiles x, as before the
    factorisation: the same bound, see tests/test_ssvae.py)."""
    import keras
    import numpy as np

    from tfp_vae import data, models, semisupervised

    try:
        mnist = data.load(download=False)
        x_train, y_train = mnist.x_train, mnist.y_train
    except data.DataError:  # Timing does not depend on the pixels.
        rng = np.random.default_rng(0)
        x_train = rng.integers(0, 256, (60000, 28, 28), np.uint8)
        y_train = np.arange(60000) % 10
    keras.utils.set_random_seed(0)
    if name in ("ssvae", "ssvae_tiled"):
        model = models.SSVAE()
        model.factorise_labels = name == "ssvae"
        ds = semisupervised.make_train_dataset(x_train, y_train, batch_size=BATCH)
        labelled = 100
        rows_gen = 10 * BATCH + labelled  # Every label enumerated for the unlabelled batch.
        # FLOPs of the tiled pass for both, so GFLOP/s compares the same work (the factorised
        # pass skips 9 of the 10 first-layer products of the unlabelled encoder's input).
        macs = (dense_macs(model.encoder) + dense_macs(model.decoder)) * rows_gen + dense_macs(
            model.classifier
        ) * (BATCH + labelled)
        examples = BATCH + labelled
    else:
        model_name, kwargs, batch = RECIPES[name]
        model = models.MODELS[model_name](**kwargs)
        ds = data.train_dataset(x_train, batch, seed=0)
        samples = model.iw if model.objective == "iwae" else 1
        macs = dense_macs(model.encoder) * batch + dense_macs(model.decoder) * batch * samples
        if isinstance(model, models.GMVAE):
            # The matmul-form mixture density, for each of the samples.
            macs += 2 * model.z_dim * model.k * batch * samples
        examples = batch
    return model, ds, 6.0 * macs, examples


def time_keras(name, jit, steps_per_execution, steps):
    import keras

    model, ds, flops, examples = recipe(name)
    model.compile(
        keras.optimizers.Adam(1e-3), jit_compile=jit, steps_per_execution=steps_per_execution
    )
    # Trace and compile outside the clock.
    model.fit(ds, steps_per_epoch=2 * steps_per_execution, epochs=1, verbose=0)
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return rates(times, steps, examples, flops)


def rates(times, steps, examples, flops):
    """Throughput of the fastest of the repeated runs, and the median's steps/s.

    On 2 cores the repeats are bimodal (the slow mode is about half the fast one, for PyTorch
    too; contention between thread pools is the likely cause, not confirmed), so the fastest run
    measures the code and the median shows the spread."""
    import statistics

    seconds = min(times)
    return {
        "steps_per_s": steps / seconds,
        "examples_per_s": steps * examples / seconds,
        "flops_per_s": steps * flops / seconds,
        "median_steps_per_s": steps / statistics.median(times),
    }


# (label, jit_compile, steps_per_execution). The first is the binaries' default for the VAE
# family: the XLA-compiled fused update (pixel checks outside XLA), 25 steps per execution.
CONFIGS = [("xla, 25/exec", True, 25), ("graph, 25/exec", False, 25), ("graph, 1/exec", False, 1)]


def time_torch_vae(steps):
    """The VAE recipe in PyTorch: the peer the issue compares against."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))  # PyTorch's default init, as in our recipe.
            if i < len(sizes) - 2:
                layers.append(nn.ELU())
        return nn.Sequential(*layers)

    enc, dec = mlp([784, 300, 300, 20]), mlp([10, 300, 300, 784])
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    images = torch.from_numpy(np.random.default_rng(0).random((60000, 784), np.float32))

    def step(i):
        idx = torch.randint(0, 60000, (BATCH,))
        x = torch.bernoulli(images[idx])
        h = enc(x)
        mean, pre = h[:, :10], h[:, 10:]
        var = nn.functional.softplus(pre) + 1e-8
        z = mean + var.sqrt() * torch.randn_like(mean)
        logits = dec(z)
        rec = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = 0.5 * (var + mean**2 - 1 - var.log()).sum(-1)
        loss = (rec + kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(20):
        step(i)
    times = []
    for _ in range(FLAGS.repeats):  # As for ours.
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        times.append(time.perf_counter() - start)
    macs = (784 * 300 + 300 * 300 + 300 * 20 + 10 * 300 + 300 * 300 + 300 * 784) * BATCH
    return dict(rates(times, steps, BATCH, 6.0 * macs), torch_version=torch.__version__)


def time_torch_m2(steps):
    """The SSVAE recipe's step in PyTorch (benchmarks/ssvae_torch_peer.py's model: the same
    networks and init, the course's loss, which has no labelled bound): 97 unlabelled images
    with every label enumerated plus the 100 labelled ones through the classifier."""
    import numpy as np
    import torch

    from torch_m2 import build_peer  # benchmarks/torch_m2.py

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    x_u = torch.from_numpy(rng.random((60000, 784), np.float32))
    x_l = torch.from_numpy(rng.random((100, 784), np.float32))
    y_l = torch.from_numpy(np.arange(100) % 10)
    step = build_peer(x_u, x_l, y_l)
    for _ in range(20):
        step()
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - start)
    # The peer's work: classifier on B + L rows, encoder and decoder on K * B rows.
    mlp = lambda sizes: sum(a * b for a, b in itertools.pairwise(sizes))  # noqa: E731
    macs = (
        mlp([784, 300, 300, 10]) * (BATCH + 100)
        + (mlp([794, 300, 300, 128]) + mlp([74, 300, 300, 784])) * 10 * BATCH
    )
    return dict(rates(times, steps, BATCH + 100, 6.0 * macs), torch_version=torch.__version__)


def main(argv):
    del argv
    from tfp_vae.cli import common

    peak = matmul_peak_flops()
    results = {
        "matmul_peak_gflops": peak / 1e9,
        "batch": {name: RECIPES.get(name, (None, None, BATCH))[2] for name in FLAGS.models},
        "steps": FLAGS.steps,
        "cpu_count": os.cpu_count(),
        "recipes": {},
    }
    for name in FLAGS.models:
        for label, jit, spe in CONFIGS:
            if jit and not FLAGS.xla:
                continue
            key = f"{name} ({label})"
            try:
                r = time_keras(name, jit, spe, FLAGS.steps)
            # An XLA-incompatible op is a result to report, not a crash.
            except Exception as e:  # noqa: BLE001
                results["recipes"][key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                continue
            r["fraction_of_peak"] = r["flops_per_s"] / peak
            results["recipes"][key] = r
    if FLAGS.torch:
        try:
            r = time_torch_vae(FLAGS.steps)
            r["fraction_of_peak"] = r["flops_per_s"] / peak
            results["recipes"]["vae (pytorch peer)"] = r
        except ImportError:
            results["torch"] = "not installed: pip install -e .[bench]"
        if any(name.startswith("ssvae") for name in FLAGS.models):
            try:
                r = time_torch_m2(FLAGS.steps)
                r["fraction_of_peak"] = r["flops_per_s"] / peak
                results["recipes"]["ssvae (pytorch M2 peer)"] = r
            except ImportError:
                pass
    peers = {
        "vae": results["recipes"].get("vae (pytorch peer)"),
        "ssvae": results["recipes"].get("ssvae (pytorch M2 peer)"),
    }
    rows = []
    for key, r in results["recipes"].items():
        if "error" in r:
            rows.append([key, "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        # Each recipe against its own peer: the SSVAE's against the M2 peer, the recipes of the
        # VAE family the VAE's; best_mnist (other sizes and batch) has none.
        peer = (
            None
            if key.startswith("best_mnist")
            else peers["ssvae" if key.startswith("ssvae") else "vae"]
        )
        if peer:
            r["ratio_to_pytorch_peer"] = r["steps_per_s"] / peer["steps_per_s"]
        rows.append(
            [
                key,
                round(r["steps_per_s"], 1),
                round(r["median_steps_per_s"], 1),
                round(r["examples_per_s"]),
                round(r["flops_per_s"] / 1e9, 1),
                f"{100 * r['fraction_of_peak']:.1f}%",
                f"{r['ratio_to_pytorch_peer']:.2f}x" if peer else "-",
            ]
        )
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({os.cpu_count()} CPUs)")
    print(
        common.format_table(
            rows,
            [
                "recipe",
                "steps/s",
                "median",
                "examples/s",
                "GFLOP/s",
                "of peak",
                "vs its PyTorch peer",
            ],
        )
    )
    print(json.dumps(results))
    if FLAGS.output_json:
        common.write_json(FLAGS.output_json, results)


if __name__ == "__main__":
    app.run(main)
