"""F/W+ (BDInvert-style geometric inversion; Kang et al., ICCV 2021): a coarse base feature replaces the generator's
feature at a low resolution, W+ rows after it carry the details. Not registered yet (issue #19); pspace.py holds the
P-space whitening regulariser its optimisation uses.
"""
