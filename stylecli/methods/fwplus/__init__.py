"""F/W+ (BDInvert-style geometric inversion; Kang et al., ICCV 2021): a coarse base feature replaces the generator's
feature at a low resolution, W+ rows after it carry the details, so a shifted, rotated or scaled head keeps its place.

spec.py declares it (and its training configuration), encoder.py is the base-code encoder, method.py runs the
regularised optimisation and the edits, train.py trains the encoder on generator samples and exports it with the
P-space whitening (pspace.py) fitted on the pack's mapping network, convert.py reads the official encoder.
"""

NETWORK = "fwplus_encoder"   # the pack network holding the base-code encoder
PSPACE = "fwplus_pspace"     # the pack network holding the P-space whitening of the pack's generator
