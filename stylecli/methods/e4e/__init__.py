"""e4e: a fast W+ encoder designed for editability (Tov et al. 2021). One forward pass per image.

spec.py declares it (and its training configuration), method.py runs it, encoder.py is the network, train.py trains
it against a pack's frozen generator, convert.py reads the official checkpoint.
"""

NETWORK = "e4e_encoder"   # the pack network holding the encoder
