"""SFE, StyleFeatureEditor (Bobkov et al., CVPR 2024): W+ plus a spatial feature F_k for detail, and a trained
Feature Editor that edits F_k along with the code.

spec.py declares it (and its two-phase training configuration), model.py holds the inverter and the feature editor,
method.py inverts and edits, train.py trains the inverter (phase 1) and the editor (phase 2) against a pack's frozen
generator and e4e encoder, convert.py reads the official checkpoints.
"""

INVERTER = "sfe_inverter"   # pack network: backbone (w + F_pred) and fuser
EDITOR = "sfe_editor"       # pack network: the feature editor H
BASE = "e4e_encoder"        # the editable W+ encoder whose edits tell H what to change (Delta)
