"""Training throughput of the VAE with the convolutional preset (`bin/train --arch=conv`:
networks.conv_encoder / conv_decoder on (28, 28, 1)) against the recipe's MLPs, in one run, beside
the machine's float32 matmul peak.

  python benchmarks/conv_throughput.py --steps=300 --output_json=runs/conv/throughput.json

Each setting trains model.fit on MNIST batches of 97 (random pixels when MNIST is not found:
timing does not depend on them) for --steps steps, --repeats times after a warm-up that traces
and compiles; it reports the fastest run's steps/s and the median's. FLOPs count the multiply-adds
of the Dense, Conv2D and Conv2DTranspose layers x 2 x 3 (forward and the two backward products).
The settings are each architecture with and without the XLA-compiled update, 25 steps per
execution. XLA's CPU convolutions are slow, so the conv XLA setting runs --xla_conv_steps steps,
once.
"""

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from peak import matmul_peak_flops

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "steps",
    300,
    "Timed steps per setting (a multiple of 25, the steps per execution).",
    lower_bound=25,
)
flags.DEFINE_integer(
    "repeats", 3, "Timed runs per setting; the fastest is reported (and the median).", lower_bound=1
)
flags.DEFINE_integer(
    "xla_conv_steps",
    50,
    "Timed steps of the conv VAE under XLA (one run; 0 skips it).",
    lower_bound=0,
)
for _name in ("steps", "xla_conv_steps"):
    flags.register_validator(_name, lambda v: v % 25 == 0, f"--{_name} must be a multiple of 25.")
flags.DEFINE_string("output_json", None, "Where to write the results.")

BATCH, SPE = 97, 25
IMAGE = (28, 28, 1)


def macs(network):
    """Multiply-adds of one example through a Sequential of Dense, Conv2D and Conv2DTranspose
    layers (a transposed convolution scatters each input pixel over kernel x kernel outputs)."""
    import keras

    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            h, w, c_in = layer.input.shape[1:]
            total += h * w * c_in * layer.filters * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Conv2D):
            h, w, c_out = layer.output.shape[1:]
            c_in = layer.input.shape[-1]
            total += h * w * c_out * c_in * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)


def build(arch):
    """(the VAE, its training FLOPs per step): the recipe's MLPs or the conv preset, as
    `bin/train --model=vae --arch=...` builds them."""
    import keras

    from tfp_vae import networks
    from tfp_vae.models import VAE

    keras.utils.set_random_seed(0)
    if arch == "conv":
        model = VAE(
            z_dim=10,
            input_shape=IMAGE,
            encoder=networks.conv_encoder(IMAGE, 20),
            decoder=networks.conv_decoder(10, IMAGE),
        )
    else:
        model = VAE(z_dim=10)
    return model, 6.0 * (macs(model.encoder) + macs(model.decoder)) * BATCH


def time_setting(arch, jit, steps, repeats, x_train):
    import keras

    from tfp_vae import data

    model, flops = build(arch)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=jit, steps_per_execution=SPE)
    ds = data.train_dataset(x_train, BATCH, seed=0)
    model.fit(ds, steps_per_epoch=2 * SPE, epochs=1, verbose=0)  # Trace and compile.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    # The fastest run measures the code; on 2 shared cores the median shows the spread.
    return {
        "steps": steps,
        "repeats": repeats,
        "seconds": times,
        "steps_per_s": steps / min(times),
        "median_steps_per_s": steps / statistics.median(times),
        "ms_per_step": 1000 * min(times) / steps,
        "flops_per_step": flops,
        "flops_per_s": steps * flops / min(times),
    }


def main(argv):
    del argv
    import numpy as np

    from tfp_vae import data
    from tfp_vae.cli import common

    try:
        x_train = data.load(download=False).x_train
    except data.DataError:
        x_train = np.random.default_rng(0).integers(0, 256, (60000, 28, 28), np.uint8)
    peak = matmul_peak_flops()
    results = {
        "matmul_peak_gflops": peak / 1e9,
        "batch": BATCH,
        "steps_per_execution": SPE,
        "cpu_count": os.cpu_count(),
        "settings": {},
    }
    settings = [
        ("mlp", True, FLAGS.steps, FLAGS.repeats),
        ("mlp", False, FLAGS.steps, FLAGS.repeats),
        ("conv", False, FLAGS.steps, FLAGS.repeats),
    ]
    if FLAGS.xla_conv_steps:
        settings.append(("conv", True, FLAGS.xla_conv_steps, 1))
    for arch, jit, steps, repeats in settings:
        key = f"{arch}, {'xla' if jit else 'graph'}"
        r = time_setting(arch, jit, steps, repeats, x_train)
        r["fraction_of_peak"] = r["flops_per_s"] / peak
        results["settings"][key] = r
        print(f"{key}: {r['steps_per_s']:.1f} steps/s", flush=True)
    s = results["settings"]
    # bin/train's defaults on a machine without a GPU (jit_compile="auto"): the MLP under XLA,
    # the conv preset in graph mode.
    rate = {key: r["steps_per_s"] for key, r in s.items()}
    results["conv_over_mlp_cli_defaults"] = rate["conv, graph"] / rate["mlp, xla"]
    results["conv_over_mlp_graph"] = rate["conv, graph"] / rate["mlp, graph"]
    rows = [
        [
            key,
            round(r["steps_per_s"], 1),
            round(r["median_steps_per_s"], 1),
            round(r["ms_per_step"], 2),
            round(r["flops_per_step"] / 1e9, 3),
            round(r["flops_per_s"] / 1e9, 1),
            f"{100 * r['fraction_of_peak']:.1f}%",
        ]
        for key, r in s.items()
    ]
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({os.cpu_count()} CPUs)")
    print(
        common.format_table(
            rows,
            [
                "VAE setting",
                "steps/s",
                "median",
                "ms/step (fastest)",
                "GFLOP/step",
                "GFLOP/s",
                "of peak",
            ],
        )
    )
    print(
        f"conv / mlp steps/s, bin/train's defaults (conv graph, mlp xla): "
        f"{results['conv_over_mlp_cli_defaults']:.3f}; both graph: "
        f"{results['conv_over_mlp_graph']:.3f}"
    )
    print(json.dumps(results))
    if FLAGS.output_json:
        common.write_json(FLAGS.output_json, results)


if __name__ == "__main__":
    app.run(main)
