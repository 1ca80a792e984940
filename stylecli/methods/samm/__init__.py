"""SAMM: out-of-domain inversion by spatial alignment and an invertibility mask (Yang et al., ICCV 2023).

spec.py declares it (and its training configuration), model.py holds the trained parts (taps and one alignment
block per scale), method.py runs e4e + SAMM and blends, train.py trains the parts against a pack's frozen e4e
encoder and generator.
"""

NETWORK = "samm"   # the pack network holding the taps and blocks
BASE = "e4e_encoder"  # the frozen base encoder it builds on
MISSED_THRESHOLD = 0.04  # squared error (in [-1, 1] units, mean over channels) that marks a pixel the generator
                         # misses: the training target's and the sharp mask's
MISSED_CLEANUP = 3  # k of the k x k closing and opening that clean those pixels (in output pixels, at any resolution:
                    # a larger k would erase thin occluders, glasses arms or cables, at 1024 px)
