"""Evaluates a trained model on the full test set, prepared as the model's likelihood needs it
(statically binarised for a Bernoulli, grayscale as it is otherwise; `data_transform` in the
results says which).

Prints a table and writes JSON: the test NELBO, KL and Rec (one posterior sample per image), and
with --iw the negative IWAE bounds for each listed number of samples (IWAE-5000 is our reported
test log-likelihood estimate).

Example:
  evaluate --model_path=runs/vae --iw=1,10,100,1000,5000 --output_json=runs/vae/iwae.json
"""

import time

from absl import app, flags

from tfp_vae.cli import common

FLAGS = flags.FLAGS
common.define_import_flag()
flags.DEFINE_string(
    "model_path", None, "A .keras file or the --out_dir of a `train` run.", required=True
)
flags.DEFINE_string(
    "dataset",
    "mnist",
    "Evaluation data: mnist, fashion_mnist (their files' "
    "checksums are checked), or npz:PATH, your own .npz with arrays x_train and "
    "x_test (and y_train, y_test for an ssvae or m1m2 model); see `train "
    "--help`. The results record the files read and their SHA-256.",
)

flags.register_validator("dataset", common.check_dataset_flag)


flags.DEFINE_string(
    "data_dir",
    None,
    "Directory holding the dataset files; default: "
    "$TFP_VAE_DATA_DIR, /usr/share/datasets, the Keras cache, download.",
)
flags.DEFINE_list("iw", [], "Numbers of importance samples for the IWAE bound, e.g. 1,10,100.")
flags.DEFINE_integer(
    "examples", 0, "Evaluate on the first N test images only (0 = all).", lower_bound=0
)
flags.DEFINE_integer(
    "max_rows",
    20000,
    "Decoder rows (images x samples) per chunk: bounds "
    "the memory of the IWAE evaluation whatever m is.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "seed", 0, "Seed of the posterior samples.", lower_bound=0, upper_bound=2**31 - 1
)
flags.DEFINE_bool(
    "xla",
    False,
    "Compile each IWAE chunk whole with XLA. Off by default: on "
    "CPU, XLA's large matmuls are slower than TensorFlow's (see benchmarks/).",
)
flags.DEFINE_string("output_json", None, "Where to write the results (default: print only).")


def _iw_values():
    try:
        values = [int(v) for v in FLAGS.iw]
    except ValueError:
        raise app.UsageError(
            f"--iw takes positive integers, e.g. 1,10,100; got {FLAGS.iw}."
        ) from None
    if any(v < 1 for v in values):
        raise app.UsageError(f"--iw takes positive integers; got {FLAGS.iw}.")
    return values


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    iw = _iw_values()
    if FLAGS.output_json:
        common.check_output_file(FLAGS.output_json, "output_json")
    common.model_file(FLAGS.model_path)  # A missing or broken model: said before TF starts.
    common.import_library()
    from tfp_vae import checks, data, evaluation

    try:  # The limits of m, then (for the model's widths) of --max_rows, before any work.
        for m in iw:
            checks.check_importance_samples(m, "--iw")
        model = common.load_model(FLAGS.model_path)
        if iw and hasattr(model, "widest_values"):
            checks.check_size(
                FLAGS.max_rows, model.widest_values(), "--max_rows", "give a smaller --max_rows."
            )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    dataset = data.load(FLAGS.dataset, FLAGS.data_dir)
    if FLAGS.examples > len(dataset.x_test):
        raise app.UsageError(
            f"--examples={FLAGS.examples}: the test set has only {len(dataset.x_test)} images."
        )
    if FLAGS.examples:
        dataset = data.take_first(dataset, n_test=FLAGS.examples)
    common.check_dataset(model, dataset)
    results = {
        "test_examples": len(dataset.x_test),
        "model_path": FLAGS.model_path,
        "dataset": FLAGS.dataset,
        "data_source": dataset.source,
        "data_files": dataset.files,
        "data_identified_as": dataset.identified_as,
    }
    results.update(common.test_metrics(model, dataset))
    if iw and not hasattr(model, "iwae"):
        raise app.UsageError(
            f"--iw: a {type(model).__name__} has no IWAE bound (no `iwae` method); the VAE "
            "family has one."
        )
    x = model.eval_inputs(dataset.x_test)
    for m in iw:
        start = time.time()
        results[f"niwae_{m}"] = evaluation.negative_iwae(
            model, x, m, FLAGS.max_rows, FLAGS.seed, jit_compile=FLAGS.xla
        )
        results[f"niwae_{m}_seconds"] = round(time.time() - start, 1)
    rows = [[k, v] for k, v in results.items() if isinstance(v, float) and "seconds" not in k]
    print(common.format_table(rows, ["test metric (nats)", "value"]))
    if FLAGS.output_json:
        common.write_json(FLAGS.output_json, results)
        print(f"Wrote {FLAGS.output_json}")


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
