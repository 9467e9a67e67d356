"""Likelihoods p(x|z): distribution layers that also own everything that depends on them.

A `Likelihood` is a Keras layer (decoder output [..., P] -> a TFP distribution, batch [...],
event [D]) that answers, for the model that holds it and for every caller further down
(training pipeline, evaluation, plots, TensorBoard, `metrics.json`, the SavedModel):
  - which inputs it models: `check` (a ValueError or graph assertion with one sentence) and
    `problem` (the same check as an int32 code, XLA-safe), binary 0/1 pixels only for the
    Bernoulli;
  - how data are prepared for it: `train_transform` / `eval_transform`, the names the input
    pipeline takes ("dynamic" and "static" binarisation only for the Bernoulli; "none" keeps
    grayscale in [0, 1]), and `prepare` (uint8 or float images -> the float32 inputs its bounds
    take, as the evaluation does);
  - what serving returns: `parameters` (the SavedModel's `decode` outputs);
  - its registered name: `family` (what `likelihood="..."` and `--likelihood` take, kept in a
    model's config).

"gaussian" means one distribution everywhere: a per-dimension learned scale shared by all
examples (the decoder outputs the means). "heteroscedastic_gaussian" is the other one: the
decoder outputs a mean and a pre-softplus variance per dimension and example (M1+M2's p(z1|y,z2)).

A user's own likelihood subclasses `Likelihood`, registers itself with Keras
(`keras.saving.register_keras_serializable`) and `register`s its family name; models then take
it by name or as an instance.

Every layer computes in float32 whatever the global dtype policy (see `tfp_vae.layers`), in
`keras.ops` and the active backend's TFP (`tfd` of `tfp_vae.backend`): the same code on TF and JAX.
"""

from collections.abc import Sequence

import keras
import numpy as np

from tfp_vae import backend, checks
from tfp_vae.backend import Tensor, tfd

ops = keras.ops

_PACKAGE = "tfp_vae"

# The input pipeline's transforms (`tfp_vae.data.train_dataset`'s `binarization`): fresh 0/1
# draws per batch, one fixed draw (seed 0), grayscale in [0, 1] as it is.
TRANSFORMS = ("dynamic", "static", "none")


class Likelihood(keras.layers.Layer):
    """Base class: decoder output [..., outputs_per_dimension * D] -> distribution over x.

    Subclasses set `family` (the registered name), `binary` (the bounds need 0/1 data),
    `on_pixels` (inputs are pixels in [0, 1]; False: real-valued features of any range),
    `outputs_per_dimension` (decoder outputs per dimension of x), the transforms, and implement
    `call` and `parameters`.
    """

    family: str = ""
    binary = False
    on_pixels = True
    outputs_per_dimension = 1
    train_transform = "none"
    eval_transform = "none"

    def __init__(self, **kwargs):
        # float32 whatever the global policy: every log-density and loss is float32.
        super().__init__(**{**kwargs, "dtype": "float32"})

    # ---- the inputs it models -----------------------------------------------------------------

    def check(
        self,
        x: Tensor | np.ndarray,
        input_shape: int | Sequence[int],
        bound: bool = True,
        check_values: bool = True,
    ) -> Tensor:
        """Checks inputs x [B, *input_shape] (or flat) as this likelihood needs them and returns
        them as float32 [B, prod(input_shape)]. `bound`: the values go into the likelihood's
        bound (binary for the Bernoulli); False for what is only encoded or classified
        (grayscale allowed). `check_values=False` checks only the shape and dtype (`problem`
        checks the values inside XLA)."""
        if not self.on_pixels:
            return checks.check_features(x, input_shape, check_values)
        return checks.check_images(
            x, input_shape, binary=bound and self.binary, check_pixels=check_values
        )

    def problem(self, x: Tensor, bound: bool = True) -> Tensor:
        """int32 code (0: fine, else 1 + an index into `checks.INPUT_PROBLEMS`) of the values of
        flat inputs x, as `check` checks them. Plain ops (XLA-safe)."""
        if not self.on_pixels:
            return ops.cast(
                ops.where(ops.all(ops.isfinite(x)), 0, len(checks.IMAGE_PROBLEMS) + 1), "int32"
            )
        return checks.image_problem(x, binary=bound and self.binary)

    # ---- how data are prepared for it ---------------------------------------------------------

    @property
    def transforms(self) -> dict[str, str]:
        """{"train": ..., "eval": ...}: the data transforms of training and evaluation (one of
        `TRANSFORMS` each), as `metrics.json` records them."""
        return {"train": self.train_transform, "eval": self.eval_transform}

    def check_transform(self, transform: str, what: str = "binarization") -> str:
        """`transform` if this likelihood can model data prepared that way, else a ValueError in
        one line: a binary likelihood needs binarised data, the others are never fed
        binarised images."""
        if transform not in TRANSFORMS:
            raise ValueError(f"{what} must be one of {TRANSFORMS}; got {transform!r}.")
        if self.binary and transform == "none":
            raise ValueError(
                f"{what}=none feeds grayscale pixels to the {self.family} likelihood, which "
                "models 0/1 pixels; binarise (dynamic or static) or choose "
                "likelihood=continuous_bernoulli for grayscale."
            )
        if not self.binary and transform != "none":
            raise ValueError(
                f"{what}={transform} binarises the data, and the {self.family} likelihood "
                f"models them as they are; use {what}=none (its default)."
            )
        return transform

    def prepare(self, images: np.ndarray, transform: str | None = None) -> np.ndarray:
        """Data as this likelihood's bounds take them, float32 [N, D]: uint8 images are
        binarised with the static seed (`eval_transform` "static") or scaled to [0, 1];
        float data are kept as they are (flattened)."""
        images = np.asarray(images)
        transform = self.eval_transform if transform is None else transform
        if images.dtype != np.uint8:
            return images.reshape(len(images), -1).astype(np.float32)
        from tfp_vae import data  # Deferred: the input pipeline is not part of the numeric core.

        if transform == "static":
            return data.binarize_static(images)
        return data.flatten(images)

    # ---- what serving returns -----------------------------------------------------------------

    def parameters(self, p: tfd.Distribution) -> dict[str, Tensor]:
        """The SavedModel `decode` outputs for p(x|z) (each [B, D])."""
        return {"mean": p.mean()}


