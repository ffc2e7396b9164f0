"""The offline backend with the real ``nudenet`` package: its detector, its model, its
pre-processing. The mapping of detector outputs alone is in test_nudenet_mapping.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from thumbor.config import Config

from tests.servers import ThumborServer, base_config
from thumbor_rekognition.backends.nudenet import CLASSES, Backend
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import Label, Status
from thumbor_rekognition.policy import Policy
from thumbor_rekognition.preparation import prepare
from thumbor_rekognition.stores import sqlite

pytest.importorskip("nudenet")

PICTURES = Path(__file__).resolve().parents[2] / "demo" / "pictures"
DEFAULT = Policy()


@pytest.fixture(scope="module")
def backend() -> Backend:
    config = Config()
    config.NUDENET_THREADS = 1
    detector = Backend(Settings.from_config(config))
    detector.warm_up()
    return detector


@pytest.mark.parametrize("name", sorted(p.name for p in PICTURES.iterdir()))
def test_real_model_finds_nothing_in_the_shipped_pictures(backend: Backend, name: str) -> None:
    prepared = prepare((PICTURES / name).read_bytes(), max_side=backend.max_side or 640)

    analysis = backend.detect(prepared, min_confidence=20.0)

    assert analysis.labels == ()
    assert analysis.backend == "nudenet"
    assert analysis.model_version.startswith("nudenet-3.4")


def test_real_model_sees_a_portrait_and_does_not_reject_a_face(backend: Backend) -> None:
    import thumbor

    portrait = Path(thumbor.__file__).parent / "fixtures" / "filters" / "source.jpg"
    detector = backend.detector()

    raw = detector.detect(str(portrait))
    analysis = backend.detect(prepare(portrait.read_bytes(), max_side=640), min_confidence=20.0)

    assert any(item["class"].startswith("FACE_") and item["score"] > 0.5 for item in raw)
    assert DEFAULT.judge(analysis.labels).status is Status.APPROVED


# Candidate boxes of the 320n model for a 320x320 input: 40x40 + 20x20 + 10x10 anchors.
CANDIDATES = 2100


class FixedSession:
    """An ONNX session that answers every picture with one output, recording what it is fed."""

    def __init__(self, output: Any) -> None:
        self.output = output
        self.fed: list[tuple[int, ...]] = []

    def run(self, output_names: object, feeds: dict[str, Any]) -> list[Any]:
        self.fed += [blob.shape for blob in feeds.values()]
        return [self.output]


def one_detection(name: str, score: float) -> Any:
    """The model's output, (1, 4 + classes, candidates), holding one box of one class."""
    import numpy

    output = numpy.zeros((1, 4 + len(CLASSES), CANDIDATES), numpy.float32)
    output[0, :4, 1000] = (160, 160, 80, 80)  # centre x, centre y, width, height
    output[0, 4 + CLASSES.index(name), 1000] = score
    return output


def test_strong_exposed_detection_is_reported_and_rejects_the_picture() -> None:
    config = Config()
    config.NUDENET_THREADS = 1
    backend = Backend(Settings.from_config(config))
    # No nude picture here for the real model to see: its session answers with one.
    session = FixedSession(one_detection("FEMALE_BREAST_EXPOSED", 0.91))
    backend.detector().onnx_session = session
    prepared = prepare((PICTURES / "landscape.jpg").read_bytes(), max_side=backend.max_side or 640)

    analysis = backend.detect(prepared, min_confidence=20.0)

    assert session.fed == [(1, 3, 320, 320)]
    assert analysis.labels == (
        Label("Explicit Nudity", "", 1, 91.0),
        Label("Nudity", "Explicit Nudity", 2, 91.0),
    )
    assert DEFAULT.judge(analysis.labels).status is Status.REJECTED


def test_best_score_per_class_matches_nudenets_own_post_processing(backend: Backend) -> None:
    import cv2
    import thumbor

    from thumbor_rekognition.backends.nudenet import _best_per_class, _run

    detector = backend.detector()
    sources = [Path(thumbor.__file__).parent / "fixtures" / "filters" / "source.jpg"]
    sources += sorted(PICTURES.glob("*.jpg")) + sorted(PICTURES.glob("*.png"))
    for source in sources:
        pixels = cv2.imread(str(source))
        theirs: dict[str, float] = {}
        for item in detector.detect(pixels):
            theirs[item["class"]] = max(theirs.get(item["class"], 0.0), item["score"])

        ours = {found.name: found.score for found in _best_per_class(_run(detector, pixels))}

        assert ours == pytest.approx(theirs)


@pytest.mark.e2e
def test_thumbor_with_the_offline_model_serves_and_records_decisions(tmp_path: Path) -> None:
    config = base_config(tmp_path, PICTURES, None)
    config["MODERATION_BACKEND"] = "thumbor_rekognition.backends.nudenet"
    config["MODERATION_CATEGORY_THRESHOLDS"] = {"violence": 0.7}
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        responses = {
            name: thumbor.get(f"/unsafe/120x80/{name}") for name in ("landscape.jpg", "spinner.gif")
        }
    finally:
        thumbor.stop()

    assert {name: r.header("X-Moderation-Status") for name, r in responses.items()} == {
        "landscape.jpg": "approved",
        "spinner.gif": "approved",
    }
    store = sqlite.Store(path=str(tmp_path / "decisions.sqlite3"))
    rows = [(d.key, d.backend, d.model_version) for d in store.page()[0]]
    store.close()
    assert [(key, backend) for key, backend, _ in rows] == [
        ("landscape.jpg", "nudenet"),
        ("spinner.gif", "nudenet"),
    ]
    assert all(version.startswith("nudenet-3.4") for _, _, version in rows)
    assert "never reports these configured categories: violence" in thumbor.log
    assert "Traceback" not in thumbor.log
