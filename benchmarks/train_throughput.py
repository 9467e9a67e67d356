"""Training throughput of each model's recipe on each Keras backend, against the machine's
matmul peak and PyTorch implementations of the VAE and SSVAE recipes, all measured in one run.

  python benchmarks/train_throughput.py --steps=300 --output_json=runs/bench_train.json
  python benchmarks/train_throughput.py --backends=jax --models=vae --batch=97,4850 --steps=300

One Python process has one Keras backend, so this process measures the float32 matmul peak and
the PyTorch peers, and times each backend of --backends (default: every one importable,
tensorflow and jax) in a child process (this script under KERAS_BACKEND=<backend>, which writes
JSON that this process merges), then prints one table: a row per backend, recipe and setting,
each with its ratio to its PyTorch peer, beside the peak.

For every recipe it times `--steps` steps of model.fit (the fastest of --repeats runs, after a
warm-up that traces and compiles; the clock stops once the device has finished: JAX dispatches
asynchronously, so the timing waits on the weights). On TensorFlow, three settings: the
XLA-compiled fused update with 25 steps per execution (the binaries' default), the plain graph
with 25 steps per execution, and the plain graph one step per execution (Keras' default). On
JAX the step is always compiled (jit_compile=False runs it eagerly, op by op: not timed), at each
of --jax_steps_per_execution (per-step Python overhead matters on a GPU). It reports steps/s,
examples/s and achieved FLOP/s. FLOPs are counted from the Dense layers: forward multiply-adds
x 2 x 3 (forward + the two backward matmuls), for the rows each network sees per step. The
peak is a large float32 matmul timed in the same run, in TensorFlow when it is in --backends,
else JAX (on its default device, at its default precision, as Keras' Dense there). The PyTorch
peer (optional: `pip install -e .[bench]`; on CUDA when PyTorch sees a GPU, else the CPU) trains
the same VAE recipe (same MLPs, init, Adam, batch, loss), and the PyTorch M2
(benchmarks/torch_m2.py, the course's loss) is the SSVAE's peer; both are skipped with a note
when torch is not installed. Each recipe's ratio is to its own peer.
"""

import importlib.util
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# This process and each backend's child share the GPU: neither may take most of its memory up
# front (JAX preallocates 75% by default, TensorFlow all of it).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

from absl import app, flags

from peak import dense_macs, framework_device, matmul_peak_flops, torch_device  # benchmarks/

FLAGS = flags.FLAGS
BACKENDS = ("tensorflow", "jax")
flags.DEFINE_list(
    "backends",
    None,
    "Keras backends to time, each in its own process: tensorflow, jax (default: every one "
    "importable here).",
)
flags.DEFINE_integer(
    "steps",
    300,
    "Timed steps per configuration (a multiple of every steps per execution timed: 25 on "
    "TensorFlow, each of --jax_steps_per_execution on JAX).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "repeats",
    5,
    "Timed runs per configuration; the fastest is reported (and the median).",
    lower_bound=1,
)
flags.DEFINE_list(
    "models",
    ["vae", "gmvae", "iwae10", "ssvae", "ssvae_tiled"],
    "Recipes to time (ssvae_tiled: the SSVAE's label enumeration by tiling; best_mnist: the "
    "settings of the best MNIST model, not in the default list).",
)
flags.DEFINE_list(
    "batch",
    ["97"],
    "Batch sizes of the VAE family (vae, gmvae, iwae10) and of the PyTorch VAE peer, each "
    "timed, e.g. 97,4850; the SSVAE keeps the recipe's 97 + 100 labelled and best_mnist its 100.",
)
flags.DEFINE_bool(
    "xla",
    True,
    "TensorFlow: also time each recipe with jit_compile=True (the XLA-compiled fused update, "
    "the pixel and label checks outside it). JAX always compiles the step.",
)
flags.DEFINE_list(
    "jax_steps_per_execution",
    ["1", "25", "100"],
    "JAX: the steps per execution to time (Keras steps_per_execution).",
)
flags.DEFINE_bool("torch", True, "Time the PyTorch peers if torch is importable.")
flags.DEFINE_string("output_json", None, "Where to write the results.")
# The child's side: which backend this process times (set by the parent with KERAS_BACKEND).
flags.DEFINE_string("child_json", None, "Internal: time this process's backend, write JSON here.")

