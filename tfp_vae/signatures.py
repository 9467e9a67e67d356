"""The SavedModel's signatures, built from what a model exposes (the export side of a model).

`serving_functions(model)` and `training_functions(model)` give name -> (function,
input_signature) for `tfp_vae.export`; the functions call only the model's public API (`encode`,
`decode`, `sample_latents`, `check_inputs`, `elbo_terms`, `iwae`, the likelihood's
`parameters`; for a class-conditional model `classify`, `encode(x, y)`, `decode(z, y)`,
`generate`, `sample`, `bound_terms`; `signature_train_step` for the trainable export), so a
user's subclass of `LatentVariableModel` or `SSVAE` exports with the same signatures without
writing any. A model that still defines its own `serving_functions()` or
`training_functions()` (the way before these moved here) is exported with those.

Input specs come in two kinds (see `declared_specs` and docs/savedmodel.md):
  - the functions are traced with open specs (`tf.TensorSpec(None, ...)`), so that every input,
    whatever its shape, reaches the package's own check and its one-sentence message (and
    [B, 28, 28] images are taken beside [B, 784]);
  - the SavedModel's signatures declare each input's feature shape with a dynamic batch (`x`
    [None, *data_shape], `z` [None, z_dim], `y` [None], `n` and `m` [], `seed` [2]), which is what
    `saved_model_cli show` prints; their graph is the open function's, so the checks still run.

Outputs in data space (`decode`'s parameters, `sample`'s images, the SSVAE's `observed`) have the
shape of one input, [B, *data_shape]: image-shaped for a model of images ((28, 28, 1)), flat
[B, x_dim] for a model of vectors (the shipped (784,) models).
"""

from collections.abc import Sequence

import tensorflow as tf

from tfp_vae.checks import (
    assert_that,
    check_count,
    check_features,
    check_importance_samples,
    check_seed,
    padded_batch,
)


def _open(name: str, dtype: tf.DType = tf.float32) -> tf.TensorSpec:
    return tf.TensorSpec(None, dtype, name=name)


