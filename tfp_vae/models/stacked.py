"""M1+M2 of Kingma et al. (2014): the semi-supervised M2 on the latent features of a VAE (M1).

M1 is a VAE trained first, without labels. M2 (`SSVAE` with a Gaussian likelihood) then models
M1's latent z1 instead of the pixels:

  generative  p(y) p(z2) p(z1 | y, z2) p(x | z1)     p(x|z1): M1's decoder, p(z1|y,z2): Gaussian
  inference   q(z1 | x) q(y | z1) q(z2 | z1, y)       q(z1|x): M1's encoder

M1 stays fixed (its networks in inference mode, see `M1M2._inputs`) while M2 trains; every step
feeds M2 a fresh z1 ~ q(z1|x) of each image (as the paper does), and the classifier sees the
posterior mean of z1 at test time. The paper reports 96.67% +/- 0.14 test accuracy with 100
labels for M1+M2, against 88.03% +/- 1.71 for M2 alone.

A VAE leaves many latent units inactive: q(z1_d|x) is the prior N(0, 1) whatever x, so a draw
is pure noise. As the paper's code does, M2 may model only the active units
(`feature_indices`, e.g. from `active_units`); the others keep M1's prior N(0, 1) in the bound.

The bound of the stacked model (per example, nats), from log p(z1) >= U(z1):

  log p(x) >= E_q(z1|x)[log p(x|z1) - log q(z1|x) + U(z1)]

(with only some units modelled by M2, U(z1) becomes U(z1_active) + log N(z1_rest; 0, I))

estimated with one z1; `bound_terms` returns it as `nelbo` = `rec` + `kl_z1`, where `rec` =
-log p(x|z1) and `kl_z1` = log q(z1|x) - U(z1) (an estimate of KL(q(z1|x) || p(z1)) plus M2's
gap); `kl_z` and `kl_y` are M2's (on z1).

`M1M2` is an `SSVAE` whose inputs are mapped to features (`_inputs`) and whose outputs are
mapped back to pixels (`_observed`), so training (`model.fit` on
`semisupervised.make_train_dataset`), evaluation, the binaries and the SavedModel signatures are
the SSVAE's, on pixels.
"""

from collections.abc import Sequence

import keras
import numpy as np

from tfp_vae import backend
from tfp_vae.backend import Tensor, tfd, tfp
from tfp_vae.checks import labels_for
from tfp_vae.models.base import LatentVariableModel
from tfp_vae.models.core import with_training
from tfp_vae.models.params import Param
from tfp_vae.models.ssvae import SSVAE

ops = keras.ops


def _check_m1(m1):
    if not isinstance(m1, LatentVariableModel):
        raise ValueError(
            f"m1 must be a trained VAE (a tfp_vae LatentVariableModel); got {type(m1).__name__}."
        )


