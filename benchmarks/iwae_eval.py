"""IWAE evaluation throughput: ours (XLA and plain graph) against the matmul peak and a PyTorch
peer, all measured in one run.

  python benchmarks/iwae_eval.py --model_path=runs/vae --m=1000,5000 --examples=1000

For each m it times `tfp_vae.evaluation.negative_iwae` on the first --examples test images
(after a warm-up call that traces and compiles) as `bin/evaluate` runs it and compiled whole
with XLA, and a PyTorch
implementation of the same bound on the same weights: encoder once per example, then chunks of
[samples, batch] latents through the decoder, `binary_cross_entropy_with_logits`,
`torch.distributions` densities (`MixtureSameFamily` for a GMVAE prior) and a running
`logsumexp`, under `torch.inference_mode`, at the fastest of --peer_max_rows. The peer's bound
must agree with ours up to Monte Carlo noise (it is printed next to ours).

Throughput is examples x samples per second; FLOPs count the matmuls (2 x multiply-adds of the
decoder per sample, of the encoder per example, and of the matmul-form mixture density per
sample for a GMVAE); the peak is a large float32 matmul timed in the same run. With --tfp_baseline
it also times the stock broadcasting TFP densities (`tfd.MixtureSameFamily.log_prob`, two
softplus per pixel) on --baseline_examples images, scaled to --examples.

Prints a table and JSON. The PyTorch peer is optional (`pip install -e .[bench]`) and skipped
with a note when torch is not installed.
"""

import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from peak import dense_macs, matmul_peak_flops  # benchmarks/peak.py

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model_path",
    None,
    "A trained VAE or GMVAE (.keras or run dir); default: a "
    "fresh VAE of the recipe (timing does not depend on the weights).",
)
flags.DEFINE_list("m", ["1000", "5000"], "Importance samples per example.")
flags.DEFINE_integer("examples", 1000, "Test images to evaluate.", lower_bound=1)
flags.DEFINE_integer("max_rows", 20000, "Decoder rows per chunk (as in bin/evaluate).")
flags.DEFINE_bool("torch", True, "Time the PyTorch peer if torch is importable.")
flags.DEFINE_list(
    "peer_max_rows",
    ["2000", "5000", "20000"],
    "Chunk sizes to try for the PyTorch peer; the fastest is reported.",
)
flags.DEFINE_bool("tfp_baseline", False, "Also time the stock broadcasting TFP densities.")
flags.DEFINE_integer("baseline_examples", 100, "Test images for --tfp_baseline (scaled).")
flags.DEFINE_string("output_json", None, "Where to write the results.")


def torch_peer(model, x, m, max_rows, seed=0):
    """-IWAE-m of `model` (its weights copied to torch) on x, the direct PyTorch way."""
    import numpy as np
    import torch
    from torch import distributions as td
    from torch.nn import functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())

    def to_torch(network):
        layers = [layer for layer in network.layers if hasattr(layer, "kernel")]
        params = [
            (
                torch.from_numpy(np.asarray(layer.kernel.numpy())).T.contiguous(),
                torch.from_numpy(np.asarray(layer.bias.numpy())),
            )
            for layer in layers
        ]

        def forward(h):
            for i, (w, b) in enumerate(params):
                h = F.linear(h, w, b)
                if i < len(params) - 1:
                    h = F.elu(h)
            return h

        return forward

    if model.activation != "elu":
        raise ValueError(f"The peer implements the recipe's ELU MLPs; got {model.activation}.")
    encoder, decoder = to_torch(model.encoder), to_torch(model.decoder)
    z_dim = model.z_dim
    if model.analytic_kl:  # The VAE: N(0, I).
        prior = td.Independent(td.Normal(torch.zeros(z_dim), torch.ones(z_dim)), 1)
    else:  # The GMVAE's mixture, its parameters read off the TFP distribution.
        tfp_prior = model.prior()
        components = tfp_prior.components_distribution
        prior = td.MixtureSameFamily(
            td.Categorical(
                logits=torch.from_numpy(np.array(tfp_prior.mixture_distribution.logits_parameter()))
            ),
            td.Independent(
                td.Normal(
                    torch.from_numpy(np.array(components.mean())),
                    torch.from_numpy(np.array(components.stddev())),
                ),
                1,
            ),
        )
    chunk = min(m, max_rows)
    batch = max(1, max_rows // chunk)
    total = 0.0
    with torch.inference_mode():
        x = torch.from_numpy(np.asarray(x, np.float32))
        for start in range(0, len(x), batch):
            xb = x[start : start + batch]
            h = encoder(xb)
            posterior = td.Independent(
                td.Normal(h[:, :z_dim], (F.softplus(h[:, z_dim:]) + model.min_variance).sqrt()), 1
            )
            acc = torch.full((len(xb),), -math.inf, dtype=torch.float64)
            for done in range(0, m, chunk):
                z = posterior.rsample((min(chunk, m - done),))  # [s, b, z]
                logits = decoder(z.reshape(-1, z_dim)).reshape(*z.shape[:2], -1)
                log_lik = -F.binary_cross_entropy_with_logits(
                    logits, xb.expand_as(logits), reduction="none"
                ).sum(-1)
                log_w = log_lik + prior.log_prob(z) - posterior.log_prob(z)
                acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0).double())
            total += float((acc - math.log(m)).sum())
    return -total / len(x)


