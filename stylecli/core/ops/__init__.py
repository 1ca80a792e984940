"""Custom ops of the StyleGAN2 core, one module each (`bias_act`, `upfirdn2d`): a pure-PyTorch reference plus a CUDA
kernel built on first use (see `_plugin`)."""
