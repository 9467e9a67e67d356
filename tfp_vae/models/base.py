"""The latent-variable models p(z) p(x|z) with an amortised q(z|x): bounds, losses, uses.

A subclass supplies `encode(x) -> q(z|x)`, `decode(z) -> p(x|z)` and `prior() -> p(z)` (all TFP
distributions; `encode` and `decode` may take `training`, which the training steps set True for
their networks) and says whether KL(q || p) has a closed form; everything else (ELBO and IWAE
objectives, the losses the training step minimises, sampling) lives here, the training step
itself in `tfp_vae.models.core.Model`, and the SavedModel's signatures, built from these methods,
in `tfp_vae.signatures`.
"""

import math
from collections.abc import Sequence

import keras
import numpy as np

from tfp_vae import backend, checks, likelihoods, objectives
from tfp_vae.backend import Tensor, tfd, tfp
from tfp_vae.checks import (
    call_arguments,
    check_array,
    check_features,
    check_importance_samples,
    resolve_input_shape,
    validation_inputs,
)
from tfp_vae.models import params
from tfp_vae.models.core import Model, batch_means, evaluation_seed, with_training
from tfp_vae.models.params import Param

ops = keras.ops

OBJECTIVES = ("elbo", "iwae")


class LatentVariableModel(Model):
    """Base class: p(z) p(x|z) with an amortised posterior q(z|x), trained by model.fit.

    Args:
      z_dim: latent size.
      input_shape: the shape of one input, without the batch axis: (28, 28, 1) for MNIST as
        images, (32, 32, 3), (64,) for feature vectors; the default (784,) is MNIST's images as
        flat vectors. Inputs may come as [B, *input_shape] or flat, [B, prod(input_shape)]
        (`tfp_vae.checks.accepted_shapes`); the model works on them flat (`x_dim` values) and
        gives a user's encoder [B, *input_shape]. Every method returns flat [B, x_dim] images.
      x_dim: the older way to say input_shape=(x_dim,); give one or the other.
      likelihood: p(x|z): a `tfp_vae.likelihoods.Likelihood`, or a registered family by name
        (`tfp_vae.likelihoods.names()`): "bernoulli" (binary pixels, the recipe),
        "continuous_bernoulli" (grayscale pixels in [0, 1]), "gaussian" (real-valued features,
        a learned per-dimension scale) or "heteroscedastic_gaussian" (the decoder gives a
        variance per dimension and example). It owns the input checks (`check_inputs`: 0/1
        pixels for the Bernoulli's bounds, grayscale in [0, 1] may still be encoded; pixels in
        [0, 1] for the continuous Bernoulli; finite values for the Gaussians) and the data
        transforms of training and evaluation (`data_transforms`: binarisation only for the
        Bernoulli).
      beta: weight on KL in the ELBO objective (beta-VAE); 1 gives the true bound.
      objective: "elbo" (the default) or "iwae" (the importance-weighted bound with `iw`
        samples, the IWAE paper's estimator).
      iw: number of importance samples for the "iwae" objective.

      seed: keys the training steps' random draws with the step count (see `step_seed`);
        None draws one (from NumPy's global RNG). Kept in the config.
      clip_norm: clip each step's gradient to this global norm (None: no clipping); see
        `clip_gradients`.

    Metrics (train and test): `loss` (what is minimised), `nelbo`, `kl`, `rec`, and `niwae`
    under the IWAE objective; all are per-example means in nats.
    """

    analytic_kl = False
    # The parameters of the VAE family (see `tfp_vae.models.params`; core.Model's seed and
    # clip_norm too). input_shape (with x_dim) and likelihood are resolved in the constructor.
    PARAMS = (
        Param("z_dim", params.positive_int("z_dim"), flag=True),
        Param("input_shape"),
        Param("beta", params.finite_float("beta (the weight on KL)", minimum=0.0), flag=True),
        Param("objective", params.one_of("objective", OBJECTIVES), flag=True),
        Param("iw", params.positive_int("iw (importance samples)"), flag=True),
        Param(
            "likelihood",
            to_config=lambda model: likelihoods.serialize(model.likelihood, model.x_dim),
            flag=True,
        ),
    )

    def __init__(
        self,
        z_dim: int = 10,
        input_shape: Sequence[int] | None = None,
        beta: float = 1.0,
        objective: str = "elbo",
        iw: int = 1,
        seed: int | None = None,
        clip_norm: float | None = None,
        likelihood: "str | likelihoods.Likelihood" = "bernoulli",
        x_dim: int | None = None,
        **kwargs,
    ):
        super().__init__(seed=seed, clip_norm=clip_norm, **kwargs)
        if not isinstance(likelihood, (likelihoods.Likelihood, dict)):
            likelihoods.check_name(likelihood)
        params.assign(self, LatentVariableModel, locals())
        self.input_shape = resolve_input_shape(input_shape, x_dim)
        self.x_dim = math.prod(self.input_shape)
        # p(x|z)'s layer: the decoder's output [..., outputs_per_dimension * x_dim] is its input.
        self.likelihood = likelihoods.get(likelihood, self.x_dim)
        self._make_metrics(
            ["loss", "nelbo", "kl", "rec"] + (["niwae"] if objective == "iwae" else [])
        )

    # ---- what a subclass provides -------------------------------------------------------------

    def encode(self, x: Tensor, training: bool = False) -> tfd.Distribution:
        """q(z|x) for checked inputs x [B, x_dim]: batch [B], event [z_dim]. `training`: the
        encoder's mode (True only in the training steps; a subclass's `encode(x)` without the
        argument is called without it)."""
        raise NotImplementedError

    def decode(self, z: Tensor, training: bool = False) -> tfd.Distribution:
        """p(x|z) for latents z [..., z_dim]: batch = z's leading dims, event [x_dim].
        `training`: the decoder's mode (as for `encode`)."""
        raise NotImplementedError

    def prior(self) -> tfd.Distribution:
        """p(z): batch [], event [z_dim]."""
        raise NotImplementedError

    # ---- inputs -------------------------------------------------------------------------------

    @property
    def likelihood_name(self) -> str:
        """The likelihood's registered family ("bernoulli", ...; see `tfp_vae.likelihoods`)."""
        return self.likelihood.family

    @property
    def input_problems(self):
        """The messages of `input_problem`'s codes (1-based): `checks.INPUT_PROBLEMS`."""
        return checks.INPUT_PROBLEMS

    def check_inputs(
        self, x: Tensor | np.ndarray, check_values: bool = True, bound: bool = True
    ) -> Tensor:
        """Checks inputs x as the likelihood needs them and returns them as float32 [B, x_dim].

        Bernoulli: images (`check_images`, also [B, 28, 28]), binary when `bound` (the pixels
        go into the likelihood; `bound=False`, for what is only encoded, allows grayscale in
        [0, 1]); continuous Bernoulli: images with pixels in [0, 1]; Gaussian: finite features
        of any range (`check_features`). A ValueError eagerly, a graph assertion in a graph.
        `check_values=False` checks only the shape and dtype (the fused update checks the
        values with `input_problem` inside XLA instead).
        """
        return self.likelihood.check(x, self.input_shape, bound, check_values)

    def input_problem(self, x: Tensor, bound: bool = True) -> Tensor:
        """int32 code (0: fine) of the values of checked-shape inputs x, float32 [B, x_dim], as
        `check_inputs` checks them; the message is `input_problems[code - 1]`. Plain ops
        (XLA-safe)."""
        return self.likelihood.problem(x, bound)

    # ---- bounds -------------------------------------------------------------------------------

    def kl(self, q: tfd.Distribution, z: Tensor) -> Tensor:
        """KL(q(z|x) || p(z)) per example [B]: analytic if the model has it, else the one-sample
        estimate at z (the sample used for the reconstruction term), which is unbiased."""
        if self.analytic_kl:
            return tfd.kl_divergence(q, self.prior())
        return objectives.monte_carlo_kl(q.log_prob(z), self.prior().log_prob(z))

    def elbo_terms(
        self, x: Tensor, seed: Tensor | None = None, training: bool = False
    ) -> dict[str, Tensor]:
        """One-sample ELBO terms for x [B, x_dim] (checked): dict of [B] tensors nelbo, kl, rec.
        `training`: the networks' mode (True in the training steps)."""
        q = with_training(self.encode, x, training=training)
        z = q.sample(seed=seed)
        rec = -with_training(self.decode, z, training=training).log_prob(x)
        kl = self.kl(q, z)
        return {"nelbo": objectives.negative_elbo(-rec, kl), "kl": kl, "rec": rec}

    def elbo(self, x: Tensor | np.ndarray, seed: Tensor | None = None) -> Tensor:
        """Per-example ELBO (a lower bound on log p(x), nats) [B]; x is checked first."""
        x = self.check_inputs(x)
        return -self.elbo_terms(x, seed=backend.sampling_seed(seed))["nelbo"]

    def iwae_log_weights(
        self, x: Tensor, m: int | Tensor, seed: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z_i), log p(z_i), log q(z_i|x) for z_i ~ q(z|x), i < m: each [m, B]."""
        return self._importance_samples(x, m, seed)[2:]

    def _importance_samples(self, x, m, seed=None, training=False):
        """q(z|x), z [m, B, z_dim] ~ q, and the three log-densities of `iwae_log_weights`."""
        q = with_training(self.encode, x, training=training)
        z = q.sample(m, seed=seed)
        log_lik = with_training(self.decode, z, training=training).log_prob(x)
        return q, z, log_lik, self.prior().log_prob(z), q.log_prob(z)

    def iwae(
        self,
        x: Tensor | np.ndarray,
        m: int | Tensor,
        seed: Tensor | None = None,
        chunk: int | None = None,
    ) -> Tensor:
        """Per-example IWAE bound with m samples [B]; m = 1 is the ELBO with a sampled KL.

        Samples are drawn `chunk` (default 1000, fewer for a large batch) at a time and folded
        into a running log-sum-exp, so memory is bounded whatever m is:
        1 <= m <= `checks.MAX_IMPORTANCE_SAMPLES` (`check_importance_samples`). m may be a
        tensor (for serving; TF only: on JAX the chunks have static shapes, m is concrete).
        """
        chunk_arg = chunk
        x = self.check_inputs(x)
        m = check_importance_samples(m)
        # Rows per chunk: `chunk` samples, or fewer so that chunk x B rows of the widest
        # intermediate stay within checks.CHUNK_VALUES (a large batch draws one at a time).
        rows = checks.chunk_rows(self.widest_values())
        if backend.is_tensorflow():  # A tf.while_loop, also for a signature's tensor m.
            return backend.steps().iwae_while_loop(self, x, m, rows, chunk_arg, seed)
        m = backend.static_value(m)
        if m is None:
            raise ValueError(
                "On JAX the IWAE bound's number of samples m must be known outside jax.jit "
                "(its chunks have static shapes); pass m as a Python int."
            )
        m = int(m)
        chunk = min(max(1, rows // max(1, int(ops.shape(x)[0]))), int(chunk_arg or 1000))
        seed = tfp.random.sanitize_seed(backend.as_seed(seed))
        # The chunks in a Python loop: the same draws and sums as TF's while loop.
        acc = ops.full([ops.shape(x)[0]], -np.inf, dtype="float32")
        for done in range(0, m, chunk):
            seed, this_seed = tfp.random.split_seed(seed)
            log_w = objectives.log_weights(
                *self.iwae_log_weights(x, min(chunk, m - done), seed=this_seed)
            )
            lse = ops.logsumexp(log_w, axis=0)
            acc = ops.logsumexp(ops.stack([acc, lse]), axis=0)
        return acc - ops.log(ops.cast(m, "float32"))

    def compute_terms(
        self, x: Tensor, training: bool = False, seed: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-example [B] tensors: `loss` (minimised) and every reported metric. `seed`: a
        stateless seed (int32 [2]) for the posterior samples, or None (stateful). `training`:
        the networks' mode, True in the training steps (`batch_losses`), False in `test_step`."""
        if self.objective == "elbo":
            terms = with_training(self.elbo_terms, x, seed=seed, training=training)
            terms["loss"] = objectives.negative_elbo(-terms["rec"], terms["kl"], self.beta)
            return terms
        # IWAE: one set of `iw` samples gives the bound; its first sample gives the ELBO terms.
        q, z, log_lik, log_prior, log_post = self._importance_samples(x, self.iw, seed, training)
        niwae = -objectives.iwae_bound(log_lik, log_prior, log_post)
        kl = (
            self.kl(q, z[0])
            if self.analytic_kl
            else objectives.monte_carlo_kl(log_post[0], log_prior[0])
        )
        rec = -log_lik[0]
        return {"loss": niwae, "niwae": niwae, "nelbo": rec + kl, "kl": kl, "rec": rec}

    # ---- the training step's parts (see tfp_vae.models.core.Model) -----------------------------

    @staticmethod
    def _images_of(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def parse_batch(self, data, check_values=True):
        """{"x": float32 [B, x_dim]}: the inputs of `data` (x, or a tuple whose first item is x),
        checked as the likelihood needs them (`check_inputs`)."""
        return {"x": self.check_inputs(self._images_of(data), check_values=check_values)}

    def batch_problem(self, batch):
        return self.input_problem(batch["x"]), batch

    def batch_losses(self, batch, seed=None, training=False):
        """The mean per-example `loss` of `compute_terms` over the (global) batch, and the
        per-example terms (the train metrics)."""
        terms = self.compute_terms(batch["x"], training=training, seed=seed)
        return batch_means({"loss": terms["loss"]})["loss"], terms

    def check_test_data(self, data):
        """The inputs of an element of test data, checked (`check_inputs`)."""
        self.check_inputs(self._images_of(data))

    def test_terms(self, data):
        x = self.check_inputs(self._images_of(data))
        # Seeded by the batch (`evaluation_seed`): the same weights and data, the same numbers.
        return self.compute_terms(x, training=False, seed=evaluation_seed(self, x))

    def fit(self, *args, **kwargs):
        """Keras' `fit`. Images given as arrays (x, validation_data's x; NumPy or eager tensors)
        are checked up front, as `check_inputs` checks them, so that uint8 or grayscale pixels
        (for the Bernoulli) fail with its ValueError before the first step; datasets are checked
        in the step."""
        arguments = call_arguments(keras.Model.fit, self, args, kwargs)
        self._check_image_arrays(arguments.get("x"))
        self._check_image_arrays(validation_inputs(arguments.get("validation_data")))
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """Keras' `evaluate`, with array images checked up front (see `fit`; not again when
        `fit` evaluates its validation data, which it checked)."""
        if not kwargs.get("_use_cached_eval_dataset"):
            self._check_image_arrays(
                call_arguments(keras.Model.evaluate, self, args, kwargs).get("x")
            )
        return super().evaluate(*args, **kwargs)

    def _check_image_arrays(self, x):
        check_array(self._images_of(x), lambda rows: self.check_inputs(rows))

    # ---- uses -----------------------------------------------------------------------------------

    def sample(self, n: int | Tensor, seed: Tensor | None = None) -> Tensor:
        """n images from the model: the means [n, x_dim] of p(x|z), z ~ p(z) (pixel
        probabilities for the Bernoulli; for the continuous Bernoulli the mean, not its
        parameter lambda). A large n is drawn in chunks (`checks.in_chunks`); an n whose
        output one tensor cannot hold, or (eagerly) the memory available cannot, is refused
        (`checks.check_size`) before anything is drawn."""
        return self.sample_latents(n, seed)["images"]

    def sample_latents(self, n: int | Tensor, seed: Tensor | None = None) -> dict:
        """{"images": [n, x_dim] (see `sample`), "z": [n, z_dim] the latents they decode}."""
        n = self.check_sample_count(n)

        def draw(start, size, seed):
            z = self.prior().sample(size, seed=seed)
            return {"images": self.decode(z).mean(), "z": z}

        rows = checks.chunk_rows(self.widest_values())
        return checks.in_chunks(draw, n, rows, backend.sampling_seed(seed))

    def sample_grid(self, rows: int, seed: Tensor | None = None, columns: int = 10) -> Tensor:
        """`rows * columns` samples (see `sample`), for a grid of `rows` rows."""
        return self.sample(int(rows) * int(columns), seed=seed)

    def reconstruct(self, x: Tensor | np.ndarray) -> Tensor:
        """The mean [B, x_dim] of p(x|z) at the posterior mean of q(z|x) (pixel probabilities
        for the Bernoulli); x is checked (`check_inputs(x, bound=False)`: grayscale allowed)."""
        x = self.check_inputs(x, bound=False)
        return self.decode(self.encode(x).mean()).mean()

    def call(self, x: Tensor | np.ndarray, training: bool = False) -> Tensor:
        """Reconstructions [B, x_dim] (see `reconstruct`; `predict` calls it), always with the
        networks in inference mode (`training` is ignored: training runs in `train_step`)."""
        return self.reconstruct(x)

    # ---- data and figures (what the tools ask; see tfp_vae.models.core.Model) -----------------

    def train_dataset(self, dataset, batch_size, seed=None, start_step=0, binarization=None):
        """`tfp_vae.data.train_dataset` of the training images, transformed as the likelihood
        needs them (`data_transforms["train"]`: fresh binarisation per batch for the Bernoulli,
        grayscale as it is otherwise); `binarization` overrides it where the likelihood can
        model the result (ValueError otherwise)."""
        from tfp_vae import data  # Deferred: the input pipeline is not the numeric core.

        binarization = self.likelihood.check_transform(
            binarization or self.data_transforms["train"]
        )
        self.check_batch_size(batch_size)  # Before the stream allocates a batch.
        return data.train_dataset(
            dataset.x_train, batch_size, binarization, seed=seed, start_step=start_step
        )

    def eval_dataset(self, images, labels=None, batch_size=1000):
        """`tfp_vae.data.eval_dataset` of `images`, transformed as the likelihood needs them
        (`data_transforms["eval"]`); labels are not used."""
        from tfp_vae import data  # Deferred: the input pipeline is not the numeric core.

        del labels
        return data.eval_dataset(images, batch_size, self.data_transforms["eval"])

    @property
    def figure_kinds(self):
        """The figures of `core.Model`, and with a 2-D latent space the decoded manifold."""
        return super().figure_kinds + (("manifold",) if self.z_dim == 2 else ())

    def latent_means(self, x: Tensor | np.ndarray) -> tuple[Tensor, None]:
        """(the means [B, z_dim] of q(z|x), None): what the figures place in latent space (a
        class-conditional model returns the classes it conditioned on instead of None)."""
        return self.encode(self.check_inputs(x, bound=False)).mean(), None

    def generate(self, z: Tensor | np.ndarray, y=None) -> Tensor:
        """The data-space means [B, x_dim] of p(x|z) at latents z [B, z_dim] (`y` is for
        class-conditional models and must be None here)."""
        if y is not None:
            raise ValueError(f"A {type(self).__name__} has no classes; pass y=None.")
        return self.decode(check_features(z, self.z_dim, name="latents")).mean()
