"""CloudFront invalidations of the result paths recorded for a picture."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
import botocore.config
import botocore.exceptions

from thumbor_rekognition import cdn
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.config_checks import ConfigurationError

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

# CloudFront takes at most 3,000 paths per invalidation; smaller batches leave room for
# other invalidations in flight on the same distribution.
BATCH = 1000


class Purger(cdn.Purger):
    """One create_invalidation per batch of paths, one boto3 client per process."""

    name = "cloudfront"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if not settings.cloudfront_distribution_id:
            raise ConfigurationError(
                "Config 'MODERATION_CLOUDFRONT_DISTRIBUTION_ID' must be set to use "
                "thumbor_rekognition.cdn.cloudfront."
            )
        self._client: PerProcess[Any] = PerProcess(self._build_client)

    def client(self) -> Any:
        """The process's CloudFront client."""
        return self._client.get()

    def _build_client(self) -> Any:
        return boto3.session.Session().client(
            "cloudfront",
            endpoint_url=self.settings.cloudfront_endpoint_url,
            config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": 3},
                connect_timeout=self.settings.outbox_timeout,
                read_timeout=self.settings.outbox_timeout,
            ),
        )

    def purge(self, tag: str, key: str, paths: list[str]) -> None:
        prefix = self.settings.cloudfront_path_prefix.rstrip("/")
        # Recorded paths are the request paths as viewers sent them, escapes included:
        # only what a path may not hold is escaped, never a '%' again.
        items = sorted(
            {prefix + "/" + quote(path.lstrip("/"), safe="/%:@!$&'()*+,;=~") for path in paths}
        )
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            try:
                self.client().create_invalidation(
                    DistributionId=self.settings.cloudfront_distribution_id,
                    InvalidationBatch={
                        "Paths": {"Quantity": len(batch), "Items": batch},
                        "CallerReference": f"{tag}-{int(time.time())}-{uuid.uuid4().hex[:8]}",
                    },
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                raise cdn.PurgeError(f"CloudFront invalidation failed: {error}") from error
