"""`check`: judge one file with the configured backend and thresholds; store nothing."""

from __future__ import annotations

import argparse
import logging

from thumbor_rekognition import confidence
from thumbor_rekognition.backends import BackendError
from thumbor_rekognition.cli.environment import EXIT_OK, Environment, Failure, read_file
from thumbor_rekognition.cli.output import (
    label_name,
    model_name,
    print_content_types,
    print_json,
    print_judged,
    print_labels,
    print_reasons,
)
from thumbor_rekognition.config import (  # also defines the plugin's keys
    check_backend_extra,
    unknown_keys,
)
from thumbor_rekognition.moderation.memory import sha256_hex
from thumbor_rekognition.preparation import UnsupportedImage

logger = logging.getLogger(__name__)


def run_check(environment: Environment, arguments: argparse.Namespace) -> int:
    """Judge one file with the configured backend and thresholds; store nothing."""
    for message in unknown_keys(environment.config):
        logger.warning("%s", message)
    check_backend_extra(environment.runtime.settings.backend)
    data = read_file(arguments.file)
    moderator = environment.runtime.moderator
    backend, policy = moderator.backend, moderator.policy
    try:
        prepared = moderator.prepare(data)
    except UnsupportedImage as error:
        raise Failure(f"{arguments.file}: {error}") from None
    try:
        analysis = backend.detect(prepared, policy.min_confidence)
    except BackendError as error:
        raise Failure(f"{backend.name} backend failed ({error.kind}): {error}") from None
    verdict = policy.judge(analysis.labels, analysis.content_types)
    as_judged = policy.as_judged(analysis.labels, analysis.content_types)
    if arguments.json:
        print_json(
            {
                "file": arguments.file,
                "format": prepared.format,
                "width": prepared.width,
                "height": prepared.height,
                "content_hash": sha256_hex(data),
                "backend": analysis.backend,
                "model_version": analysis.model_version,
                "project_version": analysis.project_version,
                "min_confidence": confidence.share(analysis.min_confidence),
                "labels": [confidence.label_view(label) for label in analysis.labels],
                "content_types": [
                    confidence.content_type_view(kind) for kind in analysis.content_types
                ],
                "policy_generation": policy.generation,
                "judged_labels": [
                    {
                        **confidence.label_view(item.label),
                        "reported_as": label_name(item.reported.name, item.reported.parent),
                    }
                    for item in as_judged
                ],
                "status": verdict.status.value,
                "reasons": [confidence.reason_view(reason) for reason in verdict.reasons],
            }
        )
        return EXIT_OK
    print(f"file: {arguments.file} ({prepared.format} {prepared.width}x{prepared.height})")
    model = model_name(analysis.backend, analysis.model_version, analysis.project_version)
    kept = confidence.shown(analysis.min_confidence)
    print(f"backend: {model} (labels with confidence {kept} or more)")
    print_labels(analysis.labels)
    print_content_types(analysis.content_types)
    print_judged(as_judged, policy.generation)
    print(f"decision: {verdict.status.value}")
    print_reasons(verdict.status, verdict.reasons)
    return EXIT_OK