BATCH = 97  # The SSVAE recipe's unlabelled batch (and the VAE family's default).


# The VAE family's settings: name -> (model, constructor arguments, batch; None: --batch).
# best_mnist is the best MNIST model's (docs/results.md#the-best-mnist-model).
RECIPES = {
    "vae": ("vae", {}, None),
    "gmvae": ("gmvae", {"k": 500}, None),
    "iwae10": ("vae", {"objective": "iwae", "iw": 10}, None),
    "best_mnist": (
        "gmvae",
        {"k": 500, "z_dim": 50, "hidden": (500, 500), "objective": "iwae", "iw": 3},
        100,
    ),
}
SSVAE_RECIPES = ("ssvae", "ssvae_tiled")


def recipe_batch(name, batch):
    """The unlabelled batch a recipe is timed at (`batch`: one of --batch)."""
    if name in SSVAE_RECIPES:
        return BATCH
    return RECIPES[name][2] or batch


def batches():
    return [int(b) for b in FLAGS.batch]


def timings():
    """(recipe, batch) of every recipe of --models at every batch it is timed at."""
    out = []
    for name in FLAGS.models:
        for b in batches():
            if (name, recipe_batch(name, b)) not in out:
                out.append((name, recipe_batch(name, b)))
    return out


def recipe(name, batch=BATCH):
    """(model, dataset, training FLOPs per step, examples per step) for a recipe name: vae,
    gmvae, iwae10 (at `batch`), best_mnist (the settings of the best MNIST model), ssvae (the
    factorised label enumeration) or ssvae_tiled (every label's pass tiles x, as before the
    factorisation: the same bound, see tests/test_ssvae.py). The dataset is the active
    backend's pipeline (`data.train_dataset`, `semisupervised.make_train_dataset`: tf.data on
    TensorFlow, the NumPy streams of `tfp_vae.data_numpy` on JAX), as the binaries feed it."""
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
    batch = recipe_batch(name, batch)
    if name in SSVAE_RECIPES:
        model = models.SSVAE()
        model.factorise_labels = name == "ssvae"
        ds = semisupervised.make_train_dataset(x_train, y_train, batch_size=batch)
        labelled = 100
        rows_gen = 10 * batch + labelled  # Every label enumerated for the unlabelled batch.
        # FLOPs of the tiled pass for both, so GFLOP/s compares the same work (the factorised
        # pass skips 9 of the 10 first-layer products of the unlabelled encoder's input).
        macs = (dense_macs(model.encoder) + dense_macs(model.decoder)) * rows_gen + dense_macs(
            model.classifier
        ) * (batch + labelled)
        examples = batch + labelled
    else:
        model_name, kwargs, _ = RECIPES[name]
        model = models.MODELS[model_name](**kwargs)
        ds = data.train_dataset(x_train, batch, seed=0)
        samples = model.iw if model.objective == "iwae" else 1
        macs = dense_macs(model.encoder) * batch + dense_macs(model.decoder) * batch * samples
        if isinstance(model, models.GMVAE):
            # The matmul-form mixture density, for each of the samples.
            macs += 2 * model.z_dim * model.k * batch * samples
        examples = batch
    return model, ds, 6.0 * macs, examples


def wait_for_device(model):
    """Returns once the device has computed every weight: JAX dispatches asynchronously, so
    `fit` may return before its last steps have run (TensorFlow's `fit` waits already)."""
    import keras

    if keras.config.backend() == "jax":
        import jax

        jax.block_until_ready([v.value for v in model.variables])
    else:
        keras.ops.convert_to_numpy(model.optimizer.iterations)


def time_keras(name, jit, steps_per_execution, steps, batch):
    import keras

    model, ds, flops, examples = recipe(name, batch)
    model.compile(
        keras.optimizers.Adam(1e-3), jit_compile=jit, steps_per_execution=steps_per_execution
    )
    # Trace and compile outside the clock.
    model.fit(ds, steps_per_epoch=2 * steps_per_execution, epochs=1, verbose=0)
    wait_for_device(model)
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        wait_for_device(model)
        times.append(time.perf_counter() - start)
    return rates(times, steps, examples, flops)


