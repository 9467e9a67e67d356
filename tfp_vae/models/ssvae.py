"""The semi-supervised VAE of Kingma et al. (2014), "M2".

Generative model: p(y) = uniform Categorical over K classes, p(z) = N(0, I),
p(x|y,z) = Bernoulli(logits = MLP([z, onehot(y)])). Inference: q(y|x) = Categorical(logits =
classifier MLP(x)), q(z|x,y) = Gaussian(MLP([x, onehot(y)])).

Bounds (nats, per example; `rec_k` = -log p(x|y=k, z_k) at one z_k ~ q(z|x,k) and
`kl_z_k` = KL(q(z|x,k) || p(z)), analytic):

  labelled   -L(x, y) = rec_y + kl_z_y + log K           (log K = -log p(y); included, so -L is
                                                          a true bound on -log p(x, y))
  unlabelled -U(x)    = sum_k q(k|x) (rec_k + kl_z_k) + KL(q(y|x) || p(y))

The unlabelled bound enumerates all K labels in one batched pass (no Python loop over classes):
the networks run once on a class-major block of K * B rows. The encoder's first layer sees
[x, onehot(k)], whose product with its kernel is x W_x + W_y[k]: x W_x is computed once per image
and each label adds its row (`networks.apply_enumerated`), so the largest layer of the step runs
B times instead of K * B times; the result is the tiled pass's to float32 rounding.

Training loss (what `train_step` minimises), with means over the examples of each set:

  loss = gen_weight * (mean_U[-U(x)] + mean_L[-L(x, y)]) + class_weight * mean_L[-log q(y|x)]

so the unlabelled batch and the labelled set weigh the same whatever their sizes (97 and 100
in the recipe, where this is within 2% of Kingma's per-example sum rescaled by 2 / 197).

`SSVAE` stands alongside `LatentVariableModel` rather than subclassing it: its encoder and
decoder take a label (`encode(x, y)`, `decode(z, y)`) and its train step consumes a pair of
batches, so the base class's ELBO/IWAE machinery and `reconstruct` would all have to be
overridden or would silently do the wrong thing (its SavedModel signatures, built in
`tfp_vae.signatures`, are those of a class-conditional model). It reuses `check_images`, the
distribution layers, `networks.mlp` and `objectives` instead.
"""

import math
from collections.abc import Sequence

import keras
import numpy as np

from tfp_vae import backend, checks, layers, likelihoods, networks, semisupervised
from tfp_vae.backend import Tensor, tfd, tfp
from tfp_vae.checks import (
    IMAGE_PROBLEMS,
    INPUT_PROBLEMS,
    NUM_CLASSES,
    call_arguments,
    check_array,
    check_labels,
    first_problem,
    label_problem,
    label_problems,
    labels_for,
    raise_on_problem,
    resolve_input_shape,
)
from tfp_vae.models import params
from tfp_vae.models.core import Model, batch_means, evaluation_seed
from tfp_vae.models.params import Param
from tfp_vae.objectives import classification_loss, labelled_negative_elbo, unlabelled_bound_terms

ops = keras.ops

# The likelihoods known by name (the SSVAE takes any `tfp_vae.likelihoods.Likelihood`).
LIKELIHOODS = likelihoods.names()


# ----------------------------------------------------------------------------------------------
# The model.


@keras.saving.register_keras_serializable("tfp_vae")
class CategoricalFromLogits(keras.layers.Layer):
    """Logits [..., K] -> tfd.Categorical(logits): batch [...], event [].

    Always float32 (see tfp_vae.layers): under a mixed-precision policy the logits are cast up.
    """

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})

    def call(self, logits):
        return tfd.Categorical(logits=ops.cast(logits, "float32"))


def _class_count(value):
    """SSVAE's `num_classes` as an int >= 2."""
    if checks.positive_int(value, "num_classes") < 2:
        raise ValueError(f"num_classes must be >= 2; got {value}.")
    return int(value)


