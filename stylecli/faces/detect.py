"""Face detectors: each finds faces in a photo and gives their boxes and landmarks as `Face`s.

| name         | what it is                                                   | what it needs                                |
|--------------|--------------------------------------------------------------|----------------------------------------------|
| `synth`      | the synthetic domain's detector + landmark refiner           | the pack's `face_detector` network           |
| `dlib`       | dlib's HOG detector and its 68-point predictor (FFHQ's own)  | `dlib` and `face_recognition_models` installed (`pip install stylecli[faces]`) |
| `retinaface` | facexlib's RetinaFace (5 points)                             | its weights in the pack folder or the cache (never downloaded) |
| `--landmarks FILE.json` | the user's own detector's output                  | the file                                     |

`open_detector` picks one (`auto`: the pack's own for the synthetic domain; dlib, then RetinaFace for real faces) and
says in one line what is missing when none can run. Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..fileio import printable
from .align import Face, points_from_68

if TYPE_CHECKING:  # torch is imported only by the detectors that run networks
    import torch

DETECTORS = ("auto", "synth", "dlib", "retinaface")
DETECTOR_NETWORK = "face_detector"   # the pack network of the synthetic domain's detector
RETINAFACE_FILES = {"retinaface_resnet50": "detection_Resnet50_Final.pth",
                    "retinaface_mobile0.25": "detection_mobilenet0.25_Final.pth"}


class DetectorUnavailable(Exception):
    """The detector asked for cannot run here (not installed, no weights); the message says what to do."""


class LandmarkError(Exception):
    """A --landmarks file cannot be read or does not fit."""


class Detector:
    """Finds faces: `detect(photo, source)` -> [Face] in the photo's edge coordinates (any order); `detect_many` does
    several photos at once (a detector that batches its networks overrides it)."""
    name = "detector"

    def detect(self, photo: Image.Image, source: str | os.PathLike | None = None) -> list[Face]:
        raise NotImplementedError

    def detect_many(self, photos: list[Image.Image], sources: list | None = None) -> list[list[Face]]:
        sources = sources if sources is not None else [None] * len(photos)
        return [self.detect(photo, source) for photo, source in zip(photos, sources)]


# --- the user's landmarks ----------------------------------------------------------------------------------------

def _face_from_record(record, where: str) -> Face:
    """A face of a landmarks file: {"points" or "landmarks": [[x, y] * 5 or 68], "box": [x0, y0, x1, y1] (optional),
    "template": [[x, y] * 2] (optional, the synthetic canvas' template points)}, or a bare list of points. Pixel
    coordinates with the top-left pixel's centre at (0, 0), as dlib and OpenCV report them."""
    if isinstance(record, list):
        record = {"points": record}
    if not isinstance(record, dict):
        raise LandmarkError(f"{where}: a face must be an object with \"points\" (or a list of [x, y])")
    raw = record.get("points", record.get("landmarks"))
    try:
        points = np.asarray(raw, dtype=np.float64) + 0.5  # pixel centres -> edge coordinates
    except (TypeError, ValueError):
        raise LandmarkError(f"{where}: points must be a list of [x, y] numbers") from None
    if points.ndim != 2 or points.shape not in ((5, 2), (68, 2)) or not np.isfinite(points).all():
        raise LandmarkError(f"{where}: expected 5 or 68 finite [x, y] points, got shape {list(points.shape)}")
    points68 = points if len(points) == 68 else None
    five = points_from_68(points) if points68 is not None else points
    template = None
    if record.get("template") is not None:
        template = np.asarray(record["template"], dtype=np.float64) + 0.5
        if template.shape != (2, 2) or not np.isfinite(template).all():
            raise LandmarkError(f"{where}: template must be two [x, y] points")
    if record.get("box") is not None:
        box = np.asarray(record["box"], dtype=np.float64).reshape(-1) + 0.5
        if box.shape != (4,) or not np.isfinite(box).all():
            raise LandmarkError(f"{where}: box must be [x0, y0, x1, y1]")
    else:  # the points' extent, widened: a box only orders and picks faces (largest)
        source = points68 if points68 is not None else five
        lo, hi = source.min(0), source.max(0)
        pad = (hi - lo) * 0.3
        box = np.concatenate([lo - pad, hi + pad])
    return Face(box=box, points=five, points68=points68, template=template, score=float(record.get("score", 1.0)))


class LandmarkFile(Detector):
    """Faces given in a JSON file by the user's own detector.

    The file is either one JSON object, {"photo.jpg": [face, ...], ...}, or JSON lines, {"file": "photo.jpg",
    "faces": [face, ...]} per line (what `stylecli data synth --set scenes` writes as labels.jsonl). A photo is found
    by its path as given on the command line, then relative to the file's folder, then by its name alone; a photo
    the file does not list has no faces. Each face is described in `_face_from_record`."""
    name = "landmarks"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LandmarkError(f"{printable(path)}: cannot read the landmarks file ({exc})") from None
        self.faces: dict[str, list[Face]] = {}
        try:
            data = json.loads(text)
            entries = None
            if isinstance(data, dict):  # one object: a map of photos, or JSON lines of a single line
                single = isinstance(data.get("file"), str) and "faces" in data
                entries = [(data["file"], data["faces"])] if single else list(data.items())
        except json.JSONDecodeError:
            entries = None
        if entries is None:  # JSON lines
            entries = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    entries.append((record["file"], record.get("faces", [])))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LandmarkError(f"{printable(path)}:{number}: expected a JSON object mapping photos to faces, "
                                        "or JSON lines with \"file\" and \"faces\"") from None
        for name, faces in entries:
            where = f"{printable(path)}: {name}"
            if isinstance(faces, dict):
                faces = faces.get("faces", [])
            if not isinstance(faces, list):
                raise LandmarkError(f"{where}: expected a list of faces")
            self.faces[str(name)] = [_face_from_record(f, f"{where}, face {i}") for i, f in enumerate(faces)]

    def detect(self, photo: Image.Image, source: str | os.PathLike | None = None) -> list[Face]:
        if source is None:
            return []
        source = Path(source)
        keys = [str(source), source.as_posix()]
        try:
            keys.append(source.resolve().relative_to(self.path.parent.resolve()).as_posix())
        except (ValueError, OSError):
            pass
        keys.append(source.name)
        for key in keys:
            if key in self.faces:
                return list(self.faces[key])
        return []


# --- dlib --------------------------------------------------------------------------------------------------------

class DlibDetector(Detector):
    """dlib's frontal HOG detector and the 68-point shape predictor that `face_recognition_models` ships (the
    predictor FFHQ's alignment used; trained on iBUG 300-W, whose creators ask that it not be used commercially)."""
    name = "dlib"

    def __init__(self, upsample: int = 1):  # image doublings before detection: finds faces down to ~40 px
        try:
            import dlib
            import face_recognition_models
        except ImportError:
            raise DetectorUnavailable("the dlib detector needs the `dlib` and `face_recognition_models` packages: "
                                      "pip install 'stylecli[faces]' (or pass --landmarks FILE.json)") from None
        predictor = face_recognition_models.pose_predictor_model_location()
        if not Path(predictor).is_file():
            raise DetectorUnavailable(f"face_recognition_models has no 68-point predictor at {predictor}")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(predictor)
        self.upsample = upsample

    def detect(self, photo: Image.Image, source=None) -> list[Face]:
        array = np.asarray(photo.convert("RGB"))
        faces = []
        for rect in self.detector(array, self.upsample):
            shape = self.predictor(array, rect)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)],
                              dtype=np.float64) + 0.5  # pixel indices -> edge coordinates
            if points.shape != (68, 2):
                continue
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            faces.append(Face(box=box, points=points_from_68(points), points68=points))
        return faces