@keras.saving.register_keras_serializable(_PACKAGE)
class BernoulliLikelihood(Likelihood):
    """Logits [..., D] -> Independent(Bernoulli(logits), 1): batch [...], event [D].

    For binary pixels (the recipe): trained on dynamically binarised images (fresh draws per
    batch), evaluated on statically binarised ones. Samples are float32 so they can be fed
    straight back into the encoder.
    """

    family = "bernoulli"
    binary = True
    train_transform = "dynamic"
    eval_transform = "static"

    def call(self, logits):
        logits = ops.cast(logits, "float32")
        return tfd.Independent(
            LogitBernoulli(logits=logits, dtype=backend.float32), reinterpreted_batch_ndims=1
        )

    def parameters(self, p):
        return {"probs": p.mean(), "logits": p.distribution.logits}


class LogitBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose log_prob is x * logits - softplus(logits): one softplus per pixel
    instead of the parent's two plus two masked products, the same value for finite logits. The
    pixel log-densities are the bulk of the elementwise work of the IWAE bound."""

    def _log_prob(self, event):
        logits = self._logits_parameter_no_checks()
        return ops.cast(event, logits.dtype) * logits - ops.softplus(logits)


@keras.saving.register_keras_serializable(_PACKAGE)
class ContinuousBernoulliLikelihood(Likelihood):
    """Logits [..., D] -> Independent(ContinuousBernoulli(logits), 1): batch [...], event [D].

    For grayscale pixels in [0, 1] (Loaiza-Ganem & Cunningham, 2019), never binarised: the
    Bernoulli term x * logits - softplus(logits) plus log C(lambda), the normaliser that makes it
    a density on [0, 1]. Its `mean()` is not the parameter lambda = sigmoid(logits) (it is nearer
    1/2); the models return the mean as the reconstruction.
    """

    family = "continuous_bernoulli"

    def call(self, logits):
        logits = ops.cast(logits, "float32")
        return tfd.Independent(
            tfd.ContinuousBernoulli(logits=logits, dtype=backend.float32),
            reinterpreted_batch_ndims=1,
        )

    def parameters(self, p):
        return {"mean": p.mean(), "logits": p.distribution.logits}


@keras.saving.register_keras_serializable(_PACKAGE)
class GaussianLikelihood(Likelihood):
    """Means [..., D] -> Independent(Normal(means, scale), 1): batch [...], event [D].

    For real-valued data of any range. The scale is learned per dimension and shared by all
    examples (the decoder outputs only the means): scale = softplus(pre_scale) + min_scale, a
    trainable variable pre_scale of shape [D] that starts at scale = 1 (the floor keeps log p
    finite when a dimension is constant in the data).
    """

    family = "gaussian"
    on_pixels = False

    def __init__(self, x_dim, min_scale=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.x_dim, self.min_scale = int(x_dim), float(min_scale)
        if not 0 <= self.min_scale < 1:  # The scale starts at 1 (above the floor).
            raise ValueError(f"min_scale must lie in [0, 1); got {min_scale}.")
        start = float(np.log(np.expm1(1.0 - self.min_scale)))  # softplus(start) + floor = 1
        self.pre_scale = self.add_weight(
            shape=(self.x_dim,), initializer=keras.initializers.Constant(start), name="pre_scale"
        )

    def scale(self):
        """The current per-dimension scale, float32 [D]."""
        return ops.softplus(ops.convert_to_tensor(self.pre_scale)) + self.min_scale

    def call(self, means):
        means = ops.cast(means, "float32")
        return tfd.Independent(
            tfd.Normal(loc=means, scale=self.scale()), reinterpreted_batch_ndims=1
        )

    def parameters(self, p):
        # The learned per-dimension standard deviation, broadcast to [B, D].
        return {"mean": p.mean(), "scale": p.stddev()}

    def get_config(self):
        return {**super().get_config(), "x_dim": self.x_dim, "min_scale": self.min_scale}


@keras.saving.register_keras_serializable(_PACKAGE)
class HeteroscedasticGaussianLikelihood(Likelihood):
    """[means, pre-variances] [..., 2D] -> MultivariateNormalDiag: batch [...], event [D].

    A Gaussian whose variance the decoder gives per dimension and example: variance =
    softplus(second half) + min_variance. M1+M2 models M1's latent features with it.
    """

    family = "heteroscedastic_gaussian"
    on_pixels = False
    outputs_per_dimension = 2

    def __init__(self, min_variance=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.min_variance = float(min_variance)

    def call(self, h):
        return diagonal_gaussian(h, self.min_variance)

    def parameters(self, p):
        return {"mean": p.mean(), "variance": p.variance()}

    def get_config(self):
        return {**super().get_config(), "min_variance": self.min_variance}


def diagonal_gaussian(h: Tensor, min_variance: float) -> tfd.MultivariateNormalDiag:
    """h [..., 2D] -> MultivariateNormalDiag, batch [...], event [D]: the first half of h is the
    mean, variance = softplus(second half) + min_variance (the floor keeps log-densities finite
    when a network pushes a variance to zero). The posteriors' form too (`layers`)."""
    loc, pre_variance = ops.split(ops.cast(h, "float32"), 2, axis=-1)
    variance = ops.softplus(pre_variance) + min_variance
    return tfd.MultivariateNormalDiag(loc=loc, scale_diag=ops.sqrt(variance))