def rates(times, steps, examples, flops):
    """Throughput of the fastest of the repeated runs, and the median's steps/s.

    On 2 cores the repeats are bimodal (the slow mode is about half the fast one, for PyTorch
    too; contention between thread pools is the likely cause, not confirmed), so the fastest run
    measures the code and the median shows the spread."""
    seconds = min(times)
    return {
        "steps_per_s": steps / seconds,
        "examples_per_s": steps * examples / seconds,
        "flops_per_s": steps * flops / seconds,
        "median_steps_per_s": steps / statistics.median(times),
    }


# (label, jit_compile, steps_per_execution) on TensorFlow. The first is the binaries' default
# for the VAE family: the XLA-compiled fused update (pixel checks outside XLA), 25 steps per
# execution.
CONFIGS = [("xla, 25/exec", True, 25), ("graph, 25/exec", False, 25), ("graph, 1/exec", False, 1)]


def configs(backend):
    """The (label, jit_compile, steps_per_execution) settings timed on `backend`."""
    if backend == "jax":
        # jit_compile=False is eager on JAX (op by op): a debugging mode, not timed.
        return [(f"jit, {n}/exec", True, n) for n in jax_steps_per_execution()]
    return [c for c in CONFIGS if FLAGS.xla or not c[1]]


def jax_steps_per_execution():
    return [int(n) for n in FLAGS.jax_steps_per_execution]


def versions(backend):
    """The versions and devices of this (child) process's Keras backend."""
    import keras

    out = {"keras_version": keras.__version__}
    if backend == "jax":
        import jax

        out["jax_version"] = jax.__version__
        out["devices"] = [f"{d.platform}: {getattr(d, 'device_kind', d)}" for d in jax.devices()]
    else:
        import tensorflow as tf

        out["tensorflow_version"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        out["devices"] = [g.name for g in gpus] or ["cpu"]
    return out


def run_child(path):
    """This process's backend (KERAS_BACKEND, set by the parent): every recipe in every
    setting, as JSON at `path`."""
    import keras

    backend = keras.config.backend()
    out = {"backend": backend, **versions(backend), "recipes": {}}
    for name, batch in timings():
        for label, jit, spe in configs(backend):
            key = f"{name}, batch {batch} ({label})"
            try:
                r = time_keras(name, jit, spe, FLAGS.steps, batch)
            # An op the compiler rejects is a result to report, not a crash.
            except Exception as e:  # noqa: BLE001
                r = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            out["recipes"][key] = {"batch": batch, **r}
    with open(path, "w") as f:
        json.dump(out, f)


def time_child(backend):
    """Runs this script under KERAS_BACKEND=`backend` and returns its JSON (or an error)."""
    args = [
        f"--steps={FLAGS.steps}",
        f"--repeats={FLAGS.repeats}",
        f"--models={','.join(FLAGS.models)}",
        f"--batch={','.join(FLAGS.batch)}",
        f"--jax_steps_per_execution={','.join(FLAGS.jax_steps_per_execution)}",
        "--xla" if FLAGS.xla else "--noxla",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "child.json")
        env = dict(os.environ, KERAS_BACKEND=backend)
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--child_json={path}", *args],
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not os.path.exists(path):
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            return {"backend": backend, "error": f"exit status {result.returncode}: {lines[-1]}"}
        with open(path) as f:
            return json.load(f)


def time_loop(step, steps, device):
    """Times `steps` calls of `step` --repeats times (after 20 warm-up calls), waiting for the
    device around each timing on CUDA."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(20):
        step()
    times = []
    for _ in range(FLAGS.repeats):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def time_torch_vae(steps, batch):
    """The VAE recipe in PyTorch: the peer the issue compares against."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    device = torch_device()

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))  # PyTorch's default init, as in our recipe.
            if i < len(sizes) - 2:
                layers.append(nn.ELU())
        return nn.Sequential(*layers).to(device)

    enc, dec = mlp([784, 300, 300, 20]), mlp([10, 300, 300, 784])
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    images = torch.from_numpy(np.random.default_rng(0).random((60000, 784), np.float32))
    images = images.to(device)

    def step():
        idx = torch.randint(0, 60000, (batch,), device=device)
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

    times = time_loop(step, steps, device)
    macs = (784 * 300 + 300 * 300 + 300 * 20 + 10 * 300 + 300 * 300 + 300 * 784) * batch
    return dict(rates(times, steps, batch, 6.0 * macs), device=device, batch=batch)


