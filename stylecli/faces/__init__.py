"""Real photos in, real photos out: detection, landmarks, alignment and paste-back.

- `align.py`: `Face` (box, 5 landmarks, optionally 68 and the synthetic canvas' template points), the two alignment
  recipes (`ffhq`: the FFHQ dataset's quad from eyes and mouth; `synthetic`: the renderer's canvas), `crop_face`,
  the feathered `face_mask` and `paste_faces` (pixels the mask does not reach stay bit-identical).
- `detect.py`: detectors (the user's `--landmarks` file, dlib's HOG + 68 points, facexlib's RetinaFace from local
  weights, the synthetic domain's own network) behind one `detect(photo, source)`; `open_detector` picks one.
- `net.py`: the synthetic domain's detector network (CenterNet-style heatmap + landmark refiner).
- `parse.py`: the paste-back mask from facexlib's face parsers (BiSeNet or ParseNet from local weights; `--paste-mask`):
  the face's own outline, feathered and bounded so that pixels away from the face stay bit-identical.
- `photos.py`: `PhotoAligner` (find, choose with --face, align) and `AlignedPhoto.compose` (paste back), what the
  batch pipeline (stylecli/pipeline.py) calls.

Nothing here knows a method: the pipeline hands aligned crops to whatever method runs, and pastes its outputs back.
"""