@keras.saving.register_keras_serializable("tfp_vae")
class SSVAE(Model):
    """Semi-supervised VAE (M2), trained by one `model.fit` on labelled + unlabelled data.

    Args:
      z_dim: latent size (64 in the recipe).
      hidden: hidden sizes of the encoder q(z|x,y) and decoder p(x|y,z) MLPs (300, 300).
      classifier_hidden: hidden sizes of the classifier q(y|x) (300, 300).
      activation: hidden activation of encoder and decoder (ELU).
      classifier_activation: hidden activation of the classifier (ReLU).
      num_classes: K (10).
      gen_weight: weight on the bounds in the loss (1); 0 trains the classifier alone.
      class_weight: weight on the labelled cross-entropy (100).
      labelled_bound: include the labelled bound -L(x, y) in the loss (default). False gives
        the course reference's loss, gen_weight * -U + class_weight * cross-entropy, where the
        labelled images only feed the classifier (and may be grayscale).
      min_variance: floor added to the softplus posterior variance.
      init: "torch" (the recipe's) or "glorot"; see networks.mlp.
      input_shape: one input's shape without the batch axis ((28, 28, 1), (64,), ...; the
        default (784,) is MNIST's images as flat vectors); inputs may come shaped or flat
        (`tfp_vae.checks.accepted_shapes`). The classifier gets them as [B, *input_shape]; the
        encoder and decoder work on flat x (x_dim values) beside a one-hot label.
      x_dim: the older way to say input_shape=(x_dim,).
      likelihood: "bernoulli" (binary pixels, the recipe) or "gaussian" (real-valued features
        with a diagonal Gaussian p(x|y,z) whose mean and softplus variance come from the
        decoder; M2 on the latent features of M1, see `tfp_vae.models.stacked`).
      seed: keys the training steps' random draws with the step count
        (`tfp_vae.models.core.step_seed`); None draws one. Kept in the config.
      clip_norm: clip each step's gradient to this global norm (None: no clipping).
      encoder: None (the recipe's MLP, from hidden, activation and init) or any Keras layer or
        model (built or not) mapping [x, onehot(y)], [B, x_dim + num_classes], to the
        posterior's parameters [B, 2 * z_dim].
      decoder: None (the recipe's MLP) or any Keras layer or model mapping [z, onehot(y)],
        [B, z_dim + num_classes], to the likelihood's parameters: Bernoulli logits [B, x_dim],
        or for the Gaussian likelihood means and pre-softplus variances [B, 2 * x_dim].
      classifier: None (the recipe's MLP, from classifier_hidden and classifier_activation) or
        any Keras layer or model mapping x [B, x_dim] to the logits of q(y|x) [B, num_classes].
        A `keras.Sequential` encoder or decoder whose first layer is a plain Dense has that
        layer split for the label enumeration (`factorise_labels`); any other is tiled.

    Training data (see `make_train_dataset`): each element is
    (unlabelled_x [B, x_dim], (labelled_x [L, x_dim], labelled_y [L] ints or [L, K] one-hot)),
    binary images. Train metrics: `loss`, `nelbo` (unlabelled -U), `labelled_nelbo` (-L),
    `kl_z`, `kl_y`, `rec` (parts of the unlabelled bound), `class_loss` (-log q(y|x) on the
    labelled set) and `accuracy` (on the labelled set).

    Test data: (x, y) with binary x, or ((x_binary, x_for_classifier), y) (see
    `make_eval_dataset`). Test metrics: `accuracy`, `nelbo`, `kl_z`, `kl_y`, `rec`.
    """

    class_conditional = True
    TRAIN_METRICS = (
        "loss",
        "nelbo",
        "labelled_nelbo",
        "kl_z",
        "kl_y",
        "rec",
        "class_loss",
        "accuracy",
    )
    TEST_METRICS = ("accuracy", "nelbo", "kl_z", "kl_y", "rec")
    # A subclass that adds sub-layers after this __init__ sets False and builds itself (Keras
    # locks a built layer's state).
    build_at_init = True
    # Enumerate labels by splitting the first Dense layer of the encoder and decoder (exact, and
    # cheaper); False tiles x and concatenates one-hots. Read when a step is traced.
    factorise_labels = True
    # The parameters besides core.Model's (see `tfp_vae.models.params`); input_shape (with
    # x_dim) and likelihood are resolved in the constructor, the user's networks saved beside
    # them (`networks.serialize_networks`). bin/train keeps the recipe's hidden sizes.
    PARAMS = (
        Param("z_dim", params.positive_int("z_dim"), flag=True),
        Param("hidden", params.positive_ints("hidden")),
        Param("classifier_hidden", params.positive_ints("classifier_hidden")),
        Param("activation", params.activation("activation")),
        Param("classifier_activation", params.activation("classifier_activation")),
        Param("num_classes", _class_count),
        Param("gen_weight", params.finite_float("gen_weight", minimum=0.0), flag=True),
        Param("class_weight", params.finite_float("class_weight", minimum=0.0), flag=True),
        Param("min_variance", params.finite_float("min_variance", minimum=0.0)),
        Param("labelled_bound", params.boolean("labelled_bound"), flag=True),
        Param("init", params.one_of("init", networks.INITS)),
        Param("input_shape"),
        Param(
            "likelihood",
            to_config=lambda model: likelihoods.serialize(
                model.likelihood, model.x_dim, model.min_variance
            ),
            flag=True,
        ),
    )

    def __init__(
        self,
        z_dim: int = 64,
        hidden: Sequence[int] = (300, 300),
        classifier_hidden: Sequence[int] = (300, 300),
        activation: str = "elu",
        classifier_activation: str = "relu",
        num_classes: int = NUM_CLASSES,
        gen_weight: float = 1.0,
        class_weight: float = 100.0,
        min_variance: float = 1e-8,
        init: str = "torch",
        x_dim: int | None = None,
        labelled_bound: bool = True,
        likelihood: str = "bernoulli",
        seed: int | None = None,
        clip_norm: float | None = None,
        encoder: keras.Layer | None = None,
        decoder: keras.Layer | None = None,
        classifier: keras.Layer | None = None,
        input_shape: Sequence[int] | None = None,
        **kwargs,
    ):
        super().__init__(seed=seed, clip_norm=clip_norm, **kwargs)
        if not isinstance(likelihood, (likelihoods.Likelihood, dict)):
            likelihoods.check_name(likelihood)
        params.assign(self, SSVAE, locals())
        self.input_shape = resolve_input_shape(input_shape, x_dim)
        self.x_dim = math.prod(self.input_shape)
        # p(x|y,z)'s layer: the decoder's output [..., outputs_per_dimension * x_dim] is its input.
        self.likelihood = likelihoods.get(likelihood, self.x_dim, self.min_variance)
        k = self.num_classes
        # The user's networks are kept in the config (`get_config`); the default MLPs are not.
        self._user_networks = tuple(
            name
            for name, network in (
                ("classifier", classifier),
                ("encoder", encoder),
                ("decoder", decoder),
            )
            if network is not None
        )
        # The recipe's MLP takes flat inputs; a user's classifier takes them shaped.
        self.classifier_input_shape = None if classifier is None else self.input_shape
        if classifier is None:
            self.classifier = networks.mlp(
                self.x_dim,
                self.classifier_hidden,
                k,
                classifier_activation,
                init,
                name="classifier",
            )
        else:
            self.classifier = networks.user_network(
                classifier, "classifier", self.input_shape, [k], output_formula="num_classes"
            )
        if encoder is None:
            self.encoder = networks.mlp(
                self.x_dim + k, self.hidden, 2 * self.z_dim, activation, init, name="encoder"
            )
        else:
            self.encoder = networks.user_network(
                encoder,
                "encoder",
                self.x_dim + k,
                [2 * self.z_dim],
                "x_dim + num_classes",
                "2 * z_dim",
            )
        per = self.likelihood.outputs_per_dimension
        out_dim = self.x_dim * per
        if decoder is None:
            self.decoder = networks.mlp(
                self.z_dim + k, self.hidden, out_dim, activation, init, name="decoder"
            )
        else:
            self.decoder = networks.user_network(
                decoder,
                "decoder",
                self.z_dim + k,
                [out_dim],
                "z_dim + num_classes",
                f"{per} * x_dim" if per > 1 else "x_dim",
            )
        self.label_posterior = CategoricalFromLogits()
        self.posterior = layers.GaussianPosterior(min_variance)
        self.prior_layer = layers.StandardNormalPrior(self.z_dim)
        self._make_metrics(self.TRAIN_METRICS + self.TEST_METRICS)
        if type(self).build_at_init:
            self.build((None, self.x_dim))

    # ---- distributions ----------------------------------------------------------------------

    def prior(self) -> tfd.Distribution:
        """p(z): batch [], event [z_dim]."""
        return self.prior_layer()

    def label_prior(self) -> tfd.Distribution:
        """p(y): uniform Categorical over num_classes."""
        return tfd.Categorical(logits=ops.zeros([self.num_classes]))

    @property
    def likelihood_name(self) -> str:
        """The likelihood's registered family ("bernoulli", ...; see `tfp_vae.likelihoods`)."""
        return self.likelihood.family

    @property
    def input_dim(self):
        """The width of the inputs every method takes: x_dim (a stacked model: its pixels)."""
        return self.x_dim

    def _inputs(self, x, binary=True, sample=False, seed=None, check_values=True):
        """Checks raw inputs and returns what M2 models: float32 [B, x_dim].

        With the Bernoulli likelihood, images (`check_images`; `binary` requires 0/1 pixels,
        else grayscale in [0, 1] is allowed); with the Gaussian one, finite features
        (`check_features`). `check_values=False` checks only shapes and dtypes (the fused update
        checks values with `_value_problem` instead). A stacked model overrides this to map
        images to features (`sample` and `seed` say how; unused here).
        """
        del sample, seed
        return self.likelihood.check(x, self.input_shape, binary, check_values)

    def _value_problem(self, x, binary=True):
        """int32 code (0: fine) of the values of raw inputs x, float32 [B, input_dim], as
        `_inputs` checks them; a message of `input_problems`. Plain ops (XLA-safe)."""
        return self.likelihood.problem(x, binary)

    @property
    def input_problems(self):
        """The messages of the input checks' codes (1-based): pixels, features, labels."""
        return INPUT_PROBLEMS + label_problems(self.num_classes)

    def _encode(self, x, labels, training=False):
        """q(z|x,y) for x [N, x_dim] and int labels [N] (not checked). `training`: the
        networks' mode here and below (True only in the training steps)."""
        return self.posterior(
            networks.apply_labelled(
                self.encoder, x, labels, self.num_classes, self.factorise_labels, training
            )
        )

    def _decode(self, z, labels, training=False):
        """p(x|y,z) for z [N, z_dim] and int labels [N] (not checked)."""
        return self.likelihood(
            networks.apply_labelled(
                self.decoder, z, labels, self.num_classes, self.factorise_labels, training
            )
        )

    def _classifier_logits(self, x, training=False):
        """The classifier's logits [B, K] as float32 (the network may compute in bfloat16 or
        float16 under a mixed-precision policy; every softmax, KL and loss is float32)."""
        logits = networks.apply(self.classifier, x, self.classifier_input_shape, training)
        return ops.cast(logits, "float32")

    def class_logits(self, x: Tensor | np.ndarray) -> Tensor:
        """Logits [B, K] of q(y|x); x may be grayscale in [0, 1] (checked)."""
        return self._classifier_logits(self._inputs(x, binary=False))

    def label_distribution(self, x: Tensor | np.ndarray) -> tfd.Distribution:
        """q(y|x) as a tfd.Categorical, batch [B]."""
        return self.label_posterior(self.class_logits(x))

    def classify(self, x: Tensor | np.ndarray) -> Tensor:
        """Class probabilities q(y|x), [B, K]; x may be grayscale in [0, 1]."""
        return ops.softmax(self.class_logits(x), axis=-1)

    def encode(
        self, x: Tensor | np.ndarray, y: int | Tensor | np.ndarray, training: bool = False
    ) -> tfd.Distribution:
        """q(z|x,y): batch [B], event [z_dim]. y: ints [B] (or one scalar) or one-hot [B, K].
        `training`: the encoder's mode (a stacked model's M1 stays in inference mode)."""
        x = self._inputs(x, binary=False)
        return self._encode(x, labels_for(y, ops.shape(x)[0], self.num_classes), training)

    def decode(
        self, z: Tensor | np.ndarray, y: int | Tensor | np.ndarray, training: bool = False
    ) -> tfd.Distribution:
        """p(x|y,z): batch [B], event [x_dim]. z: [B, z_dim]; y as in `encode`; `training`: the
        decoder's mode."""
        z = ops.convert_to_tensor(z, "float32")
        shape = backend.static_shape(z)  # A JAX shape is a tuple, with no .rank.
        if shape is None or len(shape) != 2 or shape[-1] != self.z_dim:
            raise ValueError(
                f"Expected latents of shape [batch, {self.z_dim}]; got "
                f"{'unknown' if shape is None else shape}."
            )
        return self._decode(z, labels_for(y, ops.shape(z)[0], self.num_classes), training)

    # ---- bounds -----------------------------------------------------------------------------

    def _class_terms(self, x, labels, seed=None, training=False):
        """rec = -log p(x|y,z) at one z ~ q(z|x,y), and analytic KL(q(z|x,y) || p(z)): [N]."""
        q = self._encode(x, labels, training)
        z = q.sample(seed=seed)
        rec = -self._decode(z, labels, training).log_prob(x)
        return rec, tfd.kl_divergence(q, self.prior())

    def enumerated_terms(
        self, x: Tensor, seed: Tensor | None = None, training: bool = False
    ) -> tuple[Tensor, Tensor]:
        """rec and kl_z for every label, in one batched pass: two [B, K] tensors.

        For x [B, x_dim] (binary, not checked), the networks run on K * B rows, class-major (row
        k * B + i pairs example i with label k), without a Python loop over labels. The
        encoder's first layer computes x W_x once per image (`networks.apply_enumerated`) where
        the network allows it; the tiled pass, `factorise_labels = False`, gives the same bound
        with the same noise. `training`: the networks' mode (True in the training steps).
        """
        k = self.num_classes
        q = self.posterior(
            networks.apply_enumerated(
                self.encoder, x, k, shared=True, factorise=self.factorise_labels, training=training
            )
        )
        z = q.sample(seed=seed)  # [K * B, z_dim]
        out = networks.apply_enumerated(
            self.decoder, z, k, shared=False, factorise=self.factorise_labels, training=training
        )  # [K * B, d_out]
        # As [K, B, d_out] the likelihood has batch [K, B], and x [B, x_dim] broadcasts against
        # it: no K copies of the images.
        p = self.likelihood(ops.reshape(out, [k, -1, out.shape[-1]]))
        rec = -p.log_prob(x)  # [K, B]
        kl_z = ops.reshape(tfd.kl_divergence(q, self.prior()), [k, -1])
        return ops.transpose(rec), ops.transpose(kl_z)

    def unlabelled_terms(
        self, x: Tensor, seed: Tensor | None = None, training: bool = False
    ) -> dict[str, Tensor]:
        """-U(x) and its parts for binary x [B, x_dim] (not checked): dict of [B] tensors
        `nelbo`, `rec`, `kl_z`, `kl_y` (see `unlabelled_bound_terms`) and `class_logits` [B, K].
        `training`: the networks' mode (True in the training steps)."""
        logits = self._classifier_logits(x, training)
        rec, kl_z = self.enumerated_terms(x, seed, training)
        return {**unlabelled_bound_terms(logits, rec, kl_z), "class_logits": logits}

    def labelled_terms(
        self,
        x: Tensor,
        labels: Tensor,
        seed: Tensor | None = None,
        training: bool = False,
    ) -> dict[str, Tensor]:
        """-L(x, y) (including log K) and its parts for binary x [B, x_dim] and int labels [B]
        (not checked): dict of [B] tensors `nelbo`, `rec`, `kl_z`. `training`: the networks'
        mode."""
        rec, kl_z = self._class_terms(x, labels, seed, training)
        return {
            "nelbo": labelled_negative_elbo(rec, kl_z, self.num_classes),
            "rec": rec,
            "kl_z": kl_z,
        }

    def bound_terms(
        self,
        x: Tensor | np.ndarray,
        labels: Tensor | None = None,
        seed: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """-U(x) (labels None) or -L(x, y) (int labels [B], not checked) with its parts, for
        inputs x that are checked first (binary images): dict of [B] tensors with `nelbo`,
        `rec`, `kl_z` (and `kl_y` for -U). The bound of every use (`elbo`, `test_step`,
        serving); a stacked model overrides it with its own."""
        x = self._inputs(x)
        seed = backend.sampling_seed(seed)
        if labels is None:
            return self.unlabelled_terms(x, seed)
        return self.labelled_terms(x, labels, seed)

    def elbo(self, x: Tensor | np.ndarray, seed: Tensor | None = None) -> Tensor:
        """Per-example unlabelled ELBO U(x) <= log p(x) (nats) [B]; x must be binary."""
        return -self.bound_terms(x, seed=seed)["nelbo"]

    def labelled_elbo(
        self,
        x: Tensor | np.ndarray,
        y: int | Tensor | np.ndarray,
        seed: Tensor | None = None,
    ) -> Tensor:
        """Per-example labelled ELBO L(x, y) <= log p(x, y) (nats) [B]; x must be binary."""
        labels = labels_for(y, ops.shape(x)[0], self.num_classes)
        return -self.bound_terms(x, labels, seed)["nelbo"]

    # Which set each per-example training term is averaged over.
    LABELLED_TERMS = ("class_loss", "accuracy", "labelled_nelbo")
    UNLABELLED_TERMS = ("nelbo", "rec", "kl_z", "kl_y")

    def per_example_losses(
        self, unlabelled_x, labelled_x, labelled_y, check_values=True, seed=None, training=False
    ):
        """The training terms per example, before averaging: dict of `class_loss`
        (-log q(y|x)), `accuracy` (0/1) and `labelled_nelbo` (-L(x, y)), each [L], and `nelbo`
        (-U(x)), `rec`, `kl_z`, `kl_y`, each [B]. The bound terms are left out when gen_weight
        is 0 (a plain classifier: they would cost ~10x the step and change nothing).

        Inputs are checked: binary images, valid labels (ints [L] or one-hot [L, K]); only their
        shapes when `check_values` is False (the fused update checks values, `_fused_update`).
        `seed`: a stateless seed (int32 [2]) for every random draw, or None (stateful).
        `training`: the networks' mode (True in the training steps; a stacked model's M1, which
        maps the images to features in `_inputs`, stays in inference mode).
        """
        seeds = [None] * 4 if seed is None else tfp.random.split_seed(seed, 4)
        x_u = self._inputs(unlabelled_x, sample=True, seed=seeds[0], check_values=check_values)
        # Without the labelled bound the labelled images only feed the classifier: grayscale is
        # allowed then.
        x_l = self._inputs(
            labelled_x,
            binary=self.labelled_bound,
            sample=True,
            seed=seeds[1],
            check_values=check_values,
        )
        y_l = labels_for(labelled_y, ops.shape(x_l)[0], self.num_classes, check_values)
        logits_l = self._classifier_logits(x_l, training)
        out = {
            "class_loss": classification_loss(logits_l, y_l),
            "accuracy": ops.cast(
                ops.equal(ops.cast(ops.argmax(logits_l, -1), "int32"), y_l), "float32"
            ),
        }
        if self.gen_weight == 0:
            return out
        unlabelled = self.unlabelled_terms(x_u, seeds[2], training)
        out.update({name: unlabelled[name] for name in self.UNLABELLED_TERMS})
        if self.labelled_bound:
            out["labelled_nelbo"] = self.labelled_terms(x_l, y_l, seeds[3], training)["nelbo"]
        return out

    def _loss_of(self, means):
        """The training loss from the set means of the per-example terms."""
        loss = self.class_weight * means["class_loss"]
        if self.gen_weight == 0:
            return loss
        bounds = means["nelbo"] + (means["labelled_nelbo"] if self.labelled_bound else 0.0)
        return loss + self.gen_weight * bounds

    # ---- the training step's parts (see tfp_vae.models.core.Model) ---------------------------

    def parse_batch(self, data, check_values=True):
        """An element (unlabelled_x, (labelled_x, labelled_y)) as {"unlabelled_x",
        "labelled_x"}: float32 [B, input_dim] and [L, input_dim], and "labels": int32 [L].

        Shapes are checked (one label per labelled input); values too when `check_values`
        (binary images, grayscale allowed for the labelled set without the labelled bound; labels
        in range), else "label_problem" holds the labels' problem code for `batch_problem`.
        """
        try:
            unlabelled_x, (labelled_x, labelled_y) = data
        except (TypeError, ValueError):
            raise ValueError(
                "SSVAE trains on elements (unlabelled_x, (labelled_x, labelled_y)); "
                "build the dataset with tfp_vae.semisupervised.make_train_dataset."
            ) from None
        x_u, x_l = self._raw_inputs(unlabelled_x), self._raw_inputs(labelled_x)
        # One label per labelled input: a ValueError when traced with static shapes.
        n_l = ops.shape(x_l)[0]
        batch = {
            "unlabelled_x": x_u,
            "labelled_x": x_l,
            "labels": labels_for(labelled_y, n_l, self.num_classes, check_values),
        }
        if check_values:
            problems = self.input_problems
            batch["unlabelled_x"] = raise_on_problem(x_u, self._value_problem(x_u), problems)
            batch["labelled_x"] = raise_on_problem(
                x_l, self._value_problem(x_l, binary=self.labelled_bound), problems
            )
        else:
            batch["label_problem"] = label_problem(
                labelled_y, self.num_classes, offset=len(IMAGE_PROBLEMS) + 1
            )
        return batch

    def batch_problem(self, batch):
        problem = first_problem(
            [
                self._value_problem(batch["unlabelled_x"]),
                self._value_problem(batch["labelled_x"], binary=self.labelled_bound),
                batch["label_problem"],
            ]
        )
        # Kept in range even when the batch is refused: TF may run the cross-entropy op (whose
        # CPU kernel raises on a label out of range) although the update's branch is not taken,
        # and its error would hide ours.
        labels = ops.clip(batch["labels"], 0, self.num_classes - 1)
        return problem, {**batch, "labels": labels}

    def batch_losses(self, batch, seed=None, training=False):
        """The training loss (see the module's docstring) from the set means of
        `per_example_losses` (each over its own set: unlabelled batch or labelled set), and the
        per-example terms (the train metrics)."""
        terms = self.per_example_losses(
            batch["unlabelled_x"],
            batch["labelled_x"],
            batch["labels"],
            check_values=False,
            seed=seed,
            training=training,
        )
        return self._loss_of(batch_means(terms)), terms

    def train_metric_names(self):
        """The train metrics a step reports: the labelled set's terms, and the bounds' unless
        gen_weight is 0 (see `per_example_losses`)."""
        names = {"loss", "class_loss", "accuracy"}
        if self.gen_weight != 0:
            names.update(self.UNLABELLED_TERMS)
            if self.labelled_bound:
                names.add("labelled_nelbo")
        return [n for n in self.TRAIN_METRICS if n in names]

    def test_metric_names(self):
        return list(self.TEST_METRICS)

    def _raw_inputs(self, x):
        """Raw inputs as float32 [B, input_dim], their shape checked (not their values)."""
        return self._inputs(x, check_values=False)

    @staticmethod
    def _test_parts(data):
        """(x for the bound, x for the classifier, y) of an element of test data."""
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError(
                "SSVAE evaluates on (x, y) or ((x_binary, x_for_classifier), y); "
                "build the dataset with tfp_vae.semisupervised.make_eval_dataset."
            )
        inputs, y = data
        if isinstance(inputs, (tuple, list)):
            x_bound, x_class = inputs
        else:
            x_bound = x_class = inputs
        return x_bound, x_class, y

    def check_test_data(self, data):
        """What `test_terms` checks: both inputs and the labels (one per example)."""
        x_bound, x_class, y = self._test_parts(data)
        x_class = self._inputs(x_class, binary=False)
        labels_for(y, ops.shape(x_class)[0], self.num_classes)
        self._inputs(x_bound)

    def test_terms(self, data):
        x_bound, x_class, y = self._test_parts(data)
        logits = self.class_logits(x_class)
        labels = labels_for(y, ops.shape(logits)[0], self.num_classes)
        # Seeded by the batch (`evaluation_seed`): the same weights and data, the same numbers.
        terms = self.bound_terms(x_bound, seed=evaluation_seed(self, x_bound))
        values = {name: terms[name] for name in ("nelbo", "rec", "kl_z", "kl_y")}
        values["accuracy"] = ops.cast(
            ops.equal(ops.cast(ops.argmax(logits, -1), "int32"), labels), "float32"
        )
        return values

    def evaluate(self, *args, **kwargs):
        """Keras' `evaluate`. Arrays (NumPy or eager tensors) of inputs and labels, (x, y) or
        ((x_binary, x_for_classifier), y), are checked up front as `test_step` checks them, so
        that bad pixels or labels fail with their ValueError before the first step (not again
        when `fit` evaluates its validation data each epoch: it was checked then)."""
        if kwargs.get("_use_cached_eval_dataset"):
            return super().evaluate(*args, **kwargs)
        arguments = call_arguments(keras.Model.evaluate, self, args, kwargs)
        x = arguments.get("x")
        x_bound, x_class = x if isinstance(x, (tuple, list)) and len(x) == 2 else (x, x)
        for inputs, binary in ((x_bound, True), (x_class, False)):
            check_array(
                inputs,
                lambda rows, binary=binary: raise_on_problem(
                    None, self._value_problem(self._raw_inputs(rows), binary), self.input_problems
                ),
            )
        check_array(arguments.get("y"), lambda rows: check_labels(rows, self.num_classes))
        return super().evaluate(*args, **kwargs)

    def call(self, x, training=False):
        """Class probabilities q(y|x) [B, K] (see `classify`)."""
        return self.classify(x)

    def get_config(self):
        return networks.serialize_networks(super().get_config(), self, self._user_networks)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = networks.deserialize_networks(
            config, ("classifier", "encoder", "decoder"), custom_objects
        )
        return super().from_config(config, custom_objects)

    # ---- uses -------------------------------------------------------------------------------

    def sample(
        self,
        n: int | Tensor,
        y: int | Tensor | np.ndarray | None = None,
        seed: Tensor | None = None,
    ) -> Tensor:
        """Pixel probabilities [n, x_dim] of p(x|y,z), z ~ p(z), for digits of class y.

        y: one class for all (scalar), one per sample ([n], ints or one-hot), or None for the
        classes in turn (0, 1, ..., K-1, 0, ...).
        """
        n = self.check_sample_count(n)
        if y is None:
            y = ops.arange(n, dtype="int32") % self.num_classes
        labels = labels_for(y, n, self.num_classes)

        def draw(start, size, seed):
            z = self.prior().sample(size, seed=seed)
            return {"images": self._observed(self._decode(z, labels[start : start + size]))}

        # A large n in chunks (`checks.in_chunks`); one too large for its output is refused.
        rows = checks.chunk_rows(self.widest_values())
        return checks.in_chunks(draw, n, rows, backend.sampling_seed(seed))["images"]

    def sample_grid(self, rows: int, seed: Tensor | None = None) -> Tensor:
        """The style grid (`style_grid`): a row per z ~ p(z), a column per class."""
        return self.style_grid(rows, seed=seed)

    def style_grid(self, rows: int, seed: Tensor | None = None) -> Tensor:
        """[rows * K, x_dim] data-space means: row r decodes one z ~ p(z) with y = 0..K-1 (the
        style held, the class varied). `seed`: a stateless seed of the z draws."""
        k = self.num_classes
        z = self.prior().sample(rows, seed=backend.sampling_seed(seed))
        return self.generate(
            ops.repeat(z, k, axis=0), ops.tile(ops.arange(k, dtype="int32"), [rows])
        )

    def generate(self, z: Tensor | np.ndarray, y: int | Tensor | np.ndarray) -> Tensor:
        """The data-space mean of p(x|y,z) at given latents: pixel probabilities [B, x_dim] (or
        feature means). z: [B, z_dim]; y as in `encode`."""
        return self._observed(self.decode(z, y))

    def _observed(self, p):
        """The mean of the data space for p(x|y,z): pixel probabilities (or feature means); a
        stacked model maps its features to pixels."""
        return p.mean()

    def reconstruct(
        self, x: Tensor | np.ndarray, y: int | Tensor | np.ndarray | None = None
    ) -> Tensor:
        """Pixel probabilities [B, x_dim] of p(x|y,z) at the mean of q(z|x,y); y defaults to
        the classifier's prediction argmax q(y|x). x may be grayscale."""
        x = self._inputs(x, binary=False)
        if y is None:
            y = ops.cast(ops.argmax(self._classifier_logits(x), axis=-1), "int32")
        labels = labels_for(y, ops.shape(x)[0], self.num_classes)
        return self._observed(self._decode(self._encode(x, labels).mean(), labels))

    # ---- data and figures (what the tools ask; see tfp_vae.models.core.Model) ---------------

    @property
    def figure_kinds(self):
        """The figures of `core.Model`, and the class grid (a row per class)."""
        return super().figure_kinds + ("class_grid",)

    train_options = (
        "labels_per_class",
        "label_seed",
        "labelled_binarization",
        "labelled_indices",
        "labelled_batch_size",
    )

    def train_dataset(
        self,
        dataset,
        batch_size,
        seed=None,
        start_step=0,
        binarization=None,
        labels_per_class=10,
        label_seed=0,
        labelled_binarization=None,
        labelled_indices=None,
        labelled_batch_size=None,
    ):
        """`tfp_vae.semisupervised.make_train_dataset` of `dataset`'s training split (images and
        labels): unlabelled batches and the labelled set, transformed as the likelihood of the
        inputs needs them (`data_transforms["train"]`, or `binarization` where it can model
        the result; ValueError otherwise)."""
        self.check_dataset(dataset)
        likelihood = self.data_likelihood
        binarization = likelihood.check_transform(binarization or self.data_transforms["train"])
        if labelled_binarization is not None and not (
            labelled_binarization == "none" and not self.labelled_bound
        ):
            # Grayscale labelled images go only to the classifier when there is no labelled bound.
            likelihood.check_transform(labelled_binarization, "labelled_binarization")
        # Before the stream allocates a batch (the labelled one is drawn, not enumerated).
        self.check_batch_size(batch_size)
        if labelled_batch_size is not None:
            self.check_batch_size(labelled_batch_size, "labelled_batch_size")
        return semisupervised.make_train_dataset(
            dataset.x_train,
            dataset.y_train,
            labels_per_class,
            label_seed,
            batch_size,
            seed,
            binarization,
            labelled_binarization,
            labelled_indices,
            labelled_batch_size,
            start_step=start_step,
        )

    def eval_dataset(self, images, labels=None, batch_size=1000):
        """`tfp_vae.semisupervised.make_eval_dataset`: the bound on `images` transformed as the
        likelihood needs them (`data_transforms["eval"]`), the accuracy on grayscale ones."""
        if labels is None:
            raise ValueError(f"A {type(self).__name__} evaluates on labelled images; pass labels.")
        return semisupervised.make_eval_dataset(
            images, labels, batch_size, self.data_transforms["eval"]
        )

    def test_metrics(self, images, labels=None, batch_size=1000):
        """The test metrics; `accuracy` classifies grayscale images (as the reference does) and,
        for binary inputs, `accuracy_binarized` the statically binarised ones."""
        results = super().test_metrics(images, labels, batch_size)
        if self.data_likelihood.binary:
            from tfp_vae import data

            binary = data.eval_dataset(images, batch_size, labels=labels)
            results["accuracy_binarized"] = float(
                self.evaluate(binary, verbose=0, return_dict=True)["accuracy"]
            )
        return results

    def latent_means(self, x):
        """(the means [B, z_dim] of q(z|x, y), y [B]): y the classifier's prediction
        argmax q(y|x), which the figures condition on."""
        y = ops.cast(ops.argmax(self.class_logits(x), axis=-1), "int32")
        return self.encode(x, y).mean(), y