def time_torch_m2(steps):
    """The SSVAE recipe's step in PyTorch (benchmarks/ssvae_torch_peer.py's model: the same
    networks and init, the course's loss, which has no labelled bound): 97 unlabelled images
    with every label enumerated plus the 100 labelled ones through the classifier."""
    import numpy as np
    import torch

    from torch_m2 import build_peer  # benchmarks/torch_m2.py

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    device = torch_device()
    rng = np.random.default_rng(0)
    x_u = torch.from_numpy(rng.random((60000, 784), np.float32)).to(device)
    x_l = torch.from_numpy(rng.random((100, 784), np.float32)).to(device)
    y_l = torch.from_numpy(np.arange(100) % 10).to(device)
    step = build_peer(x_u, x_l, y_l, device=device)
    times = time_loop(step, steps, device)
    # The peer's work: classifier on B + L rows, encoder and decoder on K * B rows.
    mlp = lambda sizes: sum(a * b for a, b in itertools.pairwise(sizes))  # noqa: E731
    macs = (
        mlp([784, 300, 300, 10]) * (BATCH + 100)
        + (mlp([794, 300, 300, 128]) + mlp([74, 300, 300, 784])) * 10 * BATCH
    )
    return dict(rates(times, steps, BATCH + 100, 6.0 * macs), device=device, batch=BATCH)


