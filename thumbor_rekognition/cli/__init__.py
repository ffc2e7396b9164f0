"""``thumbor-moderation``: check a file, list, inspect, override, re-evaluate and backfill,
find the rejected pictures nearest to one, and judge new S3 objects from their upload
notifications.

Every command reads the same thumbor.conf as the Thumbor servers it administers and
goes through the same pieces they use (the runtime's moderator, the decision store, the
quarantine, Thumbor's STORAGE and RESULT_STORAGE), so that what it changes is what the
servers enforce, within MODERATION_CACHE_TTL_SECONDS.

Exit codes: 0 done, 1 the operation failed (an unknown URL, an image that could not be
judged), 2 a usage or configuration error.

``parser`` is the command line; ``environment`` the configuration a command runs against;
``output`` how commands print; ``check``, ``decisions``, ``similar``, ``reevaluate``,
``backfill`` and ``watch_sqs`` (with ``s3_events``) the subcommands, a group each.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from thumbor_rekognition.cli.environment import (
    EXIT_FAILED,
    EXIT_USAGE,
    Environment,
    Failure,
    UsageError,
)
from thumbor_rekognition.cli.parser import build_parser
from thumbor_rekognition.config_checks import ConfigurationError
from thumbor_rekognition.quarantine import QuarantineError
from thumbor_rekognition.stores import StoreUnavailable

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130
PYCURL_ADVICE = "pycurl usage is advised"


def _not_pycurl_advice(record: logging.LogRecord) -> bool:
    """False for Thumbor's advice to install pycurl, which its HTTP loader logs on import."""
    # Advice for a server's fetching; a command line gets it on every call, in every script.
    return not record.getMessage().startswith(PYCURL_ADVICE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run thumbor-moderation; returns its exit code."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("thumbor").addFilter(_not_pycurl_advice)
    try:
        environment = Environment(arguments.conf)
    except ConfigurationError as error:
        return _fail(EXIT_USAGE, f"configuration error: {error}")
    try:
        code: int = arguments.run(environment, arguments)
        return code
    except UsageError as error:
        return _fail(EXIT_USAGE, str(error))
    except ConfigurationError as error:
        return _fail(EXIT_USAGE, f"configuration error: {error}")
    except Failure as error:
        return _fail(EXIT_FAILED, str(error))
    except StoreUnavailable as error:
        return _fail(EXIT_FAILED, f"decision store unavailable: {error}")
    except QuarantineError as error:
        return _fail(EXIT_FAILED, f"quarantine unavailable: {error}")
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    finally:
        environment.close()


def _fail(code: int, message: str) -> int:
    print(f"thumbor-moderation: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
