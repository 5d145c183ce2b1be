"""The ``serving-lab`` command: doctor, backend control, lab building and grading."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving-lab",
        description="Helpers for the serving-lab notebooks: check the machine, run the local model, build and grade labs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from lab_support import doctor
    from lab_support.backend import cli as backend_cli
    from lab_support.grading import cli as grading_cli

    doctor.add_command(commands)
    backend_cli.add_command(commands)
    grading_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # One line per HTTP request from httpx would bury the command's own output.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from lab_support.backend import BackendError

    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        return 130
    except (BackendError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