# family -> factory(x_dim, min_variance) of the likelihoods known by name.
_REGISTRY = {}


def register(family: str, factory) -> None:
    """Makes `factory(x_dim=..., min_variance=...) -> Likelihood` known as `family`, for
    `likelihood="family"` in the models and `--likelihood=family` in the binaries."""
    _REGISTRY[str(family)] = factory


register("bernoulli", lambda x_dim, min_variance: BernoulliLikelihood())
register("continuous_bernoulli", lambda x_dim, min_variance: ContinuousBernoulliLikelihood())
register("gaussian", lambda x_dim, min_variance: GaussianLikelihood(x_dim))
register(
    "heteroscedastic_gaussian",
    lambda x_dim, min_variance: HeteroscedasticGaussianLikelihood(min_variance),
)


def names() -> tuple[str, ...]:
    """The families known by name (`register`)."""
    return tuple(_REGISTRY)


def check_name(name: str) -> str:
    """`name` if it is a registered family, else a ValueError listing them."""
    if name not in _REGISTRY:
        raise ValueError(f"likelihood must be one of {names()}; got {name!r}.")
    return name


def get(likelihood: "str | Likelihood", x_dim: int, min_variance: float = 1e-8) -> Likelihood:
    """The likelihood layer for a model over x_dim dimensions: `likelihood` itself when it is a
    `Likelihood`, else the registered family of that name (ValueError listing them)."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, dict):  # A serialised user likelihood (a model's config).
        layer = keras.saving.deserialize_keras_object(likelihood)
        if isinstance(layer, Likelihood):
            return layer
    if not isinstance(likelihood, str):
        raise ValueError(
            f"likelihood must be a name of {names()} or a tfp_vae.likelihoods.Likelihood; "
            f"got {likelihood!r}."
        )
    return _REGISTRY[check_name(likelihood)](x_dim=int(x_dim), min_variance=float(min_variance))


def serialize(likelihood: Likelihood, x_dim: int, min_variance: float = 1e-8):
    """A model config's value for its likelihood: the family name when that name rebuilds it
    (`get(name, x_dim, min_variance)` gives the same layer), else the layer's Keras
    serialisation (a user's own likelihood, or a built-in one with other settings)."""
    factory = _REGISTRY.get(likelihood.family)
    if factory is not None:
        ref = factory(x_dim=int(x_dim), min_variance=float(min_variance))
        if type(ref) is type(likelihood) and _settings(ref) == _settings(likelihood):
            return likelihood.family
    return keras.saving.serialize_keras_object(likelihood)


def _settings(layer):
    return {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable", "dtype")}


__all__: Sequence[str] = (
    "Likelihood",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "HeteroscedasticGaussianLikelihood",
    "LogitBernoulli",
    "TRANSFORMS",
    "register",
    "names",
    "check_name",
    "get",
    "serialize",
    "diagonal_gaussian",
)
