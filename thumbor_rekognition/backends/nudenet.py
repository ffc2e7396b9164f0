"""Offline moderation with the NudeNet detector that ships inside the ``nudenet`` wheel.

Nothing is downloaded: the ONNX model (320n.onnx) is read from the installed package.
Detections are mapped onto Rekognition's model 6.x taxonomy (Explicit Nudity and
Suggestive), so the thresholds, ignores and MODERATION_RULES written for Rekognition
drive this backend too. It sees nudity only; every other category is reported by
``unseen_categories`` and logged at start-up when the configuration names one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import taxonomy
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.backends import Backend as BaseBackend
from thumbor_rekognition.backends import BackendConfigurationError, BadImageError
from thumbor_rekognition.decision import Analysis, Label
from thumbor_rekognition.preparation import PreparedImage

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

EXPLICIT = "Explicit Nudity"
SUGGESTIVE = "Suggestive"

# Detector class -> (parent, label) in Rekognition's 6.x taxonomy. Classes left out
# (faces, feet, armpits, bellies) are body parts, not moderation categories.
CLASS_LABELS: Mapping[str, tuple[str, str]] = {
    "FEMALE_GENITALIA_EXPOSED": (EXPLICIT, "Graphic Female Nudity"),
    "MALE_GENITALIA_EXPOSED": (EXPLICIT, "Graphic Male Nudity"),
    "FEMALE_BREAST_EXPOSED": (EXPLICIT, "Nudity"),
    "BUTTOCKS_EXPOSED": (EXPLICIT, "Nudity"),
    "ANUS_EXPOSED": (EXPLICIT, "Nudity"),
    "MALE_BREAST_EXPOSED": (SUGGESTIVE, "Barechested Male"),
    "FEMALE_BREAST_COVERED": (SUGGESTIVE, "Female Swimwear Or Underwear"),
    "FEMALE_GENITALIA_COVERED": (SUGGESTIVE, "Female Swimwear Or Underwear"),
    "BUTTOCKS_COVERED": (SUGGESTIVE, "Revealing Clothes"),
    "ANUS_COVERED": (SUGGESTIVE, "Revealing Clothes"),
}

# The detector works at 320 px; a larger copy only costs decoding time.
ANALYSIS_SIDE = 640
# NudeNet keeps candidates scoring 0.2 and up, then its non-maximum suppression drops
# those under 0.25: only boxes at 0.25 or more ever reach its caller.
MIN_SCORE = 0.25
# The detector's output classes, in the model's order (nudenet 3.4, 320n.onnx).
CLASSES = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)


@dataclass(frozen=True)
class Detection:
    """One detector output: a class name and a 0..1 score."""

    name: str
    score: float


def labels_from_detections(detections: Iterable[Detection]) -> tuple[Label, ...]:
    """Rekognition-shaped labels: the highest score per label, each parent next to its children."""
    best: dict[tuple[str, str], float] = {}
    for detection in detections:
        mapped = CLASS_LABELS.get(detection.name)
        if mapped is None:
            continue
        confidence = round(min(1.0, max(0.0, detection.score)) * 100, 3)
        best[mapped] = max(confidence, best.get(mapped, 0.0))
    parents: dict[str, float] = {}
    for (parent, _), confidence in best.items():
        parents[parent] = max(confidence, parents.get(parent, 0.0))
    labels = [Label(name, "", 1, confidence) for name, confidence in parents.items()]
    labels += [Label(name, parent, 2, confidence) for (parent, name), confidence in best.items()]
    return tuple(labels)


def _seen_categories() -> frozenset[str]:
    seen = {taxonomy.slug(name) for pair in CLASS_LABELS.values() for name in pair}
    return frozenset(seen)


class Backend(BaseBackend):
    """NudeNet's ONNX detector, one onnxruntime session per process, built after fork."""

    name = "nudenet"
    answers_in = "6"
    max_side = ANALYSIS_SIDE

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._detector: PerProcess[Any] = PerProcess(self._build)
        self.model_version = _model_version()

    def unseen_categories(self) -> frozenset[str]:
        return taxonomy.known_slugs() - _seen_categories()

    def detector(self) -> Any:
        """The process's detector, built on first use."""
        return self._detector.get()

    def _build(self) -> Any:
        try:
            import nudenet
            import onnxruntime
        except ImportError as error:
            raise BackendConfigurationError(
                "the offline backend needs the 'local' extra: pip install "
                f"'thumbor-moderation[local]' ({error})"
            ) from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.settings.nudenet_threads
        options.inter_op_num_threads = 1
        model = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
        detector = nudenet.NudeDetector(model_path=model)
        # NudeDetector takes no session options; replace its session with a tuned one.
        detector.onnx_session = onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )
        return detector

    def warm_up(self) -> None:
        import numpy

        self.detector().detect(numpy.zeros((ANALYSIS_SIDE, ANALYSIS_SIDE, 3), numpy.uint8))

    def detect(self, image: PreparedImage, min_confidence: float) -> Analysis:
        import cv2
        import numpy

        detector = self.detector()
        labels: list[Label] = []
        # Each frame keeps its own labels: the policy judges every frame on its own.
        for index, frame in enumerate(image.frames):
            pixels = cv2.imdecode(numpy.frombuffer(frame.data, numpy.uint8), cv2.IMREAD_COLOR)
            if pixels is None:
                raise BadImageError(f"prepared {frame.format} frame could not be decoded")
            labels += [
                dataclasses.replace(label, frame=index)
                for label in labels_from_detections(_best_per_class(_run(detector, pixels)))
                if label.confidence >= min_confidence
            ]
        return Analysis(
            labels=tuple(labels),
            backend=self.name,
            model_version=self.model_version,
            min_confidence=min_confidence,
            frames=len(image.frames),
        )


def _run(detector: Any, pixels: Any) -> Any:
    """The detector's raw output for one BGR image, preprocessed exactly as NudeNet does."""
    from nudenet import nudenet

    blob = nudenet._read_image(pixels, detector.input_width)[0]
    return detector.onnx_session.run(None, {detector.input_name: blob})[0]


def _best_per_class(output: Any) -> list[Detection]:
    """The highest score of each class among the detector's candidate boxes.

    NudeNet's own post-processing loops over 2,100 candidates in Python and then runs
    non-maximum suppression, which only drops boxes weaker than one it keeps: the best
    score per class, all a moderation decision needs, is the same without it.
    """
    import numpy

    rows = numpy.squeeze(output, axis=0).T
    scores = rows[:, 4:]
    best = scores.max(axis=1)
    winners = scores.argmax(axis=1)
    found: list[Detection] = []
    for class_id in numpy.unique(winners[best >= MIN_SCORE]):
        score = float(best[(winners == class_id) & (best >= MIN_SCORE)].max())
        found.append(Detection(CLASSES[int(class_id)], score))
    return found


def _model_version() -> str:
    try:
        return f"nudenet-{metadata.version('nudenet')}/320n"
    except metadata.PackageNotFoundError:
        return "nudenet/320n"