def stock_densities(model):
    """A context manager swapping in the stock TFP densities (the --tfp_baseline)."""
    import contextlib

    import tensorflow as tf
    import tensorflow_probability as tfp

    from tfp_vae import networks

    tfd = tfp.distributions
    prior_call = model.prior

    def stock_prior():
        d = prior_call()
        if isinstance(d, tfd.MixtureSameFamily):
            return tfd.MixtureSameFamily(d.mixture_distribution, d.components_distribution)
        return d

    def stock_decode(z):
        logits = networks.apply(model.decoder, z)
        return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)

    @contextlib.contextmanager
    def swapped():
        model.prior, model.decode = stock_prior, stock_decode
        try:
            yield
        finally:
            del model.prior, model.decode

    return swapped()


def main(argv):
    del argv
    import numpy as np

    from tfp_vae import data
    from tfp_vae.cli import common
    from tfp_vae.evaluation import negative_iwae
    from tfp_vae.models import VAE

    model = common.load_model(FLAGS.model_path) if FLAGS.model_path else VAE()
    try:
        x = data.binarize_static(data.load(download=False).x_test)
    except data.DataError:  # Timing does not depend on the pixels.
        x = (np.random.default_rng(0).random((10000, 784)) < 0.13).astype(np.float32)
    x = x[: FLAGS.examples]
    peak = matmul_peak_flops()
    per_sample = 2 * dense_macs(model.decoder)
    if not model.analytic_kl:
        per_sample += 2 * 2 * model.z_dim * model.k  # The matmul-form mixture density.
    per_example = 2 * dense_macs(model.encoder)

    def timed(fn, m, x, max_rows, **kwargs):
        fn(model, x[:20], m, max_rows, **kwargs)  # Trace and compile outside the clock.
        start = time.perf_counter()
        value = fn(model, x, m, max_rows, **kwargs)
        seconds = time.perf_counter() - start
        flops = len(x) * (m * per_sample + per_example)
        return {
            "seconds": seconds,
            "examples_x_samples_per_s": len(x) * m / seconds,
            "gflops_per_s": flops / seconds / 1e9,
            "fraction_of_peak": flops / seconds / peak,
            "niwae": value,
        }

    results = {
        "model": type(model).__name__,
        "examples": len(x),
        "max_rows": FLAGS.max_rows,
        "matmul_peak_gflops": peak / 1e9,
        "cpu_count": os.cpu_count(),
        "runs": {},
    }
    rows = []
    for m in [int(v) for v in FLAGS.m]:
        runs = {
            "ours (graph, default)": timed(negative_iwae, m, x, FLAGS.max_rows),
            "ours (xla)": timed(negative_iwae, m, x, FLAGS.max_rows, jit_compile=True),
        }
        if FLAGS.torch:
            try:
                import torch

                # The peer at its best chunk size (smaller chunks stay in cache for it).
                tries = {r: timed(torch_peer, m, x, int(r)) for r in FLAGS.peer_max_rows}
                best = min(tries, key=lambda r: tries[r]["seconds"])
                runs["pytorch peer"] = dict(
                    tries[best],
                    max_rows=int(best),
                    torch_version=torch.__version__,
                    seconds_by_max_rows={r: t["seconds"] for r, t in tries.items()},
                )
            except ImportError:
                results["torch"] = "not installed: pip install -e .[bench]"
        if FLAGS.tfp_baseline:
            with stock_densities(model):
                r = timed(negative_iwae, m, x[: FLAGS.baseline_examples], FLAGS.max_rows)
            scale = len(x) / FLAGS.baseline_examples
            r["seconds"] *= scale
            r["note"] = f"timed on {FLAGS.baseline_examples} images, seconds scaled"
            runs["stock tfp densities (graph)"] = r
        peer = runs.get("pytorch peer")
        for name, r in runs.items():
            if peer:
                r["ratio_to_pytorch_peer"] = peer["seconds"] / r["seconds"]
            rows.append(
                [
                    m,
                    name,
                    round(r["seconds"], 2),
                    round(r["examples_x_samples_per_s"]),
                    round(r["gflops_per_s"], 1),
                    f"{100 * r['fraction_of_peak']:.1f}%",
                    f"{r['ratio_to_pytorch_peer']:.2f}x" if peer else "-",
                    round(r["niwae"], 3),
                ]
            )
        results["runs"][str(m)] = runs
    print(
        f"{results['model']}, {len(x)} test images; float32 matmul peak: {peak / 1e9:.1f} "
        f"GFLOP/s ({os.cpu_count()} CPUs)"
    )
    print(
        common.format_table(
            rows,
            [
                "m",
                "implementation",
                "seconds",
                "examples x samples/s",
                "GFLOP/s",
                "of peak",
                "vs PyTorch",
                "-IWAE (nats)",
            ],
        )
    )
    print(json.dumps(results))
    if FLAGS.output_json:
        common.write_json(FLAGS.output_json, results)


if __name__ == "__main__":
    app.run(main)
