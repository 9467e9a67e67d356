"""tfp_vae: latent-variable generative models (VAE, GMVAE, IWAE, SSVAE) in Keras 3 + TFP."""

__version__ = "0.1.0"
