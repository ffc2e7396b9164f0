"""Amazon Rekognition DetectModerationLabels through boto3."""

from __future__ import annotations

import concurrent.futures
import logging
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers

from thumbor_rekognition import ratelimit, stores
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.backends import (
    Backend as BaseBackend,
)
from thumbor_rekognition.backends import (
    BackendConfigurationError,
    BackendError,
    BadImageError,
    RateLimitedError,
    RetryableError,
)
from thumbor_rekognition.decision import (
    Analysis,
    ContentType,
    Label,
    content_types_from_rekognition,
    labels_from_rekognition,
)
from thumbor_rekognition.preparation import PreparedImage

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

# Calls in flight at once for the scenes of one animation (and across a process's).
FRAME_CALLS = 20

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "InternalServerError",
        "ServiceUnavailableException",
        "LimitExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
BAD_IMAGE_CODES = frozenset({"InvalidImageFormatException", "ImageTooLargeException"})
# Every picture is prepared within Rekognition's limits (size, sides, format) before it is
# sent, so this code points at the request's settings rather than at the picture.
SETTINGS_CODES = frozenset({"InvalidParameterException"})
CONFIGURATION_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ResourceNotFoundException",
        "ResourceNotReadyException",
        "InvalidS3ObjectException",
        "HumanLoopQuotaExceededException",
    }
)


class Backend(BaseBackend):
    """One boto3 client per process, created on first use so that it is built after fork."""

    name = "rekognition"
    # AWS moved every account to moderation model 7.0 in 2024.
    answers_in = "7"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: PerProcess[Any] = PerProcess(self._build_client)
        self._frame_calls: PerProcess[concurrent.futures.ThreadPoolExecutor] = PerProcess(
            lambda: concurrent.futures.ThreadPoolExecutor(
                max_workers=FRAME_CALLS, thread_name_prefix="rekognition-frames"
            )
        )
        limit = settings.rekognition_max_calls_per_second
        # The turns are shared through a decision store of each process's own.
        self._store: PerProcess[stores.Store] = PerProcess(lambda: stores.load_store(settings))
        self.call_rate = ratelimit.CallRate(limit, self._store.get) if limit else None

    def client(self) -> Any:
        """The process's Rekognition client."""
        return self._client.get()

    def _build_client(self) -> Any:
        settings = self.settings
        config = botocore.config.Config(
            connect_timeout=settings.rekognition_timeout,
            read_timeout=settings.rekognition_timeout,
            # total_max_attempts counts the first attempt; botocore's max_attempts does not.
            retries={"mode": "standard", "total_max_attempts": settings.rekognition_max_attempts},
            max_pool_connections=max(10, settings.workers),
        )
        session = boto3.session.Session()
        client = session.client(
            "rekognition",
            region_name=settings.rekognition_region,
            endpoint_url=settings.rekognition_endpoint_url,
            config=config,
        )
        if self.call_rate is not None:
            # Every attempt, botocore's retries included, waits for its turn, and every
            # throttling answer is heard, as botocore's adaptive mode does per client.
            operation = "rekognition.DetectModerationLabels"
            client.meta.events.register(f"before-send.{operation}", self._take_turn)
            client.meta.events.register(f"needs-retry.{operation}", self._heard)
        return client

    def _take_turn(self, **_: Any) -> None:
        if self.call_rate is not None:
            self.call_rate.wait(ratelimit.current_budget())

    def _heard(self, response: Any = None, **_: Any) -> None:
        if self.call_rate is None or response is None:
            return
        code = response[1].get("Error", {}).get("Code", "")
        if code in ratelimit.THROTTLING_CODES:
            try:
                self.call_rate.throttled()
            except stores.StoreUnavailable as error:
                logger.warning("throttling not shared, decision store unavailable: %s", error)

    def warm_up(self) -> None:
        self.client()

    def detect(self, image: PreparedImage, min_confidence: float) -> Analysis:
        model_version = project_version = ""
        budget = ratelimit.current_budget()
        if len(image.frames) > 1:
            # The scenes of an animation are asked about together: one round trip, not
            # one per scene. The first failure is raised, as one call's would be.
            responses = list(
                self._frame_calls.get().map(
                    lambda frame: ratelimit.within(budget, self._call, frame.data, min_confidence),
                    image.frames,
                )
            )
        else:
            responses = [self._call(frame.data, min_confidence) for frame in image.frames]
        labels: list[Label] = []
        content_types: list[ContentType] = []
        # Each frame keeps its own labels and ContentTypes: the policy judges every frame
        # on its own, and a merge would pair one frame's parent with another's child.
        for index, response in enumerate(responses):
            model_version = str(response.get("ModerationModelVersion", model_version))
            # Named only when the adapter answered: an expired one leaves the base model to.
            project_version = str(response.get("ProjectVersion") or project_version)
            labels += labels_from_rekognition(response.get("ModerationLabels", []), index)
            content_types += content_types_from_rekognition(
                response.get("ContentTypes") or [], index
            )
        return Analysis(
            labels=tuple(labels),
            backend=self.name,
            model_version=model_version,
            min_confidence=min_confidence,
            frames=len(image.frames),
            content_types=tuple(content_types),
            project_version=project_version,
        )

    def _call(self, data: bytes, min_confidence: float) -> dict[str, Any]:
        request: dict[str, Any] = {"Image": {"Bytes": data}, "MinConfidence": min_confidence}
        if self.settings.rekognition_project_version:
            # A Custom Moderation adapter: AWS's base model, tuned on the account's pictures.
            request["ProjectVersion"] = self.settings.rekognition_project_version
        try:
            response: dict[str, Any] = self.client().detect_moderation_labels(**request)
        except botocore.exceptions.ClientError as error:
            raise classify_client_error(error) from error
        except ratelimit.NoTurn as error:
            raise RateLimitedError(str(error)) from error
        except stores.StoreUnavailable as error:
            # No call without a turn: the picture waits, as it does for any outage.
            raise RetryableError(f"call rate unknown: {error}") from error
        except (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
            botocore.exceptions.NoRegionError,
        ) as error:
            raise BackendConfigurationError(
                f"Rekognition credentials or region: {error}"
            ) from error
        except (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
        ) as error:
            raise RetryableError(f"Rekognition unreachable: {error}") from error
        except botocore.parsers.ResponseParserError as error:
            raise RetryableError(f"Rekognition sent a malformed response: {error}") from error
        except botocore.exceptions.BotoCoreError as error:
            raise BackendError(f"Rekognition call failed: {error}") from error
        # botocore turns a 200 whose body is not JSON into an empty response: that is no
        # answer, not an image without labels.
        if not isinstance(response.get("ModerationLabels"), list):
            raise RetryableError("Rekognition response has no ModerationLabels list")
        return response


def classify_client_error(error: botocore.exceptions.ClientError) -> BackendError:
    """Map a Rekognition error code onto retryable, bad image or configuration."""
    details = error.response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    message = f"Rekognition {code}: {details.get('Message', '')}".strip()
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in RETRYABLE_CODES or status >= 500:
        return RetryableError(message)
    if code in BAD_IMAGE_CODES:
        return BadImageError(message)
    if code in SETTINGS_CODES:
        return BackendConfigurationError(
            f"{message} (the picture was prepared within Rekognition's limits, so check the "
            "settings: an adapter in REKOGNITION_PROJECT_VERSION of another region than "
            "REKOGNITION_REGION, or a MinConfidence out of range)"
        )
    if code in CONFIGURATION_CODES or status in (401, 403):
        return BackendConfigurationError(message)
    return BackendError(message)
