"""The root parser of ``mentalglm``, built from each command module's ``add_parser``, and :func:`main`.

``--json`` puts exactly one JSON document (or JSONL for many posts) on stdout; progress and
logs go to stderr. Mistakes in input give one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Sequence

from mentalglm.cli import (
    analyze,
    batch,
    bench,
    catalog,
    data,
    evaluate,
    leaderboard,
    models,
    quickstart,
    review,
    serve,
    train,
)
from mentalglm.core.errors import MentalGLMError

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130

#: The command modules, in the order ``mentalglm --help`` lists their commands.
COMMAND_MODULES = (catalog, analyze, evaluate, leaderboard, train, data, review, batch, serve, models, quickstart,
                   bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mentalglm`` command."""
    parser = argparse.ArgumentParser(
        prog="mentalglm",
        description="Explainable mental-health analysis of Chinese social-media posts with MentalGLM.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    for command in sub.choices.values():  # -v also after the sub-command: `mentalglm analyze -v …`
        if "-v" not in command._option_string_actions:
            command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                 help="more logging on stderr (-vv: debug)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"{message}\n"  # one line, no source echo
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="mentalglm: %(message)s", stream=sys.stderr)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except MentalGLMError as exc:
        # Under torchrun every rank hits the same (deterministic) input error; one line is enough.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mentalglm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mentalglm: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