def shaped(x: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
    """Flat values x [B, prod(shape)] as [B, *shape]; x itself when `shape` has one axis."""
    shape = [int(d) for d in shape]
    if len(shape) <= 1:
        return x
    return tf.reshape(x, tf.concat([tf.shape(x)[:1], shape], axis=0))


def _shaped_all(outputs: dict, shape: Sequence[int]) -> dict:
    return {name: shaped(value, shape) for name, value in outputs.items()}


def _own(model, name: str):
    """The model's own `name()` method (a model that writes its signatures itself), or None."""
    method = getattr(model, name, None)
    return method if callable(method) else None


# ---- serving --------------------------------------------------------------------------------


def serving_functions(model) -> dict:
    """name -> (function, input_signature) of the SavedModel's serving signatures of `model`.

    Every input spec is open (shape None; see the module docstring); `sample` has two input
    signatures (a list of two lists), the SavedModel's signature takes n, the loaded object's
    function also a seed. A model that defines `serving_functions()` itself is served with
    those (backward compatibility: the model classes wrote their signatures before; an override
    that extended theirs with `super().serving_functions()` calls `latent_variable_functions`
    or `class_conditional_functions` instead)."""
    own = _own(model, "serving_functions")
    if own is not None:
        return dict(own())
    if getattr(model, "class_conditional", False):
        return class_conditional_functions(model)
    return latent_variable_functions(model)


def latent_variable_functions(model) -> dict:
    """The signatures of a `LatentVariableModel` (p(z) p(x|z) with q(z|x)).

    Every input is checked in the graph (a bad one raises tf.errors.InvalidArgumentError whose
    message is the sentence `check_images` & co. raise in Python): `x` float32 inputs as the
    likelihood wants them (`model.check_inputs`): images [B, *data_shape] or flat (or
    [B, 28, 28]), binary for a Bernoulli's `elbo` and `log_likelihood` (grayscale in [0, 1]
    allowed for `encode`), in [0, 1] for the continuous Bernoulli; finite features for the
    Gaussian. `z` finite float32 latents [B, z_dim], `n` an int32 scalar >= 0, `m` one >= 1,
    `seed` int32 [2]. An empty batch (B = 0, n = 0) gives empty outputs of the usual trailing
    shapes.

    `encode(x)`: `mean`, `variance` of q(z|x), [B, z_dim]. `decode(z)`: the parameters of
    p(x|z) (`likelihood.parameters`: `probs` and `logits` for the Bernoulli; `mean` and
    `logits` for the continuous Bernoulli; `mean` and `scale` for the Gaussian), each
    [B, *data_shape]. `sample(n)`: `images` [n, *data_shape], the means of p(x|z) for every
    likelihood, and `z` [n, z_dim]; with `seed` (the loaded object's `sample(n=..., seed=...)`)
    the same seed gives the same images; a large n is drawn in chunks, and an n whose images
    one tensor cannot hold (n * x_dim above 2**31 - 1) fails its assertion. `elbo(x, seed)`:
    `elbo`, `kl`, `rec` [B]. `log_likelihood(x, m, seed)`: the IWAE-m bound [B], 1 <= m <=
    2**24 (`checks.MAX_IMPORTANCE_SAMPLES`).
    """
    data_shape = tuple(model.data_shape)

    def encode(x):
        q = model.encode(model.check_inputs(x, bound=False))
        return {"mean": q.mean(), "variance": q.variance()}

    def decode(z):
        p = model.decode(check_features(z, model.z_dim, name="latents"))
        return _shaped_all(model.likelihood.parameters(p), data_shape)

    def sample(n, seed=None):
        # Checked (the int32 range of its output) and drawn in chunks by the model.
        seed = None if seed is None else check_seed(seed)
        out = model.sample_latents(n, seed=seed)
        return {"images": shaped(out["images"], data_shape), "z": out["z"]}

    def elbo(x, seed):
        def bound(x, seed):
            terms = model.elbo_terms(x, seed=seed)
            return {"elbo": -terms["nelbo"], "kl": terms["kl"], "rec": terms["rec"]}

        return padded_batch(bound, model.check_inputs(x), check_seed(seed))

    def log_likelihood(x, m, seed):
        m = check_importance_samples(m)
        x = model.check_inputs(x)
        # An empty batch goes through as one row (see padded_batch): one sample will do.
        m = tf.where(tf.shape(x)[0] > 0, m, 1)
        return padded_batch(
            lambda x, seed: {"log_likelihood": model.iwae(x, m, seed=seed)}, x, check_seed(seed)
        )

    x, z, n = _open("x"), _open("z"), _open("n", tf.int32)
    m, seed = _open("m", tf.int32), _open("seed", tf.int32)
    return {
        "encode": (encode, [x]),
        "decode": (decode, [z]),
        "sample": (sample, [[n], [n, seed]]),
        "elbo": (elbo, [x, seed]),
        "log_likelihood": (log_likelihood, [x, m, seed]),
    }


def class_conditional_functions(model) -> dict:
    """The signatures of a class-conditional model (`SSVAE`, `M1M2`).

    `classify` comes first (the serving default). Labels are int32 class indices. Every input is
    checked in the graph, as for `latent_variable_functions`: `x` images (binary for `elbo`,
    grayscale allowed elsewhere), `z` finite latents [B, z_dim], `y` labels in 0..K-1 (one per
    example; for `sample` one per sample or a single one for all), `n` >= 0, `seed` int32 [2].
    An empty batch (B = 0, n = 0) gives empty outputs.

    `classify(x)`: `probs` [B, K]. `encode(x, y)`: `mean`, `variance` [B, z_dim]. `decode(z, y)`:
    the likelihood's parameters (of the space it models: the model's `input_shape`, M1's
    features for M1+M2) and, for a likelihood that is not binary, `observed`, the data-space
    mean [B, *data_shape] (M1+M2: M1's pixels). `sample(n, y)`: `images` [n, *data_shape].
    `elbo(x, seed)`: `elbo`, `kl_z`, `kl_y`, `rec` [B].
    """
    data_shape = tuple(model.data_shape)
    modelled_shape = tuple(model.input_shape)

    def classify(x):
        return {"probs": model.classify(x)}

    def encode(x, y):
        q = model.encode(x, y)
        return {"mean": q.mean(), "variance": q.variance()}

    def decode(z, y):
        z = check_features(z, model.z_dim, name="latents")
        out = _shaped_all(model.likelihood.parameters(model.decode(z, y)), modelled_shape)
        if not model.likelihood.binary:  # Also the data-space mean (M1+M2: M1's pixels).
            out["observed"] = shaped(model.generate(z, y), data_shape)
        return out

    def sample(n, y, seed=None):
        # y: one label per sample, or a single label ([1]) for all n.
        seed = None if seed is None else check_seed(seed)
        n = check_count(n)
        y = assert_that(
            y,
            (tf.size(y) == 1) | (tf.size(y) == n),
            [
                "y must hold one label per sample (n = ",
                n,
                ") or a single label for all of them; got ",
                tf.size(y),
                " labels.",
            ],
        )
        images = model.sample(n, tf.broadcast_to(y, tf.reshape(n, [1])), seed=seed)
        return {"images": shaped(images, data_shape)}

    def elbo(x, seed):
        def bound(x, seed):
            terms = model.bound_terms(x, seed=seed)
            return {
                "elbo": -terms["nelbo"],
                "kl_z": terms["kl_z"],
                "kl_y": terms["kl_y"],
                "rec": terms["rec"],
            }

        # The shape is checked here (for the padding), the values by bound_terms.
        x = model.data_likelihood.check(x, data_shape, check_values=False)
        return padded_batch(bound, x, check_seed(seed))

    x, z, y = _open("x"), _open("z"), tf.TensorSpec([None], tf.int32, name="y")
    n, seed = _open("n", tf.int32), _open("seed", tf.int32)
    return {
        "classify": (classify, [x]),
        "encode": (encode, [x, y]),
        "decode": (decode, [z, y]),
        "sample": (sample, [[n, y], [n, y, seed]]),
        "elbo": (elbo, [x, seed]),
    }


# ---- training -------------------------------------------------------------------------------


def training_functions(model) -> dict:
    """name -> (function, input_signature) of the signatures that train the SavedModel:
    `train_step`, one optimizer step of `model.signature_train_step` (see `tfp_vae.export`).

    A `LatentVariableModel`: `train_step(x)`, inputs x float32 [B, *data_shape] (or flat),
    checked as `train_step` checks them (binary images for the Bernoulli, see `check_inputs`).
    A class-conditional model: `train_step(unlabelled_x, labelled_x, labelled_y)`, binary
    images [B, ...] and [L, ...] and int32 class indices [L]. The gradient of the loss is
    applied with `model.optimizer`, which updates the model's variables and the optimizer's
    state (Adam's moments, its iteration count). Returns the batch means of the train metrics,
    computed before the update (float32 scalars), `optimizer_iterations` (int64, counted after
    the update) and `learning_rate` (float32). Needs a compiled model whose optimizer is built
    (`tfp_vae.export.export(..., trainable=True)` builds it). A model that defines
    `training_functions()` itself is trained with those; one without `signature_train_step`
    raises ValueError."""
    own = _own(model, "training_functions")
    if own is not None:
        return dict(own())
    if not callable(getattr(model, "signature_train_step", None)):
        raise ValueError(
            f"A trainable export is not supported for {type(model).__name__}: it has no "
            "signature_train_step(). Export it without trainable=True (--trainable)."
        )
    if getattr(model, "class_conditional", False):
        return {"train_step": _labelled_train_step(model)}
    return {"train_step": _train_step(model)}


def _train_step(model):
    def train_step(x):
        return model.signature_train_step(x)

    return train_step, [_open("x")]


def _labelled_train_step(model):
    def train_step(unlabelled_x, labelled_x, labelled_y):
        return model.signature_train_step((unlabelled_x, (labelled_x, labelled_y)))

    labels = tf.TensorSpec([None], tf.int32, name="labelled_y")
    return train_step, [_open("unlabelled_x"), _open("labelled_x"), labels]


# ---- the declared shapes ----------------------------------------------------------------------


def feature_shapes(model) -> dict[str, list[int | None]]:
    """input name -> the shape its SavedModel signature declares: the feature shape with a
    dynamic batch (None), or [] for a scalar."""
    data = [None, *(int(d) for d in model.data_shape)]
    shapes = {
        "x": data,
        "unlabelled_x": data,
        "labelled_x": data,
        "y": [None],
        "labelled_y": [None],
        "n": [],
        "m": [],
        "seed": [2],
    }
    z_dim = getattr(model, "z_dim", None)
    if z_dim is not None:
        shapes["z"] = [None, int(z_dim)]
    return shapes


def declared_specs(model, specs: Sequence[tf.TensorSpec]) -> list[tf.TensorSpec]:
    """`specs` with each open spec (unknown rank) of a known input name given its declared
    shape (`feature_shapes`); any other spec is kept as it is (a model's own signatures)."""
    shapes = feature_shapes(model)
    declared = []
    for spec in specs:
        if spec.shape.rank is None and spec.name in shapes:
            spec = tf.TensorSpec(shapes[spec.name], spec.dtype, name=spec.name)
        declared.append(spec)
    return declared
