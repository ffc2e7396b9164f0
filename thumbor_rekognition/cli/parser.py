"""The command line of thumbor-moderation: its options and subcommands."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable

import thumbor_rekognition
from thumbor_rekognition.cli.backfill import DEFAULT_CONCURRENCY, run_backfill
from thumbor_rekognition.cli.check import run_check
from thumbor_rekognition.cli.decisions import (
    run_decide,
    run_forget,
    run_list,
    run_migrate_store,
    run_show,
    run_stats,
)
from thumbor_rekognition.cli.environment import CONF_NAME
from thumbor_rekognition.cli.eval_matching import run_eval_matching
from thumbor_rekognition.cli.reevaluate import run_reevaluate
from thumbor_rekognition.cli.similar import (
    SIMILAR_FLOOR,
    SIMILAR_LIMIT,
    SIMILAR_MINIMUM,
    run_similar,
)
from thumbor_rekognition.cli.watch_sqs import (
    DEFAULT_CONCURRENCY as SQS_CONCURRENCY,
)
from thumbor_rekognition.cli.watch_sqs import (
    DEFAULT_WAIT_SECONDS,
    run_watch_sqs,
)
from thumbor_rekognition.decision import (
    Status,
)


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _wait_seconds(text: str) -> int:
    value = _positive(text) if text != "0" else 0
    # SQS refuses a longer long poll.
    if value > 20:
        raise argparse.ArgumentTypeError(f"must be 0 to 20, got {value}")
    return value


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # Lower, unrelated pictures fill the list, and each lookup asks for thousands of values.
    if not SIMILAR_FLOOR <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between {SIMILAR_FLOOR:g} and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of thumbor-moderation."""
    parser = argparse.ArgumentParser(
        prog="thumbor-moderation",
        description="Check, review and backfill the moderation decisions of a Thumbor server.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {thumbor_rekognition.__version__}"
    )
    conf_help = f"Thumbor configuration file (default: {CONF_NAME} in ., ~ or /etc)"
    parser.add_argument("-c", "--conf", help=conf_help)
    # Also after the subcommand; SUPPRESS keeps a --conf given before it when none is after.
    conf_after = argparse.ArgumentParser(add_help=False)
    conf_after.add_argument("-c", "--conf", default=argparse.SUPPRESS, help=conf_help)
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[..., int], summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, parents=[conf_after])
        sub.set_defaults(run=run)
        return sub

    check = command(
        "check", run_check, "Judge an image file with the configured backend; store nothing."
    )
    check.add_argument("file", help="image file")
    check.add_argument("--json", action="store_true", help="print JSON")

    listing = command("list", run_list, "List decisions, one a line, ordered by key.")
    listing.add_argument("--status", choices=[status.value for status in Status])
    listing.add_argument("--limit", type=_positive, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON lines")

    show = command("show", run_show, "Show a decision, its labels and its history.")
    show.add_argument("url", help="image URL as it appears in Thumbor URLs")
    show.add_argument("--json", action="store_true", help="print JSON")

    actor = f"cli:{_login()}"
    for status, summary in (
        (Status.APPROVED, "Approve a picture by hand (every URL with the same bytes)."),
        (Status.REJECTED, "Reject a picture by hand (every URL with the same bytes)."),
    ):
        name = "approve" if status is Status.APPROVED else "reject"
        decide = command(name, run_decide, summary)
        decide.set_defaults(status=status.value)
        decide.add_argument("url", help="image URL as it appears in Thumbor URLs")
        decide.add_argument("--note", default="", help="why, kept in the history")
        decide.add_argument("--actor", default=actor, help=f"who (default: {actor})")
        decide.add_argument(
            "--unseen",
            action="store_true",
            help="decide for a URL no request has fetched yet (else refused as a likely "
            "typo); the decision binds to the bytes of its first fetch",
        )

    forget = command("forget", run_forget, "Drop a decision; the next request judges again.")
    forget.add_argument("url", help="image URL as it appears in Thumbor URLs")
    forget.add_argument("--note", default="", help="why, kept in the history")
    forget.add_argument("--actor", default=actor, help=f"who (default: {actor})")

    reevaluate = command(
        "reevaluate",
        run_reevaluate,
        "Apply the current thresholds to the stored labels of every automatic decision, "
        "without calling the backend.",
    )
    reevaluate.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )

    backfill = command("backfill", run_backfill, "Moderate image URLs ahead of traffic.")
    backfill.add_argument(
        "urls_file",
        metavar="URLS_FILE",
        nargs="?",
        help="one image URL a line as in Thumbor URLs; blank lines and # comments ignored; "
        "- for standard input",
    )
    backfill.add_argument(
        "--fingerprints",
        action="store_true",
        help="instead: give every stored decision without a PDQ hash the hashes of its "
        "quarantined or stored original (no backend call), rejecting approved pictures "
        "a reject hash bank lists",
    )
    backfill.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help=f"URLs moderated at once (default: {DEFAULT_CONCURRENCY})",
    )

    watch = command(
        "watch-sqs",
        run_watch_sqs,
        "Judge new S3 objects from their upload notifications in an SQS queue (S3's own, "
        "through SNS or through EventBridge) before anyone views them; runs until SIGTERM.",
    )
    watch.add_argument("--queue-url", required=True, help="URL of the SQS queue")
    watch.add_argument(
        "--wait-seconds",
        type=_wait_seconds,
        default=DEFAULT_WAIT_SECONDS,
        help=f"long-poll wait of each receive, 0 to 20 (default: {DEFAULT_WAIT_SECONDS})",
    )
    watch.add_argument(
        "--concurrency",
        type=_positive,
        default=SQS_CONCURRENCY,
        help=f"receives in flight at once, each of up to 10 messages (default: {SQS_CONCURRENCY})",
    )

    similar = command(
        "similar",
        run_similar,
        "List the rejected pictures nearest to a picture, with their similarity, and the "
        "pictures rejected as its duplicates.",
    )
    similar.add_argument("url", help="image URL as it appears in Thumbor URLs")
    similar.add_argument(
        "--min-similarity",
        type=_similarity,
        default=SIMILAR_MINIMUM,
        help=f"list pictures at least this alike, {SIMILAR_FLOOR:g} to 1 "
        f"(default: {SIMILAR_MINIMUM:g})",
    )
    similar.add_argument(
        "--limit",
        type=_positive,
        default=SIMILAR_LIMIT,
        help=f"at most this many pictures (default: {SIMILAR_LIMIT})",
    )
    similar.add_argument("--json", action="store_true", help="print JSON")

    evaluation = command(
        "eval-matching",
        run_eval_matching,
        "How well the old fingerprint and PDQ catch edited copies of a folder's pictures, "
        "and how often distinct pictures match, at the configured thresholds.",
    )
    evaluation.add_argument("folder", help="folder of pictures (JPEG, PNG, WebP, GIF ...)")
    evaluation.add_argument("--limit", type=_positive, help="at most this many pictures")
    evaluation.add_argument("--json", action="store_true", help="print JSON")

    stats = command("stats", run_stats, "Counts by status and source, and backend calls.")
    stats.add_argument("--json", action="store_true", help="print JSON")

    command(
        "migrate-store",
        run_migrate_store,
        "Convert decisions kept by an earlier version into the current format (once, "
        "after upgrading, before starting Thumbor).",
    )
    return parser
