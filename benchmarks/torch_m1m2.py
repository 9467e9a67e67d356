"""An independent PyTorch M1+M2 at the paper's schedule (benchmarks/gpu.sh's m1m2 part), written
when our package could not run on a GPU without TensorFlow (it now can, on JAX): does the paper's
number of example passes take M1+M2 to 95%? Needs only NumPy, PyTorch and absl (no tfp_vae).

  python benchmarks/torch_m1m2.py --data_dir=../shared/data/mnist --seeds=0,1,2 \
      --output_json=runs/torch_m1m2.json             # the full schedule (a GPU)
  python benchmarks/torch_m1m2.py --data_dir=... --dry_run   # tiny, on a CPU

The model is ours (models/stacked.py, with SSVAE's recipe for M2): M1 a VAE 784-600-600-z50 (ELU,
softplus variance + 1e-8, Bernoulli pixels), M2 on M1's active units (posterior-mean std > 0.1
over 1000 statically binarised training images) with a Gaussian p(z1|y,z2), z2 of 64, 300-300
networks (classifier ReLU, the others ELU), PyTorch's default init, the loss
mean -U + mean -L + 100 * cross-entropy with -L including log K, a fresh z1 ~ q(z1|x) of dynamically
binarised images at every step, the classifier on the posterior mean at test time. The labelled
sets are `tfp_vae.semisupervised.split_labelled`'s (the same NumPy draw, rewritten here). The
schedule is the script's: large batches of unlabelled images, labelled ones drawn with
replacement, Adam at 1e-3 * sqrt(batch / 97). Test accuracy on the full test set, grayscale and
statically binarised (seed 0, as `tfp_vae.data.binarize_static`).
"""

import gzip
import json
import math
import os
import time

import numpy as np
from absl import app, flags

from torch_m2 import mlp  # benchmarks/torch_m2.py

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir", None, "Folder with the four MNIST IDX files (.gz or not).", required=True
)
flags.DEFINE_list("seeds", ["0"], "Label seeds (each also seeds its M2's init and batches).")
flags.DEFINE_integer("m1_steps", 50000, "M1 steps.")
flags.DEFINE_integer("m1_batch", 1000, "M1 batch size.")
flags.DEFINE_float(
    "m1_learning_rate",
    1e-3,
    "M1's Adam learning rate (the recipe's; at batch "
    "4850 the square-root rule's 7.1e-3 collapsed M1 on an H200).",
)
flags.DEFINE_integer("m2_steps", 30000, "M2 steps per seed.")
flags.DEFINE_integer("batch", 4850, "Unlabelled (and M1) batch size.")
flags.DEFINE_integer("labelled_batch", 1000, "Labelled examples drawn per step.")
flags.DEFINE_integer("eval_every", 5000, "M2 steps between test-accuracy prints.")
flags.DEFINE_bool("dry_run", False, "A tiny size (20 steps of batch 200) to check the code.")
flags.DEFINE_string("output_json", None, "Where to write the results.")

K, Z2, Z1, RECIPE_BATCH = 10, 64, 50, 97


