"""The VAE: p(z) = N(0, I), Gaussian q(z|x) from an MLP, Bernoulli p(x|z) from an MLP (or from
networks of the user's own: `encoder=`, `decoder=`; or another likelihood by name:
`likelihood="continuous_bernoulli"`, `"gaussian"`, ...: `tfp_vae.likelihoods`)."""

from collections.abc import Sequence

import keras

from tfp_vae import layers, networks
from tfp_vae.models import params
from tfp_vae.models.base import LatentVariableModel
from tfp_vae.models.params import Param


@keras.saving.register_keras_serializable("tfp_vae")
class VAE(LatentVariableModel):
    """Variational autoencoder with a standard normal prior (analytic KL).

    Args:
      z_dim: latent size (10 in the recipe).
      hidden: hidden layer sizes of both MLPs (300, 300 in the recipe).
      activation: hidden activation (ELU in the recipe).
      min_variance: floor added to the softplus posterior variance.
      init: "torch" (PyTorch's Linear default, the recipe's) or "glorot" (Keras' default).
      encoder: None (the recipe's MLP on flat inputs, from hidden, activation and init) or any
        Keras layer or model (built or not) mapping inputs [B, *input_shape] to the posterior's
        parameters [B, 2 * z_dim] (means, then pre-softplus variances); for instance
        `networks.conv_encoder(input_shape, 2 * z_dim)`.
      decoder: None (the recipe's MLP) or any Keras layer or model mapping latents [B, z_dim] to
        the likelihood's parameters, shaped like one input [B, *input_shape] or flat
        [B, x_dim]: logits for "bernoulli" and "continuous_bernoulli", means for "gaussian"
        (whose scale is a learned variable of the likelihood layer). The model flattens extra
        sample axes ([m, B, z_dim] under IWAE) into the batch before calling it, and flattens
        its output.
      **kwargs: input_shape, likelihood, beta, objective, iw and keras.Model arguments (see the
        base class).
    """

    analytic_kl = True
    # Besides the base class's (see `tfp_vae.models.params`); the user's networks are saved
    # beside them (`networks.serialize_networks`).
    PARAMS = (
        Param("hidden", params.positive_ints("hidden"), flag=True),
        Param("activation", params.activation("activation")),
        Param("min_variance", params.finite_float("min_variance", minimum=0.0)),
        Param("init", params.one_of("init", networks.INITS)),
    )

    def __init__(
        self,
        z_dim: int = 10,
        hidden: Sequence[int] = (300, 300),
        activation: str = "elu",
        min_variance: float = 1e-8,
        init: str = "torch",
        encoder: keras.Layer | None = None,
        decoder: keras.Layer | None = None,
        **kwargs,
    ):
        super().__init__(z_dim=z_dim, **kwargs)
        params.assign(self, VAE, locals())
        # The user's networks are kept in the config (`get_config`); the default MLPs are not.
        self._user_networks = tuple(
            name
            for name, network in (("encoder", encoder), ("decoder", decoder))
            if network is not None
        )
        # The recipe's MLP takes flat inputs; a user's encoder takes them shaped (input_shape).
        self.encoder_input_shape = None if encoder is None else self.input_shape
        if encoder is None:
            self.encoder = networks.mlp(
                self.x_dim, self.hidden, 2 * self.z_dim, activation, init, name="encoder"
            )
        else:
            self.encoder = networks.user_network(
                encoder, "encoder", self.input_shape, [2 * self.z_dim], output_formula="2 * z_dim"
            )
        # The likelihood's parameters: one per dimension of x (two for a heteroscedastic one).
        per = self.likelihood.outputs_per_dimension
        if decoder is None:
            self.decoder = networks.mlp(
                self.z_dim, self.hidden, per * self.x_dim, activation, init, name="decoder"
            )
        elif per == 1:
            self.decoder = networks.user_network(
                decoder, "decoder", self.z_dim, [self.input_shape, self.x_dim], "z_dim", "x_dim"
            )
        else:
            self.decoder = networks.user_network(
                decoder, "decoder", self.z_dim, [per * self.x_dim], "z_dim", f"{per} * x_dim"
            )
        self.posterior = layers.GaussianPosterior(min_variance)
        self.prior_layer = self.make_prior()
        self.build((None, self.x_dim))

    def make_prior(self):
        return layers.StandardNormalPrior(self.z_dim)

    def encode(self, x, training=False):
        return self.posterior(
            networks.apply(self.encoder, x, self.encoder_input_shape, training=training)
        )

    def decode(self, z, training=False):
        return self.likelihood(networks.apply(self.decoder, z, training=training))

    def prior(self):
        return self.prior_layer()

    def get_config(self):
        return networks.serialize_networks(super().get_config(), self, self._user_networks)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = networks.deserialize_networks(config, ("encoder", "decoder"), custom_objects)
        return super().from_config(config, custom_objects)