# --- RetinaFace (facexlib) ---------------------------------------------------------------------------------------

def retinaface_weights(pack=None) -> tuple[str, Path] | None:
    """(model name, weights file) of RetinaFace found offline: in the pack folder, in ~/.cache/stylecli/facexlib, or
    where facexlib itself keeps its downloads (its package's weights/ folder); the larger ResNet-50 model first."""
    from .parse import find_weights
    return find_weights(RETINAFACE_FILES, pack)


class RetinaFaceDetector(Detector):
    """facexlib's RetinaFace, built here and loaded from a local weights file (facexlib's own loader would download
    it): boxes and five landmarks."""
    name = "retinaface"

    def __init__(self, weights: tuple[str, Path], device="cpu", threshold: float = 0.8):
        import torch
        try:
            from facexlib.detection.retinaface import RetinaFace
        except ImportError as exc:
            raise DetectorUnavailable(f"facexlib's RetinaFace does not import here ({exc})") from None
        model, path = weights
        net = RetinaFace(network_name=model.removeprefix("retinaface_"), half=False, device=torch.device(device))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DetectorUnavailable(f"{printable(path)}: not a RetinaFace weights file ({type(exc).__name__})") \
                from None
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            raise DetectorUnavailable(f"{printable(path)}: does not fit facexlib's {model}") from None
        self.net = net.eval()
        self.threshold = threshold

    def detect(self, photo: Image.Image, source=None) -> list[Face]:
        import torch
        bgr = np.ascontiguousarray(np.asarray(photo.convert("RGB"))[:, :, ::-1])
        with torch.no_grad():
            found = self.net.detect_faces(bgr, conf_threshold=self.threshold)
        faces = []
        for row in np.asarray(found, dtype=np.float64):
            faces.append(Face(box=row[:4], score=float(row[4]), points=row[5:15].reshape(5, 2)))
        return faces