def format_table(rows, headers):
    """Plain-text table: rows of values under headers (as `tfp_vae.cli.common.format_table`,
    which this process does not import: it would start Keras, and TensorFlow with it)."""
    cells = [[str(h) for h in headers]] + [
        [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path, obj):
    """Writes `obj` as JSON to `path`, whole or not at all."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def fail(message):
    """A mistake in the flags: one line on stderr, exit status 2."""
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(2)


def importable(backend):
    return importlib.util.find_spec(backend) is not None


def check_flags():
    """The backends to time, after refusing flags that cannot take effect (one line each)."""
    if FLAGS.backends is None:
        backends = [b for b in BACKENDS if importable(b)]
    else:
        backends = FLAGS.backends
        for b in backends:
            if b not in BACKENDS:
                fail(
                    f"--backends: {b!r} is not a Keras backend we run on; use {','.join(BACKENDS)}."
                )
            if not importable(b):
                fail(f"--backends: {b} is not installed here; install it or leave it out.")
        if len(set(backends)) != len(backends):
            fail(f"--backends names a backend twice: {','.join(backends)}.")
    if not backends:
        fail("neither TensorFlow nor JAX is installed: pip install -e . (or -e .[jax]).")
    for m in FLAGS.models:
        if m not in RECIPES and m not in SSVAE_RECIPES:
            known = ",".join([*RECIPES, *SSVAE_RECIPES])
            fail(f"--models: unknown recipe {m!r}; the recipes are {known}.")
    try:
        spes = jax_steps_per_execution()
    except ValueError:
        spes = []
    if "jax" in backends and (not spes or min(spes) < 1):
        fail("--jax_steps_per_execution must be whole numbers >= 1, comma separated.")
    if "jax" not in backends and FLAGS["jax_steps_per_execution"].present:
        fail("--jax_steps_per_execution times JAX, which --backends leaves out.")
    if "tensorflow" not in backends and FLAGS["xla"].present:
        fail("--xla/--noxla picks TensorFlow's settings, which --backends leaves out.")
    try:
        sizes = batches()
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        got = ",".join(FLAGS.batch)
        fail(f"--batch must be distinct whole numbers >= 1, comma separated; got {got}.")
    family = [m for m in FLAGS.models if RECIPES.get(m, (0, 0, 1))[2] is None]
    if FLAGS["batch"].present and not family:
        fail("--batch sizes the VAE family (vae, gmvae, iwae10), which --models leaves out.")
    used = [spe for b in backends for _, _, spe in configs(b)]
    multiple = math.lcm(*used)
    if FLAGS.steps % multiple:
        suggestion = multiple * -(-FLAGS.steps // multiple)
        fail(
            f"--steps={FLAGS.steps} must be a multiple of every steps per execution timed "
            f"({', '.join(map(str, sorted(set(used))))}), e.g. {suggestion}."
        )
    return backends


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])} (flags are --name=value).")
    if FLAGS.child_json:
        run_child(FLAGS.child_json)
        return
    backends = check_flags()

    peak_framework = "tensorflow" if "tensorflow" in backends else "jax"
    peak_device = framework_device(peak_framework)
    # A 2048 matmul is over in a fraction of a millisecond on a GPU: time a larger one there.
    peak = matmul_peak_flops(2048 if peak_device == "cpu" else 8192, framework=peak_framework)
    results = {
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak": {"framework": peak_framework, "device": peak_device},
        "batch": batches(),
        "steps": FLAGS.steps,
        "repeats": FLAGS.repeats,
        "cpu_count": os.cpu_count(),
        "python_version": sys.version.split()[0],
        "backends": {},
        "recipes": {},
    }
    for backend in backends:
        child = time_child(backend)
        recipes = child.pop("recipes", {})
        results["backends"][backend] = child
        if "error" in child:
            results["recipes"][f"{backend}: all"] = {"backend": backend, "error": child["error"]}
        for key, r in recipes.items():
            results["recipes"][f"{backend}: {key}"] = {"backend": backend, **r}
    peers = {}
    if FLAGS.torch:
        try:
            import torch

            results["torch_version"] = torch.__version__
            results["torch_device"] = framework_device("torch")
            for name, batch in timings():
                if name in SSVAE_RECIPES:
                    peers.setdefault(("ssvae", batch), time_torch_m2(FLAGS.steps))
                elif name != "best_mnist":
                    peers.setdefault(("vae", batch), time_torch_vae(FLAGS.steps, batch))
        except ImportError:
            results["torch"] = "not installed: pip install -e .[bench]"
    names = {"vae": "vae peer", "ssvae": "ssvae M2 peer (course loss)"}
    for (family, batch), r in peers.items():
        key = f"pytorch: {names[family]}, batch {batch}"
        results["recipes"][key] = {"backend": "pytorch", **r}
    rows = []
    for key, r in results["recipes"].items():
        backend, name = key.split(": ", 1)
        if "error" in r:
            rows.append([backend, name, "-", "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        r["fraction_of_peak"] = r["flops_per_s"] / peak
        # Each recipe against its own peer: the SSVAE's against the M2 peer, the VAE family's
        # the VAE's (at the same batch); best_mnist (other sizes and batch) has none.
        peer = None
        if backend == "pytorch":
            peer = r
        elif not name.startswith("best_mnist"):
            peer = peers.get(("ssvae" if name.startswith("ssvae") else "vae", r["batch"]))
        if peer:
            r["ratio_to_pytorch_peer"] = r["steps_per_s"] / peer["steps_per_s"]
        label = f"{backend} ({r['device']})" if backend == "pytorch" else backend
        rows.append(
            [
                label,
                name.replace(f", batch {r['batch']}", ""),
                r["batch"],
                round(r["steps_per_s"], 1),
                round(r["median_steps_per_s"], 1),
                round(r["examples_per_s"]),
                round(r["flops_per_s"] / 1e9, 1),
                f"{100 * r['fraction_of_peak']:.1f}%",
                f"{r['ratio_to_pytorch_peer']:.2f}x" if peer else "-",
            ]
        )
    print(
        f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({peak_framework} on {peak_device}; "
        f"{os.cpu_count()} CPUs); {FLAGS.steps} steps, "
        f"the fastest of {FLAGS.repeats}"
    )
    print(
        format_table(
            rows,
            [
                "backend",
                "recipe (setting)",
                "batch",
                "steps/s",
                "median",
                "examples/s",
                "GFLOP/s",
                "of peak",
                "vs its PyTorch peer",
            ],
        )
    )
    if "jax" in backends:
        print("JAX: jit_compile=False runs the step eagerly, op by op (for debugging): not timed.")
    if "torch" in results:
        print(f"PyTorch peers: {results['torch']}")
    print(json.dumps(results))
    if FLAGS.output_json:
        write_json(FLAGS.output_json, results)


if __name__ == "__main__":
    app.run(main)