@keras.saving.register_keras_serializable("tfp_vae")
class M1M2(SSVAE):
    """M2 trained on the latent features of a fixed VAE `m1`.

    Args:
      m1: a trained `VAE` (or `GMVAE`), or its Keras config (from `get_config`). Its weights are
        frozen (not trainable) and saved with this model.
      feature_indices: the units of z1 that M2 models (sorted, distinct; default: all). The rest
        keep the prior N(0, 1) (see `active_units`).
      **kwargs: the SSVAE's (z_dim, hidden, classifier_hidden, gen_weight, class_weight, ...),
        for M2 on the features; its x_dim and likelihood are set by m1 and feature_indices.
        The user's own `encoder=`, `decoder=`, `classifier=` work on the features too: x_dim
        is len(feature_indices), and the decoder gives Gaussian parameters [B, 2 * x_dim].

    Inputs everywhere are images, as for the SSVAE: binary for the bounds and training, grayscale
    allowed for `classify`, `encode` and `reconstruct`.
    """

    build_at_init = False
    # M2's parameters are the SSVAE's, but for those M1 sets; m1 and feature_indices are
    # resolved in the constructor (the units checked against M1's z).
    FIXED_PARAMS = ("input_shape", "likelihood")
    PARAMS = (
        Param("m1", to_config=lambda model: keras.saving.serialize_keras_object(model.m1)),
        Param("feature_indices"),
    )

    def __init__(
        self, m1: LatentVariableModel | dict, feature_indices: Sequence[int] | None = None, **kwargs
    ):
        if isinstance(m1, dict):
            m1 = keras.saving.deserialize_keras_object(m1)
        _check_m1(m1)
        for fixed in ("x_dim", "input_shape", "likelihood"):
            if fixed in kwargs:
                raise ValueError(f"M1M2 sets {fixed} from m1; do not pass it.")
        if feature_indices is None:
            feature_indices = range(m1.z_dim)
        self.feature_indices = [int(i) for i in feature_indices]
        if (
            not self.feature_indices
            or self.feature_indices != sorted(set(self.feature_indices))
            or self.feature_indices[0] < 0
            or self.feature_indices[-1] >= m1.z_dim
        ):
            raise ValueError(
                f"feature_indices must be distinct sorted units of M1's z "
                f"(0..{m1.z_dim - 1}), at least one; got {self.feature_indices}."
            )
        super().__init__(
            x_dim=len(self.feature_indices), likelihood="heteroscedastic_gaussian", **kwargs
        )
        self.m1 = m1
        self.m1.trainable = False
        self.build((None, self.input_dim))

    @property
    def input_dim(self):
        return self.m1.x_dim

    @property
    def data_shape(self):
        """M1's input shape: M1+M2 takes M1's images."""
        return tuple(self.m1.input_shape)

    @property
    def data_likelihood(self):
        """M1's likelihood: the inputs are M1's images (M2's own models M1's features)."""
        return self.m1.likelihood

    def _raw_inputs(self, x):
        return self.m1.likelihood.check(x, self.m1.input_shape, check_values=False)

    def _value_problem(self, x, binary=True):
        return self.m1.likelihood.problem(x, binary)

    def check_test_data(self, data):
        """What `test_terms` checks, on the images themselves (not M1's features: the JAX steps
        call this on the host, where the weights are the compiled step's)."""
        x_bound, x_class, y = self._test_parts(data)
        x_class = self.m1.likelihood.check(x_class, self.m1.input_shape, bound=False)
        labels_for(y, ops.shape(x_class)[0], self.num_classes)
        self.m1.likelihood.check(x_bound, self.m1.input_shape)

    def features(
        self, x: Tensor | np.ndarray, sample: bool = False, seed: Tensor | None = None
    ) -> Tensor:
        """M1's latent z1 for images x [B, pixels] (checked, grayscale allowed): the mean of
        q(z1|x), or one draw when `sample`. [B, m1.z_dim]."""
        return self._inputs(x, binary=False, sample=sample, seed=seed)

    @staticmethod
    def active_units(
        m1: LatentVariableModel, images: Tensor | np.ndarray, threshold: float = 0.1
    ) -> list[int]:
        """The units of M1's z whose posterior mean varies across `images` (binary [N, pixels]):
        std over the images > threshold, as in the paper's code. A sorted list of ints."""
        _check_m1(m1)
        means = m1.encode(m1.likelihood.check(images, m1.input_shape)).mean()
        return [int(i) for i in np.flatnonzero(np.std(np.asarray(means), axis=0) > threshold)]

    def _modelled(self, z1):
        """The units of z1 [..., m1.z_dim] that M2 models: [..., x_dim]."""
        return ops.take(z1, ops.convert_to_tensor(self.feature_indices, "int32"), axis=-1)

    def _inputs(self, x, binary=True, sample=False, seed=None, check_values=True):
        """Images (checked as the SSVAE checks them; only their shape unless `check_values`)
        -> z1 ~ q(z1|x), or its mean (the units M2 models).

        M1 runs in inference mode (training=False) also while M2 trains: it is a fixed feature
        map, and the features M2 learns on must be the ones it is evaluated and served on. In
        training mode a Dropout layer of M1 would add noise of its own to them, and a
        BatchNormalization layer would normalise by each batch's statistics (features that
        depend on the rest of the batch and differ from the test-time ones)."""
        x = self.m1.likelihood.check(x, self.m1.input_shape, binary, check_values)
        q = with_training(self.m1.encode, x, training=False)
        # M1 is fixed; no gradient flows into it (its variables are not trainable anyway).
        return ops.stop_gradient(self._modelled(q.sample(seed=seed) if sample else q.mean()))

    def _full_z1(self, features):
        """Modelled units [B, x_dim] -> z1 [B, m1.z_dim], the others at their prior mean 0."""
        slot = {unit: i for i, unit in enumerate(self.feature_indices)}
        # Each unit of z1 reads its feature, or the appended zero column (slot x_dim).
        padded = ops.pad(features, [[0, 0], [0, 1]])
        units = [slot.get(u, self.x_dim) for u in range(self.m1.z_dim)]
        return ops.take(padded, ops.convert_to_tensor(units, "int32"), axis=-1)

    def _observed(self, p):
        """p(z1|y,z2) -> pixel probabilities of M1's decoder at its mean z1."""
        return self.m1.decode(self._full_z1(p.mean())).mean()

    def _unmodelled_log_prior(self, z1):
        """log N(z1_rest; 0, I) of the units M2 does not model: [B] (0 when it models all)."""
        rest = [i for i in range(self.m1.z_dim) if i not in set(self.feature_indices)]
        # [B, 0] when rest is empty.
        z_rest = ops.take(z1, ops.convert_to_tensor(rest, "int32"), axis=-1)
        return ops.sum(tfd.Normal(0.0, 1.0).log_prob(z_rest), axis=-1)

    def bound_terms(self, x, labels=None, seed=None):
        """The stacked bound (module docstring) and its parts for binary images x, without
        labels (with M2's -U(z1)) or with int labels [B] (with M2's -L(z1, y)): dict of [B]
        tensors `nelbo`, `rec`, `kl_z1`, `kl_z` (and `kl_y` without labels)."""
        x = self.m1.likelihood.check(x, self.m1.input_shape)
        seed = backend.sampling_seed(seed)
        seed_z1, seed_m2 = (None, None) if seed is None else tfp.random.split_seed(seed, 2)
        q = self.m1.encode(x)
        z1 = q.sample(seed=seed_z1)
        features = self._modelled(z1)
        m2 = (
            self.unlabelled_terms(features, seed_m2)
            if labels is None
            else self.labelled_terms(features, labels, seed_m2)
        )
        rec = -self.m1.decode(z1).log_prob(x)
        kl_z1 = q.log_prob(z1) + m2["nelbo"] - self._unmodelled_log_prior(z1)
        out = {"nelbo": rec + kl_z1, "rec": rec, "kl_z1": kl_z1, "kl_z": m2["kl_z"]}
        if "kl_y" in m2:
            out["kl_y"] = m2["kl_y"]
        return out