# --- the synthetic domain ----------------------------------------------------------------------------------------

class SynthDetector(Detector):
    """The synthetic domain's detector network (`stylecli.faces.net`): faces found on the photo resized to the
    network's input size, then each face's seven points refined twice on canvas crops of the full photo."""
    name = "synth"

    def __init__(self, net, device="cpu", threshold: float = 0.4, refinements: int = 2, refine_supersample: int = 1):
        self.net = net.eval()
        self.device = device
        self.threshold = threshold          # heatmap peak needed to report a face
        self.refinements = refinements      # refiner passes after the detector's own estimate
        self.refine_supersample = refine_supersample  # cap on the refiner crops' supersampling (crop_face's 3 for
                                                      # the method's crop): they only locate points

    def detect(self, photo: Image.Image, source=None) -> list[Face]:
        return self.detect_many([photo])[0]

    def detect_many(self, photos: list[Image.Image], sources: list | None = None) -> list[list[Face]]:
        """Faces of several photos, their refinement batched."""
        import torch

        from .align import synthetic_alignment
        from .net import decode

        found = []
        for photo in photos:
            x, scale = detector_input(photo, self.net.input_size)
            with torch.no_grad():
                heat, regression = self.net(x.to(self.device))
            faces = []
            for score, centre, size, points in decode(heat.cpu(), regression.cpu(), self.threshold)[0]:
                box = np.concatenate([centre - size / 2, centre + size / 2]) / scale
                faces.append(Face(box=box, points=points[:5] / scale, template=points[5:] / scale, score=score))
            found.append(faces)
        crop = self.net.crop
        for _ in range(self.refinements):
            jobs, crops = [], []
            for i, faces in enumerate(found):
                for k, face in enumerate(faces):
                    try:
                        alignment = synthetic_alignment(face, crop)
                        crops.append(canvas_tensor(photos[i], alignment, self.refine_supersample))
                        jobs.append((i, k, alignment))
                    except ValueError:  # template points that coincide, or a canvas off the photo: no face
                        faces[k] = None
            if jobs:
                with torch.no_grad():
                    canvas = self.net.refine(torch.cat(crops).to(self.device)).cpu().double().numpy() * crop
                for (i, k, alignment), points in zip(jobs, canvas):
                    photo_points = alignment.to_photo(points)
                    face = found[i][k]
                    found[i][k] = Face(box=face.box, points=photo_points[:5], template=photo_points[5:],
                                       score=face.score)
            found = [[face for face in faces if face is not None] for faces in found]
        return found


