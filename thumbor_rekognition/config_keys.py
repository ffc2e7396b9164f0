"""Every configuration key of the plugin, declared once with ``Config.define`` so that
``thumbor-config`` prints them grouped with their descriptions, and the example
thumbor.conf and reference page generated from them (config_docs). Importing this
module defines the keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thumbor.config import Config

from thumbor_rekognition.config_keys_banks import BANK_KEYS
from thumbor_rekognition.config_keys_operations import OPERATION_KEYS

GROUP = "Moderation"
REKOGNITION_GROUP = "Moderation - Amazon Rekognition"
NUDENET_GROUP = "Moderation - offline model"

KEYS: list[tuple[str, Any, str, str]] = [
    (
        "MODERATION_SOURCE_LOADER",
        "thumbor.loaders.http_loader",
        "Loader that fetches originals; thumbor_rekognition.loader wraps it and moderates "
        "what it returns.",
        GROUP,
    ),
    (
        "MODERATION_SOURCE_STORAGE",
        "thumbor.storages.file_storage",
        "Storage that keeps originals; STORAGE = 'thumbor_rekognition.storage' wraps it, "
        "hands out only approved originals and stores only approved ones.",
        GROUP,
    ),
    (
        "MODERATION_SOURCE_RESULT_STORAGE",
        "thumbor.result_storages.file_storage",
        "Result storage that keeps rendered results; RESULT_STORAGE = "
        "'thumbor_rekognition.result_storage' wraps it, ties each result to the content "
        "hash of every original it was made from and serves it only while all are "
        "approved. None: no result storage.",
        GROUP,
    ),
    (
        "MODERATION_BACKEND",
        "thumbor_rekognition.backends.rekognition",
        "Module that judges pictures: thumbor_rekognition.backends.rekognition (Amazon "
        "Rekognition) or thumbor_rekognition.backends.nudenet (offline, nudity only; "
        "needs pip install 'thumbor-moderation[local]', checked at start-up).",
        GROUP,
    ),
    (
        "MODERATION_MIN_CONFIDENCE",
        0.5,
        "Confidence (0..1) above which a label rejects an image, for every category "
        "without its own threshold.",
        GROUP,
    ),
    (
        "MODERATION_CATEGORY_THRESHOLDS",
        {},
        "Per-category thresholds, e.g. {'explicit_nudity': 0.6}. A threshold on a "
        "category covers its children unless a child has its own. Names match "
        "case-insensitively; an unknown name stops start-up. Write every name in one "
        "Rekognition model generation (6.x or 7.x): answers of the other are translated "
        "with AWS's 6.1 -> 7 table. 'animated' and 'illustrated' set the threshold of "
        "every label of a picture with that ContentType.",
        GROUP,
    ),
    (
        "MODERATION_IGNORED_CATEGORIES",
        [],
        "Categories that never reject an image, e.g. ['revealing_clothes']. Ignoring a "
        "category ignores its children unless a child has its own threshold.",
        GROUP,
    ),
    (
        "MODERATION_RULES",
        "",
        "Thresholds written as a Cloudinary moderation string, e.g. "
        "'aws_rek:explicit_nudity:0.6:revealing_clothes:ignore'. Ending the chain with "
        "'|manual' makes every picture the model does not reject 'pending' until a human "
        "approves or rejects it; 'manual' alone (or 'duplicate:0.9|manual') leaves every "
        "new picture to a human without a backend call; a 'duplicate:<score>' step, as in "
        "Cloudinary, rejects a near-copy of any picture already judged, approved or not "
        "(de-duplication of uploads; 'duplicate:0' turns it off, scores below 0.879 "
        "(31 PDQ bits of 256) are read as 0.879). Merged with "
        "MODERATION_CATEGORY_THRESHOLDS and MODERATION_IGNORED_CATEGORIES; a category "
        "given different values in two places stops start-up.",
        GROUP,
    ),
    (
        "MODERATION_REVIEW_BAND",
        0.0,
        "Width (0..1) of a band below each threshold: a label scoring inside it makes "
        "the decision 'pending' for a human instead of 'approved'. 0 disables it.",
        GROUP,
    ),
    (
        "MODERATION_DUPLICATE_SIMILARITY",
        0.9,
        "How alike (0..1) a new picture must be to one the model or a human rejected to "
        "be rejected as its duplicate, without a backend call, naming it (source "
        "'duplicate'): 1 - distance/256 between their PDQ hashes, the new picture's "
        "rotations and mirrors included (0.9 is 25 bits; Meta's threshold, 31 bits, is "
        "0.879, the lowest accepted; 0 disables matching). Re-encoded, resized, brighter "
        "and mirrored copies are a few bits apart, distinct pictures about 128. Frames "
        "of PDQ quality below 50 are not matched. When the rejected picture is approved, "
        "its duplicates are judged on their own. Cloudinary's 'duplicate:<score>' step "
        "in MODERATION_RULES is another rule: "
        "copies of any judged picture.",
        GROUP,
    ),
    (
        "MODERATION_REJECTED_RESPONSE",
        "placeholder",
        "What a rejected image is answered with: 'placeholder' (an image at the "
        "requested size, HTTP 200) or 'forbidden' (HTTP 403, empty body).",
        GROUP,
    ),
    (
        "MODERATION_PLACEHOLDER_PATH",
        None,
        "Image file served in place of rejected images; a neutral built-in one when unset.",
        GROUP,
    ),
    (
        "MODERATION_REJECTED_MAX_AGE",
        60,
        "Cache-Control max-age in seconds for rejected and pending responses "
        "(0 sends 'no-store'). Never Thumbor's MAX_AGE.",
        GROUP,
    ),
    (
        "MODERATION_ON_ERROR",
        "reject",
        "What to serve for a pending picture, one the backend could not judge (retried "
        "on a later request) or one left to a human by MODERATION_REVIEW_BAND or by "
        "MODERATION_RULES ending in '|manual': 'reject' "
        "serves the rejected response, 'allow' serves the image, never cached.",
        GROUP,
    ),
    (
        "MODERATION_DECISION_STORE",
        "thumbor_rekognition.stores.sqlite",
        "Module that keeps decisions: thumbor_rekognition.stores.sqlite (one machine), "
        "thumbor_rekognition.stores.redis (shared by a cluster) or "
        "thumbor_rekognition.stores.dynamodb (shared by a cluster on AWS).",
        GROUP,
    ),
    (
        "MODERATION_SQLITE_PATH",
        "/tmp/thumbor/moderation.sqlite3",  # noqa: S108 - mirrors Thumbor's own /tmp defaults
        "SQLite file of the sqlite decision store; shared safely by every process of one machine.",
        GROUP,
    ),
    (
        "MODERATION_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis of the redis decision store (redis-py URL: rediss:// for TLS, password and "
        "database in the URL).",
        GROUP,
    ),
    (
        "MODERATION_REDIS_PREFIX",
        "moderation:",
        "Prefix of every Redis key the redis decision store writes (no '{' or '}': the "
        "store adds hash tags of its own).",
        GROUP,
    ),
    (
        "MODERATION_REDIS_CLUSTER",
        False,
        "True when MODERATION_REDIS_URL names a node of a Redis Cluster (any node: the "
        "others are found from it; several, comma-separated, so that one down when Thumbor "
        "starts does not matter).",
        GROUP,
    ),
    (
        "MODERATION_REDIS_WAIT_REPLICAS",
        0,
        "Replicas that must hold a decision before it is answered (Redis WAIT, within "
        "MODERATION_STORE_TIMEOUT_SECONDS), at most as many as its master has at the time; "
        "1 with a replica per master keeps every answered decision through a failover, and "
        "a promoted replica takes writes alone until a replica attaches. A write they do "
        "not acknowledge is undone and answered as failed. 0: answer once the master has it.",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_TABLE",
        "",
        "Table of the dynamodb decision store; required with "
        "thumbor_rekognition.stores.dynamodb (docs/stores.md shows its definition).",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_REGION",
        "",
        "Region of the DynamoDB table; REKOGNITION_REGION when empty.",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_ENDPOINT_URL",
        None,
        "DynamoDB endpoint URL (e.g. a VPC endpoint); AWS's own for the region when unset.",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_CREATE_TABLE",
        False,
        "Create the DynamoDB table (on-demand billing, with item expiry) when it does not "
        "exist. Off: a missing table is an error, for tables made by infrastructure code.",
        GROUP,
    ),
    (
        "MODERATION_STORE_TIMEOUT_SECONDS",
        0.5,
        "Longest wait for one call to a networked decision store; past it the store counts "
        "as unreachable for that request.",
        GROUP,
    ),
    (
        "MODERATION_LEASE_SECONDS",
        30.0,
        "How long one process may hold the right to judge a new picture while every other "
        "process waits for its decision; a crashed holder blocks the picture this long.",
        GROUP,
    ),
    (
        "MODERATION_CACHE_TTL_SECONDS",
        2.0,
        "How long a process keeps a decision in memory before reading it again; bounds "
        "how late an override made by another process is enforced.",
        GROUP,
    ),
    (
        "MODERATION_TIMEOUT_SECONDS",
        10.0,
        "Longest a request waits for a new picture to be judged (backend retries "
        "included). Past it the request answers 'pending'; the judgement carries on and "
        "serves later requests.",
        GROUP,
    ),
    (
        "MODERATION_WORKERS",
        8,
        "Threads per Thumbor process for hashing and image preparation, and as many "
        "again for backend calls (which never wait there for a turn of the call rate): "
        "a picture already judged never waits behind them.",
        GROUP,
    ),
    (
        "MODERATION_TURN_WAIT_SECONDS",
        1.0,
        "Longest a first view waits for its turn of REKOGNITION_MAX_CALLS_PER_SECOND. "
        "When the next turn is further away, the picture is answered 'pending' at once "
        "(served as MODERATION_ON_ERROR says) and queued to be judged in the background, "
        "in order, as turns come; no thread waits for a turn.",
        GROUP,
    ),
    (
        "MODERATION_BACKLOG_SIZE",
        1000,
        "Most pictures a process keeps queued for judgement after answering them "
        "'pending' because the call rate was spent. Past it (or past "
        "MODERATION_BACKLOG_MB), a picture is judged on its next request instead. The "
        "queue lives in the process: a restart forgets it, with the same effect.",
        GROUP,
    ),
    (
        "MODERATION_BACKLOG_MB",
        64,
        "Most megabytes of originals the background queue of a process holds. They wait "
        "in one temporary file per process, not in its memory (in the system's temporary "
        "directory, TMPDIR: on a disk, not a tmpfs, for them to take no memory at all), "
        "appended to and emptied whenever the queue is; this bounds that file, judged "
        "originals included until it is emptied. Where it cannot be written (no room, a "
        "directory not writable), originals are kept in memory instead, within the same "
        "bound.",
        GROUP,
    ),
    (
        "MODERATION_DECODE_BUDGET_MB",
        128,
        "Megabytes of originals and decoded pixels a process may hold at once for "
        "judging new pictures (each counted as its bytes plus width x height x 4 per "
        "scene, a JPEG at the reduced size it is decoded at). A picture that would "
        "exceed it waits until others are done, within MODERATION_TURN_WAIT_SECONDS, "
        "then is answered 'pending' and queued. A first view holds its room from before "
        "its original is loaded (as much as the last pictures cost) until its request "
        "ends, Thumbor's rendering included; one that gets no room in time is answered "
        "'pending' without being loaded, and judged on a later request. One "
        "picture larger than the whole budget is judged alone.",
        GROUP,
    ),
    (
        "MODERATION_CACHE_ENTRIES",
        10_000,
        "Decisions a process keeps in memory, per cache (by URL and by content hash), "
        "least recently used dropped first. An entry expired more than ten minutes ago "
        "is dropped too; until then it answers while the decision store is unreachable.",
        GROUP,
    ),
    (
        "MODERATION_MAX_PIXELS",
        100_000_000,
        "Largest image (width x height) the plugin will decode; larger ones are refused "
        "with HTTP 400 before decoding.",
        GROUP,
    ),
    (
        "MODERATION_MAX_FRAMES",
        20,
        "Most scenes of one animated image (GIF, WebP, APNG) sent to the backend, all at "
        "once: near-duplicate frames are dropped and every distinct scene is judged, up "
        "to this many; the image is rejected if any is. An animation with more distinct "
        "scenes is never approved: it waits for a human (pending). With Rekognition each "
        "scene is one paid call.",
        GROUP,
    ),
    (
        "MODERATION_ANALYSIS_MAX_SIDE",
        1600,
        "Longest side in pixels the backend needs. Larger originals are decoded at "
        "reduced size and reduced by an integer factor, so the copy sent to the backend "
        "has a longest side between this and twice this.",
        GROUP,
    ),
    *OPERATION_KEYS,
    (
        "NUDENET_THREADS",
        1,
        "Threads of the offline model's onnxruntime session per Thumbor process. 1 suits "
        "a server that runs one Thumbor process per core; 0 lets onnxruntime use every core.",
        NUDENET_GROUP,
    ),
    (
        "REKOGNITION_REGION",
        "us-east-1",
        "AWS region of the Rekognition endpoint. Credentials come from boto3's standard "
        "chain (environment, shared files, instance role).",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_ENDPOINT_URL",
        None,
        "Rekognition endpoint URL with its scheme (e.g. 'http://localhost:4566'); unset "
        "means AWS's own for the region.",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_PROJECT_VERSION",
        None,
        "ARN of a Rekognition Custom Moderation adapter (a project version), sent with "
        "every call as ProjectVersion; unset, the base model judges. Decisions record the "
        "adapter the answer names. Changing it does not judge stored pictures again: "
        "their labels stay, `thumbor-moderation forget` has one judged anew.",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_TIMEOUT_SECONDS",
        5.0,
        "Connect and read timeout of one Rekognition call, in seconds.",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_MAX_ATTEMPTS",
        3,
        "Attempts per Rekognition call, first one included (botocore 'standard' retries).",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_MAX_CALLS_PER_SECOND",
        None,
        "Most Rekognition calls per second for the whole cluster (every process of every "
        "node sharing the decision store), retries and animation scenes included: calls "
        "are spaced evenly. A first view waits for its turn MODERATION_TURN_WAIT_SECONDS "
        "at most, then answers 'pending' and is judged in the background as turns come. "
        "Throttling answers from AWS lower the rate for a while. Unset: no limit.",
        REKOGNITION_GROUP,
    ),
    *BANK_KEYS,
]

for _key, _default, _description, _group in KEYS:
    Config.define(_key, _default, _description, _group)

DEFAULTS: Mapping[str, Any] = {key: default for key, default, _, _ in KEYS}
