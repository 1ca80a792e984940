"""IDInvert: in-domain GAN inversion (Zhu et al., ECCV 2020).

spec.py declares it (and its training configuration), encoder.py is the domain-guided encoder, method.py runs the
domain-regularised optimisation (start at E(x), keep w near E(G(w))), train.py trains the encoder against a pack's
frozen generator with the pack's discriminator fine-tuned alongside, diffusion.py is the paper's semantic diffusion.
"""

NETWORK = "idinvert_encoder"   # the pack network holding the domain-guided encoder