def read_idx(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        # tfp_vae's shipped copy keeps its training images in parts (NAME.part1of2, ...).
        parts = sorted(p for p in os.listdir(directory) if p.startswith(name + ".part"))
        if os.path.exists(path) or parts:
            paths = [path] if os.path.exists(path) else [os.path.join(directory, p) for p in parts]
            blob = b"".join(open(p, "rb").read() for p in paths)
            raw = gzip.decompress(blob) if name.endswith(".gz") else blob
            break
    else:
        raise FileNotFoundError(f"{stem}(.gz) not in {directory}")
    magic = int.from_bytes(raw[:4], "big")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic % 256)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def split_labelled(labels, per_class, seed):
    """tfp_vae.data.labelled_subset's draw."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(K)]
    labelled = np.sort(np.concatenate(chosen))
    return labelled, np.setdiff1d(np.arange(len(labels)), labelled)


def gaussian(h):
    import torch.nn.functional as F

    mean, pre = h.chunk(2, dim=-1)
    return mean, F.softplus(pre) + 1e-8


def log_normal(x, mean, var):
    return -0.5 * (((x - mean) ** 2) / var + var.log() + math.log(2 * math.pi)).sum(-1)


def kl_standard(mean, var):
    return 0.5 * (var + mean**2 - 1 - var.log()).sum(-1)


def main(argv):
    del argv
    import torch
    import torch.nn.functional as F
    from torch import nn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # As TensorFlow's default on GPUs.
    if FLAGS.dry_run:
        m1_steps = m2_steps = 20
        m1_batch, batch, labelled_batch, eval_every = 100, 200, 50, 10
    else:
        m1_steps, m2_steps, m1_batch = FLAGS.m1_steps, FLAGS.m2_steps, FLAGS.m1_batch
        batch, labelled_batch, eval_every = FLAGS.batch, FLAGS.labelled_batch, FLAGS.eval_every
    lr = 1e-3 * math.sqrt(batch / RECIPE_BATCH)
    x_train = read_idx(FLAGS.data_dir, "train-images-idx3-ubyte").reshape(-1, 784)
    y_train = read_idx(FLAGS.data_dir, "train-labels-idx1-ubyte").astype(np.int64)
    x_test = read_idx(FLAGS.data_dir, "t10k-images-idx3-ubyte").reshape(-1, 784)
    y_test = torch.from_numpy(read_idx(FLAGS.data_dir, "t10k-labels-idx1-ubyte").astype(np.int64))
    gray = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).to(device)  # noqa: E731
    train, test = gray(x_train), gray(x_test)
    static_rng = np.random.default_rng(0)
    test_bin = torch.from_numpy(
        (
            static_rng.random(x_test.shape, dtype=np.float32) < x_test.astype(np.float32) / 255.0
        ).astype(np.float32)
    ).to(device)
    y_test = y_test.to(device)
    results = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": batch,
        "labelled_batch": labelled_batch,
        "learning_rate": lr,
        "m1_batch": m1_batch,
        "m1_learning_rate": FLAGS.m1_learning_rate,
        "m1_steps": m1_steps,
        "m2_steps": m2_steps,
        "runs": {},
    }

    # ---- M1 ---------------------------------------------------------------------------------
    torch.manual_seed(0)
    enc1, dec1 = (
        mlp([784, 600, 600, 2 * Z1], nn.ELU).to(device),
        mlp([Z1, 600, 600, 784], nn.ELU).to(device),
    )
    opt = torch.optim.Adam([*enc1.parameters(), *dec1.parameters()], lr=FLAGS.m1_learning_rate)
    start = time.time()
    for _ in range(m1_steps):
        x = torch.bernoulli(train[torch.randint(0, len(train), (m1_batch,), device=device)])
        mean, var = gaussian(enc1(x))
        z = mean + var.sqrt() * torch.randn_like(mean)
        rec = F.binary_cross_entropy_with_logits(dec1(z), x, reduction="none").sum(-1)
        loss = (rec + kl_standard(mean, var)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    results["m1_seconds"] = round(time.time() - start, 1)
    results["m1_last_train_nelbo"] = loss.item()
    for p in [*enc1.parameters(), *dec1.parameters()]:
        p.requires_grad_(False)
    with torch.no_grad():
        probe = torch.from_numpy(
            (
                np.random.default_rng(0).random((1000, 784), dtype=np.float32)
                < x_train[:1000].astype(np.float32) / 255.0
            ).astype(np.float32)
        ).to(device)
        units = torch.nonzero(gaussian(enc1(probe))[0].std(0, unbiased=False) > 0.1).flatten()
    results["active_units"] = units.tolist()
    d = len(units)
    if d == 0:
        raise SystemExit(
            "M1 has no active unit (its posterior ignores x): lower "
            "--m1_learning_rate or train it longer."
        )
    print(
        f"M1: {m1_steps} steps in {results['m1_seconds']} s, last train NELBO {loss.item():.2f}, "
        f"{d} active units",
        flush=True,
    )

    def features(x, sample):
        mean, var = gaussian(enc1(x))
        z = mean + var.sqrt() * torch.randn_like(mean) if sample else mean
        return z[:, units]

    # ---- M2 on M1's active units, per seed -------------------------------------------------
    for seed in [int(s) for s in FLAGS.seeds]:
        torch.manual_seed(seed)
        labelled, unlabelled = split_labelled(y_train, 10, seed)
        x_l, y_l = train[labelled], torch.from_numpy(y_train[labelled]).to(device)
        x_u = train[unlabelled]
        classifier = mlp([d, 300, 300, K], nn.ReLU).to(device)
        encoder = mlp([d + K, 300, 300, 2 * Z2], nn.ELU).to(device)
        decoder = mlp([Z2 + K, 300, 300, 2 * d], nn.ELU).to(device)
        opt = torch.optim.Adam(
            [*classifier.parameters(), *encoder.parameters(), *decoder.parameters()], lr=lr
        )
        eye = torch.eye(K, device=device)

        # class_terms and accuracy are called only within this iteration (B023 is a false alarm).
        def class_terms(f, onehot):
            mean, var = gaussian(encoder(torch.cat([f, onehot], 1)))  # noqa: B023
            z = mean + var.sqrt() * torch.randn_like(mean)
            mu, v = gaussian(decoder(torch.cat([z, onehot], 1)))  # noqa: B023
            return -log_normal(f, mu, v) + kl_standard(mean, var)

        def accuracy(x):
            with torch.no_grad():
                return (classifier(features(x, False)).argmax(1) == y_test).float().mean().item()  # noqa: B023

        curve, start = [], time.time()
        for step in range(1, m2_steps + 1):
            with torch.no_grad():
                f_u = features(
                    torch.bernoulli(x_u[torch.randint(0, len(x_u), (batch,), device=device)]), True
                )
                pick = torch.randint(0, len(x_l), (labelled_batch,), device=device)
                f_l, y = features(torch.bernoulli(x_l[pick]), True), y_l[pick]
            b = f_u.shape[0]
            log_q = F.log_softmax(classifier(f_u), 1)
            per_class = class_terms(f_u.repeat(K, 1), eye.repeat_interleave(b, 0)).view(K, b).t()
            u = (log_q.exp() * (per_class + log_q + math.log(K))).sum(1)
            lab = class_terms(f_l, eye[y]) + math.log(K)
            loss = u.mean() + lab.mean() + 100.0 * F.cross_entropy(classifier(f_l), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % eval_every == 0 or step == m2_steps:
                curve.append((step, accuracy(test)))
                print(
                    f"seed {seed} step {step}: loss {float(loss):.2f}, test accuracy "
                    f"{curve[-1][1]:.4f} ({time.time() - start:.0f} s)",
                    flush=True,
                )
        run = {
            "accuracy": accuracy(test),
            "accuracy_binarized": accuracy(test_bin),
            "curve": curve,
            "seconds": round(time.time() - start, 1),
        }
        results["runs"][str(seed)] = run
        print(
            f"seed {seed}: {100 * run['accuracy']:.2f}% ({100 * run['accuracy_binarized']:.2f}% "
            f"binarised) in {run['seconds']} s",
            flush=True,
        )
    accs = [r["accuracy"] for r in results["runs"].values()]
    if len(accs) > 1:
        print(f"mean {100 * np.mean(accs):.2f}% +/- {100 * np.std(accs, ddof=1):.2f}")
    print(json.dumps(results))
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
