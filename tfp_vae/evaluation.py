"""Evaluation of trained models over whole test sets with bounded memory."""

import keras
import numpy as np

from tfp_vae import backend, checks, objectives
from tfp_vae.backend import Tensor


def negative_iwae(
    model,
    x: Tensor | np.ndarray,
    m: int,
    max_rows: int = 20000,
    seed: int = 0,
    jit_compile: bool = False,
) -> float:
    """Mean over x of -IWAE-m (nats), in calls of at most `max_rows` decoder rows.

    Each call takes `max(1, max_rows // chunk)` examples and `chunk = min(m, max_rows)` samples
    of each, returns the log-sum-exp of their log weights, and the chunks of an example are
    folded into a running log-sum-exp. Shapes are static per call (at most two chunk sizes and two
    batch sizes), so each traces once; with `jit_compile` each also compiles whole with XLA
    (slower on CPU, where TensorFlow's own large matmuls are faster than XLA's). x is checked
    here, eagerly (XLA would drop the assertions). Samples come from stateless seeds (seed, call
    number).

    Args:
      model: a LatentVariableModel.
      x: inputs [N, x_dim] (NumPy or tensor) as the model's likelihood takes them (binary
        images for the Bernoulli; see the model's `check_inputs`).
      m: importance samples per example, 1 <= m <= `checks.MAX_IMPORTANCE_SAMPLES`.
      max_rows: decoder rows per call; refused when its tensors could not be held
        (`checks.check_size`).

    Returns:
      The mean negative bound, a Python float.
    """
    # The model checks its inputs as its likelihood needs them (binary for Bernoulli pixels).
    m = int(checks.check_importance_samples(m))
    # One call's rows of the widest intermediate: within a tensor's range and the memory.
    checks.check_size(max_rows, model.widest_values(), "max_rows", "give a smaller max_rows.")
    x = backend.to_numpy(model.check_inputs(x))
    chunk = min(m, max_rows)
    batch = max(1, max_rows // chunk)

    def log_sum_exp_weights(xb, size, seed):
        log_w = objectives.log_weights(*model.iwae_log_weights(xb, size, seed=seed))
        return keras.ops.logsumexp(log_w, axis=0)

    fn = backend.compiled(log_sum_exp_weights, jit_compile, static_argnums=(1,))
    total, call = 0.0, 0
    for start in range(0, len(x), batch):
        xb = keras.ops.convert_to_tensor(x[start : start + batch])
        acc = np.full(len(xb), -np.inf)
        for done in range(0, m, chunk):
            lse = fn(xb, min(chunk, m - done), backend.seed_pair(seed, call))
            acc = np.logaddexp(acc, backend.to_numpy(lse).astype(np.float64))
            call += 1
        total += float(np.sum(acc - np.log(m)))
    return -total / len(x)
