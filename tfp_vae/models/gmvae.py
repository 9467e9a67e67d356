"""GMVAE: the VAE with a learned mixture-of-Gaussians prior.

"GMVAE" here means the course's model: a VAE whose prior p(z) is a learned uniform mixture of k
Gaussians (trainable means and variances). It is NOT the discrete-cluster-latent model of
Dilokthanakul et al. (2016): there is no categorical latent in q, and KL(q(z|x) || p(z)) is
estimated by Monte Carlo (log q(z|x) - log p(z) at the reconstruction sample), since it has no
closed form.
"""

import keras

from tfp_vae import layers
from tfp_vae.models import params
from tfp_vae.models.params import Param
from tfp_vae.models.vae import VAE


@keras.saving.register_keras_serializable("tfp_vae")
class GMVAE(VAE):
    """VAE with a `MixturePrior` of k components (k = 500 in the recipe).

    Args:
      k: number of mixture components.
      learn_mixture_weights: train the mixture weights too (default: uniform and fixed).
      **kwargs: as for VAE (the user's own `encoder=` and `decoder=`, and `likelihood=`,
        included).
    """

    analytic_kl = False
    PARAMS = (
        Param("k", params.positive_int("k (mixture components)"), flag=True),
        Param("learn_mixture_weights", params.boolean("learn_mixture_weights"), flag=True),
    )

    def __init__(self, k: int = 500, learn_mixture_weights: bool = False, **kwargs):
        # Before the VAE's constructor, whose `make_prior` reads them.
        params.assign(self, GMVAE, locals())
        super().__init__(**kwargs)

    def make_prior(self):
        return layers.MixturePrior(
            self.z_dim,
            self.k,
            learn_weights=self.learn_mixture_weights,
            min_variance=self.min_variance,
        )
