"""The models. `MODELS` maps the binaries' --model names to classes."""

# check_images: its home is tfp_vae.checks; kept here for code written before it moved.
from tfp_vae.checks import check_images
from tfp_vae.models.base import LatentVariableModel
from tfp_vae.models.gmvae import GMVAE
from tfp_vae.models.ssvae import SSVAE
from tfp_vae.models.stacked import M1M2
from tfp_vae.models.vae import VAE

MODELS = {"vae": VAE, "gmvae": GMVAE, "ssvae": SSVAE, "m1m2": M1M2}

__all__ = [
    "GMVAE",
    "M1M2",
    "MODELS",
    "SSVAE",
    "VAE",
    "LatentVariableModel",
    "check_images",
    # The modules: the training step (core), the VAE family's base class (base), each model.
    "core",
    "base",
    "vae",
    "gmvae",
    "ssvae",
    "stacked",
]
