"""Trains a model with model.fit and writes checkpoints, TensorBoard logs, the final model,
metrics.json (full test set, static binarisation), samples.png and reconstructions.png.

Example (the VAE recipe):
  train --model=vae --steps=20000 --out_dir=runs/vae
"""

import os
import sys
import time

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "vae", ["vae", "gmvae"],
                  "Which model: vae (N(0, I) prior) or gmvae (learned mixture-of-Gaussians prior).")
flags.DEFINE_integer("k", 500, "gmvae: number of mixture components of the prior.", lower_bound=1)
flags.DEFINE_bool("learn_mixture_weights", False,
                  "gmvae: train the mixture weights too (default: uniform, fixed).")
flags.DEFINE_integer("z_dim", 10, "Latent dimension.", lower_bound=1)
flags.DEFINE_float("beta", 1.0, "Weight on KL in the ELBO (beta-VAE); 1 is the true bound.",
                   lower_bound=0.0)
flags.DEFINE_enum("objective", "elbo", ["elbo", "iwae"],
                  "Training objective: the ELBO, or the importance-weighted bound with --iw samples.")
flags.DEFINE_integer("iw", 1, "Importance samples for --objective=iwae.", lower_bound=1)
flags.DEFINE_integer("steps", 20000, "Gradient steps (rounded up to whole --steps_per_epoch).",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", 1000,
                     "Steps between checkpoints, validation and TensorBoard points.", lower_bound=1)
flags.DEFINE_integer("batch_size", 97, "Training batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Training data.")
flags.DEFINE_string("data_dir", None, "Directory holding the dataset files (IDX .gz or .npz); "
                    "default: $TFP_VAE_DATA_DIR, then /usr/share/datasets, the Keras cache, "
                    "download.")
flags.DEFINE_enum("binarization", "dynamic", ["dynamic", "static"],
                  "Training binarisation: a fresh Bernoulli draw per batch (recipe) or fixed.")
flags.DEFINE_string("out_dir", None, "Where to write checkpoints, logs, the model and images.",
                    required=True)
flags.DEFINE_integer("seed", 0, "Random seed for initialisation, shuffling and sampling.")
flags.DEFINE_bool("resume", False, "Continue from the checkpoint in --out_dir (weights, optimizer "
                  "state and step) instead of refusing to touch an existing run.")
flags.DEFINE_integer("validation_examples", 1000,
                     "Test images used for validation at each epoch end (0 = none).", lower_bound=0)
flags.DEFINE_integer("verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line/epoch.",
                     lower_bound=0, upper_bound=2)


def build_model():
    import keras
    from tfp_vae import models

    keras.utils.set_random_seed(FLAGS.seed)
    kwargs = dict(z_dim=FLAGS.z_dim, beta=FLAGS.beta, objective=FLAGS.objective, iw=FLAGS.iw)
    if FLAGS.model == "gmvae":
        kwargs.update(k=FLAGS.k, learn_mixture_weights=FLAGS.learn_mixture_weights)
    model = models.MODELS[FLAGS.model](**kwargs)
    model.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate), jit_compile=False)
    return model


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import numpy as np
    from tfp_vae import data, images, training

    out_dir = FLAGS.out_dir
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if training.has_checkpoint(ckpt_dir) and not FLAGS.resume:
        raise app.UsageError(f"{out_dir} already holds a training run; pass --resume to continue "
                             "it or choose another --out_dir.")
    os.makedirs(out_dir, exist_ok=True)
    dataset = data.load(FLAGS.dataset, FLAGS.data_dir)
    print(f"Data: {dataset.source}")
    model = build_model()
    train_ds = data.train_dataset(dataset.x_train, FLAGS.batch_size, FLAGS.binarization,
                                  seed=FLAGS.seed)
    val_ds = (data.eval_dataset(dataset.x_test[:FLAGS.validation_examples])
              if FLAGS.validation_examples else None)
    start = time.time()
    try:
        training.fit(model, train_ds, FLAGS.steps, out_dir, FLAGS.steps_per_epoch, val_ds,
                     resume=FLAGS.resume, verbose=FLAGS.verbose)
    except training.NonFiniteLossError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    train_seconds = time.time() - start
    model.save(os.path.join(out_dir, common.MODEL_FILE))
    metrics = common.test_metrics(model, dataset)
    metrics.update(train_seconds=round(train_seconds, 1),
                   steps=int(model.optimizer.iterations.numpy()), model=FLAGS.model,
                   dataset=FLAGS.dataset, test_examples=len(dataset.x_test),
                   command=" ".join(["train"] + sys.argv[1:]))
    common.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    images.write_grid(os.path.join(out_dir, "samples.png"),
                      common.seeded_images(model, 100, FLAGS.seed), 10, 10)
    x = data.binarize_static(dataset.x_test[:50])
    recon = np.asarray(model.reconstruct(x))
    # Rows alternate: 10 originals, then their reconstructions.
    pairs = np.concatenate([np.stack([x[i:i + 10], recon[i:i + 10]]) for i in range(0, 50, 10)])
    images.write_grid(os.path.join(out_dir, "reconstructions.png"), pairs.reshape(-1, 784), 10, 10)
    print(common.format_table([[k, v] for k, v in sorted(metrics.items())
                               if isinstance(v, float)], ["test metric", "value"]))
    print(f"Wrote {out_dir}/{{model.keras,metrics.json,samples.png,reconstructions.png}}")
    return 0


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
