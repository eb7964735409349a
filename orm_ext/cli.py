"""The ``orm-journal`` command line: a parser built around :mod:`orm_ext.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from orm_ext import commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the parser; each subcommand's ``func`` is the command function it calls."""
    parser = argparse.ArgumentParser(
        prog="orm-journal",
        description="Record, inspect, verify and replay orm-journal journals.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING"),
        help="log orm_ext's records at this level and above on standard error (INFO: one "
        "line per journal; DEBUG: one per batch too)",
    )
    parser.add_argument(
        "--version", action="version", version=f"orm-journal {_version()}", help="show the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the seed scenario end to end on SQLite")
    demo.add_argument("--directory", help="where to put the demo files (default: a temp dir)")
    demo.set_defaults(func=lambda a, c: commands.demo(directory=a.directory, console=c))

    key_help = "HMAC key of signed journals (default: $ORM_JOURNAL_KEY)"
    inspect = sub.add_parser("inspect", help="show a journal's header, summary and operations")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.add_argument(
        "--limit",
        type=_count,
        metavar="N",
        help="show at most N operations (the summary still counts all of them)",
    )
    inspect.add_argument(
        "--unsafe",
        "--allow-dill",
        dest="unsafe",
        action="store_true",
        help="decode dill values: this runs code from the file; only for journals you trust",
    )
    inspect.add_argument("--key", help=key_help)
    inspect.set_defaults(
        func=lambda a, c: commands.inspect(
            a.path, as_json=a.json, unsafe=a.unsafe, limit=a.limit, key=a.key, console=c
        )
    )

    verify = sub.add_parser(
        "verify", help="check journals; exit status 0 if every one can be replayed"
    )
    verify.add_argument("paths", nargs="+", metavar="PATH")
    verify.add_argument("--json", action="store_true", help="print one JSON object per journal")
    verify.add_argument("--key", help=key_help)
    verify.set_defaults(
        func=lambda a, c: commands.verify(a.paths, key=a.key, as_json=a.json, console=c)
    )

    replay = sub.add_parser("replay", help="apply journals to a database, each exactly once")
    replay.add_argument("url", help="SQLAlchemy database URL")
    replay.add_argument("paths", nargs="+", metavar="PATH", help="journal files or directories")
    replay.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (the application's mapped classes); repeatable",
    )
    replay.add_argument("--on-conflict", choices=("fail", "overwrite", "skip"), default="fail")
    replay.add_argument("--allow-schema-drift", action="store_true")
    replay.add_argument(
        "--allow-dill",
        action="store_true",
        help="decode dill values of journals that did not verify with a key: this runs code "
        "from the files; only for journals nobody else can write",
    )
    replay.add_argument("--key", help=key_help)
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="apply each journal and roll back: report what would happen, change nothing",
    )
    replay.add_argument("--json", action="store_true", help="print one JSON object per journal")
    replay.add_argument(
        "--watch",
        action="store_true",
        help="run as a service on one spool directory PATH: apply each sealed journal as it "
        "arrives and move it to PATH/applied/ or PATH/failed/ (with a .json file saying why)",
    )
    replay.add_argument(
        "--once",
        action="store_true",
        help="with --watch: stop when the spool holds no sealed journal",
    )
    replay.add_argument(
        "--poll-interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="with --watch: how often to look at an idle spool (default: 1)",
    )
    replay.set_defaults(func=_replay)

    init_db = sub.add_parser("init-db", help="create the ledger table (Alembic migration)")
    init_db.add_argument("url", help="SQLAlchemy database URL")
    init_db.set_defaults(func=lambda a, c: commands.init_db(a.url, console=c))
    return parser


def _replay(args: argparse.Namespace, console: Console) -> int:
    """``replay``: a one-off run over PATHs, or with ``--watch`` the service on one spool."""
    if not args.watch:
        if args.once:
            raise commands.CommandError("--once goes with --watch; add --watch")
        return commands.replay(
            args.url,
            args.paths,
            models=args.models,
            on_conflict=args.on_conflict,
            allow_schema_drift=args.allow_schema_drift,
            allow_dill=args.allow_dill,
            key=args.key,
            dry_run=args.dry_run,
            as_json=args.json,
            show_traceback=args.traceback,
            console=console,
        )
    if args.dry_run:
        raise commands.CommandError(
            "--dry-run cannot go with --watch (the service moves what it replays); run "
            "orm-journal replay URL PATH --dry-run on the journals instead"
        )
    if len(args.paths) != 1:
        raise commands.CommandError(
            "--watch takes one spool directory, not several paths; run one service per spool"
        )
    if not args.log_level and not args.json and not console.is_terminal:
        # No terminal to print a line per journal on: the loggers report each journal.
        _log_to_stderr("INFO")
    return commands.watch(
        args.url,
        args.paths[0],
        models=args.models,
        on_conflict=args.on_conflict,
        allow_schema_drift=args.allow_schema_drift,
        allow_dill=args.allow_dill,
        key=args.key,
        once=args.once,
        poll_interval=args.poll_interval,
        as_json=args.json,
        console=console,
    )


def _count(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, not {text!r}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("orm-journal")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


def _log_to_stderr(level: str) -> None:
    """Send the ``orm_ext`` loggers' records to standard error, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("orm_ext")
    logger.addHandler(handler)
    logger.setLevel(level)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the command line; return the exit status (errors are one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # soft_wrap: a line longer than the terminal (or than $COLUMNS, or 80 in a pipe) is
    # written whole, never wrapped or cut.
    out = console or Console(soft_wrap=True)
    if args.log_level:
        _log_to_stderr(args.log_level)
    try:
        status: Any = args.func(args, out)
    except BrokenPipeError:
        # Whoever read the output stopped (``| head``): end quietly, and point stdout at
        # /dev/null so that flushing it at exit does not report the pipe once more.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    except Exception as err:
        if args.traceback:
            traceback.print_exc()
        message = commands.one_line(err, url=getattr(args, "url", None))
        sys.stderr.write(f"orm-journal {args.command}: error: {message}\n")
        sys.stderr.flush()
        return 2
    return int(status)


if __name__ == "__main__":
    raise SystemExit(main())
