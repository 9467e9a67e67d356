"""An independent PyTorch M2 with the course's loss, to check that our SSVAE's accuracy is not an
artefact of our implementation (Keras 3 / TFP).

  python benchmarks/ssvae_torch_peer.py --label_seed=0 --steps=10000 \
      --output_json=runs/torch_m2_s0.json

Same recipe as `bin/train --model=ssvae --nolabelled_bound --labelled_binarization=none`: the
classifier 784-300-300-10 (ReLU), encoder [x, y]-300-300-2z and decoder [z, y]-300-300-784 (ELU),
z_dim 64, PyTorch's default init, Adam 1e-3, each step 97 dynamically binarised unlabelled images
plus the whole grayscale labelled set, loss = mean -U(x) + 100 * cross-entropy, 10 labels per
class chosen by `tfp_vae.semisupervised.split_labelled` (the same images as our runs for the same
--label_seed). Test accuracy on the full grayscale test set. PyTorch only: pip install -e .[bench].
"""

import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("label_seed", 0, "Seed that picks the labelled set (as bin/train).")
flags.DEFINE_string(
    "labelled_indices",
    None,
    "A chosen labelled set instead (a file of "
    "training-set indices, as bin/train --labelled_indices).",
)
flags.DEFINE_integer("seed", 0, "Torch seed (initialisation, batches, binarisation).")
flags.DEFINE_integer("steps", 10000, "Training steps.", lower_bound=1)
flags.DEFINE_integer("eval_every", 1000, "Steps between test-accuracy prints.", lower_bound=1)
flags.DEFINE_string("output_json", None, "Where to write the results.")

from torch_m2 import build_peer  # noqa: E402  (benchmarks/torch_m2.py)


def main(argv):
    del argv
    import numpy as np
    import torch

    from tfp_vae import data, semisupervised

    torch.manual_seed(FLAGS.seed)
    mnist = data.load(download=False)
    if FLAGS.labelled_indices:
        labelled, unlabelled = semisupervised.split_by_indices(
            mnist.y_train, semisupervised.read_indices(FLAGS.labelled_indices)
        )
    else:
        labelled, unlabelled = semisupervised.split_labelled(mnist.y_train, 10, FLAGS.label_seed)
    images = torch.from_numpy(data.flatten(mnist.x_train))
    x_l, y_l = images[labelled], torch.from_numpy(mnist.y_train[labelled].astype(np.int64))
    x_u = images[unlabelled]
    x_test = torch.from_numpy(data.flatten(mnist.x_test))
    y_test = torch.from_numpy(mnist.y_test.astype(np.int64))

    step, classifier = build_peer(x_u, x_l, y_l, return_classifier=True)

    def accuracy():
        with torch.no_grad():
            return (classifier(x_test).argmax(1) == y_test).float().mean().item()

    curve = []
    start = time.time()
    for step_number in range(1, FLAGS.steps + 1):
        loss = step()
        if step_number % FLAGS.eval_every == 0:
            curve.append((step_number, accuracy()))
            print(
                f"step {step_number}: loss {loss.item():.2f}, test accuracy {curve[-1][1]:.4f}",
                flush=True,
            )
    result = {
        "label_seed": FLAGS.label_seed,
        "labelled_indices": FLAGS.labelled_indices,
        "seed": FLAGS.seed,
        "steps": FLAGS.steps,
        "accuracy": accuracy(),
        "curve": curve,
        "seconds": round(time.time() - start, 1),
        "torch_version": torch.__version__,
    }
    print(json.dumps(result))
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
