"""`python -m cache`: maintain the disk cache (prune, stats, verify, clear).

Safe to run while servers use the same directory (see cache.maintenance).
Exit status: 0 on success, 1 when verify found corrupt entries, 2 on bad arguments
or when verify met (and kept) entries signed with a cache secret it was not given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cache.defaults import DEFAULT_CACHE_DIR, images_dir
from cache.disk import DiskTier
from cache.keyring import Keyring, parse_secrets
from cache.keys import bad_namespace, is_namespace
from cache.maintenance import namespace_stats, prune, verify
from cache.units import format_duration, format_size, parse_duration, parse_size


def main(argv: list[str] | None = None) -> int:
    # --cache-dir and --json work before the command and after it (cron lines and the
    # README put them after): each subcommand takes them too, without a default of its
    # own, so one given before the command is not overwritten.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS, help="the service's --cache-dir")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON"
    )
    parser = argparse.ArgumentParser(
        prog="python -m cache", description=__doc__.splitlines()[0], parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "prune", parents=[common], help="remove entries unused for --max-age, then LRU down to --max-size"
    )
    p.add_argument(
        "--max-age", type=_duration, default=None, help="e.g. 7d, 12h, 30m (default: no age limit)"
    )
    p.add_argument("--max-size", type=_size, default=None, help="e.g. 20GiB, 500MB (default: no size limit)")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    commands.add_parser("stats", parents=[common], help="entries and bytes, per namespace")
    v = commands.add_parser(
        "verify", parents=[common], help="check every entry's checksum; remove corrupt ones"
    )
    v.add_argument("--dry-run", action="store_true", help="report corrupt entries, remove nothing")
    # This CLI is its own composition root: like app.py it reads the service's
    # environment variable, so the secret need not appear on a command line.
    v.add_argument(
        "--cache-secret",
        type=_secrets,
        default=os.environ.get("ZIMAGE_CACHE_SECRET") or None,
        help="the service's --cache-secret, when it has one: secrets of 32+ bytes, comma-separated, "
        "newest first (default: $ZIMAGE_CACHE_SECRET)",
    )
    v.add_argument(
        "--remove-unverifiable",
        action="store_true",
        help="also remove entries signed with a secret not given (kept by default: a retired "
        "secret's leftovers, or another fleet's)",
    )
    c = commands.add_parser("clear", parents=[common], help="remove every entry, or those of one namespace")
    c.add_argument("--namespace", type=_namespace, default=None)
    c.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    root = images_dir(getattr(args, "cache_dir", DEFAULT_CACHE_DIR))
    if not root.is_dir():
        print(f"python -m cache: no disk cache at {root} (check --cache-dir)", file=sys.stderr)
        return 2
    disk = DiskTier(root, keyring=Keyring.of(getattr(args, "cache_secret", None)))
    report: dict
    status = 0
    if args.command == "prune":
        r = prune(disk, max_age_s=args.max_age, max_bytes=args.max_size, dry_run=args.dry_run)
        report = vars(r)
        verb = "would remove" if args.dry_run else "removed"
        text = (
            f"{verb} {r.removed_expired} expired and {r.removed_for_size} over-size entries "
            f"({format_size(r.removed_bytes)}) and {r.removed_temp} stale temp files; "
            f"{r.kept_entries} entries ({format_size(r.kept_bytes)}) kept"
            + (f" [max age {format_duration(args.max_age)}]" if args.max_age is not None else "")
            + (f" [max size {format_size(args.max_size)}]" if args.max_size is not None else "")
        )
    elif args.command == "stats":
        report = namespace_stats(disk)
        total_entries = sum(ns["entries"] for ns in report.values())
        total_bytes = sum(ns["bytes"] for ns in report.values())
        lines = [
            f"{name}: {ns['entries']} entries, {format_size(ns['bytes'])}"
            for name, ns in sorted(report.items())
        ]
        text = "\n".join([*lines, f"total: {total_entries} entries, {format_size(total_bytes)} in {root}"])
    elif args.command == "verify":
        r = verify(disk, dry_run=args.dry_run, remove_unverifiable=args.remove_unverifiable)
        report = {**vars(r), "problems": dict(r.problems), "unknown_kids": dict(r.unknown_kids)}
        text = f"checked {r.checked} entries: {r.ok} ok, {r.corrupt} corrupt, {r.removed} removed"
        if r.problems:
            text += " (" + ", ".join(f"{k}: {n}" for k, n in r.problems.items()) + ")"
        status = 1 if r.corrupt else 0
        if r.unverifiable:
            kids = ", ".join(f"{kid}: {n}" for kid, n in sorted(r.unknown_kids.items()))
            text += f"; {r.unverifiable} signed with a secret not given here (key ids {kids})"
            if args.remove_unverifiable:
                text += " were removed"
            else:
                text += (
                    " were not checked, and kept: pass every secret in use with --cache-secret "
                    "(or ZIMAGE_CACHE_SECRET), newest first, or --remove-unverifiable"
                )
                status = status or 2
    else:
        count, size = disk.remove_all(args.namespace, dry_run=args.dry_run)
        report = {"removed": count, "bytes": size, "namespace": args.namespace}
        verb = "would remove" if args.dry_run else "removed"
        text = f"{verb} {count} entries ({format_size(size)})" + (
            f" from namespace {args.namespace}" if args.namespace else ""
        )
    print(json.dumps(report) if getattr(args, "json", False) else text)
    return status


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _secrets(text: str) -> list[bytes]:
    try:
        return parse_secrets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (--cache-secret or ZIMAGE_CACHE_SECRET)") from None


def _namespace(text: str) -> str:
    if not is_namespace(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace: {bad_namespace(text)}")
    return text


if __name__ == "__main__":
    sys.exit(main())