def detector_input(photo: Image.Image, input_size: int):
    """([1, 3, H, W] in [-1, 1], scale): the photo resized (box filter when shrinking) so that its longer side is
    `input_size`, padded with zeros at the right and bottom to multiples of 32; input pixels per photo pixel."""
    import torch

    from ..imageio import image_to_tensor
    from .net import MULTIPLE

    W, H = photo.size
    scale = input_size / max(W, H)
    w, h = max(1, round(W * scale)), max(1, round(H * scale))
    resized = photo.convert("RGB").resize((w, h), Image.BOX if scale < 1 else Image.BILINEAR)
    x = image_to_tensor(resized)
    pw, ph = -w % MULTIPLE, -h % MULTIPLE
    x = torch.nn.functional.pad(x, (0, pw, 0, ph))
    # Scale per axis differs from `scale` by the rounding of w and h: report the mean of the two.
    return x, (w / W + h / H) / 2


def canvas_tensor(photo: Image.Image, alignment, max_supersample: int) -> "torch.Tensor":
    """[1, 3, S, S] in [-1, 1]: the aligned crop of `photo` (the refiner's input), supersampled at most
    `max_supersample` times (`crop_face`)."""
    from ..imageio import image_to_tensor
    from .align import crop_face
    return image_to_tensor(crop_face(photo, alignment, max_supersample))


def open_detector(name: str, pack=None, recipe: str = "ffhq", device="cpu", landmarks: str | os.PathLike | None = None
                  ) -> Detector:
    """The detector to use: the `landmarks` file when given; else `name` (see DETECTORS). `auto` is the pack's own
    detector for the synthetic recipe; for real faces dlib, then RetinaFace. DetectorUnavailable (one line) says what
    is missing."""
    if landmarks is not None:
        return LandmarkFile(landmarks)
    from ..models import resolve_device
    device = resolve_device(device)  # --device auto reaches here as given
    if name not in DETECTORS:
        raise DetectorUnavailable(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    if name == "auto":
        if recipe == "synthetic":
            name = "synth"
        else:
            try:
                return DlibDetector()
            except DetectorUnavailable as dlib_missing:
                weights = retinaface_weights(pack)
                if weights is None:
                    raise DetectorUnavailable(
                        f"no face detector for real photos here: {dlib_missing}; or put facexlib's "
                        f"{RETINAFACE_FILES['retinaface_resnet50']} in the pack folder or "
                        "~/.cache/stylecli/facexlib/") from None
                return RetinaFaceDetector(weights, device)
    if name == "synth":
        if pack is None or not pack.has(DETECTOR_NETWORK):
            where = f"pack {pack.name!r}" if pack is not None else "this model"
            raise DetectorUnavailable(f"{where} has no {DETECTOR_NETWORK} network for --detector synth; train it with "
                                      "`stylecli train detector` and add it with `stylecli weights from-runs`, or "
                                      "pass --landmarks FILE.json")
        return SynthDetector(pack.load(DETECTOR_NETWORK, device), device)
    if name == "dlib":
        return DlibDetector()
    weights = retinaface_weights(pack)
    if weights is None:
        raise DetectorUnavailable(f"no RetinaFace weights found offline: put {RETINAFACE_FILES['retinaface_resnet50']} "
                                  "(or the mobilenet0.25 file) in the pack folder or ~/.cache/stylecli/facexlib/")
    return RetinaFaceDetector(weights, device)
