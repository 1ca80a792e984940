"""stylecli: edit face photos through StyleGAN2 inversion."""

__version__ = "0.1.0"
