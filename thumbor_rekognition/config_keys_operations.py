"""The configuration keys of operations: the quarantine, administration (API, review
page, upload-time checks) and announcements (CDN purges, webhooks, the outbox), declared
with the others by ``config_keys``."""

from __future__ import annotations

from typing import Any

QUARANTINE_GROUP = "Moderation - quarantine"
ADMIN_GROUP = "Moderation - administration"
UPLOAD_GROUP = "Moderation - upload time"
NOTIFY_GROUP = "Moderation - CDN and notifications"

OPERATION_KEYS: list[tuple[str, Any, str, str]] = [
    (
        "MODERATION_QUARANTINE",
        "thumbor_rekognition.quarantine.file",
        "Module that keeps originals that are not approved, so that approving one "
        "restores it: thumbor_rekognition.quarantine.file (a local folder) or "
        "thumbor_rekognition.quarantine.s3 (a bucket shared by a cluster).",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_PATH",
        "/tmp/thumbor/quarantine",  # noqa: S108 - mirrors Thumbor's own /tmp defaults
        "Folder of the file quarantine.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_BUCKET",
        "",
        "Bucket of the S3 quarantine; required with thumbor_rekognition.quarantine.s3.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_PREFIX",
        "quarantine/",
        "Key prefix of quarantined originals in the S3 bucket.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_REGION",
        "",
        "Region of the S3 quarantine bucket; REKOGNITION_REGION when empty.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_ENDPOINT_URL",
        None,
        "S3 endpoint URL (an S3-compatible store); AWS's own when unset.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_ADMIN_PREFIX",
        "/moderation",
        "URL prefix of the admin API and review page.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_ADMIN_TOKEN",
        None,
        "Bearer token of the admin API and review page. Unset: the admin API is off and "
        "every path under the prefix answers 404 saying so. Use a long random string, "
        "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_REVIEW_BLUR_APPROVED",
        False,
        "Blur approved pictures on the review page too, until the reviewer hovers over "
        "one or reveals it with a key (pending, rejected and duplicate pictures always are).",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_ADMIN_MAX_BODY_BYTES",
        65536,
        "Largest request body the admin API reads; larger ones get HTTP 413.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_CHECK_TOKEN",
        None,
        "Bearer token that may only ask for a judgement at upload time (POST "
        "{prefix}/check), for a site's upload backend; every other admin route refuses it. "
        "MODERATION_ADMIN_TOKEN is accepted there too. Unset: only the admin token checks.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_CHECK_MAX_BODY_BYTES",
        20 * 1024 * 1024,
        "Largest picture judged at upload time: POST {prefix}/check answers a larger body "
        "HTTP 413, and watch-sqs leaves a larger S3 object for the dead-letter queue.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_S3_URL_TEMPLATE",
        "{key}",
        "How `thumbor-moderation watch-sqs` names a new S3 object as Thumbor will be asked "
        "for it, with the fields {bucket} and {key} (decoded): '{key}' for thumbor-aws's "
        "loader, 'https://cdn.example.com/{key}' for an HTTP loader.",
        UPLOAD_GROUP,
    ),
    (
        "MODERATION_CACHE_TAG_HEADER",
        None,
        "Response header naming the original of every approved image, e.g. "
        "'Surrogate-Key' (Fastly), 'Cache-Tag' (Cloudflare), 'Edge-Cache-Tag' (Akamai), "
        "so a CDN can purge every size of one picture at once. Unset: no header.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CDN_PURGERS",
        [],
        "Modules that purge a CDN when an image becomes rejected, is forgotten or is "
        "purged: thumbor_rekognition.cdn.cloudfront, thumbor_rekognition.cdn.http.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CLOUDFRONT_DISTRIBUTION_ID",
        "",
        "CloudFront distribution invalidated by thumbor_rekognition.cdn.cloudfront.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CLOUDFRONT_PATH_PREFIX",
        "",
        "Prefix put before Thumbor's result paths to make CloudFront paths, when the "
        "distribution serves Thumbor under a sub-path.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CLOUDFRONT_ENDPOINT_URL",
        None,
        "CloudFront API endpoint; AWS's own when unset.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_HTTP_PURGE",
        {},
        "The HTTP call of thumbor_rekognition.cdn.http: {'method': 'POST', 'url': ..., "
        "'headers': {...}, 'body': ...}. In url, header values and body, {tag} is the "
        "picture's cache tag, {paths} the JSON list of its result paths and {key} its "
        "decision key, e.g. Fastly: url 'https://api.fastly.com/service/ID/purge/{tag}' "
        "with header 'Fastly-Key'; Cloudflare: url '.../zones/ID/purge_cache', body "
        '\'{"tags": ["{tag}"]}\' with an Authorization header.',
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_WEBHOOK_URL",
        None,
        "URL that receives a signed JSON POST for every decision change. Unset: none sent.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_WEBHOOK_SECRET",
        None,
        "Key of the HMAC-SHA256 signature of webhook calls (X-Moderation-Signature).",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_OUTBOX_TIMEOUT_SECONDS",
        10.0,
        "Timeout of one webhook or purge call.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_OUTBOX_GIVE_UP_SECONDS",
        259200,
        "How long a webhook or purge that keeps failing is retried (with exponential "
        "backoff up to 15 minutes) before it is given up; 3 days by default.",
        NOTIFY_GROUP,
    ),
]
